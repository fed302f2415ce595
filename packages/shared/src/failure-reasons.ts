/**
 * Every reason code an image can fail for good with: the one list the workers count
 * (`tl_failures_total{stage,reason}` starts each at 0), `status` and `failures` show, and
 * `retry --reason` / `failures --reason` take.
 */

/** Why an image's bytes could not be prepared by preprocess. */
export const IMAGE_FAILURE_REASONS = ['empty', 'not-an-image', 'unsupported-format', 'truncated', 'corrupt', 'too-many-pixels', 'undecodable', 'decode-timeout'] as const;
export type ImageFailureReason = (typeof IMAGE_FAILURE_REASONS)[number];

/** Why preprocess fails an item for good for its object, not its bytes. */
export const OBJECT_FAILURE_REASONS = ['not-found', 'too-large', 'changed'] as const;

/** Why preprocess fails an item for good: its bytes, or its object. */
export const PREPROCESS_FAILURE_REASONS = [...IMAGE_FAILURE_REASONS, ...OBJECT_FAILURE_REASONS] as const;

/** Why embed fails an item for good (besides the reasons every worker has). */
export const EMBED_FAILURE_REASONS = ['wrong-embedder', 'pixels-expired', 'bad-pixels'] as const;

/** Reasons any worker fails a job for good with, whatever its handler. */
export const WORKER_FAILURE_REASONS = ['bad-payload', 'stalled', 'attempts-exhausted'] as const;

export type ItemFailureReason = (typeof PREPROCESS_FAILURE_REASONS)[number] | (typeof EMBED_FAILURE_REASONS)[number] | (typeof WORKER_FAILURE_REASONS)[number];

/** Every code an image can fail with, in the order `--help` lists them. */
export const ITEM_FAILURE_REASONS: readonly ItemFailureReason[] = [...new Set<ItemFailureReason>([...PREPROCESS_FAILURE_REASONS, ...EMBED_FAILURE_REASONS, ...WORKER_FAILURE_REASONS])];

/**
 * Failure reasons of the infrastructure or of a crash, not of the image: a re-ingest retries them
 * by itself. Bad input (empty, truncated, …) stays failed until the object changes or
 * `transferline retry --reason` names it. (`not-found` is run again by a re-ingest that lists its
 * object as put there after it failed: see the ingest's needsRetry.)
 */
export const TRANSIENT_REASONS: ReadonlySet<string> = new Set<ItemFailureReason>(['attempts-exhausted', 'stalled', 'pixels-expired', 'bad-pixels', 'wrong-embedder', 'changed']);

/**
 * Reasons of an image's own bytes, which the same bytes fail with again however often they run:
 * mended by replacing the file (or deleting it), not by a retry. (Not decode-timeout: a decode
 * too slow on a busy machine may pass on a quiet one; nor too-many-pixels: a higher
 * TL_MAX_INPUT_PIXELS and `retry --reason` mend it too.)
 */
export const BYTES_FAILURE_REASONS: ReadonlySet<string> = new Set<ItemFailureReason>(IMAGE_FAILURE_REASONS.filter((r) => r !== 'decode-timeout' && r !== 'too-many-pixels'));
