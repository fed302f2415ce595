import type * as tfTypes from '@tensorflow/tfjs';
import { BucketNotFoundError, CLASSIFY_EARLIER_FILES, decideLabel, LabelsDoc, PermanentError, ReportDoc, RunDoc, type ClassifyJob, type ClassifyResult, type ItemRecord, type JobContext, type Services } from '@transferline/shared';
import { loadHead } from './head.store.js';
import { predictProba } from './head.trainer.js';

export interface ClassifyDeps {
  tf: typeof tfTypes;
  services: Pick<Services, 'datasets' | 'cache' | 'store' | 'redis' | 'keys' | 'layout'>;
  bucket: string;
}

/** One line of the results file. */
export interface ClassifiedLine {
  key: string;
  sha256?: string;
  label?: string;
  probabilities?: Record<string, number>;
  /** a two-class model's threshold: `label` is given from probability `at` on (so a line's label may have the lower probability) */
  threshold?: { label: string; at: number };
  /** why the image has no label: a reason code (as in `status` and `failures`), and its message */
  error?: string;
  detail?: string;
  model: { dataset: string; runId: string };
}

/**
 * Labels the embedded images under a prefix with a trained head and writes one JSON line per
 * image to `outputKey`. Two-class models decide with the threshold chosen on validation. Images
 * already classified by this run with unchanged bytes are skipped (and so are failed ones, until
 * they are embedded), so a watch loop only writes what is new; running the same job twice writes the same file.
 */
/** Why a classify job fails for good (besides the reasons every worker has). */
export const CLASSIFY_FAILURE_REASONS = ['no-model', 'embedder-mismatch'] as const;

export async function classifyImages(job: ClassifyJob, deps: ClassifyDeps, ctx: JobContext): Promise<ClassifyResult> {
  const { tf, services } = deps;
  const { layout } = services;
  const modelPrefix = layout.run(job.model, job.runId);
  const [labels, run] = await Promise.all([
    services.store.getDocument(LabelsDoc, deps.bucket, layout.runFile(job.model, job.runId, 'labels.json')),
    services.store.getDocument(RunDoc, deps.bucket, layout.runFile(job.model, job.runId, 'run.json')),
  ]).catch((err: unknown) => {
    // this worker's own bucket missing: asking again will not make it exist
    if (err instanceof BucketNotFoundError) throw new PermanentError('no-model', `${err.message}: it is the train worker's TL_BUCKET, where the models are`);
    throw err;
  });
  if (!labels || !run) throw new PermanentError('no-model', `no trained model at s3://${deps.bucket}/${modelPrefix}`);
  if (run.embedderId !== job.embedderId) {
    throw new PermanentError('embedder-mismatch', `the model was trained on ${run.embedderId} embeddings; these images were embedded with ${job.embedderId}`);
  }
  const report = await services.store.getDocument(ReportDoc, deps.bucket, layout.runFile(job.model, job.runId, 'report.json'));
  const threshold = labels.length === 2 ? report?.validation.binary?.threshold : undefined;

  const doneKey = services.keys.classified(job.model, job.runId);
  const scope = `${job.bucket}/${job.prefix}`;
  const todo: { id: string; sha256: string; etag: string }[] = [];
  const lines: ClassifiedLine[] = [];
  const modelRef = { dataset: job.model, runId: job.runId };
  const pending: { id: string; r: ItemRecord; cached: boolean; priorFile?: string }[] = [];
  for await (const page of services.datasets.scan(job.dataset)) {
    const mine = page.filter(([id]) => id.startsWith(scope));
    if (mine.length === 0) continue;
    const done = await services.redis.hmget(doneKey, ...mine.map(([id]) => id));
    const cached = await services.cache.has(job.embedderId, mine.map(([, r]) => r.sha256 ?? '0'.repeat(64)));
    mine.forEach(([id, r], i) => {
      // Done by an earlier job (another output file) with the same bytes: skipped, if that file
      // is still there. Done by this very job (a retry after it had finished) counts as not done,
      // so its file is rewritten whole.
      // A failed image is done too (its line says why), unless it has been embedded since.
      const prior = done[i]?.split(' ');
      const same = prior && prior[0] === r.etag && prior[1] === doneBytes(r) && (prior[3] === FAILED) === (r.state === 'failed');
      const priorFile = same && prior[2] !== job.outputKey ? prior[2] : undefined;
      pending.push({ id, r, cached: cached[i]!, priorFile });
    });
  }
  // A results file deleted since (old results pruned) holds no labels any more: its images are
  // classified again, into this job's file.
  const gone = await missingFiles(services.store, deps.bucket, new Set(pending.flatMap((p) => (p.priorFile ? [p.priorFile] : []))));
  let skipped = 0;
  let skippedFailed = 0;
  let again = 0;
  const failedNow: { id: string; r: ItemRecord }[] = [];
  const earlier = new Set<string>();
  for (const { id, r, cached, priorFile } of pending) {
    if (priorFile && !gone.has(priorFile)) {
      skipped++;
      if (r.state === 'failed') skippedFailed++;
      earlier.add(priorFile);
      continue;
    }
    let labelled = true;
    if (r.state === 'failed') {
      lines.push({ key: `s3://${id}`, error: r.reason ?? 'failed', ...(r.detail && { detail: r.detail }), model: modelRef });
      failedNow.push({ id, r });
    }
    else if (r.sha256 && cached) todo.push({ id, sha256: r.sha256, etag: r.etag });
    else labelled = false;
    if (priorFile && labelled) again++;
  }
  const counts = new Array<number>(labels.length).fill(0);
  if (todo.length) {
    const head = await loadHead(tf, services.store, deps.bucket, modelPrefix);
    try {
      const x = await services.cache.load(job.embedderId, todo.map((t) => t.sha256));
      const p = await predictProba(tf, head, { data: x.data, rows: x.rows, dim: x.dim });
      const k = labels.length;
      todo.forEach((t, i) => {
        const row = Array.from(p.subarray(i * k, (i + 1) * k));
        const d = decideLabel(labels, row, threshold);
        counts[d.index]!++;
        lines.push({ key: `s3://${t.id}`, sha256: t.sha256, label: d.label, probabilities: Object.fromEntries(labels.map((l, c) => [l, row[c]!])), ...(d.threshold && { threshold: d.threshold }), model: modelRef });
      });
    } finally {
      head.dispose();
    }
  }
  const failed = lines.filter((l) => l.error).length;
  // Nothing new (every image done by an earlier job of this run): no empty file; the result names
  // the files that hold those labels instead. Results files are named by time: newest first.
  if (lines.length) await services.store.putObject(deps.bucket, job.outputKey, lines.map((l) => JSON.stringify(l)).join('\n') + '\n', 'application/x-ndjson');
  // Each image's entry: its bytes (ETag, SHA-256) and the file that holds its line; a failed one's
  // ends in FAILED, so a watch's next round does not write its line again (until it is embedded).
  const entries = [
    ...todo.flatMap((t) => [t.id, `${t.etag} ${t.sha256} ${job.outputKey}`]),
    ...failedNow.flatMap(({ id, r }) => [id, `${r.etag} ${doneBytes(r)} ${job.outputKey} ${FAILED}`]),
  ];
  if (entries.length) await services.redis.hset(doneKey, ...entries);
  ctx.log.info({ classified: todo.length, failed, skipped, skippedFailed, again, filesGone: gone.size }, 'classified');
  const byLabel = labels.map((label, c) => ({ label, count: counts[c]! })).filter((l) => l.count > 0);
  const earlierFiles = [...earlier].sort().reverse().slice(0, CLASSIFY_EARLIER_FILES);
  return { outputKey: job.outputKey, classified: todo.length, failed, skipped, skippedFailed, byLabel, earlierFiles, ...(again ? { again, filesGone: [...gone].sort() } : {}) };
}

const FAILED = 'failed';
/** The SHA-256 an image's entry records (one that failed before it was read has none). */
const doneBytes = (r: ItemRecord): string => r.sha256 ?? '-';

/** Which of these results files are no longer in the bucket (a HEAD each, a few at a time). */
async function missingFiles(store: ClassifyDeps['services']['store'], bucket: string, keys: Set<string>): Promise<Set<string>> {
  const gone = new Set<string>();
  const all = [...keys];
  for (let i = 0; i < all.length; i += 16) {
    const heads = await Promise.all(all.slice(i, i + 16).map((k) => store.headObject(bucket, k)));
    heads.forEach((h, j) => h === undefined && gone.add(all[i + j]!));
  }
  return gone;
}
