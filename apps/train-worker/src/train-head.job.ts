import type * as tfTypes from '@tensorflow/tfjs';
import {
  mayPassIfAskedAgain,
  PROCESS_NAME,
  redisClockOffset,
  CONFLICTS_NAMED,
  conflictsLabelledBy,
  DatasetRepository,
  DEFAULT_STALL_SECONDS,
  DeferJob,
  type DependencyGuard,
  PermanentError,
  relistCommand,
  sleep,
  STOP_DEADLINE_MS,
  type JobContext,
  type Metrics,
  LatestDoc,
  latestPointer,
  ReportDoc,
  TrainWait,
  type RunDoc,
  type Services,
  type SplitReport,
  type TrainJob,
  type TrainResult,
} from '@transferline/shared';
import { saveHead } from './head.store.js';
import { argmaxRows, fitHead, predictProba, type EpochLog, type Matrix } from './head.trainer.js';
import { bestThreshold, evaluate, rocAuc } from './report.js';
import { splitExamples, type Example } from './split.js';

export interface TrainDeps {
  tf: typeof tfTypes;
  backend: string;
  services: Pick<Services, 'inspector' | 'datasets' | 'cache' | 'store' | 'layout' | 'redis' | 'keys'>;
  bucket: string;
  metrics: Metrics;
  /** the worker's S3 guard: a run trained waits out an outage of S3 to be saved, rather than be trained again */
  s3?: Pick<DependencyGuard, 'up' | 'reason' | 'isOutage'>;
  /** why a stage cannot move the images a run waits for (its queue paused, no worker of it connected), if it cannot now */
  stageBlocked?: (stage: 'preprocess' | 'embed', space: string, o: { /** an outage's pause counts once it has lasted this long */ pausedForSeconds: number }) => Promise<string | undefined>;
}

/** Progress reported after each epoch (the CLI draws its bar from it). */
export interface EpochProgress extends Partial<EpochLog> {
  /** put-back: the run goes back to the queue, to start again from its first epoch (`why`); waiting: for images on their way when it started (`why`) */
  phase: 'loading' | 'waiting' | 'training' | 'saving' | 'put-back';
  epoch: number;
  /** the epochs asked for; once saving, the epochs run (fewer when stopped early) */
  epochs: number;
  /** saving after stopping early: the epochs that were asked for */
  planned?: number;
  /** saving: what the save waits for (S3 unreachable); put-back: why the run goes back to the queue; waiting: what for */
  why?: string;
  /** the train worker that reported it (host:pid:…), and when (ms, on Redis's clock: redisClockOffset): added as it is reported */
  by?: string;
  at?: number;
}

/** How long a trained run waits for S3 to come back to be saved, before it goes back to the queue (to be trained again). */
export const SAVE_OUTAGE_WAIT_MS = 30 * 60_000;
/** A save that failed on an S3 that answers (5xx, throttled) is tried again after these waits (a 500 rarely lasts): then thrown. */
export const SAVE_ERROR_RETRY_DELAYS_MS = [2_000, 8_000, 30_000] as const;

/** What a run's save (the head, its report, the latest pointer, to S3) is given when a stopping worker decides whether the run can end within its deadline. */
const SAVE_ALLOWANCE_MS = 10_000;

/** How often a training run asks whether it was cancelled (`train --cancel`), at most. */
const CANCEL_CHECK_MS = 1_000;

/** What a run's last progress (a train job's, as BullMQ stores it) says it waits for, when it waits for images on their way; else undefined. */
export function waitingFor(progress: unknown): string | undefined {
  const p = progress as Partial<EpochProgress> | undefined;
  return p?.phase === 'waiting' && typeof p.why === 'string' ? p.why : undefined;
}

/** How long a run waiting for images on their way goes back to the queue before it looks again (at least: four times a scan's length for a large dataset). */
const IMAGES_LOOK_MS = 3_000;
/** How long a run waits at most for images on their way when it starts, however they move. */
export const IMAGES_WAIT_MAX_MS = 30 * 60_000;

/** Why a training run fails for good (besides the reasons every worker has). */
export const TRAIN_FAILURE_REASONS = ['images-pending', 'no-data', 'one-class', 'too-small', 'bad-embeddings', 'cancelled'] as const;

/**
 * Fits a head on a dataset's cached embeddings and writes `models/<dataset>/<run>/`: the head
 * (TF.js), `labels.json`, `run.json` (the configuration, including the embedder id: model,
 * weights, preprocessing) and `report.json`; then points `models/<dataset>/latest.json` at it.
 */
export async function trainHead(job: TrainJob, deps: TrainDeps, jobCtx: JobContext): Promise<TrainResult> {
  // Each progress says who reports it, and when, and is said again while nothing newer comes (a
  // long epoch, a save waiting for S3): a run whose job went back to the queue while its worker
  // trains on (its lock lost in a Redis outage) is seen to be still trained, not hung; a hung
  // worker says nothing more. The time is Redis's, as status reads it (a machine whose clock is a
  // minute off read a live run as hung, or an old progress as recent): its offset from this
  // machine's, read at the run's start, holds through the outage this is for.
  const offsetMs = await redisClockOffset(deps.services.redis);
  let last: { value: object; sentAt: number } | undefined;
  const send = (value: object) => {
    last = { value, sentAt: Date.now() };
    return jobCtx.progress({ ...value, by: PROCESS_NAME, at: last.sentAt + offsetMs });
  };
  const ctx: JobContext = { ...jobCtx, progress: (p) => (typeof p === 'object' ? send(p) : jobCtx.progress(p)) };
  const beat = setInterval(() => {
    if (last && Date.now() - last.sentAt >= PROGRESS_BEAT_MS) void send(last.value).catch(() => undefined);
  }, PROGRESS_BEAT_MS / 4);
  beat.unref();
  try {
    return await trainRun(job, deps, ctx);
  } finally {
    clearInterval(beat);
  }
}

/** How long a run's progress goes without being said again (status takes a run not heard of for twice its train lock's stall interval for hung). */
export const PROGRESS_BEAT_MS = 15_000;

async function trainRun(job: TrainJob, deps: TrainDeps, ctx: JobContext): Promise<TrainResult> {
  const { tf, services } = deps;
  // A run is written once. The same job run again (its completion lost to a crash, or retried
  // from the queue board) finds its report and returns that run: training again would write
  // other figures over it, from the dataset as it is now.
  const written = await services.store.getDocument(ReportDoc, deps.bucket, services.layout.runFile(job.dataset, job.runId, 'report.json'));
  if (written) return finishedRun(written, deps, ctx, job.promote);
  // `train --cancel RUN`: asked before it started (or before this worker took it up again), or
  // while it trains, checked after each epoch; the run ends for good, writing nothing
  let checkedAt = 0;
  const cancelled = async (when: string, now = false) => {
    // at most once a second: epochs of a small dataset take a millisecond, and this is a round trip
    if (!now && performance.now() - checkedAt < CANCEL_CHECK_MS) return;
    checkedAt = performance.now();
    // (the flag stays until the CLI sees the run failed, or its TTL: a worker dying right after
    // this check leaves it for the one that takes the run up again)
    if (!(await services.redis.exists(services.keys.trainCancel(job.runId)))) return;
    throw new PermanentError('cancelled', `run ${job.runId} was cancelled (transferline train --cancel) ${when}`);
  };
  // This worker is stopping (SIGTERM, a scale-down): the run goes back to the queue at once, for
  // another train worker to start again from its first epoch, where it would hold its lock
  // through the stop deadline and then for the lock's length (a minute or more of nothing).
  // A run whose epochs left (at the pace so far) and save fit in what is left of the stop
  // deadline ends instead: one at epoch 98 of 100 is not thrown away to be trained again.
  let stoppingSince: number | undefined;
  let trained = 0;
  // (said to whoever follows the run, too: its bar would otherwise go back to 0 unexplained)
  const putBack = async (why: string): Promise<never> => {
    await ctx.progress({ phase: 'put-back', epoch: trained, epochs: job.epochs, why } satisfies EpochProgress).catch(() => {});
    throw new DeferJob(0, why);
  };
  const putBackIfStopping = async (at: string, left?: { epochs: number; epochMs: number }) => {
    if (!ctx.stopping()) return;
    stoppingSince ??= performance.now();
    const deadlineLeft = STOP_DEADLINE_MS - (performance.now() - stoppingSince);
    if (left && left.epochs * left.epochMs + SAVE_ALLOWANCE_MS < deadlineLeft) return;
    ctx.log.info({ dataset: job.dataset, runId: job.runId }, `stopping: run ${job.runId} goes back to the queue ${at}, for another train worker to start again`);
    await putBack(`its train worker is stopping (${at})`);
  };
  // the run's wait for images on their way, when it comes back to look again (waitOrGiveUp)
  const waitKey = services.keys.trainWaiting(job.runId);
  const comingBack = (await services.redis.exists(waitKey)) > 0;
  const loading = () => ctx.progress({ phase: 'loading', epoch: 0, epochs: job.epochs } satisfies EpochProgress);
  /** The dataset as the run trains on it, once the images on their way when it started are in (or it gives up on them). */
  async function readDataset(): Promise<DatasetRead> {
    await cancelled(comingBack ? 'while it waited for its images' : 'before it started');
    await putBackIfStopping('before it started');
    // (not while it comes back to look again: the follower's line keeps saying what it waits for)
    if (!comingBack) await loading();
    // the prefixes the CLI found not ingested again, less those an ingest listed to the end since
    const listed = job.notIngestedAgain?.length ? new Set((await services.datasets.listedSources(job.dataset)).map((s) => DatasetRepository.objectUrl(s))) : undefined;
    const left = job.notIngestedAgain?.filter((s) => !listed?.has(s));
    const scanStarted = performance.now();
    const seen: DatasetRead = { examples: [], elsewhere: 0, byStage: { preprocess: 0, embed: 0 }, coverage: { total: 0, embedded: 0, pending: 0, failed: 0, partial: job.partial, ...(left?.length && { notIngestedAgain: left }) } };
    const { coverage } = seen;
    for await (const page of services.inspector.scan(job.dataset)) {
      await putBackIfStopping('while reading its dataset');
      for (const v of page) {
        coverage.total++;
        if (v.phase === 'failed') coverage.failed++;
        else if (v.phase !== 'embedded') {
          coverage.pending++;
          // on its way in another space (ingested with another --embedder): it will not be in this one
          if (v.record.space !== undefined && v.record.space !== job.embedderId) seen.elsewhere++;
          else if (v.phase !== 'orphaned') seen.byStage[v.phase]++;
        } else if (v.space === job.embedderId) {
          coverage.embedded++;
          seen.examples.push({ sha256: v.record.sha256!, label: v.record.label, id: v.id, ...(v.record.split && { split: v.record.split }), ...(v.record.manifest !== undefined && { manifest: v.record.manifest }) });
        } else {
          coverage.pending++; // embedded in another space: not usable here
          seen.elsewhere++;
        }
      }
    }
    // (a dataset deleted, or Redis's data lost, while it was read looks like one with nothing on its way)
    if (!(await services.datasets.exists(job.dataset))) throw new PermanentError('no-data', `dataset ${job.dataset} is not in Redis (deleted since the run was queued, or Redis lost its data): ingest it again, then train`);
    const { elsewhere } = seen;
    // Images on their way as the run starts, put on their way after the train command waited for
    // the dataset and queued the run: the run waits for them as the command did, where it failed
    // at once (a user's `ingest --watch` beside a queued run failed it).
    const stuck = coverage.pending > 0 && !job.partial && elsewhere === 0 ? await waitOrGiveUp(seen, { job, deps, ctx, scanMs: performance.now() - scanStarted, cancelled: () => cancelled('while it waited for its images', true) }) : undefined;
    if (comingBack) await services.redis.del(waitKey);
    if (coverage.pending > 0 && !job.partial) {
      const elsewhereWords = elsewhere ? ` (${elsewhere} of them are in another embedding space: ingest their prefixes again with --embedder ${job.embedderId})` : '';
      const next = stuck ? `: ${stuck}; train again once they are in (or now, on the embedded ones, with --partial)` : ': wait for them, or train with --partial';
      throw new PermanentError('images-pending', `${coverage.pending} of ${coverage.total} images of ${job.dataset} are not embedded in ${job.embedderId} yet${elsewhereWords}${next}`);
    }
    // the wait over: what the follower sees next is the run loading its embeddings
    if (comingBack) await loading();
    return seen;
  }
  // A run that ends for good while it waits forgets its wait (a run given its id again, or retried
  // from the queue board, starts one of its own).
  const { coverage, examples, elsewhere } = await readDataset().catch(async (err: unknown) => {
    if (err instanceof PermanentError) await services.redis.del(waitKey).catch(() => {});
    throw err;
  });
  if (examples.length === 0) {
    // ingested, and every image failed: "ingest it first" would send the user round again
    const why =
      coverage.pending > 0
        ? `: ${coverage.pending} of its ${coverage.total} images are not embedded in it yet${elsewhere ? ` (${elsewhere} are embedded in another space: ingest their prefixes again with --embedder ${job.embedderId})` : ''}`
        : coverage.failed > 0
          ? `: all ${coverage.failed} of its images failed (see "transferline failures -d ${job.dataset}")`
          : ' (ingest it first)';
    throw new PermanentError('no-data', `dataset ${job.dataset} has no embedded images in ${job.embedderId}${why}`);
  }
  const splits = splitExamples(examples, { validation: job.validationFraction, test: job.testFraction });
  const labels = [...new Set([...splits.train, ...splits.validation, ...splits.test].map((e) => e.label))].sort();
  if (labels.length < 2) {
    // (none left: every image was left out, as its bytes are filed under two labels, say)
    const dropped = splits.conflicts.flat().length;
    const left = dropped ? ` (${dropped} images were left out: the same bytes under two labels)` : '';
    throw new PermanentError('one-class', `${labels.length ? `dataset ${job.dataset} has only one label (${labels[0]})` : `dataset ${job.dataset} has no label left to learn`}${left}; a classifier needs two or more`);
  }
  if (splits.validation.length === 0) throw new PermanentError('too-small', 'too few images for a validation split (need 2+ per class, or a val/ folder)');
  if (splits.train.length === 0) throw new PermanentError('too-small', 'no image left to train on: every image is in the val/ or test/ folders');
  const untrained = labels.filter((l) => !splits.train.some((e) => e.label === l));
  if (untrained.length) ctx.log.warn({ labels: untrained }, 'labels with no training image (only in val/ or test/): the model cannot learn them');
  if (splits.conflicts.length) ctx.log.warn({ conflicts: splits.conflicts.length }, 'images found under two labels were left out');
  ctx.log.info({ train: splits.train.length, validation: splits.validation.length, test: splits.test.length, labels: labels.length, explicit: splits.explicit }, 'loading embeddings');

  const classIndex = new Map(labels.map((l, i) => [l, i]));
  // One pass over the shards for all three splits: each shard is read once.
  const [trainX, valX, testX] = await services.cache.loadMany(job.embedderId, [splits.train, splits.validation, splits.test].map((l) => l.map((e) => e.sha256)));
  await putBackIfStopping('after loading its embeddings');
  // Rows a damaged model made (before embed workers refused one): not trained on, and their index
  // entries dropped, so an ingest of the dataset embeds those images again.
  const spoilt = [splits.train, splits.validation, splits.test].flatMap((list, i) => nonFiniteRows([trainX!, valX!, testX!][i]!).map((row) => list[row]!.sha256));
  if (spoilt.length) {
    const unique = [...new Set(spoilt)];
    const at = await services.cache.entries(job.embedderId, unique);
    await services.cache.forget(job.embedderId, unique.flatMap((hash, i) => (at[i] ? [{ hash, expected: at[i] }] : [])));
    const sources = (await services.datasets.sources(job.dataset)).sort().map((s) => DatasetRepository.objectUrl(s));
    throw new PermanentError(
      'bad-embeddings',
      `${spoilt.length} of the cached embeddings this run would train on (space ${job.embedderId}) are not finite numbers (NaN or Infinity): an embed worker whose model was damaged made them (embed workers refuse such a model since). ` +
        `They are dropped from the cache's index: ingest the dataset again (${sources.map((u) => `transferline ingest ${u} -d ${job.dataset}`).join('; ') || `transferline ingest … -d ${job.dataset}`}) to embed those images anew, then train`,
    );
  }
  const labelled = (list: Example[], m: { data: Float32Array; rows: number; dim: number }) => ({
    x: { data: m.data, rows: m.rows, dim: m.dim || 1280 } as Matrix,
    y: Int32Array.from(list, (e) => classIndex.get(e.label)!),
  });
  const train = labelled(splits.train, trainX!);
  const val = labelled(splits.validation, valX!);
  const test = splits.test.length ? labelled(splits.test, testX!) : undefined;

  const m = deps.metrics;
  const d = { dataset: job.dataset };
  m.trainEpoch.set(d, 0);
  m.trainLearningRate.set(d, job.learningRate);
  const fitStarted = performance.now();
  const fit = await fitHead(tf, {
    train,
    validation: val,
    numClasses: labels.length,
    options: {
      hiddenUnits: job.hiddenUnits,
      dropout: job.dropout,
      learningRate: job.learningRate,
      batchSize: job.batchSize,
      epochs: job.epochs,
      l2: job.l2,
      patience: job.patience,
      classWeights: job.classWeights,
      seed: job.seed,
    },
    onEpoch: async (log) => {
      m.trainEpoch.set(d, log.epoch);
      m.trainLoss.set({ ...d, split: 'train' }, log.loss);
      m.trainLoss.set({ ...d, split: 'validation' }, log.valLoss);
      m.trainAccuracy.set({ ...d, split: 'train' }, log.accuracy);
      m.trainAccuracy.set({ ...d, split: 'validation' }, log.valAccuracy);
      m.trainBestValidationLoss.set(d, log.bestValLoss);
      // the epoch the run will save, should it stop later (a review: the panel read 94% for a model of 89%)
      if (log.valLoss === log.bestValLoss) m.trainBestValidationAccuracy.set(d, log.valAccuracy);
      m.trainExamplesPerSecond.set(d, log.examplesPerSecond);
      trained = log.epoch;
      await ctx.progress({ phase: 'training', epochs: job.epochs, ...log } satisfies EpochProgress);
      await cancelled(`after epoch ${log.epoch} of ${job.epochs}`);
      await putBackIfStopping(`after epoch ${log.epoch} of ${job.epochs}`, { epochs: job.epochs - log.epoch, epochMs: (performance.now() - fitStarted) / log.epoch });
    },
  });

  // (the model is disposed however the run ends from here)
  try {
    const report = await buildReport(tf, job, labels, fit, splits, coverage, { train, val, test });
    const ran = fit.history.length;
    const saving = { phase: 'saving', epoch: ran, epochs: ran, ...(fit.stoppedEarly && { planned: job.epochs }) } satisfies EpochProgress;
    await ctx.progress(saving);
    const { layout } = services;
    const modelPrefix = layout.run(job.dataset, job.runId);
    // (what the run left out is in its report's coverage, not among its settings)
    const { dataset, runId, embedderId, notIngestedAgain: _left, stallSeconds: _stall, ...params } = job;
    const { promote } = job;
    const sources = (await services.datasets.sources(dataset)).sort().map((s) => DatasetRepository.objectUrl(s));
    const run: RunDoc = { dataset, runId, embedderId, params, backend: deps.backend, createdAt: report.createdAt, sources };
    const save = async () => {
      await saveHead(tf, fit.model, services.store, deps.bucket, modelPrefix);
      await services.store.putJson(deps.bucket, layout.runFile(dataset, runId, 'labels.json'), labels);
      await services.store.putJson(deps.bucket, layout.runFile(dataset, runId, 'run.json'), run);
      await services.store.putJson(deps.bucket, layout.runFile(dataset, runId, 'report.json'), report);
      // Last, so that whoever follows the pointer finds every file of the run.
      if (promote) await services.store.putJson(deps.bucket, layout.latest(dataset), latestPointer(runId, modelPrefix, 'train'));
    };
    await saveOnceS3Answers(save, deps.s3, ctx, { runId, saving, putBack, cancelled });
    return { ...resultOf(report, modelPrefix, deps.bucket), latest: promote };
  } finally {
    fit.model.dispose();
  }
}

/**
 * Writes a trained run (every write of it idempotent: the same files again), waiting out an outage
 * of S3 with the run in memory: the worker pauses its other work meanwhile, and put back, the run
 * would be trained again from its first epoch (a user's trial lost 400 epochs to 2 minutes of S3).
 * It goes back to the queue only once the outage has lasted SAVE_OUTAGE_WAIT_MS, or the worker is
 * asked to stop. An error from an S3 that answers that may pass (a 5xx past the SDK's own
 * attempts, throttling) is tried again after each of SAVE_ERROR_RETRY_DELAYS_MS (`retryDelaysMs`)
 * before it is thrown: thrown, it trains the run again from its first epoch (a review). During
 * those waits, train --cancel ends the run and a stop puts it back.
 */
export async function saveOnceS3Answers(
  save: () => Promise<void>,
  s3: TrainDeps['s3'],
  ctx: JobContext,
  o: { runId: string; saving: EpochProgress; putBack: (why: string) => Promise<never>; cancelled: (when: string) => Promise<void>; retryDelaysMs?: readonly number[] },
): Promise<void> {
  const since = performance.now();
  const delays = [...(o.retryDelaysMs ?? SAVE_ERROR_RETRY_DELAYS_MS)];
  // the worker asked to stop, or the wait over, while S3 is still down: put back at once (another
  // save first would take the SDK's attempts at a mute S3, minutes past the stop deadline)
  const giveUpIfDue = async () => {
    const waited = performance.now() - since;
    if (!ctx.stopping() && waited < SAVE_OUTAGE_WAIT_MS) return;
    const why = ctx.stopping() ? 'its train worker is stopping' : `it waited ${Math.round(waited / 60_000)} min`;
    await o.putBack(`${s3!.reason} while the trained run was being saved, and ${why}`);
  };
  for (;;) {
    try {
      return await save();
    } catch (err) {
      if (!s3 || !(await s3.isOutage(err))) {
        const delay = mayPassIfAskedAgain(err) ? delays.shift() : undefined;
        if (delay === undefined) throw err;
        ctx.log.warn({ runId: o.runId, err: (err as Error).message }, `the trained run's save failed: trying again in ${delay / 1000} s (${delays.length} more tries after that)`);
        // in steps: train --cancel meanwhile ends the run writing nothing, and a worker asked to
        // stop puts the run back rather than hold its stop (a review: both waited the delay out)
        for (const until = performance.now() + delay; performance.now() < until; ) {
          await o.cancelled('while its save waited to be tried again');
          if (ctx.stopping()) await o.putBack(`the trained run's save failed (${(err as Error).message}), and its train worker is stopping`);
          await sleep(Math.min(250, Math.max(0, until - performance.now())));
        }
        await o.cancelled('while its save waited to be tried again');
        continue;
      }
      await giveUpIfDue();
      const why = `${s3.reason}: the trained run waits in memory to be saved (up to ${SAVE_OUTAGE_WAIT_MS / 60_000} min), not trained again`;
      ctx.log.warn({ runId: o.runId, err: (err as Error).message }, why);
      await ctx.progress({ ...o.saving, why } satisfies EpochProgress).catch(() => {});
      while (!s3.up) {
        // (train --cancel meanwhile: the run ends writing nothing, as it promises)
        await o.cancelled('while its save waited for S3');
        await giveUpIfDue();
        await sleep(500);
      }
      ctx.log.info({ runId: o.runId }, 'S3 is back: saving the trained run');
    }
  }
}

/** The object a report names an example by: its `s3://` URL, or its hash when it has no item id. */
const objectOf = (e: Example) => (e.id ? DatasetRepository.objectUrl(e.id) : `sha256 ${e.sha256}`);
const byObject = (a: Example, b: Example) => (objectOf(a) < objectOf(b) ? -1 : objectOf(a) > objectOf(b) ? 1 : 0);

/**
 * The groups of copies a report names: the first CONFLICTS_NAMED, each with its first as many
 * copies, the copies in `order` and the groups by their first copy's object (not Redis's order,
 * which changes from run to run).
 */
function firstGroups(groups: Example[][], order: (a: Example, b: Example) => number): Example[][] {
  return groups
    .map((copies) => [...copies].sort(order))
    .sort((a, b) => byObject(a[0]!, b[0]!))
    .slice(0, CONFLICTS_NAMED)
    .map((copies) => copies.slice(0, CONFLICTS_NAMED));
}

/** The images held out with a copy where they would be trained on that a report names: held-out copies first. */
function namedHeldOutCopies(groups: Example[][]): string[][] {
  const held = (e: Example) => Number(e.split === 'validation' || e.split === 'test');
  return firstGroups(groups, (a, b) => held(b) - held(a) || byObject(a, b)).map((copies) => copies.map(objectOf));
}

/** The images filed under two labels that a report names, each copy with its label and the manifest that labels it. */
function namedConflicts(conflicts: Example[][]): NonNullable<ReportDoc['split']['conflicting']> {
  return firstGroups(conflicts, byObject).map((copies) => copies.map((e) => ({ object: objectOf(e), label: e.label, ...(e.manifest !== undefined && { manifest: e.manifest }) })));
}

/** What a train job returns for a run: read off its report (a run trained now, or found written). */
function resultOf(report: ReportDoc, modelPrefix: string, bucket: string): TrainResult {
  return {
    dataset: report.dataset,
    runId: report.runId,
    modelPrefix,
    bucket,
    validationAccuracy: report.validation.accuracy,
    ...(report.test && { testAccuracy: report.test.accuracy }),
    examples: report.split.train + report.split.validation + report.split.test,
    bestEpoch: report.bestEpoch,
  };
}

/** A dataset as a run reads it: what it can train on, and what it cannot yet. */
interface DatasetRead {
  examples: Example[];
  coverage: ReportDoc['coverage'];
  /** embedded, or on their way, in another space than the run's: no wait brings them into it */
  elsewhere: number;
  /** on their way in the run's space, by the stage whose job holds them (the orphaned aside: no job moves them) */
  byStage: { preprocess: number; embed: number };
}

/**
 * Images of the dataset on their way as a run starts (put on their way after it was queued: an
 * `ingest --watch` beside it, say). The run goes back to the queue for a few seconds (the train
 * worker takes other runs meanwhile) and looks again when it comes back, until none is on its
 * way (DeferJob, thrown). Returns instead why it gives up: images with no job to move them (at
 * once); none done for the run's stall timeout while a stage that holds some cannot move them (its
 * queue paused, or no worker of it connected: a busy one goes on); IMAGES_WAIT_MAX_MS since the
 * wait began (kept in Redis across the put-backs, keys.trainWaiting).
 */
async function waitOrGiveUp(seen: DatasetRead, o: { job: TrainJob; deps: TrainDeps; ctx: JobContext; scanMs: number; cancelled: () => Promise<void> }): Promise<string> {
  const { job, deps } = o;
  const { redis, keys } = deps.services;
  const onTheirWay = seen.byStage.preprocess + seen.byStage.embed;
  const jobless = seen.coverage.pending - seen.elsewhere - onTheirWay;
  if (jobless > 0) {
    const [it, its] = jobless === 1 ? ['it', 'its'] : ['them', 'their'];
    return `${jobless} of them ${jobless === 1 ? 'has' : 'have'} no job to move ${it} on (${relistCommand(job.dataset)} to put ${it} on ${its} way again)`;
  }
  const key = keys.trainWaiting(job.runId);
  const now = Date.now();
  const done = seen.coverage.embedded + seen.coverage.failed;
  const before = TrainWait.safeParse(JSON.parse((await redis.get(key)) ?? 'null'));
  const wait: TrainWait = before.success ? { ...before.data, done, movedAt: done > before.data.done ? now : before.data.movedAt } : { since: now, movedAt: now, done };
  if (now - wait.since > IMAGES_WAIT_MAX_MS) return `${onTheirWay} still on their way after the run waited ${Math.round(IMAGES_WAIT_MAX_MS / 60_000)} minutes for them`;
  const stallSeconds = job.stallSeconds ?? DEFAULT_STALL_SECONDS;
  if (now - wait.movedAt > stallSeconds * 1000) {
    const stages = (['preprocess', 'embed'] as const).filter((st) => seen.byStage[st] > 0);
    const blocked = (await Promise.all(stages.map((st) => deps.stageBlocked?.(st, job.embedderId, { pausedForSeconds: stallSeconds })))).filter((w): w is string => !!w);
    if (blocked.length) return `none done for ${Math.round((now - wait.movedAt) / 1000)} s, and ${blocked.join(', and ')}`;
  }
  await redis.set(key, JSON.stringify(wait), 'PX', IMAGES_WAIT_MAX_MS + 10 * 60_000);
  const [n, its] = onTheirWay === 1 ? ['image', 'its'] : ['images', 'their'];
  const why = `${onTheirWay} ${n} of ${job.dataset} on ${its} way (put on ${its} way since the run was queued)`;
  if (!before.success) o.ctx.log.info({ dataset: job.dataset, runId: job.runId, onTheirWay }, `run ${job.runId} waits for ${why}: back to the queue until they are in`);
  await o.ctx.progress({ phase: 'waiting', epoch: 0, epochs: job.epochs, why } satisfies EpochProgress);
  // (a cancel that came while it looked found it active, and waits for it to stop: it stops now)
  await o.cancelled();
  throw new DeferJob(Math.max(IMAGES_LOOK_MS, 4 * o.scanMs), `run ${job.runId} waits for ${why}`);
}

/**
 * The result of a run whose report is in the bucket already. Its latest.json pointer (the last
 * write of a run: a crash may have come before it) is set to this run unless it was written
 * after this run's report (by promote, delete, or another run), or names a newer run (by the
 * reports' createdAt): a run retried long after is not made latest again, and a rollback by
 * `promote` stands; nor is a run trained with --no-promote.
 */
async function finishedRun(report: ReportDoc, deps: TrainDeps, ctx: JobContext, promote: boolean): Promise<TrainResult> {
  const { dataset, runId } = report;
  const { layout, store } = deps.services;
  const modelPrefix = layout.run(dataset, runId);
  ctx.log.info({ dataset, runId }, 'this run is written already: not trained again');
  const latest = await store.getDocument(LatestDoc, deps.bucket, layout.latest(dataset));
  const current = latest && latest.runId !== runId ? await store.getDocument(ReportDoc, deps.bucket, layout.runFile(dataset, latest.runId, 'report.json')).catch(() => undefined) : undefined;
  const setSince = latest?.setAt !== undefined && latest.setAt > report.createdAt;
  if (promote && (!latest || (latest.runId !== runId && !setSince && !(current && current.createdAt > report.createdAt)))) {
    await store.putJson(deps.bucket, layout.latest(dataset), latestPointer(runId, modelPrefix, 'train'));
    // (its last write made now: an attempt that wrote the rest and then failed counted no run)
    return { ...resultOf(report, modelPrefix, deps.bucket), latest: true };
  }
  return { ...resultOf(report, modelPrefix, deps.bucket), latest: latest?.runId === runId, replayed: true };
}

type Labelled = { x: Matrix; y: Int32Array };

async function buildReport(
  tf: typeof tfTypes,
  job: TrainJob,
  labels: string[],
  fit: Awaited<ReturnType<typeof fitHead>>,
  splits: ReturnType<typeof splitExamples>,
  coverage: ReportDoc['coverage'],
  data: { train: Labelled; val: Labelled; test?: Labelled },
): Promise<ReportDoc> {
  const k = labels.length;
  const probs = (s: Labelled) => predictProba(tf, fit.model, s.x);
  const valP = await probs(data.val);
  let threshold: number | undefined;
  // A threshold is chosen only on a validation split that holds both classes: on one class
  // alone any cutoff "separates" it, and serving would call most images that class's opposite.
  const bothInValidation = k === 2 && data.val.y.includes(0) && data.val.y.includes(1);
  const binary = (p: Float32Array, s: Labelled): SplitReport['binary'] => {
    if (!bothInValidation) return undefined;
    const scores = Float32Array.from({ length: s.y.length }, (_, i) => p[i * 2 + 1]!);
    const positive = Array.from(s.y, (c) => c === 1);
    threshold ??= bestThreshold(scores, positive).threshold;
    const t = threshold;
    const acc = scores.reduce((a, v, i) => a + ((v >= t) === positive[i] ? 1 : 0), 0) / Math.max(1, scores.length);
    const auc = rocAuc(scores, positive);
    // A split with one class only has no ROC curve: null, not NaN (which JSON cannot hold).
    return { positiveLabel: labels[1]!, rocAuc: Number.isFinite(auc) ? auc : null, threshold: t, accuracyAtThreshold: acc };
  };
  const splitReport = (p: Float32Array, s: Labelled): SplitReport => {
    const r: SplitReport = evaluate(labels, s.y, argmaxRows(p, k));
    const b = binary(p, s);
    return b ? { ...r, binary: b } : r;
  };
  const validation = splitReport(valP, data.val);
  const testP = data.test && (await probs(data.test));
  const trainP = await probs(data.train);
  // (what the run left out is in its report's coverage, not among its settings)
  const { dataset, runId, embedderId, notIngestedAgain: _left, stallSeconds: _stall, ...params } = job;
  return {
    dataset,
    runId,
    embedderId,
    createdAt: new Date().toISOString(),
    labels,
    split: { train: splits.train.length, validation: splits.validation.length, test: splits.test.length, explicit: splits.explicit, heldOut: splits.heldOut, conflictsLeftOut: splits.conflicts.length, ...(splits.conflicts.length && { conflicting: namedConflicts(splits.conflicts), conflictsLabelledBy: conflictsLabelledBy(splits.conflicts.flat()) }), ...(splits.heldOutCopies.length && { copiesHeldOut: splits.heldOutCopies.length, heldOutCopies: namedHeldOutCopies(splits.heldOutCopies) }) },
    coverage,
    params,
    classWeights: fit.classWeights,
    bestEpoch: fit.bestEpoch,
    stoppedEarly: fit.stoppedEarly,
    history: fit.history,
    validation,
    ...(data.test && testP && { test: splitReport(testP, data.test) }),
    train: evaluate(labels, data.train.y, argmaxRows(trainP, k)),
  };
}

/** The rows of `m` holding a value that is not a finite number. */
function nonFiniteRows(m: { data: Float32Array; rows: number; dim: number }): number[] {
  const rows: number[] = [];
  // (v - v is NaN for NaN and ±Infinity alone: a plain loop, ten times faster than every(Number.isFinite) over a million rows)
  for (let r = 0, i = 0; r < m.rows; r++) {
    for (const end = i + m.dim; i < end; i++) {
      const v = m.data[i]!;
      if (v - v !== 0) {
        rows.push(r);
        i = end;
        break;
      }
    }
  }
  return rows;
}
