import { UnrecoverableError, Worker } from 'bullmq';
import { describe, expect, it } from 'vitest';
import { contentHash, enqueue, jobIds, queueName } from '../packages/shared/src/index.js';
import { guardLeaks } from './support/leak-guard.js';
import { NO_WORKERS, stackForFile, until } from './support/stack.js';

/**
 * `status` read at the instant an embed job fails for good: BullMQ moves the job to its failed
 * set, then the worker records why (one round trip later). An image read in between is failed
 * (once its failure lands), not "orphaned (their job was lost: run the same ingest again)"; one whose worker
 * never recorded why (it died in between) is orphaned indeed. Real Redis and BullMQ; the failing
 * worker is a bare BullMQ worker, so that the test decides when (and whether) the failure is
 * recorded.
 */

guardLeaks();

const file = stackForFile({}, NO_WORKERS);
const space = 'efficientnet-b0.test-instants.squash224';
const dataset = 'instants';

/** An image handed to embed whose embed job then fails for good, its failure not recorded yet. */
async function failedEmbedJob(name: string): Promise<string> {
  const { ctx, stack } = file;
  const sha256 = contentHash(Buffer.from(name));
  await ctx.services.datasets.putItem(dataset, `photos/train/cat/${name}.jpg`, { label: 'cat', etag: `e-${name}`, sha256, space, state: 'queued' });
  const queue = ctx.queues.embed(space);
  const id = jobIds.embed({ sha256, embedderId: space });
  await enqueue(queue, 'embed', [{ id, payload: { sha256, embedderId: space } }]);
  // BullMQ leaves a connection it was given open: ours to close
  const connection = ctx.services.redis.duplicate({ maxRetriesPerRequest: null });
  const worker = new Worker(queueName('embed', space), async () => {
    throw new UnrecoverableError('the pixels are not what they should be');
  }, { connection, prefix: stack.config.redis.prefix, autorun: true });
  try {
    await until('the job to fail', async () => (await queue.getJobState(id)) === 'failed', 30, 50);
  } finally {
    await worker.close();
    connection.disconnect();
  }
  return sha256;
}

describe('status at the instant an embed job fails for good', () => {
  it('counts the image failed once its worker records why, and orphaned only when that never comes', async () => {
    const { ctx } = file;
    const recorded = await failedEmbedJob('recorded');
    await failedEmbedJob('lost'); // its worker died before recording why
    // the worker's record of why lands just after status started reading
    const reading = ctx.services.inspector.status(dataset);
    // well after the first read of these two items (milliseconds), well before the 500 ms re-read
    await new Promise((r) => setTimeout(r, 250));
    await ctx.services.datasets.recordEmbedFailure(space, recorded, { reason: 'bad-pixels', detail: 'the pixels are not what they should be', attempts: 1 });
    const s = await reading;
    expect(s).toMatchObject({ total: 2, failed: 1, orphaned: 1, pending: 0 });
    expect(s.failures).toEqual([expect.objectContaining({ stage: 'embed', reason: 'bad-pixels' })]);
    expect(s.failures[0]!.item).toBe('photos/train/cat/recorded.jpg');
  });
});
