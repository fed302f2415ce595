import { readFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { statusCommand } from '../apps/producer/src/commands/status.command.js';
import { createRedis, type Redis } from '../packages/shared/src/index.js';
import { guardLeaks } from './support/leak-guard.js';
import { runCli, stackForFile, until } from './support/stack.js';

/**
 * A Redis that evicts keys once it reaches a memory cap can drop queued jobs, pixels and dataset
 * records under load. Workers say so in their log at start, and `status` says so first, in words
 * and in its JSON; a Redis without a cap, or with noeviction, gets no warning. Real Redis.
 */

guardLeaks();

const file = stackForFile({}, { preprocess: 1, embed: 0, train: 0 });
let redis: Redis;
/** what `status --json` says, in this process */
const warnings = async () => (await statusCommand(file.ctx, { json: true })).warnings;

beforeAll(() => {
  redis = createRedis(file.stack.config.redis.url, 'oneshot');
});

afterAll(() => {
  redis?.disconnect();
});

describe('a Redis that evicts keys', () => {
  it('status and the workers warn about a memory cap with an evicting policy, and only then', async () => {
    const { stack } = file;
    expect(await warnings()).toEqual([]);
    // a policy that evicts, but no cap: Redis never evicts
    await redis.config('SET', 'maxmemory-policy', 'allkeys-lru');
    expect(await warnings()).toEqual([]);

    await redis.config('SET', 'maxmemory', String(512 * 2 ** 20));
    const warned = await runCli(['status'], stack.env);
    expect(warned.code).toBe(0);
    // the first warning, right after the line naming the deployment
    expect(warned.stdout.split('\n')[0]).toMatch(/^deployment: Redis /);
    expect(warned.stdout.split('\n')[1]).toMatch(/^warning: Redis at redis:\/\/\S+ deletes keys to make room once it holds 512\.00M \(maxmemory-policy allkeys-lru\): queued jobs, .*Set maxmemory-policy noeviction/);
    expect(await warnings()).toEqual([expect.stringMatching(/maxmemory-policy allkeys-lru/)]);
    // a policy that evicts only keys with a TTL says which ones those are
    await redis.config('SET', 'maxmemory-policy', 'volatile-lru');
    expect(await warnings()).toEqual([expect.stringMatching(/\(maxmemory-policy volatile-lru\): pixels waiting for embed and job locks can vanish/)]);
    await redis.config('SET', 'maxmemory-policy', 'allkeys-lru');

    // a worker started against it says so in its log (the first one up before it is stopped:
    // a stop in the middle of its start is another test's matter)
    const healthy = async () => (await fetch(`http://127.0.0.1:${stack.ports.preprocess}/healthz`).then((r) => r.status, () => 0)) === 200;
    await until('the preprocess worker to be up', healthy, 60, 200);
    const logFile = stack.supervisor.logFile('preprocess');
    const before = (await readFile(logFile, 'utf8')).length;
    expect(stack.supervisor.signal('preprocess', 1, 'SIGTERM')).toBe(true);
    await until('the restarted worker to warn', async () => /maxmemory-policy allkeys-lru/.test((await readFile(logFile, 'utf8')).slice(before)), 60, 200);
    const line = (await readFile(logFile, 'utf8')).slice(before).split('\n').find((l) => l.includes('maxmemory-policy'))!;
    expect(JSON.parse(line)).toMatchObject({ level: 40, dependency: 'redis' }) // pino's warn;

    await redis.config('SET', 'maxmemory-policy', 'noeviction');
    expect(await warnings()).toEqual([]);
    await redis.config('SET', 'maxmemory', '0');
  }, 120_000);
});
