import { createHash } from 'node:crypto';
import { z } from 'zod';
import { EmbeddingSpace, ResizePolicy } from './documents.js';

/**
 * Queue names. Every stage is a BullMQ queue; every role is a separate, horizontally scalable
 * process. Embed has one queue per embedding space (`embed.<embedder id>`), so a job waits for a
 * worker that runs its space and can never land on one that runs another.
 */
export const QUEUES = { preprocess: 'preprocess', embed: 'embed', train: 'train', classify: 'classify' } as const;
export type QueueName = (typeof QUEUES)[keyof typeof QUEUES];

/** The BullMQ queue of a job name (embed: of one embedding space). */
export function queueName(name: JobName, space?: string): string {
  if (name !== 'embed') return JOBS[name].queue;
  if (!space) throw new Error('the embed queue is per embedding space: name the space');
  return `${QUEUES.embed}.${space}`;
}

/** The job name of a BullMQ queue (queueName's inverse: every `embed.<space>` is embed's), or undefined for none of ours. */
export function jobOfQueue(queue: string): JobName | undefined {
  if (queue.startsWith(`${QUEUES.embed}.`)) return 'embed';
  return (Object.keys(JOBS) as JobName[]).find((n) => n !== 'embed' && JOBS[n].queue === queue);
}

const DATASET_NAME_RULE = 'dataset names are 1-64 letters, digits, _ . - and start with a letter or digit';
const datasetName = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/, DATASET_NAME_RULE);
export const DatasetName = datasetName;

/** The dataset that holds the images classified with a model: not a user's name (those start with a letter or digit), so never trained on. */
export function classifyDatasetName(model: string): string {
  return `_classify.${model}`;
}

/** The label an image to classify carries in its record (classify's datasets: see isClassifyDataset). */
export const UNLABELLED = '?';
/** How the CLI and the console show the label of those images. */
export const UNLABELLED_SHOWN = '(unlabelled)';

/** Whether a dataset is where classify keeps its images (see classifyDatasetName). */
export function isClassifyDataset(dataset: string): boolean {
  return dataset.startsWith(classifyDatasetName(''));
}

/** How long a wait goes on with nothing moving and no worker that could move it (--stall-timeout), unless told: the CLI's waits and a run's wait for its images. */
export const DEFAULT_STALL_SECONDS = 30;

/**
 * What brings back a dataset's images whose job was lost: the command that lists their prefix
 * again (classify's datasets cannot be ingested into).
 */
export function relistCommand(dataset: string): string {
  return isClassifyDataset(dataset) ? 'run the same classify again' : 'run the same ingest again';
}
const anyDatasetName = z.union([datasetName, z.string().regex(/^_classify\.[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/)], {
  error: `${DATASET_NAME_RULE} (or are _classify.<model>, where classify keeps its images)`,
});
/** A dataset a user may look at: one of theirs, or one where classify keeps a model's images. */
export const AnyDatasetName = anyDatasetName;

const sha256Hex = z.string().regex(/^[0-9a-f]{64}$/, 'a SHA-256 in lowercase hex');

/**
 * Decode, orient, colour-convert and resize one object; hand the pixels to embed. The job names
 * its embedding space and how that space prepares images (its resize policy and background), so
 * any preprocess worker serves any space, whatever its own environment says.
 */
export const PreprocessJob = z.object({
  dataset: anyDatasetName,
  bucket: z.string().min(1),
  key: z.string().min(1),
  etag: z.string(),
  label: z.string().min(1),
  embedderId: z.string().min(1),
  resize: ResizePolicy,
  /** `#rrggbb` (EmbeddingSpace.background); none in a job of a CLI from before jobs named it (spaceBackground) */
  background: EmbeddingSpace.shape.background,
});
export type PreprocessJob = z.infer<typeof PreprocessJob>;

/** Embed one image (its pixels wait in Redis under its content hash). */
export const EmbedJob = z.object({
  sha256: sha256Hex,
  embedderId: z.string().min(1),
});
export type EmbedJob = z.infer<typeof EmbedJob>;

/** What a new run's id must be (train --run-id): a letter or digit first, then letters, digits, _, . and -. */
export const NEW_RUN_ID = { pattern: /^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$/, rule: 'letters, digits, _, . and - (at most 80), starting with a letter or digit' } as const;

/** Fit a classification head on a dataset's cached embeddings. */
export const TrainJob = z.object({
  dataset: datasetName,
  // (never `.` or `..`, which would name another folder of the bucket; train gives new runs a
  // letter or digit first, NEW_RUN_ID, while runs named before that stay readable)
  runId: z.string().regex(/^(?!\.\.?$)[A-Za-z0-9_.-]{1,80}$/, 'letters, digits, _, . and - (at most 80), not . or ..'),
  embedderId: z.string().min(1),
  /** 0: softmax on the embeddings (logistic regression); > 0: one ReLU hidden layer of this size */
  hiddenUnits: z.number().int().min(0).max(8192).default(0),
  dropout: z.number().min(0).max(0.9).default(0.2),
  epochs: z.number().int().min(1).max(10_000).default(100),
  learningRate: z.number().positive().max(10).default(0.001),
  batchSize: z.number().int().min(1).max(65_536).default(64),
  l2: z.number().min(0).max(10).default(1e-4),
  /** epochs without a better validation loss before stopping (best weights restored); 0 = off */
  patience: z.number().int().min(0).max(10_000).default(10),
  classWeights: z.enum(['balanced', 'none']).default('balanced'),
  validationFraction: z.number().min(0.05).max(0.5).default(0.2),
  testFraction: z.number().min(0).max(0.5).default(0.1),
  seed: z.number().int().min(0).default(1),
  /** train on what is embedded although some images are still pending (recorded in the report) */
  partial: z.boolean().default(false),
  /**
   * --partial on a dataset Redis lost that is only partly ingested again: the prefixes
   * (s3://bucket/prefix/) still to ingest, which the run leaves out (recorded in the report)
   */
  notIngestedAgain: z.array(z.string()).optional(),
  /** make the run its dataset's latest when it is written (what classify, serve and export use by default) */
  promote: z.boolean().default(true),
  /**
   * The train command's --stall-timeout: how long a run that finds images on their way when it
   * starts waits for them without one done, once a stage that holds some cannot move them
   * (absent in runs queued by older commands: DEFAULT_STALL_SECONDS)
   */
  stallSeconds: z.number().int().min(0).optional(),
});
export type TrainJob = z.infer<typeof TrainJob>;
export type TrainJobInput = z.input<typeof TrainJob>;

/** Classify the images of a prefix (already embedded) with a trained head; results as JSON Lines in the bucket. */
export const ClassifyJob = z.object({
  /** the internal dataset that holds the images (see classifyDatasetName) */
  dataset: anyDatasetName,
  model: datasetName,
  runId: z.string().min(1),
  embedderId: z.string().min(1),
  /** only items under s3://bucket/prefix */
  bucket: z.string().min(1),
  prefix: z.string(),
  /** where the JSON Lines go, in TL_BUCKET */
  outputKey: z.string().min(1),
});
export type ClassifyJob = z.infer<typeof ClassifyJob>;

/** How many earlier results files a classify result names. */
export const CLASSIFY_EARLIER_FILES = 10;

export interface ClassifyResult {
  /** the results file: written only when the job had a line to write (classified + failed > 0) */
  outputKey: string;
  classified: number;
  failed: number;
  /** items classified earlier with the same run and unchanged since (not written again) */
  skipped: number;
  /**
   * Of `skipped`, those that failed (their line in the earlier file is an error): still failed
   * images under the prefix. Absent in results of jobs that ran before it existed.
   */
  skippedFailed?: number;
  /**
   * The results files that hold the skipped items' labels (the newest first, at most
   * CLASSIFY_EARLIER_FILES). Absent in results of jobs that ran before it existed.
   */
  earlierFiles?: string[];
  /**
   * Images classified earlier by this run whose results file is no longer in the bucket (deleted
   * since): classified again, into this job's file (counted in `classified`/`failed` too), and
   * the files found gone. Absent when none.
   */
  again?: number;
  filesGone?: string[];
  /** images per predicted label, in the model's label order */
  byLabel: { label: string; count: number }[];
}

/** What a train job returns (also written as the run's summary). */
export interface TrainResult {
  dataset: string;
  runId: string;
  modelPrefix: string;
  /**
   * The bucket the worker wrote the run to: the run is where the worker says, whatever the
   * TL_BUCKET of the shell that asked for it (absent from runs of older workers).
   */
  bucket?: string;
  validationAccuracy: number;
  /** undefined when the run had no test split */
  testAccuracy?: number;
  examples: number;
  bestEpoch: number;
  /** whether the run is its dataset's latest (false for a run trained with --no-promote; absent from runs of older workers) */
  latest?: boolean;
  /** the job ran again after its run was written (its completion lost, or retried from the queue board): the run as it was, not trained again */
  replayed?: true;
}

interface JobSpec<S extends z.ZodType> {
  queue: QueueName;
  schema: S;
  attempts: number;
  /** Base delay of the exponential backoff, in ms (jitter is added). */
  backoffMs: number;
  /**
   * Its lock is TL_TRAIN_JOB_LOCK_MS (a minute), not TL_JOB_LOCK_MS. A training run (and
   * classification, on the same worker) holds the CPU in long synchronous stretches (TF.js
   * kernels between awaits): a lock of a minute keeps a busy worker from being taken for a dead
   * one.
   */
  longLock?: boolean;
}

/** One catalog: job name → queue, schema, retry policy. The handler maps are typed from it. */
export const JOBS = {
  preprocess: { queue: QUEUES.preprocess, schema: PreprocessJob, attempts: 5, backoffMs: 1_000 },
  embed: { queue: QUEUES.embed, schema: EmbedJob, attempts: 5, backoffMs: 2_000 },
  train: { queue: QUEUES.train, schema: TrainJob, attempts: 2, backoffMs: 5_000, longLock: true },
  classify: { queue: QUEUES.classify, schema: ClassifyJob, attempts: 3, backoffMs: 2_000, longLock: true },
} as const satisfies Record<string, JobSpec<z.ZodType>>;
export type JobName = keyof typeof JOBS;
export type JobPayload<N extends JobName> = z.output<(typeof JOBS)[N]['schema']>;

/** The configured locks (TL_JOB_LOCK_MS, TL_TRAIN_JOB_LOCK_MS): `Config` is one. */
export interface JobLocks {
  jobLockMs: number;
  trainJobLockMs: number;
}

/**
 * How long a job of this name is locked (BullMQ renews the lock at half-time while the job
 * runs), and how often workers look for jobs whose lock ran out (their worker died): such a job
 * runs again within `lockMs + stalledIntervalMs` of its worker's last renewal.
 */
export function jobLock(name: JobName, locks: JobLocks): { lockMs: number; stalledIntervalMs: number } {
  const spec: JobSpec<z.ZodType> = JOBS[name];
  const lockMs = spec.longLock ? locks.trainJobLockMs : locks.jobLockMs;
  return { lockMs, stalledIntervalMs: Math.min(30_000, Math.max(1_000, Math.round(lockMs / 2))) };
}

/**
 * How long a job may go untaken, or its lock lapsed, before the workers that hold or leave it are
 * taken for hung: two stalled-job checks (a live worker slow to renew, or between two fetches,
 * has its own check move the job on within them).
 */
export function hungAfterMs(name: JobName, locks: JobLocks): number {
  return 2 * jobLock(name, locks).stalledIntervalMs;
}

/**
 * BullMQ options for a job of this name: retries with exponential backoff + jitter (its base
 * times TL_RETRY_BACKOFF_SCALE), completed removed, failures kept (capped).
 */
export function jobOptions(name: JobName, jobId: string, backoffScale = 1) {
  const spec = JOBS[name];
  return {
    jobId,
    attempts: spec.attempts,
    backoff: { type: 'exponential' as const, delay: Math.max(1, Math.round(spec.backoffMs * backoffScale)), jitter: 0.5 },
    // Finished runs stay (capped) so a CLI can still read a result it did not wait for.
    removeOnComplete: name === 'train' || name === 'classify' ? { count: 1_000 } : true,
    removeOnFail: { count: 10_000 },
  };
}

/** Content-derived job ids (BullMQ forbids ':' in custom ids), so enqueueing twice is a no-op. */
export const jobIds = {
  preprocess: (j: Pick<PreprocessJob, 'dataset' | 'bucket' | 'key' | 'etag' | 'embedderId'>) =>
    `pp-${createHash('sha256').update([j.dataset, j.bucket, j.key, j.etag, j.embedderId].join('\0')).digest('hex').slice(0, 40)}`,
  embed: (j: EmbedJob) => `emb-${createHash('sha256').update(j.embedderId).digest('hex').slice(0, 12)}-${j.sha256}`,
  train: (j: Pick<TrainJob, 'runId'>) => `train-${j.runId}`,
  classify: (j: Pick<ClassifyJob, 'outputKey'>) => `cls-${createHash('sha256').update(j.outputKey).digest('hex').slice(0, 40)}`,
};
