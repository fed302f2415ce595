import net from 'node:net';
import { Redis } from 'ioredis';
import { describe, expect, it } from 'vitest';
import type { Logger } from './logger.js';
import { watchRedis } from './redis.client.js';

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
