import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import net from 'node:net';
import { Redis } from '@transferline/shared';

export interface EmbeddedRedis {
  url: string;
  port: number;
  stop: () => Promise<void>;
}

/** Says how to get Redis when there is none. */
export class RedisNotFoundError extends Error {
  override readonly name = 'RedisNotFoundError';
  constructor() {
    super(
      'redis-server is not on the PATH. Install it (Debian/Ubuntu: sudo apt-get install redis-server; ' +
        'macOS: brew install redis; or any Redis ≥ 6.2), or point REDIS_URL at a running Redis.',
    );
  }
}

export function findRedisServer(): string | undefined {
  const r = spawnSync('redis-server', ['--version'], { encoding: 'utf8' });
  return r.status === 0 ? 'redis-server' : undefined;
}

/** A free TCP port on loopback (for tests and port 0 requests). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

/**
 * Spawns the `redis-server` on the PATH, on loopback, with its data (AOF, so queues survive a
 * restart) under `directory`. Resolves once it answers PING. Stopped with SHUTDOWN, so it
 * flushes to disk.
 */
export async function startEmbeddedRedis(o: { directory: string; port: number; persist?: boolean }): Promise<EmbeddedRedis> {
  if (!findRedisServer()) throw new RedisNotFoundError();
  await mkdir(o.directory, { recursive: true });
  const port = o.port === 0 ? await freePort() : o.port;
  const args = ['--port', String(port), '--bind', '127.0.0.1', '--dir', o.directory, '--save', '', '--daemonize', 'no', '--protected-mode', 'yes'];
  args.push('--appendonly', o.persist === false ? 'no' : 'yes');
  const child: ChildProcess = spawn('redis-server', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout?.on('data', (d: Buffer) => (output = (output + d.toString()).slice(-4000)));
  child.stderr?.on('data', (d: Buffer) => (output = (output + d.toString()).slice(-4000)));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const url = `redis://127.0.0.1:${port}`;
  const deadline = Date.now() + 10_000;
  for (;;) {
    const early = await Promise.race([exited, new Promise<'wait'>((r) => setTimeout(() => r('wait'), 100))]);
    if (early !== 'wait') {
      const inUse = /Address already in use/.test(output);
      throw new Error(
        inUse
          ? `port ${port} for the embedded Redis is in use: set TL_REDIS_PORT, or REDIS_URL to use the Redis already there`
          : `redis-server exited (${early}): ${output.trim().split('\n').slice(-3).join(' | ')}`,
      );
    }
    const probe = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
    probe.on('error', () => {});
    const ok = await probe.connect().then(() => probe.ping()).then(() => true, () => false);
    probe.disconnect();
    if (ok) break;
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`redis-server did not answer on ${url} within 10 s`);
    }
  }
  return {
    url,
    port,
    stop: async () => {
      if (child.exitCode !== null) return;
      child.kill('SIGTERM'); // redis-server saves (AOF fsync) and exits on SIGTERM
      const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
      await exited;
      clearTimeout(timer);
    },
  };
}
