import { z } from 'zod';

/*
 * Every JSON document transferline stores (in Redis or in the bucket), with one zod schema each,
 * used by the writer and by every reader. Per-label figures are arrays in label order, never
 * objects keyed by label: a user's label may be `__proto__` or `constructor`, which a plain object
 * (and zod's record parser) would silently drop or turn into a prototype.
 */

const sha256Hex = z.string().regex(/^[0-9a-f]{64}$/, 'a SHA-256 in lowercase hex');

/** How a non-square image becomes square: `squash` (whole picture, aspect lost) or `crop` (centre square). */
export const ResizePolicy = z.enum(['squash', 'crop']);
export type ResizePolicy = z.infer<typeof ResizePolicy>;

/** The held-out splits a bucket's layout can name. */
export const Split = z.enum(['train', 'validation', 'test']);
export type Split = z.infer<typeof Split>;

/** The stages an image goes through, where an item can fail. */
export const Stage = z.enum(['preprocess', 'embed']);
export type Stage = z.infer<typeof Stage>;

/**
 * An embedding space: the model, its weights and the preprocessing that together give an image
 * its embedding. Published in Redis by the embed workers that run it (and by `up`); every other
 * process reads it from there instead of deriving it from its own environment.
 */
export const EmbeddingSpace = z.object({
  /** the embedder id: cache keys are (id, content hash), and every model records it */
  id: z.string().regex(/^[a-z0-9][a-z0-9.-]{0,120}$/),
  model: z.literal('efficientnet-b0'),
  weights: z.enum(['imagenet', 'random']),
  /** MD5 of the weights file (imagenet) */
  weightsMd5: z.string().optional(),
  /** seed of the random weights (random) */
  seed: z.number().int().optional(),
  resize: ResizePolicy,
  /**
   * the colour transparent pixels are flattened onto before the resize (`#rrggbb`, lowercase); a
   * space recorded before spaces named it has none, and flattened onto the default (spaceBackground)
   */
  background: z
    .string()
    .regex(/^#[0-9a-f]{6}$/)
    .optional(),
  inputSize: z.number().int().positive(),
  dim: z.number().int().positive(),
});
export type EmbeddingSpace = z.infer<typeof EmbeddingSpace>;

/** Where a deployment keeps embeddings and models: its TL_BUCKET and TL_PREFIX. */
export const StorageLocation = z.object({ bucket: z.string(), prefix: z.string() });

/** The deployment's storage as its first process (up, or an embed or train worker) recorded it (keys.storage). */
export const StorageRecord = StorageLocation.extend({
  /** the process that recorded it (PROCESS_NAME), and when */
  by: z.string(),
  at: z.string(),
});
export type StorageRecord = z.infer<typeof StorageRecord>;

/** What an embed worker says of itself in its heartbeat. */
export const EmbedWorkerInfo = z.object({
  workerId: z.string(),
  space: z.string(),
  backend: z.string(),
  host: z.string(),
  pid: z.number().int(),
  startedAt: z.string(),
  /** where it keeps embeddings (and the train worker, which reads them, models): its TL_BUCKET and TL_PREFIX */
  storage: StorageLocation.optional(),
  /**
   * While it loads its model (a download, a first build: minutes, on a GPU too), the space it
   * will run: it beats in the starting set, takes no job, and publishes the space once live.
   */
  starting: EmbeddingSpace.optional(),
  /** the threads its forward passes run on (ONNX Runtime's intra-op threads, or its wasm streams), once live */
  threads: z.number().int().positive().optional(),
  /** why it could not start (its model, its weights, S3): a worker that gave up (its record is then silent) */
  failed: z.string().optional(),
});
export type EmbedWorkerInfo = z.infer<typeof EmbedWorkerInfo>;

/**
 * What a dataset knows of one object (Redis hash `ds:<name>:items`, field `bucket/key`).
 * `pending`: its preprocess job is enqueued; `queued`: pixels handed to embed; `cached`: its
 * embedding existed already; `failed`: failed for good in preprocess, with stage, reason code,
 * message and attempts. Whether a queued item is embedded, or failed in embed, is read from the
 * space's index and failure hash, not stored here: one source of truth, so a job that runs twice
 * cannot make counts drift.
 */
export const ItemRecord = z.object({
  label: z.string(),
  etag: z.string(),
  state: z.enum(['pending', 'queued', 'cached', 'failed']),
  /** the embedding space the item was last enqueued for */
  space: z.string().optional(),
  sha256: sha256Hex.optional(),
  stage: Stage.optional(),
  reason: z.string().optional(),
  detail: z.string().optional(),
  attempts: z.number().int().optional(),
  /** when it failed for good (ISO, the worker's clock): a `not-found` object put back since is run again by a re-ingest */
  failedAt: z.string().optional(),
  /** the split the bucket's layout gave it (train/, val/, test/ folders), kept across updates */
  split: Split.optional(),
  /**
   * The label manifest (`bucket/key` of its CSV or JSON Lines object) that gave the item its label
   * and split; absent for an item labelled by its folder.
   */
  manifest: z.string().optional(),
});
export type ItemRecord = z.infer<typeof ItemRecord>;

/** An image whose embedding failed for good in one space (hash `embfail:<space>`, field sha256). */
export const EmbedFailure = z.object({
  reason: z.string(),
  detail: z.string().optional(),
  attempts: z.number().int().optional(),
  /** when it failed for good (ISO, the worker's clock; absent from failures recorded before it was) */
  failedAt: z.string().optional(),
});
export type EmbedFailure = z.infer<typeof EmbedFailure>;

/** The manifest beside each embedding shard: the content hash of each row. */
export const ShardManifest = z.object({
  embedderId: z.string(),
  dim: z.number().int().positive(),
  hashes: z.array(sha256Hex),
});
export type ShardManifest = z.infer<typeof ShardManifest>;

/** `models/<dataset>/latest.json`: the newest run of a dataset. */
export const LatestDoc = z.object({
  runId: z.string(),
  modelPrefix: z.string(),
  /** when the pointer was written (absent from pointers written before it was recorded) */
  setAt: z.string().optional(),
  /**
   * what wrote it: `train` (a run that ended), `promote`, or `delete` (of the run it named); absent
   * from older pointers. A string, so that a writer added later does not make this version refuse the pointer.
   */
  setBy: z.string().optional(),
});
export type LatestDoc = z.infer<typeof LatestDoc>;

/** The latest.json that points at a run, as every writer (train, promote, delete) writes it. */
export function latestPointer(runId: string, modelPrefix: string, setBy: 'train' | 'promote' | 'delete', now = new Date()): LatestDoc {
  return { runId, modelPrefix, setAt: now.toISOString(), setBy };
}

/**
 * `models/<dataset>/<run>/promoted.json`: written by `promote` for a run trained with
 * --no-promote, which is a run like the others since.
 */
export const PromotedDoc = z.object({
  promotedAt: z.string(),
  /** the createdAt of the run's report: a marker left by an earlier run of the same id does not count */
  runCreatedAt: z.string(),
});
export type PromotedDoc = z.infer<typeof PromotedDoc>;

/** `models/<dataset>/<run>/labels.json`: class names in output order. */
export const LabelsDoc = z.array(z.string());

/** The training settings of a run (the train job without its identity). */
export const HeadParams = z.object({
  hiddenUnits: z.number().int(),
  dropout: z.number(),
  epochs: z.number().int(),
  learningRate: z.number(),
  batchSize: z.number().int(),
  l2: z.number(),
  patience: z.number().int(),
  classWeights: z.enum(['balanced', 'none']),
  validationFraction: z.number(),
  testFraction: z.number(),
  seed: z.number().int(),
  partial: z.boolean(),
  /** false for a run trained with --no-promote (a candidate): never made the latest unless promoted */
  promote: z.boolean().optional(),
});
export type HeadParams = z.infer<typeof HeadParams>;

/** `models/<dataset>/<run>/run.json`: what classify, serve and export need to use the model. */
export const RunDoc = z.object({
  dataset: z.string(),
  runId: z.string(),
  /** the embedding space of its inputs: classify must embed the same way */
  embedderId: z.string(),
  params: HeadParams,
  backend: z.string(),
  createdAt: z.string(),
  /**
   * the `s3://bucket/prefix` of every prefix ingested into the dataset when it trained: what to
   * ingest again should Redis lose its data (runs written before this field have none)
   */
  sources: z.array(z.string()).optional(),
});
export type RunDoc = z.infer<typeof RunDoc>;

/** Redis `trainWaiting`: a run's wait for the images on their way when it started, kept across the run's put-backs. */
export const TrainWait = z.object({
  /** when the wait began (ms since the epoch) */
  since: z.number(),
  /** when an image of the dataset was last seen done */
  movedAt: z.number(),
  /** the dataset's images done (embedded or failed) at the last look */
  done: z.number(),
});
export type TrainWait = z.infer<typeof TrainWait>;

/** Redis `datasetsLostSources`: what a dataset Redis lost came from, as its runs recorded it at the loss. */
export const LostSources = z.object({
  /** `s3://bucket/prefix`, as RunDoc.sources */
  sources: z.array(z.string()),
  /** the space of the run they came from: the ingest commands name it */
  embedderId: z.string(),
});
export type LostSources = z.infer<typeof LostSources>;

/** Precision, recall, F1 and support of one class. */
export const ClassFigures = z.object({ label: z.string(), precision: z.number(), recall: z.number(), f1: z.number(), support: z.number().int() });
export type ClassFigures = z.infer<typeof ClassFigures>;

/** Evaluation of a classifier on one split; per-class figures in label order. */
export const EvaluationReport = z.object({
  examples: z.number().int(),
  accuracy: z.number(),
  /** confusion[trueClass][predictedClass], in label order */
  confusionMatrix: z.array(z.array(z.number().int())),
  perClass: z.array(ClassFigures),
});
export type EvaluationReport = z.infer<typeof EvaluationReport>;

export const SplitReport = EvaluationReport.extend({
  /**
   * two classes only: ROC AUC of the second label's probability (null when the split holds one
   * class only), and the threshold chosen on validation
   */
  binary: z.object({ positiveLabel: z.string(), rocAuc: z.number().nullable(), threshold: z.number(), accuracyAtThreshold: z.number() }).optional(),
});
export type SplitReport = z.infer<typeof SplitReport>;

export const EpochLog = z.object({
  epoch: z.number().int(),
  loss: z.number(),
  accuracy: z.number(),
  valLoss: z.number(),
  valAccuracy: z.number(),
  bestValLoss: z.number(),
  learningRate: z.number(),
  examplesPerSecond: z.number(),
});
export type EpochLog = z.infer<typeof EpochLog>;

/** How many images filed under two labels a run's report names, and how many copies of each. */
export const CONFLICTS_NAMED = 10;

/** What labels the copies of bytes filed under two labels: label manifests (`bucket/key`), and whether label folders do too. */
export const ConflictsLabelledBy = z.object({ manifests: z.array(z.string()), folders: z.boolean() });
export type ConflictsLabelledBy = z.infer<typeof ConflictsLabelledBy>;

/** What labels these copies, or any images (each with the label manifest that labels it, if one does). */
export function conflictsLabelledBy(copies: Iterable<{ manifest?: string | undefined }>): ConflictsLabelledBy {
  const manifests = new Set<string>();
  let folders = false;
  for (const c of copies) {
    if (c.manifest === undefined) folders = true;
    else manifests.add(c.manifest);
  }
  return { manifests: [...manifests].sort(), folders };
}

/** `models/<dataset>/<run>/report.json`: how the run went and how good the model is. */
export const ReportDoc = z.object({
  dataset: z.string(),
  runId: z.string(),
  embedderId: z.string(),
  createdAt: z.string(),
  labels: z.array(z.string()),
  split: z.object({
    train: z.number().int(),
    validation: z.number().int(),
    test: z.number().int(),
    explicit: z.boolean(),
    /**
     * for each held-out split, the classes whose images in it came from the bucket's split folders
     * (or a manifest's split column), and those cut by the run's fraction (runs from before it: none)
     */
    heldOut: z
      .object({
        validation: z.object({ folders: z.array(z.string()), fraction: z.array(z.string()) }),
        test: z.object({ folders: z.array(z.string()), fraction: z.array(z.string()) }),
      })
      .optional(),
    /** distinct bytes filed under more than one label, left out (every copy) */
    conflictsLeftOut: z.number().int(),
    /**
     * the first of those (CONFLICTS_NAMED), each with its copies (at most as many): the object,
     * the label it is filed under, and the label manifest (`bucket/key`) that gives it, if one does
     */
    conflicting: z.array(z.array(z.object({ object: z.string(), label: z.string(), manifest: z.string().optional() }))).optional(),
    /** what labels every copy of those (not only the copies named): how to mend them */
    conflictsLabelledBy: ConflictsLabelledBy.optional(),
    /**
     * distinct bytes with a copy in val/ or test/ (or a manifest's split) and another where they
     * would be trained on: held out, every copy (runs from before it: not counted)
     */
    copiesHeldOut: z.number().int().optional(),
    /** the first of those (CONFLICTS_NAMED), each with its copies' objects, the held-out copy first */
    heldOutCopies: z.array(z.array(z.string())).optional(),
  }),
  /** the dataset when training began: images used, and those left out (still pending, or failed) */
  coverage: z.object({
    total: z.number().int(),
    embedded: z.number().int(),
    pending: z.number().int(),
    failed: z.number().int(),
    partial: z.boolean(),
    /** prefixes of the dataset not ingested again after Redis lost its data, left out (TrainJob.notIngestedAgain) */
    notIngestedAgain: z.array(z.string()).optional(),
  }),
  params: HeadParams,
  /** in label order */
  classWeights: z.array(z.number()),
  bestEpoch: z.number().int(),
  stoppedEarly: z.boolean(),
  history: z.array(EpochLog),
  validation: SplitReport,
  test: SplitReport.optional(),
  train: EvaluationReport,
});
export type ReportDoc = z.infer<typeof ReportDoc>;

/**
 * Probabilities by label, as the JSON Lines files people read show them (`{"cats": 0.97}`). Checked
 * without being rebuilt: zod's record parser would drop a label named `__proto__`.
 */
const LabelProbabilities = z.custom<Record<string, number>>(
  (v) => typeof v === 'object' && v !== null && !Array.isArray(v) && Object.values(v).every((p) => typeof p === 'number' && p >= 0 && p <= 1),
  'an object of label → probability (0 to 1)',
);
const probability = z.number().min(0).max(1);

/**
 * One line of `reviews/<dataset>/<time>.jsonl`: an image, its given label, what the model trained
 * without it thinks, and why. Written by `review`; read by `relabel --from-review` and the console.
 */
export const ReviewLine = z.object({
  /** `s3://bucket/key` */
  key: z.string().startsWith('s3://'),
  given: z.string(),
  /** the label the out-of-fold model finds most likely (among those above their class threshold, for issues) */
  suggested: z.string(),
  /** out-of-fold probability of the given label: low means doubtful */
  pGiven: probability,
  pSuggested: probability,
  /** confident learning: another label is above its class's mean self-confidence, and above the given one */
  issue: z.boolean(),
  /** 1 − the highest probability: high means the model cannot tell */
  uncertainty: probability,
  probabilities: LabelProbabilities,
  /** the label manifest (`bucket/key`) that gives the label, if one does: its row is changed, not the folder (relabel refuses) */
  manifest: z.string().optional(),
});
export type ReviewLine = z.infer<typeof ReviewLine>;

/** Thrown when a stored document does not match its schema: names the document and the first problems. */
export class DocumentError extends Error {
  override readonly name = 'DocumentError';
}

/** The first `n` problems zod found, as `path: message` (for error messages). */
export function describeIssues(error: z.ZodError, n = 3): string {
  return error.issues
    .slice(0, n)
    .map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`)
    .join('; ');
}

/** Parses a stored document, with an error that says which one and what is wrong. */
export function parseDocument<S extends z.ZodType>(schema: S, value: unknown, where: string): z.output<S> {
  const r = schema.safeParse(value);
  if (r.success) return r.data;
  throw new DocumentError(`${where} is not a valid document (${describeIssues(r.error)}); was it written by another version?`);
}

/**
 * A JSON Lines document (blank lines skipped), each line checked against `schema`: the lines that
 * parse, and for the others their line number (from 1) and what is wrong, so a reader can refuse
 * the file or show what it can, naming the lines.
 */
export function parseJsonLines<S extends z.ZodType>(schema: S, text: string): { values: z.output<S>[]; bad: { line: number; reason: string }[] } {
  const values: z.output<S>[] = [];
  const bad: { line: number; reason: string }[] = [];
  text.split('\n').forEach((raw, i) => {
    if (!raw.trim()) return;
    let json: unknown;
    try {
      json = JSON.parse(raw);
    } catch (err) {
      bad.push({ line: i + 1, reason: `not JSON (${(err as Error).message})` });
      return;
    }
    const r = schema.safeParse(json);
    if (r.success) values.push(r.data);
    else bad.push({ line: i + 1, reason: describeIssues(r.error, 2) });
  });
  return { values, bad };
}
