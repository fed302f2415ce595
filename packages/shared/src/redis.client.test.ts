import net from 'node:net';
import { Redis } from 'ioredis';
import { describe, expect, it } from 'vitest';
import type { Logger } from './logger.js';
import { redisClockOffset, watchRedis } from './redis.client.js';

/** A loopback port nothing listens on (taken, then given back). */
async function closedPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

describe('watchRedis', () => {
  it('a worker that never reaches its Redis (a wrong REDIS_URL) says so again while it waits, naming the setting, until it stops watching', async () => {
    const port = await closedPort();
    const lines: string[] = [];
    const say = (_fields: unknown, message: string) => void lines.push(message);
    const log = { warn: say, info: say, debug: () => {} } as unknown as Logger;
    const redis = new Redis({ host: '127.0.0.1', port, maxRetriesPerRequest: null, retryStrategy: () => 50 });
    const unwatch = watchRedis(redis, `redis://127.0.0.1:${port}`, log, undefined, { repeatMs: 100 });
    const deadline = Date.now() + 5_000;
    while (lines.length < 3 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    unwatch();
    redis.disconnect();
    expect(lines[0]).toBe(`Redis at redis://127.0.0.1:${port} is unreachable: waiting for it (work resumes when it is back)`);
    expect(lines.slice(1, 3)).toEqual([
      expect.stringMatching(new RegExp(`^Redis at redis://127\\.0\\.0\\.1:${port} not reached since this process started, \\d+ s ago: is REDIS_URL \\(or TL_REDIS_PORT\\) the deployment's\\? Waiting for it$`)),
      expect.stringMatching(/not reached since this process started/),
    ]);
    const said = lines.length;
    await new Promise((r) => setTimeout(r, 300));
    expect(lines.slice(said)).toEqual([]);
  });
});

describe('redisClockOffset', () => {
  it("is how far Redis's clock is from this machine's (a worker's progress is stamped on it, as status reads it)", async () => {
    // (a Redis on a machine whose clock is 10 minutes ahead: the time its TIME command answers)
    const ahead = { time: async () => { const ms = Date.now() + 600_000; return [Math.floor(ms / 1000), (ms % 1000) * 1000] as [number, number]; } };
    expect(Math.abs((await redisClockOffset(ahead)) - 600_000)).toBeLessThan(50);
    const behind = { time: async () => { const ms = Date.now() - 90_000; return [Math.floor(ms / 1000), (ms % 1000) * 1000] as [number, number]; } };
    expect(Math.abs((await redisClockOffset(behind)) + 90_000)).toBeLessThan(50);
  });

  it('is 0 (this machine\'s clock) when Redis does not answer within its deadline', async () => {
    const port = await closedPort();
    const redis = new Redis({ host: '127.0.0.1', port, maxRetriesPerRequest: null, retryStrategy: () => 50, lazyConnect: false });
    redis.on('error', () => {});
    try {
      const started = Date.now();
      expect(await redisClockOffset(redis, 300)).toBe(0);
      expect(Date.now() - started).toBeLessThan(2_000);
    } finally {
      redis.disconnect();
    }
  });
});

