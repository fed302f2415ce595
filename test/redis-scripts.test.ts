import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createQueues, createRedis, DatasetRepository, RedisScript, redisKeys, type Redis } from '../packages/shared/src/index.js';
import { guardLeaks } from './support/leak-guard.js';
import { startTestStack, type TestStack } from './support/stack.js';

/**
 * The per-image Lua scripts (item records, the embed backlog's room, freeing failed pixels) go
 * to Redis by SHA, as an operator reading `INFO commandstats` would see: the script's text
 * once per connection, not with every call. Real Redis.
 */

guardLeaks();

let stack: TestStack;
const clients: Redis[] = [];

beforeAll(async () => {
  stack = await startTestStack({}, { preprocess: 0, embed: 0, train: 0 });
}, 120_000);

afterAll(async () => {
  for (const c of clients) c.disconnect();
  await stack?.destroy();
});

function connect(): Redis {
  const c = createRedis(stack.config.redis.url, 'oneshot');
  clients.push(c);
  return c;
}

/** Calls of EVAL and EVALSHA on the server so far. */
async function evalCalls(redis: Redis): Promise<{ eval: number; evalsha: number }> {
  const info = await redis.info('commandstats');
  const calls = (cmd: string) => Number(new RegExp(`cmdstat_${cmd}:calls=(\\d+)`).exec(info)?.[1] ?? 0);
  return { eval: calls('eval'), evalsha: calls('evalsha') };
}

const record = (n: number) => ({ label: 'cat', etag: `e${n}`, space: 's1', state: 'queued' as const });

describe('Lua scripts run by SHA', () => {
  it('item records: the script text goes once per connection, every later write is EVALSHA', async () => {
    const redis = connect();
    const prefix = `scripts-${Date.now()}`;
    const keys = redisKeys(prefix);
    const repo = new DatasetRepository(redis, keys);
    await repo.putItem('d1', 'b/k0', record(0)); // loads the script on this connection
    const before = await evalCalls(redis);
    for (let i = 1; i <= 20; i++) await repo.putItem('d1', `b/k${i}`, record(i));
    const pipe = redis.pipeline();
    await repo.putItems('d1', [['b/k21', record(21)], ['b/k22', record(22)]], pipe);
    await pipe.exec();
    // the preprocess stage's pipeline: BullMQ's wrapper around the same connection
    const queues = createQueues(redis, { redis: { prefix }, retryBackoffScale: 1 });
    const bullPipe = await queues.pipeline();
    await repo.putItems('d1', [['b/k23', record(23)]], bullPipe);
    await bullPipe.exec();
    await queues.close();
    const after = await evalCalls(redis);
    expect(after.eval - before.eval).toBe(0);
    expect(after.evalsha - before.evalsha).toBe(22);
    expect(await repo.size('d1')).toBe(24);
    expect((await repo.getItems('d1', ['b/k22']))[0]).toMatchObject({ etag: 'e22', state: 'queued' });
  });

  it('a server that lost its scripts (restart, SCRIPT FLUSH) gets them again: no write is lost', async () => {
    const redis = connect();
    const keys = redisKeys(`scripts-flush-${Date.now()}`);
    const repo = new DatasetRepository(redis, keys);
    await repo.putItem('d1', 'b/a', record(1));
    await redis.script('FLUSH');
    await repo.putItem('d1', 'b/b', record(2));
    const pipe = redis.pipeline();
    await redis.script('FLUSH');
    await repo.putItems('d1', [['b/c', record(3)]], pipe);
    const res = await pipe.exec();
    expect(res?.every(([err]) => err === null)).toBe(true);
    // in a MULTI a NOSCRIPT would only show in EXEC's reply, too late to load the script: sent by EVAL there
    await redis.script('FLUSH');
    const multi = redis.multi();
    await repo.putItems('d1', [['b/d', record(4)]], multi);
    expect((await multi.exec())?.every(([err]) => err === null)).toBe(true);
    expect((await repo.getItems('d1', ['b/a', 'b/b', 'b/c', 'b/d'])).map((r) => r?.etag)).toEqual(['e1', 'e2', 'e3', 'e4']);
  });

  it('tells a MULTI from a pipeline by ioredis\'s count of open transactions, and without it sends EVAL', async () => {
    const redis = connect();
    const repo = new DatasetRepository(redis, redisKeys(`scripts-tx-${Date.now()}`));
    await repo.putItem('d1', 'b/a', record(1)); // the script is defined on this connection
    const sent = async (pipe: ReturnType<Redis['pipeline']>) => {
      const before = await evalCalls(redis);
      await repo.putItems('d1', [['b/b', record(2)]], pipe);
      await pipe.exec();
      const after = await evalCalls(redis);
      return { eval: after.eval - before.eval, evalsha: after.evalsha - before.evalsha };
    };
    // the private field RedisScript reads: if an ioredis upgrade renames it, this fails first
    expect((redis.pipeline() as unknown as { _transactions?: unknown })._transactions).toBe(0);
    expect(await sent(redis.pipeline())).toEqual({ eval: 0, evalsha: 1 });
    expect(await sent(redis.multi())).toEqual({ eval: 1, evalsha: 0 });
    const unknown = redis.pipeline();
    delete (unknown as unknown as { _transactions?: unknown })._transactions;
    expect(await sent(unknown)).toEqual({ eval: 1, evalsha: 0 });
  });

  it('a pipeline of a connection the repository was not made with still writes (by EVAL)', async () => {
    const redis = connect();
    const other = connect();
    const keys = redisKeys(`scripts-other-${Date.now()}`);
    const repo = new DatasetRepository(redis, keys);
    const before = await evalCalls(redis);
    const pipe = other.pipeline();
    await repo.putItems('d1', [['b/x', record(7)]], pipe);
    await pipe.exec();
    expect((await evalCalls(redis)).eval - before.eval).toBe(1);
    expect((await repo.getItems('d1', ['b/x']))[0]?.etag).toBe('e7');
  });

  it('refuses a second script under a taken name, or a name ioredis has (it would run the other)', () => {
    expect(() => new RedisScript('tlPutItems', 'return 1', 0)).toThrow(/taken/);
    expect(() => new RedisScript('get', 'return 1', 0)).toThrow(/taken/);
  });
});
