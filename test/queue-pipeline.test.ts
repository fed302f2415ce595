import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, startEmbeddedRedis, type EmbeddedRedis } from '../apps/producer/src/embedded/redis.server.js';
import { createQueues, createRedis, enqueue, enqueueOn, execPipeline, JOBS, jobIds, loadConfig, type Queues, type Redis } from '../packages/shared/src/index.js';
import { guardLeaks } from './support/leak-guard.js';

guardLeaks();

/**
 * Preprocess hands an image to embed in one round trip: its pixels, the embed job (BullMQ's own
 * add script, on the same pipeline) and its bookkeeping, run by Redis in that order.
 */

let redis: EmbeddedRedis;
let client: Redis;
let queues: Queues;
let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'tl-qp-'));
  redis = await startEmbeddedRedis({ directory: dir, port: await freePort() });
  client = createRedis(redis.url, 'worker');
  queues = createQueues(client, loadConfig({ TL_QUEUE_PREFIX: 'qp' }));
});
afterAll(async () => {
  await queues?.close();
  client?.disconnect();
  await redis?.stop();
  await rm(dir, { recursive: true, force: true });
});

describe('a job added on a pipeline with other writes', () => {
  const payload = { sha256: 'ab'.repeat(32), embedderId: 'space-1' };
  const id = jobIds.embed(payload);

  it('is a real BullMQ job, added after the writes before it and before the ones after it', async () => {
    const queue = queues.embed('space-1');
    const pipe = await queues.pipeline();
    pipe.set('before', '1');
    enqueueOn(pipe, queue, 'embed', [{ id, payload }]);
    // A Lua script that sees the job (the wait list) and the earlier write: Redis ran them in order.
    pipe.eval("return {redis.call('LLEN', KEYS[1]), redis.call('GET', KEYS[2])}", 2, queue.toKey('wait'), 'before');
    const [, added, seen] = await execPipeline(pipe);
    expect(added).toBe(id);
    expect(seen).toEqual([1, '1']);
    const job = await queue.getJob(id);
    expect(job?.data).toEqual(payload);
    expect(job?.opts.attempts).toBeGreaterThan(1); // the catalog's options, as `enqueue` gives
  });

  it('twice is once: the same id is not added again', async () => {
    const queue = queues.embed('space-1');
    const pipe = await queues.pipeline();
    enqueueOn(pipe, queue, 'embed', [{ id, payload }]);
    await execPipeline(pipe);
    expect(await queue.getJobCounts('wait')).toEqual({ wait: 1 });
  });

  it('refuses a pipeline BullMQ cannot join, instead of dropping the add', () => {
    expect(() => enqueueOn(client.pipeline(), queues.embed('space-1'), 'embed', [{ id, payload }])).toThrow(/Queues.pipeline/);
  });
});

describe('TL_RETRY_BACKOFF_SCALE', () => {
  it("scales the retry delays a job is added with, through either kind of add, from the config's value", async () => {
    const scaled = createQueues(client, loadConfig({ TL_QUEUE_PREFIX: 'qp-backoff', TL_RETRY_BACKOFF_SCALE: '0.25' }));
    try {
      const payload = { sha256: 'cd'.repeat(32), embedderId: 'space-2' };
      const pipe = await scaled.pipeline();
      enqueueOn(pipe, scaled.embed('space-2'), 'embed', [{ id: jobIds.embed(payload), payload }]);
      await execPipeline(pipe);
      const pp = { dataset: 'd', bucket: 'b', key: 'k.jpg', etag: 'e', label: 'l', embedderId: 'space-2', resize: 'squash' as const };
      await enqueue(scaled.preprocess, 'preprocess', [{ id: jobIds.preprocess(pp), payload: pp }]);
      expect((await scaled.embed('space-2').getJob(jobIds.embed(payload)))?.opts.backoff).toMatchObject({ type: 'exponential', delay: JOBS.embed.backoffMs / 4 });
      expect((await scaled.preprocess.getJob(jobIds.preprocess(pp)))?.opts.backoff).toMatchObject({ type: 'exponential', delay: JOBS.preprocess.backoffMs / 4 });
      // and queues made without the setting add the same job with the catalog's own delays
      await enqueue(queues.preprocess, 'preprocess', [{ id: jobIds.preprocess(pp), payload: pp }]);
      expect((await queues.preprocess.getJob(jobIds.preprocess(pp)))?.opts.backoff).toMatchObject({ type: 'exponential', delay: JOBS.preprocess.backoffMs });
    } finally {
      await scaled.close();
    }
  });

  it('is refused out of range, named', () => {
    expect(() => loadConfig({ TL_RETRY_BACKOFF_SCALE: '0' })).toThrow(/TL_RETRY_BACKOFF_SCALE: at least 0\.01 \(got "0"\)/);
    expect(() => loadConfig({ TL_RETRY_BACKOFF_SCALE: '1000' })).toThrow(/TL_RETRY_BACKOFF_SCALE: at most 100 \(got "1000"\)/);
  });
});
