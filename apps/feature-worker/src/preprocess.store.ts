import { enqueueOn, execPipeline, jobIds, requeue, type Queues, type Services } from '@transferline/shared';
import type { EmbedBacklogGate } from './embed-backlog.gate.js';
import type { PreprocessStore } from './preprocess-image.job.js';

/**
 * The preprocess stage's Redis side, each image's writes batched: a cached image costs one round
 * trip to look up and one to record; a new one, one to look up and take room in the backlog
 * (one script), and one for all its writes (pixels, embed job, room given back, item recorded).
 * Per-image round trips are most of the stage's cost on small images.
 */
export function createPreprocessStore(s: Pick<Services, 'redis' | 'keys' | 'datasets' | 'tensors'>, queues: Queues, gate: EmbedBacklogGate): PreprocessStore {
  return {
    lookup: ({ space, ...look }, ctx) => gate.admit(space, ctx, look),
    record: (dataset, itemId, record) => s.datasets.putItem(dataset, itemId, record, 'worker'),
    async handOff(o) {
      const space = o.job.embedderId;
      const queue = queues.embed(space);
      const id = jobIds.embed(o.job);
      const { room } = o;
      try {
        // Redis runs a pipeline's commands in order: the pixels are stored before their job is
        // added, and the room is given back only once the job counts in the backlog instead.
        const pipe = await queues.pipeline();
        void s.tensors.put(space, o.job.sha256, o.pixels, pipe);
        // New pixels for an image whose embedding failed for good get a new chance.
        void s.datasets.clearEmbedFailures(space, [o.job.sha256], pipe);
        pipe.zscore(queue.toKey('failed'), id);
        enqueueOn(pipe, queue, 'embed', [{ id, payload: o.job }]);
        void room.release(pipe);
        void s.datasets.putItems(o.dataset, [[o.itemId, o.record]], pipe, 'worker');
        // Asked after the pixels were stored: an embed job of the same bytes (another object's)
        // that indexed them and freed its pixels before ours landed would leave ours for their TTL
        // (our add is a no-op while that job is active). Embed indexes before it frees, so either
        // it frees ours, or this finds the index.
        pipe.hexists(s.keys.embeddingIndex(space), o.job.sha256);
        const replies = await execPipeline(pipe);
        const [, , failedScore, added] = replies;
        if (added !== id) throw new Error(`adding embed job ${id} replied ${String(added)}`);
        // The add above was a no-op against the failed job of the same id: move that one back.
        if (failedScore !== null) await requeue(s.redis, queue, 'embed', [{ id, payload: o.job }], [true]);
        // Embedded already: a job of ours (if one was added) finds it indexed and needs no pixels.
        if (replies.at(-1) === 1) await s.tensors.delete(space, [o.job.sha256]);
      } catch (err) {
        await room.release();
        throw err;
      }
    },
  };
}
