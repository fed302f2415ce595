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
import type { FirstLook, Room } from './embed-backlog.gate.js';
import { readableFormat } from './image-format.js';
import { prepareImage, spaceImageOptions, type PrepareOptions } from './image.ops.js';

/**
 * What preprocess needs of Redis and the queues, as three verbs, each one round trip as a rule
 * (per-image round trips are most of the cost on small images).
 */
export interface PreprocessStore {
  /**
   * Remembers which bytes the object has at this ETag; then 'embedded' when the space has their
   * embedding already, else room in the space's embed backlog, reserved (waiting for it:
   * backpressure), held until `handOff` or its release.
   */
  lookup: (look: FirstLook & { space: string }, ctx: JobContext) => Promise<'embedded' | Room>;
  record: (dataset: string, itemId: string, record: ItemRecord) => Promise<void>;
  /**
   * Stores the pixels, enqueues the embed job (one that failed for good runs again), gives the
   * room back (now that the job counts in the backlog instead), and records the item as queued;
   * on a failure, gives the room back all the same.
   */
  handOff: (o: { job: EmbedJob; pixels: Uint8Array; dataset: string; itemId: string; record: ItemRecord; room: Room }) => Promise<void>;
}

export interface PreprocessDeps {
  objects: Pick<ObjectStore, 'getObject'>;
  store: PreprocessStore;
  /** decoding settings of this worker; the resize policy and background come from each job's embedding space */
  image: Omit<PrepareOptions, 'resize' | 'background'>;
  maxObjectBytes: number;
}

export type PreprocessOutcome = 'cached' | 'queued';

type ObjectFailureReason = (typeof OBJECT_FAILURE_REASONS)[number];
const permanent = (reason: ObjectFailureReason, message: string) => new PermanentError(reason, message);

/**
 * One object: download, hash, and either note that its embedding is cached already or (with
 * room in the embed backlog) decode it and hand its pixels to embed. Running it twice leaves the
 * same state: the item record is overwritten with the same values, the tensor is stored under the content hash and the embed job id
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
    // Bytes that are no image we read fail now, not after a wait for room in the embed backlog.
    const readable = readableFormat(bytes);
    if ('reason' in readable) throw new PermanentError(readable.reason, readable.message);
    const room = await deps.store.lookup({ itemId, etag: job.etag, sha256, space: job.embedderId }, ctx);
    if (room === 'embedded') {
      await deps.store.record(job.dataset, itemId, { ...base, sha256, state: 'cached' });
      return 'cached';
    }
    let pixels: Uint8Array;
    try {
      pixels = await prepareImage(bytes, { ...deps.image, ...spaceImageOptions({ id: job.embedderId, resize: job.resize, background: job.background }) });
    } catch (err) {
      // (a release Redis refuses now ends with the reservation's expiry: the decode's error is the news)
      await room.release().catch(() => {});
      throw err;
    }
    const held = await room.keep(ctx);
    await deps.store.handOff({ job: { sha256, embedderId: job.embedderId }, pixels, dataset: job.dataset, itemId, record: { ...base, sha256, state: 'queued' }, room: held });
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
