import {
  DatasetRepository,
  ObjectNotFoundError,
  ObjectTooLargeError,
  PermanentError,
  contentHash,
  type EmbedJob,
  type JobContext,
  type PreprocessJob,
  type Services,
} from '@transferline/shared';
import { prepareImage, type PrepareOptions } from './image.ops.js';

/**
 * Room for one more tensor under a space's backpressure bound. `admit` waits until there is room
 * and holds it; `release` is called once the embed job is in the queue (which then counts the
 * tensor) or when no tensor was stored after all.
 */
export interface TensorGate {
  admit: (space: string, ctx: JobContext) => Promise<{ release: () => Promise<void> }>;
}

export interface PreprocessDeps {
  services: Pick<Services, 'store' | 'datasets' | 'cache' | 'tensors'>;
  /** Adds the embed job (content-derived id: adding it twice is a no-op; a failed one runs again). */
  enqueueEmbed: (job: EmbedJob) => Promise<void>;
  gate: TensorGate;
  /** decoding settings of this worker; the resize policy comes from each job's embedding space */
  image: Omit<PrepareOptions, 'resize'>;
  maxObjectBytes: number;
}

export type PreprocessOutcome = 'cached' | 'queued';

/**
 * One object: download, hash, and either note that its embedding is cached already or hand
 * its pixels to embed. Running it twice leaves the same state: the item record is overwritten
 * with the same values, the tensor is stored under the content hash and the embed job id
 * derives from the content. A failure that retrying cannot fix (not found, too large, not an
 * image we can read) is thrown as PermanentError; the worker records it on the item.
 */
export async function preprocessImage(job: PreprocessJob, deps: PreprocessDeps, ctx: JobContext): Promise<PreprocessOutcome> {
  const { store, datasets, cache, tensors } = deps.services;
  const itemId = DatasetRepository.itemId(job.bucket, job.key);
  const base = { label: job.label, etag: job.etag, space: job.embedderId };
  try {
    const bytes = await store.getObject(job.bucket, job.key, deps.maxObjectBytes);
    const sha256 = contentHash(bytes);
    const [, [cached]] = await Promise.all([datasets.rememberHash(itemId, job.etag, sha256), cache.has(job.embedderId, [sha256])]);
    if (cached) {
      await datasets.putItem(job.dataset, itemId, { ...base, sha256, state: 'cached' });
      return 'cached';
    }
    const pixels = await prepareImage(bytes, { ...deps.image, resize: job.resize });
    // Backpressure: the pixels wait here, not in Redis, while embed's backlog is at the bound.
    const room = await deps.gate.admit(job.embedderId, ctx);
    try {
      await tensors.put(sha256, pixels);
      await deps.enqueueEmbed({ sha256, embedderId: job.embedderId });
    } finally {
      await room.release();
    }
    await datasets.putItem(job.dataset, itemId, { ...base, sha256, state: 'queued' });
    return 'queued';
  } catch (err) {
    throw asPermanent(err) ?? err;
  }
}

function asPermanent(err: unknown): PermanentError | undefined {
  if (err instanceof PermanentError) return err;
  if (err instanceof ObjectNotFoundError) return new PermanentError('not-found', `${err.message} (deleted since it was listed?)`);
  if (err instanceof ObjectTooLargeError) return new PermanentError('too-large', err.message);
  return undefined;
}
