import { enqueue, execPipeline, jobIds, requeue, type JobContext, type Queues, type Services } from '@transferline/shared';
import type { EmbedBacklogGate } from './embed-backlog.gate.js';
import type { PreprocessStore } from './preprocess-image.job.js';

/**
 * The preprocess stage's Redis side, with each image's writes batched into pipelines: a cached
 * image costs one round trip to look up and one to record; a new one, one to look up, one for
 * room in the backlog, one to store its pixels, BullMQ's add, and one to release the room and
 * record the item.
 */
export function createPreprocessStore(s: Pick<Services, 'redis' | 'keys' | 'datasets' | 'tensors'>, queues: Queues, gate: EmbedBacklogGate): PreprocessStore {
  return {
    async lookup(itemId, etag, sha256, space) {
      const pipe = s.redis.pipeline();
      void s.datasets.rememberHash(itemId, etag, sha256, pipe);
      pipe.hexists(s.keys.embeddingIndex(space), sha256);
      const [, cached] = await execPipeline(pipe);
      return cached === 1;
    },
    record: (dataset, itemId, record) => s.datasets.putItem(dataset, itemId, record),
    async handOff(o, ctx: JobContext) {
      const space = o.job.embedderId;
      const queue = queues.embed(space);
      const id = jobIds.embed(o.job);
      const room = await gate.admit(space, ctx);
      try {
        const pipe = s.redis.pipeline();
        void s.tensors.put(o.job.sha256, o.pixels, pipe);
        // New pixels for an image whose embedding failed for good get a new chance, not a
        // dedupe against the failed job.
        void s.datasets.clearEmbedFailures(space, [o.job.sha256], pipe);
        pipe.zscore(queue.toKey('failed'), id);
        const [, , failedScore] = await execPipeline(pipe);
        if (failedScore !== null) await requeue(s.redis, queue, 'embed', [{ id, payload: o.job }], [true]);
        else await enqueue(queue, 'embed', [{ id, payload: o.job }]);
      } catch (err) {
        await room.release();
        throw err;
      }
      const pipe = s.redis.pipeline();
      room.release(pipe);
      void s.datasets.putItems(o.dataset, [[o.itemId, o.record]], pipe);
      await execPipeline(pipe);
    },
  };
}
