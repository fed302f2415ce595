import { DatasetRepository, DocumentError, deploymentOf, hungAfterMs, jobOfQueue, PreprocessJob, permanentFailureOf, queueName, redactUrl, redisEvictionRisk, S3UnreachableError, s3Refusal, type DatasetStatus, type EmbedWorkerInfo, type EmbeddingSpace, type PausedWorkerNow, type Queues, type SpaceWorkers, type StartingWorker, workerBackends } from '@transferline/shared';
import type { Job, Queue } from 'bullmq';
import pMap from 'p-map';
import type { CliContext } from '../cli-context.js';
import { printDatasetSummary } from './ingest.command.js';
import { printable } from '../terminal.js';
import { storageHint, storageMismatch, type StorageMismatch } from '../storage-hint.js';
import { runCompletedAfter } from './models.command.js';
import { holderConnected, takenUpWithinSeconds } from '../job-follow.js';
import { indexUnderOtherPrefixes, lossOver, lossUnrecorded, lostDatasetLine, lostDatasets, noSuchDataset, otherPrefixWords, recordLostDatasets, spacesUnderOtherPrefixes } from '../data-loss.js';
import { waitingFor, type EpochProgress } from '@transferline/train-worker/train-head.job';

export interface SpaceStatus {
  space: EmbeddingSpace;
  workers: EmbedWorkerInfo[];
  /** its workers still loading their model (not taking jobs yet), and for how long (ms) */
  starting: StartingWorker[];
  /** none live nor loading: why the last worker that gave up starting could not */
  failed?: string;
  /** embed jobs waiting, active or delayed in the space's queue */
  backlog: number;
  /** embeddings cached in the space */
  cached: number;
}

export interface StatusReport {
  /** what this process looked at: Redis (password hidden) and its queue prefix, S3, where the embeddings and models go */
  deployment: Omit<ReturnType<typeof deploymentOf>, 'words'>;
  /** per queue: job counts, connected workers, and the workers an outage pauses (with why) */
  queues: Record<
    string,
    Partial<Record<'waiting' | 'active' | 'delayed' | 'prioritized' | 'failed', number>> & {
      workers: number;
      /**
       * of its active jobs (the first HELD_READ), those held by a worker that is no longer
       * connected while others are (killed): they wait for their locks to run out (train: said per run)
       */
      heldByGone?: number;
      /**
       * jobs wait, none is active, and its connected workers (none paused by an outage) have taken
       * none for longer than two stalled-job checks: how long the oldest has waited (s). Hung
       * workers (SIGSTOPped, a blocked event loop, cut off from Redis) look connected.
       */
      untakenSeconds?: number;
      /** train, with untakenSeconds: the run whose job waits while the worker that lost its lock still trains it (so no worker is hung) */
      stillTrained?: StillTrained;
      /** with untakenSeconds: how many workers are connected to it (an embed queue's `workers` counts only those that beat) */
      connected?: number;
      paused: PausedWorkerNow[];
      /** train only: its failed jobs that are runs stopped with train --cancel */
      cancelled?: number;
      /**
       * train only: its other failed jobs, the newest first: runs the worker refused or that
       * failed, of datasets that exist (of the one asked for, with -d), and not followed by a run
       * of their dataset that completed
       */
      failedRuns?: FailedRun[];
      /** train only: the failed runs not in failedRuns (of deleted datasets, or followed by a completed run) */
      failedRunsSettled?: number;
      /**
       * preprocess only, when any: of its failed jobs (`of`, the newest FAILED_SCAN), those no
       * dataset's item stands on any more (see settledPreprocessFailures): BullMQ keeps them
       * among the queue's failures, and they need nothing more
       */
      failedSettled?: { settled: number; of: number };
      /** train only: the runs training now (the first ACTIVE_RUNS_SHOWN), with the epoch each has reached, and those waiting for images on their way */
      activeRuns?: {
        runId: string;
        dataset: string;
        epoch: number;
        epochs: number;
        /** the train worker that holds it (host:pid:…) */
        worker?: string;
        /** what it waits for before it trains (images on their way when it started, as its last look saw them), if it waits */
        waitingFor?: string;
        /** back in the queue between two looks for those images (delayed), not held by a worker */
        inQueue?: true;
        /** the train worker that held it, when it is no longer connected (stopping, or killed: then the run waits for its lock to run out) */
        workerGone?: string;
        /** trained, and being saved: true, or what the save waits for (S3 unreachable) */
        saving?: string | true;
      }[];
    }
  >;
  spaces: SpaceStatus[];
  datasets: DatasetStatus[];
  /** what puts the deployment's data at risk (a Redis that evicts keys) */
  warnings: string[];
  /** spaces datasets are in that no embed worker has published (none went live), with their backlog */
  unpublished: { id: string; backlog: number; failed?: string }[];
}

/** How many of the train queue's failed jobs status reads to tell the cancelled ones from the rest. */
const FAILED_SCAN = 1000;
/** Runs in training that status names (the train queue's active count says how many in all). */
const ACTIVE_RUNS_SHOWN = 5;
/** How many of the train queue's delayed jobs status reads for the runs waiting there for images on their way (others wait to retry). */
const DELAYED_READ = 100;
/** Failed runs status names one by one; past that, how many more. */
const FAILED_RUNS_SHOWN = 3;

/** A train job that failed, other than by train --cancel. */
export interface FailedRun {
  dataset: string;
  runId: string;
  /** the reason code (no-data, one-class, …), or `error` for a failure without one */
  reason: string;
  detail: string;
  /** when it failed (ms since the epoch) */
  failedAt: number;
}

/**
 * The train queue's failed jobs (its newest FAILED_SCAN): how many are runs stopped with train
 * --cancel (no failures), and the others, the newest first.
 */
export async function failedRuns(queues: Pick<Queues, 'train'>): Promise<{ cancelled: number; failed: FailedRun[] }> {
  const jobs = (await queues.train.getFailed(0, FAILED_SCAN - 1)).filter((j) => j !== undefined);
  const failed: FailedRun[] = [];
  let cancelled = 0;
  for (const j of jobs) {
    const why = permanentFailureOf(j.failedReason);
    if (why?.reason === 'cancelled') cancelled++;
    else failed.push({ dataset: String(j.data?.dataset ?? '?'), runId: String(j.data?.runId ?? j.id), reason: why?.reason ?? 'error', detail: why?.detail ?? j.failedReason ?? '', failedAt: j.finishedOn ?? j.timestamp });
  }
  return { cancelled, failed };
}

/**
 * The failed runs a user still has to act on: of datasets that exist (and of `only`, if given),
 * and not followed by a run of their dataset that completed: one whose report in the bucket is
 * newer (however many runs the train queue has kept since), or one of the train queue's newest
 * 1,000 completed jobs (a train worker that writes to another bucket than this shell reads).
 */
async function failedRunsToAct(ctx: CliContext, failed: FailedRun[], only: string | undefined, s3: S3Look): Promise<{ toAct: FailedRun[]; settled: number }> {
  const of = failed.filter((f) => only === undefined || f.dataset === only);
  if (of.length === 0) return { toAct: [], settled: 0 };
  const completed = new Map<string, number>();
  for (const j of await ctx.queues.train.getCompleted(0, 999)) {
    const dataset = (j?.data as { dataset?: string } | undefined)?.dataset;
    if (dataset !== undefined) completed.set(dataset, Math.max(completed.get(dataset) ?? 0, j!.finishedOn ?? 0));
  }
  const datasets = [...new Set(of.map((f) => f.dataset))];
  // of each dataset with a failed run: whether it exists, and when a run of it last completed (a
  // bucket that cannot be read now leaves its failures named: status says elsewhere that it cannot)
  const completedAt = async (d: string) => {
    const earliest = Math.min(...of.filter((f) => f.dataset === d).map((f) => f.failedAt));
    // (not asked of an S3 that did not answer the probe: its attempts would hold status for minutes)
    const inBucket = (await s3) === undefined ? await runCompletedAfter(ctx, d, earliest).catch(() => undefined) : undefined;
    return Math.max(inBucket ?? 0, completed.get(d) ?? 0);
  };
  const known = new Map(await pMap(datasets, async (d) => [d, (await ctx.services.datasets.exists(d)) ? { completedAt: await completedAt(d) } : undefined] as const, { concurrency: 8 }));
  const toAct = of.filter((f) => {
    const d = known.get(f.dataset);
    return d !== undefined && d.completedAt < f.failedAt;
  });
  return { toAct, settled: of.length - toAct.length };
}

/** "3 min ago", "2 h ago", "5 days ago": how long since `at`. */
function ago(at: number, now = Date.now()): string {
  const s = Math.max(0, Math.round((now - at) / 1000));
  if (s < 90) return `${s} s ago`;
  if (s < 90 * 60) return `${Math.round(s / 60)} min ago`;
  if (s < 36 * 3600) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86_400)} days ago`;
}

/**
 * Of the preprocess queue's failed jobs (its newest FAILED_SCAN), how many no dataset's item
 * stands on any more. A job stands on its item while the item's record has the job's etag and
 * embedding space and is failed, or still pending (its failure was never written: the dataset
 * calls it orphaned, and a re-ingest runs this very job again). It needs nothing more when the
 * record has another etag (the object was replaced, and the new one ran), another space (moved
 * there by ingest --embedder or retry), is queued or cached (embedded since, from the cache), or
 * is gone from a dataset that exists (the object left it). BullMQ keeps such jobs (up to 10,000)
 * and counts them among the queue's failures. Not counted: a job whose payload is not one this
 * version reads, and one of a dataset that is not there (Redis lost it: a re-ingest runs it again).
 */
export async function settledPreprocessFailures(ctx: Pick<CliContext, 'queues'> & { services: { datasets: Pick<DatasetRepository, 'getItems' | 'exists'> } }): Promise<{ settled: number; of: number }> {
  const jobs = (await ctx.queues.preprocess.getFailed(0, FAILED_SCAN - 1)).filter((j) => j !== undefined);
  const byDataset = new Map<string, PreprocessJob[]>();
  for (const j of jobs) {
    const p = PreprocessJob.safeParse(j.data);
    if (!p.success) continue;
    const of = byDataset.get(p.data.dataset) ?? [];
    of.push(p.data);
    byDataset.set(p.data.dataset, of);
  }
  let settled = 0;
  for (const [dataset, of] of byDataset) {
    if (!(await ctx.services.datasets.exists(dataset))) continue;
    const records = await ctx.services.datasets.getItems(dataset, of.map((j) => DatasetRepository.itemId(j.bucket, j.key)));
    records.forEach((r, i) => {
      const job = of[i]!;
      const stands = r !== undefined && r.etag === job.etag && (r.space ?? job.embedderId) === job.embedderId && (r.state === 'failed' || r.state === 'pending');
      if (!stands) settled++;
    });
  }
  return { settled, of: jobs.length };
}

/** What status says of the preprocess queue's failed jobs that need nothing more. */
export function settledWords({ settled, of }: { settled: number; of: number }): string {
  // (more failed jobs than status reads: of the newest it read)
  const newest = of >= FAILED_SCAN;
  const which = settled === of && !newest ? (of === 1 ? 'its failed job' : `its ${of} failed jobs`) : `${settled} of its ${newest ? 'newest ' : ''}${of} failed jobs`;
  const one = settled === 1;
  return `${which} ${one ? 'needs' : 'need'} nothing more: ${settledWhy(settled)} (a dataset's failures left to act on are listed with it)`;
}

/** Why failed preprocess jobs need nothing more (status and the console say it alike). */
export function settledWhy(n: number): string {
  return n === 1
    ? 'its object was replaced, embedded or moved to another embedding space since, or left its dataset'
    : 'their objects were replaced, embedded or moved to another embedding space since, or left their datasets';
}

/** How many of the train queue's failed jobs (its newest FAILED_SCAN) are runs stopped with train --cancel: no failures. */
export async function cancelledRuns(queues: Pick<Queues, 'train'>): Promise<number> {
  return (await failedRuns(queues)).cancelled;
}

/** An embed queue's jobs not done with: waiting, active, delayed or prioritized. */
function backlogOf(c: StatusReport['queues'][string]): number {
  return (c.waiting ?? 0) + (c.active ?? 0) + (c.delayed ?? 0) + (c.prioritized ?? 0);
}

/**
 * Every queue of the deployment in the pipeline's order: preprocess, one embed queue per published
 * space (then those of `unpublished` spaces), train, classify.
 */
export function deploymentQueues(queues: Queues, spaces: SpaceWorkers[], unpublished: string[] = []): Queue[] {
  return [queues.preprocess, ...spaces.map((s) => queues.embed(s.space.id)), ...unpublished.map((id) => queues.embed(id)), queues.train, queues.classify];
}

/**
 * The spaces some of `datasets` are in that no worker has published (theirs never went live: it
 * could not start, say): their queues hold those datasets' images all the same.
 */
export async function unpublishedSpaces(repo: Pick<DatasetRepository, 'space'>, datasets: string[], listed: SpaceWorkers[]): Promise<string[]> {
  const ids = await Promise.all(datasets.map((d) => repo.space(d)));
  return [...new Set(ids.filter((id): id is string => id !== undefined && !listed.some((s) => s.space.id === id)))].sort();
}

/** Most active jobs of a queue whose holders status looks at. */
const HELD_READ = 1_000;

/**
 * How long (s) the oldest waiting job of a queue has waited, by Redis's clock, if longer than two
 * of its stalled-job checks: a free worker takes a waiting job at once, so connected workers that
 * leave it that long take none. Undefined otherwise, or when the queue itself is paused.
 */
async function untakenFor(ctx: CliContext, q: Queue, connected: Record<string, string>[]): Promise<{ seconds: number; stillTrained?: StillTrained } | undefined> {
  const name = jobOfQueue(q.name);
  if (!name || (await q.isPaused())) return undefined;
  const [oldest] = await q.getJobs(['waiting'], 0, 0, true);
  if (!oldest) return undefined;
  const [seconds] = await ctx.services.redis.time();
  const nowMs = Number(seconds) * 1000;
  const waitedMs = nowMs - oldest.timestamp;
  const hungMs = hungAfterMs(name, ctx.config);
  if (waitedMs <= hungMs) return undefined;
  // A run whose job went back to the queue (its lock lost: Redis away longer than it) while its
  // worker trains on: the worker takes no job meanwhile, and is no hung one to restart (a trial:
  // restarting it would throw the run's epochs away). Its progress says who, and when.
  const p = (name === 'train' ? oldest.progress : undefined) as Partial<EpochProgress> | undefined;
  const data = oldest.data as { runId?: string; dataset?: string } | undefined;
  const stillTrained =
    p && typeof p.by === 'string' && typeof p.at === 'number' && nowMs - p.at < hungMs && holderConnected(connected, p.by) !== false
      ? { runId: String(data?.runId ?? oldest.id), dataset: String(data?.dataset ?? '?'), worker: p.by, phase: p.phase ?? 'training', epoch: p.epoch ?? 0, epochs: p.epochs ?? 0 }
      : undefined;
  return { seconds: Math.round(waitedMs / 1000), ...(stillTrained && { stillTrained }) };
}

/** A run whose job waits in the queue while the worker that lost it still trains it. */
interface StillTrained {
  runId: string;
  dataset: string;
  worker: string;
  phase: string;
  epoch: number;
  epochs: number;
}

/**
 * Whether the worker holding a job is gone: none of the queue's workers is connected, or Redis
 * names them and the holder is not among them (a Redis that names no clients tells nothing).
 */
const holderGone = (workers: Record<string, string>[], holder: string | undefined): boolean => holder !== undefined && (workers.length === 0 || holderConnected(workers, holder) === false);

/**
 * The embed workers whose heartbeat is recent that are still connected to Redis: one SIGKILLed
 * beats no more but counts until its heartbeat's TTL has run out (a user's trial: 2 workers for
 * 16 s after one was killed), while its connection is gone at once. (A worker publishes itself
 * live once its queue's worker has started: one that has just done so may not be connected yet.)
 */
function stillConnected<W extends { workerId: string }>(beating: W[], connected: Record<string, string>[]): W[] {
  return beating.filter((w) => !holderGone(connected, w.workerId));
}

/**
 * How many workers serve a queue, as status and the console count them: for an embed queue, its
 * space's live workers still connected; for another, those Redis names as connected to it.
 */
export function servingWorkers(q: Queue, connected: Record<string, string>[], spaces: SpaceWorkers[]): number {
  const space = spaces.find((s) => q.name === queueName('embed', s.space.id));
  return space ? stillConnected(space.workers, connected).length : connected.length;
}

/** `transferline status`: jobs per queue and state, each embedding space with its workers and backlog, each dataset's progress. */
export async function statusCommand(ctx: CliContext, o: { dataset?: string; json?: boolean }): Promise<StatusReport> {
  const { datasets: repo, inspector, spaces: registry, cache } = ctx.services;
  // what this shell looks at, first, before anything that can fail (an operator's trial: nothing
  // said which deployment it was; a review: a dataset not found, a wrong Redis, said it nowhere)
  const { words, ...deployment } = deploymentOf(ctx.config);
  const w = (s: string) => ctx.out.write(`${s}\n`);
  if (!o.json) w(`deployment: ${printable(words)}`);
  if (o.dataset && !(await repo.exists(o.dataset))) throw await noSuchDataset(ctx, o.dataset);
  // S3 asked once, with a deadline of its own, beside the reads of Redis: what status reads of the
  // bucket is read only if it answers (a mute S3 held status for minutes, a user's trial found)
  const s3 = lookAtS3(ctx);
  const listed = await registry.list();
  const names = o.dataset ? [o.dataset] : await repo.list();
  const unknown = await unpublishedSpaces(repo, names, listed);
  const queues: StatusReport['queues'] = {};
  let trainActive: { active: Job[]; goneIds: Set<string | undefined> } = { active: [], goneIds: new Set() };
  /** the workers connected to each space's embed queue (CLIENT LIST), by space */
  const embedConnected = new Map<string, Record<string, string>[]>();
  // in the pipeline's order, as the console lists them; an embed queue's workers are its space's live ones
  for (const q of deploymentQueues(ctx.queues, listed, unknown)) {
    const counts = await q.getJobCounts('waiting', 'active', 'delayed', 'prioritized', 'failed');
    const space = listed.find((s) => q.name === queueName('embed', s.space.id));
    // the active jobs before the workers: one that connects and takes a job between the two reads
    // is then listed (an embed queue's workers are counted from its space, unless jobs are active)
    const active = counts.active ? await q.getActive(0, HELD_READ - 1) : [];
    const connected = await q.getWorkers();
    if (space) embedConnected.set(space.space.id, connected);
    const goneIds = new Set(active.filter((j) => holderGone(connected, j?.processedBy)).map((j) => j.id));
    if (q.name === queueName('train')) trainActive = { active, goneIds };
    // (with none connected all are held by a worker that stopped, said as such; a run, as a run)
    const held = connected.length > 0 && q.name !== queueName('train') ? goneIds.size : 0;
    const paused = await ctx.services.paused.list(q.name);
    const untaken = counts.waiting && !counts.active && connected.length > 0 && paused.length === 0 ? await untakenFor(ctx, q, connected) : undefined;
    queues[q.name] = {
      ...counts,
      workers: servingWorkers(q, connected, listed),
      ...(held && { heldByGone: held }),
      ...(untaken && { untakenSeconds: untaken.seconds, connected: connected.length }),
      ...(untaken?.stillTrained && { stillTrained: untaken.stillTrained }),
      paused,
    };
  }
  // runs stopped with train --cancel end in BullMQ's failed state: counted apart, as they are no
  // failure; the others are named with their reason
  queues.train!.failedRuns = [];
  if (queues.train!.failed) {
    const { cancelled, failed } = await failedRuns(ctx.queues);
    const { toAct, settled } = await failedRunsToAct(ctx, failed, o.dataset, s3);
    queues.train!.cancelled = cancelled;
    queues.train!.failedRuns = toAct;
    queues.train!.failedRunsSettled = settled;
  }
  const preprocess = queues[queueName('preprocess')]!;
  if (preprocess.failed) {
    // (a note: a read that fails, a record this version cannot parse say, leaves it out)
    const settled = await settledPreprocessFailures(ctx).catch(() => undefined);
    if (settled?.settled) preprocess.failedSettled = settled;
  }
  // the runs training now, and how far each has got (the console's run pages have the rest)
  // (a run whose worker was killed stays active until its lock runs out: not "training" meanwhile)
  queues.train!.activeRuns = [];
  for (const j of trainActive.active.slice(0, ACTIVE_RUNS_SHOWN)) {
    const data = j?.data as { runId?: string; dataset?: string; epochs?: number } | undefined;
    if (!data?.runId || (o.dataset !== undefined && data.dataset !== o.dataset)) continue;
    const gone = trainActive.goneIds.has(j.id) ? j.processedBy : undefined;
    const waits = waitingFor(j.progress);
    queues.train!.activeRuns.push({
      runId: data.runId,
      dataset: String(data.dataset),
      epoch: (j.progress as Partial<EpochProgress> | undefined)?.epoch ?? 0,
      epochs: data.epochs ?? 0,
      // (trained, and waiting for its save: an S3 outage holds it; a trial read "is training, epoch 15 of at most 15")
      ...((j.progress as Partial<EpochProgress> | undefined)?.phase === 'saving' && !gone && { saving: (j.progress as Partial<EpochProgress>).why ?? true }),
      ...(j.processedBy && !gone && { worker: j.processedBy }),
      ...(waits && !gone && { waitingFor: waits }),
      ...(gone && { workerGone: gone }),
    });
  }
  // and the runs gone back to the queue to wait for images on their way (each looks again every few seconds)
  if (queues.train!.delayed) {
    const waiting = (await ctx.queues.train.getDelayed(0, DELAYED_READ - 1)).flatMap((j) => {
      const data = j?.data as { runId?: string; dataset?: string; epochs?: number } | undefined;
      const waits = waitingFor(j?.progress);
      if (!data?.runId || (o.dataset !== undefined && data.dataset !== o.dataset) || !waits) return [];
      return [{ runId: data.runId, dataset: String(data.dataset), epoch: 0, epochs: data.epochs ?? 0, waitingFor: waits, inQueue: true as const }];
    });
    // (a run that went back to the queue between the two reads is named once)
    const named = new Set(queues.train!.activeRuns.map((r) => r.runId));
    queues.train!.activeRuns.push(...waiting.filter((r) => !named.has(r.runId)).slice(0, ACTIVE_RUNS_SHOWN));
  }
  const spaces: SpaceStatus[] = [];
  for (const { space, workers: beating, starting } of listed) {
    const c = queues[queueName('embed', space.id)]!;
    const workers = stillConnected(beating, embedConnected.get(space.id) ?? []);
    // none live nor loading: the last that could not start, and why
    const failed = workers.length || starting.length ? undefined : await registry.failureOf(space.id);
    spaces.push({ space, workers, starting, ...(failed && { failed }), backlog: backlogOf(c), cached: await cache.size(space.id) });
  }
  const unpublished: StatusReport['unpublished'] = [];
  for (const id of unknown) {
    const failed = await registry.failureOf(id);
    unpublished.push({ id, backlog: backlogOf(queues[queueName('embed', id)]!), ...(failed && { failed }) });
  }
  const datasets = await Promise.all(names.map((d) => inspector.status(d)));
  const { warnings, lossFound, elsewhere } = await deploymentWarnings(ctx, spaces.map((sp) => sp.space.id), s3);
  // (what this shell's TL_QUEUE_PREFIX holds is not the workers': "yet" would send the user to start over)
  const here = `under this shell's TL_QUEUE_PREFIX (${ctx.config.redis.prefix}): the workers' is another, as said above`;
  if (o.json) {
    ctx.out.write(`${JSON.stringify({ deployment, queues, spaces, unpublished, datasets, warnings }, null, 2)}\n`);
    return { deployment, queues, spaces, unpublished, datasets, warnings };
  }
  for (const warning of warnings) w(`warning: ${warning}`);
  w('embedding spaces:');
  if (spaces.length === 0) {
    w(elsewhere ? `  none published ${here}` : lossFound ? '  none published since Redis lost its data: a running embed worker publishes its space again within seconds' : '  none published yet: start the stack (transferline up) or an embed worker');
  }
  for (const s of spaces) {
    const backends = workerBackends(s.workers);
    const longest = Math.max(0, ...s.starting.map((x) => x.startingMs));
    const loading = s.starting.length ? `, ${s.starting.length} loading ${s.starting.length === 1 ? 'its model for' : 'their model for up to'} ${Math.round(longest / 1000)} s` : s.failed ? ` (${s.failed})` : '';
    // a space no worker runs and no dataset is in (one a mistaken worker published, say: listed
    // for ever otherwise, a user's trial): the command that deletes it, which checks the rest
    const unused = s.workers.length === 0 && s.starting.length === 0 && s.backlog === 0 && !datasets.some((d) => d.space === s.space.id || d.elsewhere.some((e) => e.space === s.space.id));
    const hint = unused ? `; no dataset is in it: transferline delete space ${s.space.id} deletes it if nothing else uses it` : '';
    w(`  ${s.space.id}: ${s.workers.length} embed worker${s.workers.length === 1 ? '' : 's'}${backends ? ` (${backends})` : ''}${loading}, backlog ${s.backlog}, ${s.cached} images cached${hint}`);
  }
  for (const u of unpublished) {
    w(`  ${u.id}: not published (no embed worker of it is live or has published it here${u.failed ? `; ${u.failed}` : ''}), backlog ${u.backlog}: start a worker of it, or move its datasets with ingest --embedder ID`);
  }
  // (a queue holds the jobs of every dataset: with -d, its counts are not the dataset's, which follow below)
  const heading = o.dataset ? 'queue (of every dataset)' : 'queue';
  w(`${heading.padEnd(51)} workers  waiting  active  delayed  failed`);
  for (const [name, c] of Object.entries(queues)) {
    w(`${name.padEnd(51)} ${String(c.workers).padStart(7)}  ${String((c.waiting ?? 0) + (c.prioritized ?? 0)).padStart(7)}  ${String(c.active ?? 0).padStart(6)}  ${String(c.delayed ?? 0).padStart(7)}  ${String(c.failed ?? 0).padStart(6)}`);
  }
  // jobs a worker held when it stopped (killed, its machine gone): only a worker of their queue
  // takes them back (BullMQ's stalled check), so with none connected they stay active
  for (const [name, c] of Object.entries(queues)) {
    const held = c.active ?? 0;
    if (c.workers === 0 && held > 0) w(`  ${name}: ${held} active job${held === 1 ? '' : 's'} and no worker connected: held by a worker that stopped; a worker of this queue takes ${held === 1 ? 'it' : 'them'} up again once it starts (a job stalled too often fails as stalled)`);
  }
  // jobs that wait with no worker to take them (an embed queue's are said with its space above):
  // they stay queued until one connects (an operator's trial: a run queued while no train worker
  // ran, which train said and status did not)
  for (const [job, role, things] of [['preprocess', 'preprocess', 'jobs'], ['train', 'train', 'runs'], ['classify', 'train', 'jobs']] as const) {
    const name = queueName(job);
    const c = queues[name];
    const n = (c?.waiting ?? 0) + (c?.prioritized ?? 0) + (c?.delayed ?? 0);
    if (!c || c.workers > 0 || n === 0) continue;
    const what = n === 1 ? `1 ${things.slice(0, -1)} waits` : `${n} ${things} wait`;
    w(`  ${name}: ${what} and no ${role} worker is connected: start one (transferline up, or a ${role} worker: README, "A worker more"); ${n === 1 ? 'it stays' : 'they stay'} queued until then`);
  }
  for (const [name, c] of Object.entries(queues)) {
    const gone = c.heldByGone ?? 0;
    if (c.workers > 0 && gone > 0) {
      const job = jobOfQueue(name);
      const within = job ? `, about ${takenUpWithinSeconds(job, ctx)} s after their worker went` : '';
      const which = gone === c.active ? (gone === 1 ? 'its active job is' : `its ${gone} active jobs are`) : `${gone} of its ${c.active ?? 0} active jobs ${gone === 1 ? 'is' : 'are'}`;
      w(`  ${name}: ${which} held by a worker that is stopping or gone (a worker that stops finishes or puts back its jobs; if it was killed, a connected worker takes ${gone === 1 ? 'it' : 'them'} up again once ${gone === 1 ? 'its lock has' : 'their locks have'} run out${within})`);
    }
  }
  for (const [name, c] of Object.entries(queues)) {
    if (c.untakenSeconds === undefined) continue;
    const n = c.waiting ?? 0;
    // (an embed queue counts the workers of its space that beat: connected ones that beat no more count 0)
    const one = c.connected === 1;
    const still = c.stillTrained;
    if (still) {
      const where = still.phase === 'saving' ? 'is saving it' : `is at epoch ${still.epoch} of at most ${still.epochs}`;
      w(`  ${name}: run ${still.runId} of ${still.dataset} waits in the queue (for ${c.untakenSeconds} s) while train worker ${still.worker}, which lost its lock on it (cut off from Redis for longer than the lock), still trains it and ${where}: nothing to do. It saves the run, then takes the job again and finds the run written (restarting the worker would throw its epochs away)`);
      continue;
    }
    const who = c.workers > 0 ? (one ? 'its connected worker takes none' : 'its connected workers take none') : one ? 'the worker connected to it beats no more (counted 0 above) and takes none' : 'the workers connected to it beat no more (counted 0 above) and take none';
    w(`  ${name}: ${n} job${n === 1 ? ' waits' : 's wait'}, the oldest for ${c.untakenSeconds} s, and ${who} (hung: SIGSTOPped, its event loop blocked, or cut off from Redis?); restart ${one ? 'it' : 'them'}`);
  }
  for (const r of queues.train!.activeRuns ?? []) {
    if (r.workerGone) w(`  train: run ${r.runId} of ${r.dataset} reached epoch ${r.epoch} of at most ${r.epochs} on train worker ${r.workerGone}, which is stopping or gone (a train worker that stops puts the run back at the end of its epoch; if it was killed, a train worker starts the run again once its lock has run out, about ${takenUpWithinSeconds('train', ctx)} s after) (follow it: transferline train --follow ${r.runId})`);
    else {
      const on = r.worker ? ` on train worker ${r.worker}` : '';
      const doing = r.inQueue
        ? `waits in the queue for its images on their way before it trains (at its last look, ${r.waitingFor}); it looks again when a train worker is free`
        : r.waitingFor
          ? `waits${on} for ${r.waitingFor} before it trains`
          : r.saving
            ? `is trained (${r.epoch} epochs)${on}, and being saved${r.saving === true ? '' : `: ${r.saving}`}`
            : `is training${on}, epoch ${r.epoch} of at most ${r.epochs}`;
      w(`  train: run ${r.runId} of ${r.dataset} ${doing} (follow it: transferline train --follow ${r.runId})`);
    }
  }
  if (preprocess.failedSettled) w(`  ${queueName('preprocess')}: ${settledWords(preprocess.failedSettled)}`);
  const cancelled = queues.train!.cancelled;
  if (cancelled) w(`  train: ${cancelled === 1 ? '1 of its failed jobs is a run' : `${cancelled} of its failed jobs are runs`} stopped with train --cancel, not ${cancelled === 1 ? 'a failure' : 'failures'}`);
  const failedOnes = queues.train!.failedRuns ?? [];
  for (const f of failedOnes.slice(0, FAILED_RUNS_SHOWN)) w(`  train: run ${f.runId} of ${f.dataset} failed ${ago(f.failedAt)} (${f.reason}): ${f.detail}`);
  if (failedOnes.length > FAILED_RUNS_SHOWN) w(`  train: and ${failedOnes.length - FAILED_RUNS_SHOWN} more failed runs (status --json lists them)`);
  const settled = queues.train!.failedRunsSettled ?? 0;
  if (settled) w(`  train: ${settled === 1 ? '1 other failed run needs' : `${settled} other failed runs need`} nothing more: of a dataset deleted since, or followed by a run of it that completed`);
  for (const [name, c] of Object.entries(queues)) {
    for (const reason of new Set(c.paused.map((p) => p.reason))) {
      const of = c.paused.filter((p) => p.reason === reason);
      w(`  ${name}: ${of.length} worker${of.length === 1 ? '' : 's'} paused: ${reason} (${of[0]!.remedy})`);
    }
  }
  if (datasets.length === 0) w(elsewhere ? `no datasets ${here}` : lossFound ? 'no datasets in Redis: ingest again as the warnings above say' : 'no datasets yet: transferline ingest s3://bucket/prefix --dataset NAME');
  for (const d of datasets) printDatasetSummary(ctx, d);
  return { deployment, queues, spaces, unpublished, datasets, warnings };
}

/**
 * What status warns of, and the console's front page shows: a bucket or prefix that is not the
 * live workers', a Redis that may evict our keys, and what Redis losing its data left.
 * `lossFound`: a loss was found (not merely left unchecked); `elsewhere`: the workers' data is
 * under another TL_QUEUE_PREFIX than this shell's. `spaces`: the published ones.
 */
/** Whether S3 answers: undefined if it does, else why not (its probe's error). */
type S3Look = Promise<unknown>;

/** Asks S3 once (its probe: a deadline of its own, shorter than the SDK's attempts at a mute server). */
function lookAtS3(ctx: CliContext): S3Look {
  return ctx.services.store.probe(ctx.config.s3.bucket).then(
    () => undefined,
    (err: unknown) => err ?? new Error('no answer'),
  );
}

export async function deploymentWarnings(ctx: CliContext, spaces: string[], s3: S3Look = lookAtS3(ctx)): Promise<{ warnings: string[]; lossFound: boolean; elsewhere: boolean }> {
  // a Redis that refuses INFO (renamed on some managed services) is not a reason to fail status
  const eviction = await redisEvictionRisk(ctx.services.redis, ctx.config.redis.url).catch(() => undefined);
  // A shell not on one deployment (the other commands refuse it): what Redis lost is not read from
  // a storage that is not the deployment's (its spaces would look lost), and nothing of a loss is
  // recorded or forgotten from it (a review: such a status forgot a deployment's lost datasets).
  // (a record that cannot be read is said, as the other commands refuse with it; a loss is then neither recorded nor forgotten either)
  let unreadable: string | undefined;
  let mismatch: StorageMismatch | undefined;
  try {
    mismatch = await storageMismatch(ctx);
  } catch (err) {
    if (err instanceof DocumentError) unreadable = err.message;
  }
  const loss = mismatch?.kind === 'storage' ? { lines: [], found: false, elsewhere: false } : await dataLossWarnings(ctx, spaces, s3, { remember: !mismatch && unreadable === undefined });
  // a shell whose TL_BUCKET/TL_PREFIX are not the workers': every model and cache read here looks elsewhere
  const storage = (await storageHint(ctx)) ?? mismatch?.words;
  // a fresh deployment (nothing in the bucket yet) seen from a shell whose TL_QUEUE_PREFIX is not
  // the workers': their live embed workers are there under theirs (a trial: "start the stack")
  const others = spaces.length === 0 && !loss.elsewhere ? await spacesUnderOtherPrefixes(ctx).catch(() => []) : [];
  const prefix = others.length ? [`no embedding space is published under this prefix: ${otherPrefixWords(ctx, others, 'the live embed workers')} (or, for a deployment of its own beside them, start its workers)`] : [];
  return { warnings: [...(unreadable ? [unreadable] : []), ...prefix, ...(storage ? [storage] : []), ...(eviction ? [eviction] : []), ...loss.lines], lossFound: loss.found, elsewhere: loss.elsewhere || others.length > 0 };
}

/**
 * What Redis losing its data (a restart without persistence, a flush) leaves (data-loss.ts): a
 * space whose embedding index is empty while its shards are in the bucket (every space with a
 * folder there is looked at, not only those a worker has published since), and the datasets with
 * trained runs that Redis no longer knew then, with the commands that bring both back. A dataset
 * deleted on purpose while its runs stay is not a loss: it is only named when a loss is found.
 */
async function dataLossWarnings(ctx: CliContext, spaces: string[], s3: S3Look, o: { remember: boolean }): Promise<{ lines: string[]; found: boolean; elsewhere: boolean }> {
  const { cache, layout, store } = ctx.services;
  const { bucket } = ctx.config.s3;
  const warnings: string[] = [];
  // A bucket that cannot be listed now is not a reason to fail status, but it is said: what
  // Redis may have lost is found by reading the bucket.
  let inBucket: string[];
  try {
    // asked first with a deadline of its own: a mute S3 would hold status for the SDK's attempts (minutes)
    const down = await s3;
    if (down !== undefined) throw down;
    inBucket = await store.listFolders(bucket, layout.embeddingSpaces());
  } catch (err) {
    // (nor is a loss remembered or forgotten: nothing was seen)
    const why = (S3UnreachableError.from(err, ctx.config.s3.endpoint) ?? s3Refusal(err, ctx.config.s3) ?? (err as Error)).message;
    return { lines: [`cannot read s3://${bucket}/, so whether Redis lost data is not checked: ${why}`], found: false, elsewhere: false };
  }
  const ids = new Set([...spaces, ...inBucket]);
  const elsewhere: string[] = [];
  for (const id of [...ids].sort()) {
    if (!(await cache.indexLost(id).catch(() => false))) continue;
    // a shell with another TL_QUEUE_PREFIX than the workers' sees their data as gone: it is not
    const others = await indexUnderOtherPrefixes(ctx, id).catch(() => []);
    if (others.length) {
      elsewhere.push(`the embedding index of ${id} is empty, and nothing was lost: ${otherPrefixWords(ctx, others)}`);
      continue;
    }
    warnings.push(`the embedding index of ${id} is empty while its shards are in s3://${bucket}/${layout.embeddings(id)} (Redis lost its data?): the next ingest or classify in it restores it, or now: transferline cache rebuild-index --embedder ${id}`);
  }
  // An empty Redis that no embed worker has ever sent a heartbeat to looks the same as one that
  // lost its data: a shell whose REDIS_URL is not the workers' (a user's trial: another database
  // of their server). Said first, as the likelier cause, unless a worker is loading its model
  // here (its beats are this Redis's).
  const foreign =
    warnings.length > 0 &&
    !(await ctx.services.spaces.everBeaten().catch(() => true)) &&
    (await ctx.services.spaces.list().catch(() => [])).every((s) => s.starting.length === 0);
  let found = warnings.length > 0;
  try {
    // Such a Redis is not told of a loss it may not have had: what it would record is said, and
    // the next status after a worker's first heartbeat there records it (as does an ingest or
    // classify that restores the index).
    if (!o.remember) {
      // (said as a shell on this deployment would record it; nothing recorded nor forgotten)
    } else if (warnings.length && !foreign) await recordLostDatasets(ctx);
    else if (!warnings.length) await lossOver(ctx);
    const named = !o.remember ? (warnings.length ? await lossUnrecorded(ctx) : []) : foreign ? await lossUnrecorded(ctx) : await lostDatasets(ctx);
    for (const lost of named) {
      warnings.push(lostDatasetLine(lost));
      found = true;
    }
  } catch (err) {
    // the runs are read from the bucket: one that cannot be read now is not a reason to fail status
    warnings.push(`could not check which datasets Redis lost: ${(err as Error).message}`);
  }
  if (foreign) {
    warnings.unshift(`no embed worker has sent a heartbeat to this Redis (${redactUrl(ctx.config.redis.url)}) since it began (a running one does within seconds): if the workers use another Redis, or another database of it, what follows is no loss; set REDIS_URL as they have it`);
  }
  return { lines: [...elsewhere, ...warnings], found, elsewhere: elsewhere.length > 0 };
}
