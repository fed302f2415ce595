import {
  BucketNotFoundError,
  DatasetRepository,
  ObjectChangedError,
  ObjectNotFoundError,
  ObjectTooLargeError,
  PermanentError,
  type OBJECT_FAILURE_REASONS,
  contentHash,
  type EmbedJob,
  type ItemRecord,
  type JobContext,
  type ObjectStore,
  type PreprocessJob,
} from '@transferline/shared';
import { prepareImage, type PrepareOptions } from './image.ops.js';

/**
 * What preprocess needs of Redis and the queues, as three verbs, each a round trip or two
 * (per-image round trips are most of the cost on small images).
 */
export interface PreprocessStore {
  /** Remembers which bytes the object has at this ETag, and says whether the space has their embedding already. */
  lookup: (itemId: string, etag: string, sha256: string, space: string) => Promise<boolean>;
  record: (dataset: string, itemId: string, record: ItemRecord) => Promise<void>;
  /**
   * Under room in the space's embed backlog (waiting for it: backpressure): stores the pixels,
   * enqueues the embed job (one that failed for good runs again), then releases the room and
   * records the item as queued.
   */
  handOff: (o: { job: EmbedJob; pixels: Uint8Array; dataset: string; itemId: string; record: ItemRecord }, ctx: JobContext) => Promise<void>;
}

export interface PreprocessDeps {
  objects: Pick<ObjectStore, 'getObject'>;
  store: PreprocessStore;
  /** decoding settings of this worker; the resize policy comes from each job's embedding space */
  image: Omit<PrepareOptions, 'resize'>;
  maxObjectBytes: number;
}

export type PreprocessOutcome = 'cached' | 'queued';

type ObjectFailureReason = (typeof OBJECT_FAILURE_REASONS)[number];
const permanent = (reason: ObjectFailureReason, message: string) => new PermanentError(reason, message);

/**
 * One object: download, hash, and either note that its embedding is cached already or hand
 * its pixels to embed. Running it twice leaves the same state: the item record is overwritten
 * with the same values, the tensor is stored under the content hash and the embed job id
 * derives from the content. A failure that retrying cannot fix (not found, too large, not an
 * image we can read) is thrown as PermanentError; the worker records it on the item.
 */
export async function preprocessImage(job: PreprocessJob, deps: PreprocessDeps, ctx: JobContext): Promise<PreprocessOutcome> {
  const itemId = DatasetRepository.itemId(job.bucket, job.key);
  const base = { label: job.label, etag: job.etag, space: job.embedderId };
  try {
    // Only the content that was listed: bytes of a newer version would be recorded under the old ETag.
    const bytes = await deps.objects.getObject(job.bucket, job.key, deps.maxObjectBytes, { ifMatch: job.etag });
    const sha256 = contentHash(bytes);
    if (await deps.store.lookup(itemId, job.etag, sha256, job.embedderId)) {
      await deps.store.record(job.dataset, itemId, { ...base, sha256, state: 'cached' });
      return 'cached';
    }
    const pixels = await prepareImage(bytes, { ...deps.image, resize: job.resize });
    await deps.store.handOff({ job: { sha256, embedderId: job.embedderId }, pixels, dataset: job.dataset, itemId, record: { ...base, sha256, state: 'queued' } }, ctx);
    return 'queued';
  } catch (err) {
    throw asPermanent(err) ?? err;
  }
}

function asPermanent(err: unknown): PermanentError | undefined {
  if (err instanceof PermanentError) return err;
  if (err instanceof ObjectNotFoundError) return permanent('not-found', `${err.message} (deleted since it was listed?)`);
  if (err instanceof BucketNotFoundError) return permanent('not-found', `${err.message} (deleted since its images were listed?)`);
  if (err instanceof ObjectTooLargeError) return permanent('too-large', err.message);
  if (err instanceof ObjectChangedError) return permanent('changed', `${err.message}: ingest again to take the new content`);
  return undefined;
}
