import { describe, expect, it } from 'vitest';
import { submit } from '../apps/producer/src/ingest.service.js';
import { DatasetRepository } from '../packages/shared/src/index.js';
import { guardLeaks } from './support/leak-guard.js';
import { NO_WORKERS, runCli, stackForFile } from './support/stack.js';

/**
 * Two ingests of the same objects into one dataset at the same moment: each listed them before
 * the other recorded them, so both submit the same preprocess jobs. Only one set runs (job ids
 * derive from the content); the second must say its jobs were already queued, not "enqueued"
 * (the concurrency trial: both said "600 enqueued"). Real Redis and BullMQ, no preprocess worker
 * (the jobs stay queued).
 */

guardLeaks();

const file = stackForFile({}, NO_WORKERS);

describe('two ingests of the same objects at once', () => {
  it('the second says its jobs were already queued, and one set of jobs waits', async () => {
    const { ctx } = file;
    const { space } = await ctx.services.spaces.resolve();
    const items = [1, 2, 3].map((n) => ({ id: DatasetRepository.itemId('photos', `train/cat/${n}.jpg`), key: `train/cat/${n}.jpg`, etag: `etag-${n}`, label: 'cat' }));
    const req = { bucket: 'photos', dataset: 'twice', space };
    const deps = { services: ctx.services, queues: ctx.queues };
    expect(await submit(req, deps, items)).toEqual(['enqueued', 'enqueued', 'enqueued']);
    expect(await submit(req, deps, items)).toEqual(['queued', 'queued', 'queued']);
    const counts = await ctx.queues.preprocess.getJobCounts('waiting', 'prioritized', 'active', 'delayed');
    expect(Object.values(counts).reduce((a, b) => a + b, 0)).toBe(3);
  });

  it('an ingest of objects queued by one before says they are on their way, not only unchanged', async () => {
    const { stack, ctx } = file;
    await ctx.services.store.ensureBucket('photos');
    for (const n of [1, 2, 3]) await ctx.services.store.putObject('photos', `again/dog/${n}.jpg`, Buffer.from(`not decoded here ${n}`));
    const first = await runCli(['ingest', 's3://photos/again/', '-d', 'again', '--no-wait'], stack.env);
    expect(first.stdout).toMatch(/3 objects listed, 3 enqueued, 0 added from the embedding cache \(no job\), 0 unchanged\n/);
    // (no preprocess worker: they stay queued)
    const second = await runCli(['ingest', 's3://photos/again/', '-d', 'again', '--no-wait'], stack.env);
    expect(second.stdout).toMatch(/3 objects listed, 0 enqueued, 0 added from the embedding cache \(no job\), 3 unchanged \(3 of them still on their way: queued before, not yet embedded\)/);
  });
});
