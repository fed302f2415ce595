import {
  DatasetRepository,
  ObjectNotFoundError,
  ObjectTooLargeError,
  PermanentError,
  contentHash,
  enqueue,
  jobIds,
  type JobContext,
  type PreprocessJob,
  type Services,
} from '@transferline/shared';
import type { Queue } from 'bullmq';
import { prepareImage, type PrepareOptions } from './image.ops.js';

export interface PreprocessDeps {
  services: Pick<Services, 'store' | 'datasets' | 'cache' | 'tensors'>;
  embedQueue: Queue;
  image: PrepareOptions;
  maxObjectBytes: number;
}

export type PreprocessOutcome = 'cached' | 'queued';

/**
 * One object: download, hash, and either note that its embedding is cached already or hand
 * its pixels to embed. Running it twice leaves the same state: the item record is overwritten
 * with the same values and the embed job id derives from the content.
 */
export async function preprocessImage(job: PreprocessJob, deps: PreprocessDeps, ctx: JobContext): Promise<PreprocessOutcome> {
  const { store, datasets, cache, tensors } = deps.services;
  const itemId = DatasetRepository.itemId(job.bucket, job.key);
  const base = { label: job.label, etag: job.etag };
  try {
    const bytes = await store.getObject(job.bucket, job.key, deps.maxObjectBytes);
    const sha256 = contentHash(bytes);
    await datasets.rememberHash(itemId, job.etag, sha256);
    const [cached] = await cache.has(job.embedderId, [sha256]);
    if (cached) {
      await datasets.putItem(job.dataset, itemId, { ...base, sha256, state: 'cached' });
      return 'cached';
    }
    const pixels = await prepareImage(bytes, deps.image);
    await tensors.put(sha256, pixels);
    const embed = { sha256, embedderId: job.embedderId };
    await enqueue(deps.embedQueue, 'embed', [{ id: jobIds.embed(embed), payload: embed }]);
    await datasets.putItem(job.dataset, itemId, { ...base, sha256, state: 'queued' });
    return 'queued';
  } catch (err) {
    const permanent =
      err instanceof PermanentError
        ? err
        : err instanceof ObjectNotFoundError
          ? new PermanentError('not-found', err.message)
          : err instanceof ObjectTooLargeError
            ? new PermanentError('too-large', err.message)
            : undefined;
    if (!permanent) throw err;
    ctx.log.info({ reason: permanent.reason }, 'item failed');
    await datasets.putItem(job.dataset, itemId, { ...base, state: 'failed', reason: permanent.reason, detail: permanent.message });
    throw permanent;
  }
}
