import { randomBytes } from 'node:crypto';
import { isDeepStrictEqual } from 'node:util';
import { conflictsLabelledBy, DEFAULT_STALL_SECONDS, enqueue, type DatasetStatus, jobIds, NEW_RUN_ID, permanentFailureOf, rangeWords, ReportDoc, sleep, TrainJob, type RunFile, type TrainJobInput, type TrainResult } from '@transferline/shared';
import type { CliContext } from '../cli-context.js';
import { waitForDataset } from '../dataset-wait.js';
import { followJob, say } from '../job-follow.js';
import { CliExit, EXIT } from '../exit-codes.js';
import { createProgress } from '../progress.js';
import { printable } from '../terminal.js';
import { classFigures, conflictCopy, confusableLabelNotes, fewInAll, fewToLearn, fewToMeasure, heldOutCopiesWords, heldOutWords, notIngestedAgain, randomSpaceNote, thresholdCaution, thresholdText, underTwoLabelsFix } from '../report-words.js';
import { elsewhereLines } from './ingest.command.js';
import { latestRun } from './models.command.js';
import { indexUnderOtherPrefixes, lostDatasetLine, lostDatasets, noSuchDataset, otherPrefixWords, reingestCommands } from '../data-loss.js';
import { TRAIN_FAILURE_REASONS, waitingFor, type EpochProgress } from '@transferline/train-worker/train-head.job';
import { storageHint } from '../storage-hint.js';

/** The option a TrainJob field comes from: `validationFraction` → `--validation-fraction`. */
function flagOf(path: PropertyKey[]): string {
  const field = String(path[0] ?? '');
  return field ? `--${field.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}` : 'settings';
}

/** Per-run settings the CLI passes through; unset ones take the job catalog's defaults. */
export type HeadSettings = Partial<Pick<TrainJob, 'epochs' | 'learningRate' | 'batchSize' | 'seed' | 'hiddenUnits' | 'dropout' | 'l2' | 'patience' | 'classWeights' | 'validationFraction' | 'testFraction'>>;

export interface TrainOptions extends HeadSettings {
  dataset: string;
  runId?: string;
  wait: boolean;
  /** train on what is embedded now, although images are still pending */
  partial?: boolean;
  /** make the run the dataset's latest when it is written (default true; `--no-promote`) */
  promote?: boolean;
  /** seconds without progress (or without a worker) before a wait gives up (default 30) */
  stallSeconds?: number;
}

export interface TrainOutcome {
  runId: string;
  result?: TrainResult;
  report?: ReportDoc;
}

/** A sortable, unique run id: 20261127-213000-3fa2. */
export function newRunId(now = new Date()): string {
  const iso = now.toISOString().replace(/[-:]/g, '').replace('T', '-').slice(0, 15);
  return `${iso}-${randomBytes(2).toString('hex')}`;
}

/**
 * `transferline train --dataset NAME`: trains in the dataset's own embedding space (recorded at
 * ingest). Images still pending are waited for (or left out with --partial, which the report
 * records); then it enqueues a run for the train worker, follows it epoch by epoch, and prints
 * the report when it lands in the bucket.
 */
export async function trainCommand(ctx: CliContext, o: TrainOptions): Promise<TrainOutcome> {
  const { datasets, inspector, store, layout } = ctx.services;
  if (!(await datasets.exists(o.dataset))) {
    // runs of it in the bucket: it was deleted, or Redis lost its data; say how to bring it back
    const again = await reingestCommands(ctx, o.dataset);
    // (a shell whose TL_QUEUE_PREFIX is not the workers' sees none of their datasets)
    const others = again ? await indexUnderOtherPrefixes(ctx, again.space).catch(() => []) : [];
    if (others.length) throw new Error(`no dataset named ${o.dataset}, though it has trained runs, and the index of their space is elsewhere: ${otherPrefixWords(ctx, others)}`);
    if (again) throw new Error(`no dataset named ${o.dataset} in Redis, though it has trained runs (it was deleted, or Redis lost its data); ingest it again, as its runs recorded: ${again.commands.join('; ')}`);
    throw await noSuchDataset(ctx, o.dataset, '(none; run ingest first)');
  }
  // Redis lost its records and an ingest brought back only part of it (cut short, or some of its
  // prefixes): a run now would learn from that part, and become the latest. (Runs that cannot be
  // read now are not a reason to refuse.)
  const lost = (await lostDatasets(ctx).catch(() => [])).find((l) => l.dataset === o.dataset);
  if (lost && !o.partial) throw new CliExit(EXIT.error, `transferline: ${lostDatasetLine(lost)}. A run now would learn from part of it: ingest again first, or train with --partial on what it has`);
  const space = await datasets.space(o.dataset);
  if (!space) throw new Error(`dataset ${o.dataset} has no embedding space recorded (ingested by an older version?): ingest it again`);
  const runId = o.runId ?? newRunId();
  // before the id names anything in the bucket or the queue
  if (!NEW_RUN_ID.pattern.test(runId)) throw new CliExit(EXIT.usage, `transferline: bad training settings: --run-id: ${NEW_RUN_ID.rule} (got ${runId})`);
  const jobId = jobIds.train({ runId });
  // Run ids name train jobs across datasets (`train --follow RUN` takes the id alone).
  const taken = await ctx.queues.train.getJob(jobId);
  const takenBy = (taken?.data as { dataset?: string } | undefined)?.dataset;
  const takenByOther = takenBy !== undefined && takenBy !== o.dataset ? takenBy : undefined;
  const runJson = (dataset: string) => store.headObject(ctx.config.s3.bucket, layout.runFile(dataset, runId, 'run.json'));
  const written = await runJson(o.dataset);
  // A run that ended without a model for a reason its worker gave (cancelled, nothing to train
  // on…) leaves only its failed job: its id may be used again, by any dataset (the job goes when
  // the new run is queued, and train says so). Not one that failed otherwise (stalled: its
  // worker may live on), nor one whose model is in the bucket.
  const ended = taken && !written && (await taken.getState()) === 'failed' ? permanentFailureOf(taken.failedReason) : undefined;
  const replaces = ended && (TRAIN_FAILURE_REASONS as readonly string[]).includes(ended.reason) && !(takenByOther && (await runJson(takenByOther))) ? taken : undefined;
  if (taken && !replaces && takenByOther) {
    throw new CliExit(EXIT.usage, `transferline: run id ${runId} is taken by a run of dataset ${takenByOther} (run ids are unique across datasets): choose another --run-id, or leave it out for a new one`);
  }
  if ((taken && !replaces) || written) {
    // files of a run whose save was cut short (no report.json): models lists none of it (a review)
    const report = written && (await store.headObject(ctx.config.s3.bucket, layout.runFile(o.dataset, runId, 'report.json')));
    const listed = !written || report ? ' (see "transferline models")' : `: its files are in s3://${ctx.config.s3.bucket}/${layout.run(o.dataset, runId)} without a report.json (a save cut short), which "transferline models" does not list; transferline delete run ${o.dataset}@${runId} deletes them`;
    throw new CliExit(EXIT.usage, `transferline: run ${runId} exists already${listed}: choose another --run-id, or leave it out for a new one`);
  }
  // The settings are checked before any wait: a bad value must not wait for every embedding first.
  const { dataset, wait, partial, runId: _r, stallSeconds: _s, ...settings } = o;
  const defined = Object.fromEntries(Object.entries(settings).filter(([, v]) => v !== undefined));
  const stallSeconds = o.stallSeconds ?? DEFAULT_STALL_SECONDS;
  // (stallSeconds: the run's patience too, with images ingested after it was queued that stop moving)
  const input: TrainJobInput = { dataset, runId, embedderId: space, partial: !!partial, ...defined, stallSeconds, ...(lost?.missing?.length && { notIngestedAgain: lost.missing }) };
  const parsed = TrainJob.safeParse(input);
  if (!parsed.success) throw new CliExit(EXIT.usage, `transferline: bad training settings: ${parsed.error.issues.map((i) => `${flagOf(i.path)}: ${rangeWords(i) ?? i.message}${i.path.length ? ` (got ${String((input as Record<string, unknown>)[String(i.path[0])])})` : ''}`).join('; ')}`);
  const payload = parsed.data;
  // (a user's trial: --dropout 0.5 on a softmax head was taken, and its run page listed it as if it applied)
  if (o.dropout !== undefined && payload.hiddenUnits === 0) {
    throw new CliExit(EXIT.usage, `transferline: bad training settings: --dropout: the softmax head has no hidden layer to drop units of (add --hidden-units N, or leave --dropout out)`);
  }
  // and its settings say it drops nothing (they recorded the default 0.2, which applied to nothing)
  if (payload.hiddenUnits === 0) payload.dropout = 0;
  // A shell whose TL_BUCKET/TL_PREFIX are not the workers' (a user's trial: said only once the
  // run was trained and made the latest): the run goes where the workers write, and is found
  // from here only with their settings.
  const storage = await storageHint(ctx);
  if (storage) ctx.out.write(`warning: ${storage} (the run is written there)\n`);
  if (lost) {
    const latest = payload.promote ? '; the run becomes the latest (--no-promote keeps the one there)' : '';
    const recorded = lost.missing?.length ? ', and the report records what it left out' : '';
    ctx.out.write(`--partial: ${lostDatasetLine(lost)}. Training on what it has${recorded}${latest}.\n`);
  }
  const status = await inspector.status(o.dataset);
  // embedded in another space: no wait brings them into this one
  const elsewhere = status.elsewhere.reduce((n, e) => n + e.count, 0);
  if (elsewhere > 0 && !o.partial) {
    throw new CliExit(EXIT.error, `transferline: ${elsewhereLines(status).join('; ')}; or train with --partial to leave them out`);
  }
  if (elsewhere > 0) ctx.out.write(`--partial: ${elsewhereLines(status).join('; ')}\n`);
  const waiting = status.pending + status.orphaned;
  // nothing to train on: the run would be queued only to fail (no-data), and count as a failed run
  if (o.partial && status.embedded - elsewhere === 0) {
    const counts = `${waiting} on their way, ${status.failed} failed${elsewhere ? `, ${elsewhere} in another space` : ''}`;
    const next = waiting > 0 ? `wait for them (transferline status -d ${o.dataset}), or train without --partial to wait here` : `nothing will be (see transferline failures -d ${o.dataset})`;
    throw new CliExit(EXIT.error, `transferline: --partial trains on the embedded images of ${o.dataset}, and none of its ${status.total} is embedded yet (${counts}): ${next}`);
  }
  // one label among the images it could learn from, or none: the run would be queued only to fail
  // (one-class, no-data), and count as a failed run (a user's trial: the failed-run alert for a mistake).
  // It learns from the images embedded in the dataset's space by the time it starts: with
  // --partial those embedded now, else (it waits for them) those that do not fail.
  const unlearnable = (s: DatasetStatus) => {
    const learnable = (l: DatasetStatus['labels'][number]) => (o.partial ? l.ready : l.count - (l.failed ?? 0));
    const labels = s.labels.filter((l) => learnable(l) > 0);
    // (--partial with nothing embedded is refused above, with what is on its way)
    if (labels.length === 0 && !o.partial && s.total > 0) {
      return new CliExit(EXIT.error, `transferline: dataset ${o.dataset} has nothing to learn from: all ${s.failed} of its images failed (see "transferline failures -d ${o.dataset}"): mend or replace them and ingest again. No run was queued`);
    }
    if (labels.length !== 1) return undefined;
    const [only] = labels as [DatasetStatus['labels'][number]];
    const others = s.labels.filter((l) => l !== only);
    const otherWords = others.map((l) => {
      if (!o.partial) return `${l.label}: all ${l.count} failed`;
      // (neither on their way nor failed: their jobs lost, or embedded in another space; an ingest mends both)
      const rest = l.count - l.ready - (l.failed ?? 0) - (l.pending ?? 0);
      const parts = [l.pending && `${l.pending} on their way`, l.failed && `${l.failed} failed`, rest > 0 && `${rest} with no job, or in another space`].filter(Boolean);
      return `${l.label}: none embedded (${parts.join(', ')})`;
    });
    // (--partial: another label's images on their way make a run that waits for them possible)
    const coming = o.partial && others.some((l) => (l.pending ?? 0) > 0);
    const next = coming
      ? `wait for the images of the other labels (transferline status -d ${o.dataset}), or train without --partial to wait here`
      : 'add the images of another label (a folder per label under the prefix, or rows of a label manifest) and ingest again';
    return new CliExit(
      EXIT.error,
      `transferline: ${o.partial ? `--partial trains on the embedded images of ${o.dataset}, and they are` : `dataset ${o.dataset} has`} images of one label only (${only.label}, ${learnable(only)} images${otherWords.length ? `; ${otherWords.join(', ')}` : ''}): a classifier needs two or more: ${next}. No run was queued`,
    );
  };
  const before = unlearnable(status);
  if (before) throw before;
  if (waiting > 0 && !o.partial) {
    ctx.out.write(`${waiting} of ${status.total} images of ${o.dataset} are not embedded yet; waiting for them (or train now on the ${status.embedded} embedded with --partial)\n`);
    const waited = await waitForDataset(ctx, o.dataset, { space, stallSeconds }).catch((err: unknown) => {
      // (a user's trial: "the workers go on with it" read as if the run would)
      if (err instanceof CliExit && err.code === EXIT.interrupted) {
        throw new CliExit(EXIT.interrupted, `\ninterrupted while waiting for its images: no run was queued. The images on their way go on (see "transferline status -d ${o.dataset}"); train again once they are in`);
      }
      // (a wait that gave up: the same, whatever it says of the workers)
      if (err instanceof CliExit) throw new CliExit(err.code, `${err.message.replace(/\s+$/, '')}\nno run was queued${err.code === EXIT.stalled ? ': train again once the images are in (or now, on those embedded, with --partial)' : ''}`);
      throw err;
    });
    // (the images of all but one label may have failed meanwhile)
    const after = unlearnable(waited);
    if (after) throw after;
  } else if (waiting > 0) {
    ctx.out.write(`training on the ${status.embedded} embedded images of ${status.total} (--partial): ${waiting} still pending are left out, and the report says so\n`);
  }

  if (replaces) {
    // looked at again just before it goes: a wait above may have been long, and the id queued again meanwhile
    const now = await ctx.queues.train.getJob(jobId);
    const same = now && (await now.getState()) === 'failed' && now.failedReason === replaces.failedReason && now.finishedOn === replaces.finishedOn;
    const removed = same && (await now.remove().then(() => true, () => false));
    if (!removed) throw new CliExit(EXIT.usage, `transferline: run ${runId} was queued again meanwhile: choose another --run-id, or leave it out for a new one`);
    const why = permanentFailureOf(replaces.failedReason)!;
    ctx.out.write(`run ${runId} ended without a model (${why.reason === 'cancelled' ? 'cancelled' : `${why.reason}: ${why.detail}`}): this run takes its id\n`);
  }
  // the latest run before this one is queued: what it replaces, if it becomes the latest (looked up
  // now: a look once it is queued would hold up following a run that ends in a second; and before
  // the turn, which an S3 slow to answer would otherwise outlast)
  const replacing = payload.promote && wait ? await latestRun(ctx, payload.dataset).catch(() => undefined) : undefined;
  // The same command again (twice in a row, or from another shell) while its run is queued, not
  // running (waiting, or put back by a stopping worker, or waiting to retry): that run reads the
  // dataset when it starts, so a second would train on the same images with the same settings and
  // seed, a copy. This one joins it; a run id given asks for a run of its own. Two commands at
  // once take turns from the look to the add (queueingTurn), so that both do not queue.
  const release = o.runId === undefined ? await queueingTurn(ctx, payload.dataset) : async () => {};
  try {
    const twin = o.runId === undefined ? await queuedTwin(ctx, payload) : undefined;
    if (twin) {
      await release();
      ctx.out.write(`run ${twin} of ${payload.dataset}, with these same settings, is queued, not running now: it trains on what the dataset holds when it starts, so this joins it rather than queue a copy (--run-id ID queues another)\n`);
      if (!wait) return { runId: twin };
      // (the latest run now is the one the queued run will replace: it has not run)
      return followRun(ctx, twin, stallSeconds, undefined, replacing ?? null);
    }
    // a run id used before by a run cancelled while queued (or while it waited for images): the new run is not that one
    await ctx.services.redis.del(ctx.services.keys.trainCancel(runId), ctx.services.keys.trainWaiting(runId));
    await enqueue(ctx.queues.train, 'train', [{ id: jobId, payload }]);
    // BullMQ adds nothing for an id queued already: another command given the same --run-id
    // between the look above and this add (a review: this one then followed and reported the
    // other's run of another dataset, and exited 0). The same run asked for twice is one run,
    // whatever each command's patience (--stall-timeout: the run keeps the first one's).
    const queued = await ctx.queues.train.getJob(jobId);
    if (queued && !sameRun(queued.data, payload)) {
      const theirs = (queued.data as { dataset?: string }).dataset;
      throw new CliExit(EXIT.usage, `transferline: run id ${runId} was taken meanwhile by another train command (${theirs === payload.dataset ? `of ${theirs}, with other settings` : `of dataset ${theirs}`}): nothing queued; choose another --run-id, or leave it out for a new one`);
    }
  } finally {
    await release();
  }
  ctx.out.write(`run ${payload.runId} queued for dataset ${payload.dataset} (up to ${payload.epochs} epochs, ${payload.hiddenUnits ? `hidden layer of ${payload.hiddenUnits}` : 'softmax head'})\n`);
  if (!wait) return { runId };
  return followRun(ctx, runId, stallSeconds, payload.dataset, replacing ?? null);
}

/** How long a train command may hold a dataset's queueing turn: its look and its add take a few round trips. */
const QUEUEING_HOLD_MS = 10_000;

/**
 * Waits for the dataset's queueing turn (keys.trainQueueing) and takes it; resolves to its release.
 * A holder that died frees it after QUEUEING_HOLD_MS (the key's TTL); past twice that, this goes on
 * without it rather than wait longer.
 */
async function queueingTurn(ctx: CliContext, dataset: string): Promise<() => Promise<void>> {
  const { redis, keys } = ctx.services;
  const key = keys.trainQueueing(dataset);
  const token = randomBytes(8).toString('hex');
  const deadline = Date.now() + 2 * QUEUEING_HOLD_MS;
  while ((await redis.set(key, token, 'PX', QUEUEING_HOLD_MS, 'NX')) !== 'OK' && Date.now() < deadline) {
    await sleep(50, ctx.signal);
    if (ctx.signal?.aborted) throw new CliExit(EXIT.interrupted, `\ninterrupted: no run of ${dataset} queued`);
  }
  let released = false;
  return async () => {
    if (released) return;
    released = true;
    // (only its own: one held past its TTL may be another command's by now)
    if ((await redis.get(key)) === token) await redis.del(key);
  };
}

/**
 * The run a train job asks for, as BullMQ stores it (JSON: a field left undefined is not there),
 * without the command's patience (`stallSeconds`): two commands that differ only in it ask for one run.
 */
function runAskedFor(job: Partial<TrainJob>): Partial<TrainJob> {
  const { stallSeconds: _, ...run } = JSON.parse(JSON.stringify(job)) as Partial<TrainJob>;
  return run;
}

/** Whether a queued job's data asks for the run `payload` asks for: the same id, dataset and settings. */
function sameRun(data: unknown, payload: TrainJob): boolean {
  return isDeepStrictEqual(runAskedFor((data ?? {}) as Partial<TrainJob>), runAskedFor(payload));
}

/** A run of the same dataset and settings (its id and the command's patience aside) that no worker runs now: waiting, or delayed (the first 1,000 looked at). */
async function queuedTwin(ctx: CliContext, payload: TrainJob): Promise<string | undefined> {
  const { runId: _, ...settings } = runAskedFor(payload);
  for (const job of await ctx.queues.train.getJobs(['waiting', 'prioritized', 'delayed'], 0, 999)) {
    const other = TrainJob.safeParse(job?.data);
    if (!other.success || other.data.dataset !== payload.dataset) continue;
    const { runId, ...its } = runAskedFor(other.data);
    if (isDeepStrictEqual(its, settings)) return runId;
  }
  return undefined;
}

/**
 * Follows a run epoch by epoch (also one started elsewhere: `transferline train --follow RUN`)
 * and prints its report when it lands in the bucket.
 */
export async function followRun(
  ctx: CliContext,
  runId: string,
  stallSeconds = 30,
  dataset?: string,
  /** the latest run when it was queued (null: none); unknown for a run followed later, then looked up alongside */
  replacing?: { runId: string } | null,
): Promise<TrainOutcome> {
  const job = await ctx.queues.train.getJob(jobIds.train({ runId }));
  if (!job) throw new Error(`no run ${runId} in the train queue (finished runs are listed by "transferline models")`);
  const payload = TrainJob.parse(job.data);
  if (dataset !== undefined && payload.dataset !== dataset) {
    throw new CliExit(EXIT.usage, `transferline: run ${runId} trains dataset ${payload.dataset}, not ${dataset} (--follow takes the run id alone)`);
  }
  // the latest run before this one ends: what it replaces, if it becomes the latest (serve follows
  // it); looked up beside the follow, not before it (a look read after the run ended names the run itself)
  const before = replacing !== undefined ? Promise.resolve(replacing ?? undefined) : payload.promote ? latestRun(ctx, payload.dataset).catch(() => undefined) : Promise.resolve(undefined);
  const bar = createProgress(`training ${payload.dataset}`);
  let result: TrainResult;
  try {
    result = await followJob<TrainResult>(ctx, ctx.queues.train, job, {
      what: `run ${runId}`,
      role: 'train',
      stallSeconds,
      followAgain: `transferline train --follow ${runId}`,
      cancel: `transferline train --cancel ${runId}`,
      wasCancelled: async () => (await ctx.services.redis.exists(ctx.services.keys.trainCancel(runId))) > 0,
      onProgress: (data) => {
        if (typeof data !== 'object' || data === null) return;
        const p = data as EpochProgress;
        // (a line of its own: the bar then starts again from 0)
        if (p.phase === 'put-back') {
          const after = p.epoch > 0 ? ` after epoch ${p.epoch} of ${p.epochs}` : '';
          say(ctx, `run ${runId} goes back to the queue${after}: ${p.why ?? 'its train worker put it back'}; a train worker starts it again from its first epoch`);
          return;
        }
        const detail =
          p.phase === 'training'
            ? `loss ${p.loss?.toFixed(4)} val_loss ${p.valLoss?.toFixed(4)} val_acc ${p.valAccuracy?.toFixed(3)}`
            : p.phase === 'waiting' && p.why
              ? `waiting for ${p.why}`
              : p.phase === 'saving' && p.why
                ? `saving: ${p.why}`
                : p.phase === 'saving' && p.planned
                  ? `saving (stopped early: ${p.epochs} of ${p.planned} epochs, validation loss no longer improving)`
                  : p.phase;
        // a run stopped early keeps the total it was shown with: 20/300, "stopped early: 20 of 300"
        bar.update(p.epoch, p.planned ?? p.epochs, detail, p.phase !== 'training');
      },
    });
  } finally {
    bar.stop();
  }
  // read where the worker wrote it (its bucket, its run folder under its TL_PREFIX), which a shell
  // with other settings would not find
  const report = await ctx.services.store.getDocument(ReportDoc, result.bucket ?? ctx.config.s3.bucket, `${result.modelPrefix}${'report.json' satisfies RunFile}`);
  const random = report && randomSpaceNote(await ctx.services.spaces.get(report.embedderId).catch(() => undefined), 'these figures are');
  printReport(ctx, result, report, payload.promote, random);
  const replaced = await before;
  if (result.latest && replaced && replaced.runId !== runId) await sayIfWorse(ctx, result, replaced.runId);
  return { runId, result, ...(report && { report }) };
}

/** How long `train --cancel` waits for a run in training to stop (at the end of its epoch). */
const CANCEL_WAIT_MS = 120_000;
/** How long a cancel request waits in Redis for a worker to act on it (one taking the run up again, say). */
const CANCEL_TTL_SECONDS = 24 * 3600;

export type CancelOutcome = 'removed' | 'cancelled' | 'already-cancelled';

/**
 * `transferline train --cancel RUN`: stops a run for good, writing no model. A run no worker holds
 * is removed from the queue; one in training stops at the end of an epoch within about a second (its worker
 * checks a flag in Redis after an epoch, at most once a second), and so does one a worker takes up again after its own died,
 * while the flag lasts (CANCEL_TTL_SECONDS). The flag also tells a `train` following a removed
 * run that it was cancelled, not lost. Exit 0 once cancelled; 1 if the run ended otherwise (a
 * model was written); 4 if it has not stopped within the wait; 130 on Ctrl-C.
 */
export async function cancelRun(ctx: CliContext, runId: string, waitMs = CANCEL_WAIT_MS, dataset?: string): Promise<CancelOutcome> {
  const w = (line: string) => ctx.out.write(`${line}\n`);
  const { redis, keys } = ctx.services;
  const flag = keys.trainCancel(runId);
  const job = await ctx.queues.train.getJob(jobIds.train({ runId }));
  // -d as a check, as --follow takes it (an operator's trial: refused with it before): a run of
  // another dataset is not cancelled
  const of = (job?.data as { dataset?: unknown } | undefined)?.dataset;
  if (job && dataset !== undefined && of !== dataset) throw new CliExit(EXIT.usage, `transferline: run ${runId} trains dataset ${String(of)}, not ${dataset}: nothing was cancelled`);
  if (!job) {
    if (await redis.exists(flag)) {
      w(`run ${runId} had been cancelled already: nothing to cancel`);
      return 'already-cancelled';
    }
    throw new Error(`no run ${runId} in the train queue (finished runs are listed by "transferline models")`);
  }
  const failure = async () => (await ctx.queues.train.getJob(job.id!))?.failedReason ?? '';
  const ended = async (): Promise<'cancelled' | 'finished' | undefined> => {
    const state = await job.getState();
    if (state === 'completed') return 'finished';
    if (state === 'failed') return permanentFailureOf(await failure())?.reason === 'cancelled' ? 'cancelled' : 'finished';
    return undefined;
  };
  const finished = async () => {
    const why = await failure();
    return new CliExit(EXIT.error, `transferline: run ${runId} ended before it could be cancelled: ${why ? `it failed (${why})` : 'its model is in the bucket (transferline models)'}`);
  };
  const before = await ended();
  if (before === 'cancelled') {
    w(`run ${runId} had been cancelled already: nothing to cancel`);
    return 'already-cancelled';
  }
  if (before === 'finished') throw await finished();
  await redis.set(flag, new Date().toISOString(), 'EX', CANCEL_TTL_SECONDS);
  /** a run not held by a worker now, removed from the queue: said, or false when a worker took it meanwhile */
  const removeQueued = async (): Promise<boolean> => {
    const now = await ctx.queues.train.getJob(job.id!);
    if (!now || !['waiting', 'delayed', 'prioritized'].includes(await now.getState())) return false;
    const ranBefore = now.attemptsMade > 0 || now.processedOn !== undefined;
    const removed = await now.remove().then(
      () => true,
      (err: Error) => {
        // taken by a worker meanwhile (BullMQ refuses to remove a locked job): it finds the flag at its first check
        if (/locked|could not be removed/i.test(err.message)) return false;
        throw err;
      },
    );
    if (!removed) return false;
    // (and its wait for images, if it waited: a run given the id again starts its own)
    await redis.del(keys.trainWaiting(runId));
    w(`run ${runId} cancelled: removed from the queue ${waitingFor(now.progress) ? 'where it waited for images on their way' : ranBefore ? 'where it waited to run again (a worker had started it before)' : 'before any worker started it'}`);
    return true;
  };
  if (await removeQueued()) return 'removed';
  const looking = waitingFor((await ctx.queues.train.getJob(job.id!))?.progress) !== undefined;
  w(looking ? `run ${runId} is looking for the images it waits for: it stops at the end of this look…` : `run ${runId} is training: it stops at the end of an epoch, within about a second…`);
  const deadline = Date.now() + waitMs;
  while (Date.now() < deadline) {
    // (a run that was looking for the images it waits for goes back to the queue: removed there)
    if (await removeQueued()) return 'removed';
    if (ctx.signal?.aborted) throw new CliExit(EXIT.interrupted, `\ninterrupted; the request stands: run ${runId} stops at its worker's next check (within ${CANCEL_TTL_SECONDS / 3600} h)`);
    const now = await ended();
    if (now === 'cancelled') {
      // the worker's own words: when it stopped ("run R was cancelled (…) after epoch 3 of 40")
      w(permanentFailureOf(await failure())?.detail ?? `run ${runId} cancelled`);
      await redis.del(flag);
      return 'cancelled';
    }
    if (now === 'finished') throw await finished();
    await sleep(500, ctx.signal);
  }
  throw new CliExit(EXIT.stalled, `transferline: run ${runId} has not stopped within ${Math.round(waitMs / 1000)} s (a long epoch, or its worker is gone): it stops at its worker's next check while the request stands (${CANCEL_TTL_SECONDS / 3600} h); follow it: transferline train --follow ${runId}`);
}

/** "10 train, 4 validation, 2 test": how the run's images were split, so that no figure reads as all of them. */
function splitWords(split: ReportDoc['split']): string {
  return `${split.train} train, ${split.validation} validation${split.test > 0 ? `, ${split.test} test` : ''}`;
}

/**
 * A run made the latest whose validation accuracy is below the one it replaced: classify, serve
 * (which follows the latest) and export now use the worse one. Said, with the way back (a user's
 * trial: an experiment silently replaced what serve answered with).
 */
async function sayIfWorse(ctx: CliContext, result: TrainResult, previous: string): Promise<void> {
  const { store, layout } = ctx.services;
  const old = await store.getDocument(ReportDoc, result.bucket ?? ctx.config.s3.bucket, layout.runFile(result.dataset, previous, 'report.json')).catch(() => undefined);
  if (!old || old.validation.accuracy <= result.validationAccuracy) return;
  const pct = (x: number) => `${(x * 100).toFixed(1)}%`;
  ctx.out.write(
    `  note: it replaced run ${previous} (validation accuracy ${pct(old.validation.accuracy)}, against ${pct(result.validationAccuracy)}) as the latest of ${result.dataset}, which classify, serve and export use; ` +
      `to go back: transferline promote ${result.dataset}@${previous} (train with --no-promote to try settings without this)\n`,
  );
}

function printReport(ctx: CliContext, result: TrainResult, report: ReportDoc | undefined, promote: boolean, random?: string): void {
  const w = (s: string) => ctx.out.write(`${s}\n`);
  const pct = (x: number) => `${(x * 100).toFixed(1)}%`;
  w(`run ${result.runId}: validation accuracy ${pct(result.validationAccuracy)}${result.testAccuracy !== undefined ? `, test accuracy ${pct(result.testAccuracy)}` : ''} (${result.examples} images${report ? `: ${splitWords(report.split)}` : ''}; best epoch ${result.bestEpoch})`);
  if (random) w(`  ${random}`);
  const heldOut = report && heldOutWords(report.split, report.labels, printable);
  if (heldOut) w(`  split: ${heldOut}`);
  if (report) for (const few of fewToMeasure(report.split)) w(`  note: ${few}`);
  if (report) {
    const images = new Map(report.labels.map((l, i) => [l, [report.train, report.validation, report.test].reduce((n, s) => n + (s?.perClass[i]?.support ?? 0), 0)]));
    const tooFew = fewInAll(report);
    for (const note of [...confusableLabelNotes(images, printable), ...fewToLearn(report, printable), ...(tooFew ? [tooFew] : [])]) w(`  note: ${note}`);
  }
  if (report?.coverage.partial) w(`  partial: trained on ${report.coverage.embedded} of ${report.coverage.total} images (${report.coverage.pending} pending, ${report.coverage.failed} failed)${notIngestedAgain(report.coverage, printable)}`);
  const conflicts = report?.split.conflictsLeftOut ?? 0;
  // what the example count above leaves unsaid: identical bytes are one example
  const embedded = report?.coverage.embedded;
  if (embedded !== undefined && embedded > result.examples) {
    // distinct bytes = those used + those filed under two labels (left out)
    w(`  ${embedded} embedded images, ${result.examples + conflicts} distinct (copies of the same bytes count once)${conflicts ? `, ${result.examples} used: bytes filed under two labels are left out (below)` : ''}`);
  }
  const named = report?.split.conflicting ?? [];
  if (conflicts) w(`  left out: ${conflicts} image${conflicts === 1 ? '' : 's'} whose bytes are filed under more than one label (every copy; ${underTwoLabelsFix(report!.split.conflictsLabelledBy ?? conflictsLabelledBy(named.flat()), printable)}); copies under one label count once`);
  for (const copies of named) w(`    ${copies.map((c) => conflictCopy(c, printable)).join(', ')}`);
  if (named.length && conflicts > named.length) w(`    and ${conflicts - named.length} more`);
  const heldOutCopies = report && heldOutCopiesWords(report.split, printable);
  if (heldOutCopies) for (const line of heldOutCopies) w(`  ${line}`);
  const bin = report?.validation.binary;
  if (bin) {
    // classify and serve decide with the threshold, not at p = 0.5 as the accuracies above and the matrix below
    const testAt = report?.test?.binary?.accuracyAtThreshold;
    const positive = printable(bin.positiveLabel);
    w(`  ROC AUC (validation, positive "${positive}") ${bin.rocAuc === null ? 'n/a (validation holds one class only)' : bin.rocAuc.toFixed(3)}; threshold chosen on validation ${thresholdText(bin.threshold)}`);
    w(`  classify and serve call an image "${positive}" when its probability is at least ${thresholdText(bin.threshold)}: accuracy ${pct(bin.accuracyAtThreshold)} on validation${testAt !== undefined ? `, ${pct(testAt)} on test` : ''} (the figures above and the matrix below are at 0.5)`);
    const caution = report && thresholdCaution(report.validation, report.labels, printable);
    if (caution) w(`  note: ${caution}`);
  } else if (report?.labels.length === 2) {
    const held = report.labels.filter((_, c) => (report.validation.confusionMatrix[c] ?? []).some((n) => n > 0)).map(printable);
    w(`  no threshold: validation held ${held.length ? `only "${held.join('", "')}"` : 'no image'}, so classify and serve take the most probable label (more images of each label give validation both)`);
  }
  const bucket = result.bucket ?? ctx.config.s3.bucket;
  w(`model: s3://${bucket}/${result.modelPrefix} (model.json, weights.bin, labels.json, report.json)`);
  if (bucket !== ctx.config.s3.bucket) {
    w(`  warning: the train worker wrote it to bucket ${bucket}, and this shell's bucket is ${ctx.config.s3.bucket}: models, classify, export and serve from here look for it there; set TL_BUCKET=${bucket} as the workers have it`);
  }
  if (!promote) {
    w(`  not made the latest run of ${result.dataset} (--no-promote): classify, serve and export use it as -m ${result.dataset}@${result.runId}; make it the latest with: transferline promote ${result.dataset}@${result.runId}`);
  } else if (result.latest === false) {
    w(`  not the latest run of ${result.dataset}: the latest was set after it (by promote, or a newer run); see transferline models -d ${result.dataset}`);
  }
  if (!report) return;
  const labels = report.labels.map(printable);
  const width = Math.max(8, ...labels.map((l) => l.length)) + 2;
  w('validation confusion matrix (rows: true, columns: predicted):');
  w(' '.repeat(width) + labels.map((l) => l.padStart(width)).join(''));
  report.validation.confusionMatrix.forEach((row, i) => w(labels[i]!.padEnd(width) + row.map((n) => String(n).padStart(width)).join('')));
  w('per class:  precision  recall  f1  support');
  const shown = (x: number | undefined) => (x === undefined ? '  n/a' : x.toFixed(3));
  const figures = report.validation.perClass.map((_, i) => classFigures(report.validation, i));
  report.validation.perClass.forEach((c, i) => w(`  ${labels[i]!.padEnd(width)} ${shown(figures[i]!.precision)}  ${shown(figures[i]!.recall)}  ${shown(figures[i]!.f1)}  ${c.support}`));
  const unseen = labels.filter((_, i) => figures[i]!.recall === undefined);
  if (unseen.length) w(`  n/a: ${unseen.map((l) => `"${l}"`).join(', ')} ${unseen.length === 1 ? 'has' : 'have'} no image in validation, so ${unseen.length === 1 ? 'its' : 'their'} recall and F1 are not measured (a label with fewer than 2 images outside the val/ and test/ folders: none could be held out for validation)`);
}
