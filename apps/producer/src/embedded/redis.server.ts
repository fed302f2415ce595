import { spawnSync } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import net from 'node:net';
import { Redis } from '@transferline/shared';
import { ANOTHER_UP, SupervisedProcess } from './supervisor.js';

export interface EmbeddedRedis {
  url: string;
  port: number;
  /** the server's process (tests kill it to play a crash) */
  process: SupervisedProcess;
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

/** The ports freePort has handed out in this process (a few per stack). */
const handedOut = new Set<number>();

/**
 * A free TCP port on loopback, for a server that listens on it a little later and again on the
 * same port after a crash (tests, benchmarks, a port 0 request). Drawn below the kernel's
 * ephemeral range where it can: a port of that range (what port 0 gives) may meanwhile become
 * the local port of any outgoing connection, a worker's to Redis, and the server's listen then
 * fails with EADDRINUSE (seen in CI: the producer's metrics port of a test stack, taken while its
 * workers connected).
 *
 * A port is handed out once per process: a stack draws its ports (Redis's, each worker's
 * metrics port) before any of its servers listens, so a port drawn twice was free both times,
 * and the second server found the first on it (seen in CI: a worker whose metrics port was its
 * stack's Redis port restarted for ever, and its /healthz was Redis's).
 */
export async function freePort(): Promise<number> {
  const low = ephemeralPortsFrom();
  // (a machine whose ephemeral range starts low leaves too few below it: port 0 then)
  for (let i = 0; low - FIXED_PORTS_FROM >= 1_000 && i < 50; i++) {
    const port = FIXED_PORTS_FROM + randomInt(low - FIXED_PORTS_FROM);
    if (handedOut.has(port)) continue;
    // (taken before the check: a call drawing the same port meanwhile draws again)
    handedOut.add(port);
    if (await isPortFree(port)) return port;
    handedOut.delete(port);
  }
  for (;;) {
    const port = await new Promise<number>((resolve, reject) => {
      const srv = net.createServer().once('error', reject);
      srv.listen(0, '127.0.0.1', () => {
        const { port } = srv.address() as net.AddressInfo;
        srv.close(() => resolve(port));
      });
    });
    if (!handedOut.has(port)) {
      handedOut.add(port);
      return port;
    }
  }
}

/**
 * Ports a server of this process will listen on that were given, not drawn (`up --metrics-port
 * P`, `TL_REDIS_PORT`): never handed out by freePort from now on. They are not listening yet when
 * the stack draws its other ports (Redis's on `TL_REDIS_PORT=0`, say), so a draw would find them
 * free. Port 0 (none given) is skipped.
 */
export function reservePorts(ports: Iterable<number>): void {
  for (const port of ports) if (port > 0) handedOut.add(port);
}

/** Whether a server could listen on `port` of `host` now (checked by listening, and closed again). */
export function isPortFree(port: number, host = '127.0.0.1'): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = net.createServer().once('error', () => resolve(false));
    probe.listen(port, host, () => probe.close(() => resolve(true)));
  });
}

/** Where ports picked by freePort start: above the well-known and most registered services' ports. */
const FIXED_PORTS_FROM = 10_000;

/** The first port the kernel hands out for outgoing connections and port 0 (Linux; elsewhere IANA's 49152). */
function ephemeralPortsFrom(): number {
  try {
    return Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]) || 49_152;
  } catch {
    return 49_152;
  }
}

/**
 * A PING of the embedded Redis at `url` (plain `redis://`, as up starts it on loopback), for up's
 * liveness watch: 200 for any reply (PONG, or an error such as LOADING or NOAUTH: it answers),
 * undefined for none within the time (stopped, wedged: the kernel still takes its connections).
 * One socket per probe, destroyed however the probe ends.
 */
function askPing(url: string, timeoutMs: number): Promise<number | undefined> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve) => {
    // (an IPv6 host comes bracketed from URL)
    const socket = net.connect({ host: hostname.replace(/^\[(.*)\]$/, '$1'), port: Number(port) || 6379 });
    const end = (status: number | undefined) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(status);
    };
    const timer = setTimeout(() => end(undefined), timeoutMs);
    socket.once('connect', () => socket.write('PING\r\n'));
    socket.once('data', () => end(200));
    socket.once('error', () => end(undefined));
    socket.once('close', () => end(undefined));
  });
}

/**
 * Runs the `redis-server` on the PATH, on loopback, with its data (AOF, so queues survive a
 * restart) under `directory`, as a supervised child: restarted on the same port if it dies
 * (`onEvent` says so, in one line), and sent SIGTERM when this process dies, however it died
 * (Linux: `setpriv --pdeathsig`). Resolves once it answers PING. Stopped with SIGTERM, so it
 * flushes to disk. With `hangMs`, one that stops answering PING for that long (SIGSTOPped,
 * wedged) is killed and started again, as up's workers and S3 server are: every worker and
 * command would otherwise wait on it, silently.
 */
export async function startEmbeddedRedis(o: { directory: string; port: number; persist?: boolean; logFile?: string; onEvent?: (line: string) => void; hangMs?: number }): Promise<EmbeddedRedis> {
  if (!findRedisServer()) throw new RedisNotFoundError();
  await mkdir(o.directory, { recursive: true });
  const port = o.port === 0 ? await freePort() : o.port;
  const args = ['--port', String(port), '--bind', '127.0.0.1', '--dir', o.directory, '--save', '', '--daemonize', 'no', '--protected-mode', 'yes'];
  args.push('--appendonly', o.persist === false ? 'no' : 'yes');
  let output = '';
  let up = false;
  let early: ((code: string) => void) | undefined;
  const exitedEarly = new Promise<string>((resolve) => (early = resolve));
  const proc = new SupervisedProcess(
    {
      name: 'redis',
      logFile: o.logFile ?? `${o.directory}.log`,
      program: 'redis-server',
      args,
      env: () => process.env,
      onOutput: (chunk) => (output = (output + chunk).slice(-4000)),
      onExit: (code, signal) => {
        if (up) return true;
        early?.(String(signal ?? code));
        return false;
      },
      ...(o.hangMs && { liveness: { url: () => `redis://127.0.0.1:${port}`, hangMs: o.hangMs, ask: askPing } }),
    },
    o.onEvent ?? (() => {}),
  );
  const url = `redis://127.0.0.1:${port}`;
  const deadline = Date.now() + 10_000;
  // one message whether ours failed to bind or another Redis answered first (then named by its pid)
  const inUse = (answeredBy?: number) =>
    new Error(`port ${port} for the embedded Redis is in use, ${ANOTHER_UP}; else set TL_REDIS_PORT, or REDIS_URL to use the Redis already there${answeredBy ? ` (redis-server pid ${answeredBy} answers on it)` : ''}`);
  for (;;) {
    const exited = await Promise.race([exitedEarly, new Promise<undefined>((r) => setTimeout(() => r(undefined), 100))]);
    if (exited !== undefined) {
      if (/Address already in use/.test(output)) throw inUse();
      throw new Error(`redis-server exited (${exited}): ${output.trim().split('\n').slice(-3).join(' | ')}`);
    }
    const probe = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
    probe.on('error', () => {});
    // Whose answer: a Redis that took the port first (another `up` starting at the same moment)
    // answers too, while ours fails to bind; its data is not ours to use.
    const info = await probe.connect().then(() => probe.info('server'), () => undefined).catch(() => undefined);
    probe.disconnect();
    const answeredBy = Number(/^process_id:(\d+)/m.exec(info ?? '')?.[1]);
    if (info !== undefined && answeredBy !== proc.pid) {
      await proc.stop(1_000);
      throw inUse(answeredBy);
    }
    if (info !== undefined) break;
    if (Date.now() > deadline) {
      await proc.stop(1_000);
      throw new Error(`redis-server did not answer on ${url} within 10 s`);
    }
  }
  up = true;
  return {
    url,
    port,
    process: proc,
    // redis-server fsyncs its AOF and exits on SIGTERM
    stop: () => proc.stop(5_000),
  };
}
