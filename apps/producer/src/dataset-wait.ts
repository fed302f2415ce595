import { couldNotStart, hungAfterMs, isRedisUnavailable, relistCommand, redactUrl, sleep, spaceSettings, unlockedActiveJobs, upRestartWindowMs, type DatasetStatus } from '@transferline/shared';
import type { Queue } from 'bullmq';
import type { CliContext } from './cli-context.js';
import { CliExit, EXIT } from './exit-codes.js';
import { createProgress } from './progress.js';
import { workersUnderOtherPrefixes } from './data-loss.js';
import { printable } from './terminal.js';

export interface WaitOptions {
  /** the embedding space whose workers embed the dataset */
  space: string;
  /** seconds without progress after which a missing worker (or lost jobs) ends the wait */
  stallSeconds: number;
  /** only the items whose object lies under this `bucket/prefix` (classify: one prefix of a model's set) */
  within?: string;
  /**
   * The images this command put in motion (an ingest's new, changed and still-queued objects and
   * those it added from the cache, a retry's failures), called as `what`; `done` of them were
   * done before the wait began (added from the cache). In a dataset that holds others, done
   * before, the bar counts these (and any other command's that the wait waits for too: see
   * barCounter), and the dataset's own counts follow it. A second ingest of 12 new images into
   * a dataset of 1,000 showed 1000/1012 at once, which read as its own progress. `whole` names
   * what the counts that follow are of (the dataset, unless `within` narrows them).
   */
  ours?: { count: number; done?: number; what: string; whole?: string };
}

/** The bar's figures at one look: how many done, of how many, and what they are. */
export interface BarFigures {
  value: number;
  total: number;
  detail: string;
}

/**
 * The bar's figures over one wait, look by look: the whole dataset's, or, when the command put
 * only some of its images in motion (`ours`), those, with the dataset's beside them. The wait
 * goes on until nothing in the dataset is on its way, so images that another command has on
 * their way too (pending already at the first look, or added since: another client's classify
 * of the same prefix, an ingest into the same dataset) are counted as well once they show: the
 * total grows to what the wait has seen done plus what is on its way still ("of this ingest's
 * images and 100 more done"). Counted as ours only, the bar stood at 0/12 until the others were
 * all but done.
 */
export function barCounter(ours?: WaitOptions['ours']): (s: Pick<DatasetStatus, 'total' | 'embedded' | 'cached' | 'failed' | 'pending' | 'orphaned'>) => BarFigures {
  /**
   * The dataset's done before the wait (less those of ours done before the first look), taken at
   * the first look; undefined when the bar counts the whole dataset (the command's images are all
   * of it, or none): so it stays, when images are added to the dataset meanwhile.
   */
  let doneBefore: number | undefined;
  let first = true;
  let total = ours?.count ?? 0;
  return (s) => {
    const done = s.embedded + s.failed;
    const left = s.pending + s.orphaned;
    const counts = `${s.embedded} embedded (${s.cached} of them already in the cache), ${s.failed} failed`;
    // Those of ours on their way at the start and not pending now are taken for done: when others
    // are pending too, the first look cannot tell whose are, and takes none of ours for done.
    if (first && ours && ours.count > 0 && ours.count < s.total) {
      const doneAlready = Math.min(ours.done ?? 0, ours.count);
      doneBefore = done - doneAlready - Math.max(0, ours.count - doneAlready - left);
    }
    first = false;
    if (!ours || doneBefore === undefined) return { value: done, total: s.total, detail: `done: ${counts}` };
    total = Math.max(total, Math.max(0, done - doneBefore) + left);
    const others = total - ours.count;
    // (an image done before the wait that is replaced meanwhile is on its way again: one fewer
    // done, of as many; the bar still ends full)
    const what = others > 0 ? `${ours.what} and ${others} more` : ours.what;
    return { value: total - left, total, detail: `of ${what} done (${ours.whole ?? 'the dataset'}: ${done}/${s.total} done, ${counts})` };
  };
}

/** How long a wait (a dataset's, or a job's) rides out an unreachable Redis (at least; the stall timeout if longer). */
const REDIS_OUTAGE_SECONDS = 120;

/**
 * How a CLI wait rides out Redis going away (a restart): `down(err)` for each failed look (errors
 * other than an unreachable Redis are thrown on), which says so once and gives up with
 * EXIT.error after REDIS_OUTAGE_SECONDS or the stall timeout, whichever is longer, `then`
 * saying what goes on meanwhile; `up()` after each look that worked, which says when it is back.
 */
export function redisOutage(ctx: CliContext, stallSeconds: number, then: string): { up: () => void; down: (err: unknown) => void } {
  const where = redactUrl(ctx.config.redis.url);
  const limit = Math.max(REDIS_OUTAGE_SECONDS, stallSeconds);
  let since: number | undefined;
  return {
    up: () => {
      if (since === undefined) return;
      ctx.out.write(`\nRedis is back after ${Math.round((Date.now() - since) / 1000)} s\n`);
      since = undefined;
    },
    down: (err) => {
      if (!isRedisUnavailable(err)) throw err;
      if (since === undefined) {
        since = Date.now();
        ctx.out.write(`\nRedis at ${where} is unreachable: waiting for it (up to ${limit} s)\n`);
      }
      const down = (Date.now() - since) / 1000;
      if (down > limit) throw new CliExit(EXIT.error, `Redis at ${where} has been unreachable for ${Math.round(down)} s; ${then}`);
    },
  };
}

/**
 * Follows a dataset until every item is embedded or failed, with a progress bar. Nothing here
 * waits for ever: when nothing has moved for `stallSeconds`, it looks at what could still move
 * the rest, and if a stage has no connected worker or its queue is paused, or the remaining
 * items have lost their jobs, it says so and ends with EXIT.stalled. A dataset that vanishes (Redis lost its data)
 * ends with EXIT.vanished; Ctrl-C with EXIT.interrupted. Redis going away (a restart) is waited
 * out and said once, for up to REDIS_OUTAGE_SECONDS or the stall timeout, whichever is longer.
 */
export async function waitForDataset(ctx: CliContext, dataset: string, o: WaitOptions): Promise<DatasetStatus> {
  const bar = createProgress(`embedding ${dataset}`);
  const figures = barCounter(o.ours);
  // (a user's trial: after stopping up on purpose, "when it is back" did not say who brings it back)
  const outage = redisOutage(ctx, o.stallSeconds, `the workers go on when it is back (a stack stopped: transferline up starts it again): see "transferline status -d ${dataset}"`);
  let lastDone = -1;
  let lastChange = Date.now();
  let hinted = '';
  // A third of the way to giving up (at least 5 s), what stops the rest is said once, with how
  // long the wait goes on: an operator's trial saw the bar stand still for the whole 30 s and
  // learnt why only from the exit. (Not for short timeouts: they give up first.)
  const earlyMs = Math.max(5_000, (o.stallSeconds * 1000) / 3);
  let toldEarly = false;
  // since when each stage's connected workers have been seen moving nothing, in the same state (movesNothing)
  const hungSince: HungSince = new Map();
  const restarts: HungWatch['restarts'] = new Map();

  /** One look at the dataset: its status when the wait is over, undefined to go on waiting. */
  const look = async (): Promise<DatasetStatus | undefined> => {
    // Read, then check that the dataset is still there: a flush that lands while the status is
    // read leaves a status of nothing pending (0 images), which must not pass for done.
    const started = Date.now();
    const s = await ctx.services.inspector.status(dataset, 20, o.within);
    const took = Date.now() - started;
    if (!(await ctx.services.datasets.exists(dataset))) {
      throw new CliExit(EXIT.vanished, `dataset ${dataset} vanished from Redis while waiting: it was deleted (transferline delete dataset), or Redis lost its data. Ingest again to rebuild it (the embeddings in the bucket are kept, and ingest restores their index if Redis lost it).`);
    }
    const done = s.embedded + s.failed;
    // The count is of images done with: a failed one is done too, and said so.
    const p = figures(s);
    bar.update(p.value, p.total, p.detail);
    if (s.pending + s.orphaned === 0) return s;
    if (done !== lastDone) {
      lastDone = done;
      lastChange = Date.now();
      hungSince.clear();
      restarts.clear();
      toldEarly = false;
    } else if (Date.now() - lastChange > o.stallSeconds * 1000) {
      const { why, note } = await whyStalled(ctx, s, o.space, { since: hungSince, atLeastMs: o.stallSeconds * 1000, restarts });
      if (why) throw new CliExit(EXIT.stalled, `\nno progress for ${o.stallSeconds} s: ${why}`);
      // said once, and again when it is something else (an embed worker loading, then busy); not
      // for its figures alone
      const hint = note ?? connectedHint(restarts);
      if (hint.replace(/\d+/g, '#') !== hinted) {
        hinted = hint.replace(/\d+/g, '#');
        ctx.out.write(`\nno progress for ${o.stallSeconds} s, but ${hint}; still waiting\n`);
      }
    } else if (!toldEarly && earlyMs < o.stallSeconds * 1000 && Date.now() - lastChange > earlyMs) {
      toldEarly = true;
      // (with watches of its own: a worker seen moving nothing is timed from the stall's look, as before)
      const { why } = await whyStalled(ctx, s, o.space, { since: new Map(), atLeastMs: o.stallSeconds * 1000, restarts: new Map() });
      if (why) ctx.out.write(`\nno progress for ${Math.round((Date.now() - lastChange) / 1000)} s: ${why}. Waiting up to ${o.stallSeconds} s without progress (--stall-timeout), then giving up\n`);
    }
    await sleep(pollDelayMs(s.total, took), ctx.signal);
    return undefined;
  };

  try {
    for (;;) {
      if (ctx.signal?.aborted) throw new CliExit(EXIT.interrupted, `\ninterrupted; the workers go on with ${dataset}: see "transferline status -d ${dataset}"`);
      try {
        const s = await look();
        outage.up();
        if (s) return s;
      } catch (err) {
        outage.down(err);
        lastChange = Date.now(); // an outage is not a stall of the workers
        hungSince.clear();
        await sleep(1_000, ctx.signal);
      }
    }
  } finally {
    bar.stop();
  }
}

/**
 * What a stalled wait says while workers are connected for every waiting stage and nothing tells
 * why. After a restart by up was waited for, a worker is connected again (the new one, or the hung
 * one come back): the jobs the hung one held wait for their locks to run out (a user's trial read
 * "busy with other work?" there).
 */
export function connectedHint(restarts: UpRestarts): string {
  const restarted = [...restarts.keys()].filter((k) => k === 'preprocess' || k === 'embed');
  if (restarted.length === 0) return 'workers are connected for every waiting stage (busy with other work?)';
  // (up replaced the hung one, or it came back by itself: either way, its jobs wait for their locks)
  const two = restarted.length > 1;
  return `${restarted.join(' and ')} ${two ? 'have workers' : 'has a worker'} connected again after the hang: the jobs the hung ${two ? 'ones' : 'one'} held run again once their locks run out`;
}

/**
 * How long a dataset's wait sleeps between looks. Each look reads every item of the dataset
 * (about 8 s for a million here): a large dataset is looked at less often (200,000 → every
 * 2.5 s), and never more than a quarter of the time (a look of `tookMs` is followed by three
 * times as long), so a waiting CLI leaves Redis to the workers.
 */
export function pollDelayMs(total: number, tookMs: number): number {
  return Math.max(Math.min(10_000, 500 + total / 100), 3 * tookMs);
}

/**
 * What keeps the remaining items from moving, if anything (`why`; none when workers are there to
 * move them), and what the wait is waiting for meanwhile, when it is not workers at work (`note`).
 */
async function whyStalled(ctx: CliContext, s: DatasetStatus, space: string, hung: HungWatch): Promise<{ why?: string; note?: string }> {
  const stages = [
    await stageBlocked(ctx, 'preprocess', s.pendingByStage.preprocess, ctx.queues.preprocess, () => ctx.queues.preprocess.getWorkersCount(), () => noPreprocessWorker(ctx), hung),
    await stageBlocked(ctx, 'embed', s.pendingByStage.embed, ctx.queues.embed(space), () => ctx.services.spaces.workersOf(space), () => noEmbedWorker(ctx, space, hung), hung),
  ];
  const reasons = stages.filter((r): r is string => typeof r === 'string');
  if (s.orphaned > 0 && s.pending === 0) {
    reasons.push(`${s.orphaned} images have lost their jobs (Redis lost them, or they were removed): ${relistCommand(s.dataset)} to re-enqueue them`);
  }
  const notes = stages.flatMap((r) => (typeof r === 'object' ? [r.note] : []));
  return { ...(reasons.length && { why: reasons.join('; ') }), ...(notes.length && { note: notes.join('; ') }) };
}

/** Why no preprocess worker takes the stage's jobs: none started, or (a user's trial) started with another TL_QUEUE_PREFIX. */
async function noPreprocessWorker(ctx: CliContext): Promise<NoWorker> {
  const others = await workersUnderOtherPrefixes(ctx, ctx.queues.preprocess.name).catch(() => []);
  if (others.length) {
    const theirs = others.map((p) => `TL_QUEUE_PREFIX=${printable(p)}`).join(', ');
    // (several deployments may share a Redis: which of them is this one's, if any, is not ours to say)
    return { gone: `no preprocess worker is connected under this deployment's TL_QUEUE_PREFIX=${printable(ctx.config.redis.prefix)}, though this Redis has preprocess workers under ${theirs}: one meant for this deployment needs its TL_QUEUE_PREFIX` };
  }
  return { gone: 'no preprocess worker is connected (start one: transferline up, or feature-worker preprocess)' };
}

/**
 * Why a stage with `waiting` images moves none of them, if it does not: its queue is paused (the
 * console's queue board pauses; connected workers then hold nothing), it has no worker
 * (`workers` counts them), every one of them is paused by an outage, or those connected move
 * nothing (movesNothing: hung).
 */
export async function stageBlocked(
  ctx: CliContext,
  stage: 'preprocess' | 'embed',
  waiting: number,
  queue: Pick<Queue, 'name' | 'isPaused' | 'keys' | 'toKey' | 'getJob' | 'getJobCounts' | 'getWorkers'>,
  workers: () => Promise<number>,
  none: string | (() => Promise<NoWorker>),
  hung: HungWatch,
): Promise<string | { note: string } | undefined> {
  if (waiting === 0) {
    hung.since.delete(stage);
    return undefined;
  }
  const what = `${waiting} images wait for ${stage} and`;
  if (await queue.isPaused()) return `${what} the ${queue.name} queue is paused (resume it: the console's queue board)`;
  const live = await workers();
  if (live === 0) {
    const why = typeof none === 'string' ? { gone: none } : await none();
    if (typeof why === 'string') return `${what} ${why}`;
    if ('note' in why) return { note: why.note };
    // none, by looks taken one after the other: a worker that went live between the count and
    // the look for loading ones is in neither (an embed worker done loading: a CI run gave up)
    if ((await workers()) > 0) return undefined;
    // none at all, after a hung worker `up` watches was waited for: killed, and starting again
    // (while its record stays: one that stopped cleanly, `up` stopping, removed it)
    const left = await restartUnderWay(ctx, hung.restarts, stage);
    if (left !== undefined) return { note: `${what} their hung worker is being started again by up (none connected meanwhile): waiting for it (for ${left} s more at most)` };
    return `${what} ${why.gone}`;
  }
  const paused = await ctx.services.paused.allPaused(queue.name, live);
  // (an operator's trial read the exit as a failure of the ingest, and did not know a re-run picks it up)
  if (paused) return `${what} ${paused}. Nothing is lost meanwhile: the images stay queued, and the same command run again waits for them where they are`;
  const found = await movesNothing(ctx, queue);
  const seen = hung.since.get(stage);
  if (!found) {
    hung.since.delete(stage);
    return undefined;
  }
  // A worker alive but slow to renew (its event loop busy) loses a lock too, and a live one takes
  // up a dead one's jobs within its stalled-job interval (the workers' TL_JOB_LOCK_MS, which this
  // shell may not share): only the same state, outlasting two intervals and the stall timeout
  // again, is a hang.
  const since = seen?.state === found.state ? seen.at : Date.now();
  hung.since.set(stage, { state: found.state, at: since });
  const hungMs = Date.now() - since;
  if (hungMs < Math.max(hungAfterMs(stage, ctx.config), hung.atLeastMs)) return undefined;
  // Workers `up` watches are restarted once their /healthz has gone unanswered for its hang time,
  // and the new one takes their jobs up: that is waited for, from when this wait saw them hang
  // (they hung earlier), not told to the user to do.
  const restart = await upRestart(ctx, stage, found.workers, hungMs, hung.restarts);
  if (restart.words) return { note: `${what} ${found.symptom}; ${restart.words}` };
  return `${what} ${found.message}${restart.expired ?? ''}`;
}

/**
 * Why a stage has no worker, as `stageBlocked` is told: a reason to give up (a string), one that
 * a restart by `up` waited for may cover (`gone`: none at all), or a note of what the wait waits for.
 */
type NoWorker = string | { gone: string } | { note: string };

/**
 * When every one of `workers` (hung for about `hungMs`) is watched by `up`: the words that say the
 * wait waits for `up` to replace them, until upRestartWindowMs from when they hung. One window per
 * stall of what is waited on (`key`: a stage, a job), kept in `restarts` until something moves: a
 * replacement that hangs again is not given another. `expired`: what to add to the reason to give
 * up once that window has passed.
 */
export async function upRestart(ctx: CliContext, key: string, workers: string[], hungMs: number, restarts: UpRestarts): Promise<{ words?: string; expired?: string }> {
  const words = (w: UpRestartWindow) =>
    `up, which watches ${w.workers.length === 1 ? 'it' : 'them'}, restarts a worker whose /healthz has gone unanswered for ${Math.round(w.hangMs / 1000)} s: waiting for that (for ${Math.ceil((w.until - Date.now()) / 1000)} s more at most)`;
  const granted = restarts.get(key);
  if (granted) return Date.now() < granted.until ? { words: words(granted) } : { expired: ` (up, which watches ${granted.workers.length === 1 ? 'it' : 'them'}, has not replaced ${granted.workers.length === 1 ? 'it' : 'them'} in ${Math.round(upRestartWindowMs(granted.hangMs) / 1000)} s)` };
  const upHangMs = await ctx.services.supervised.hangMsOf(workers).catch(() => undefined);
  if (upHangMs === undefined || hungMs >= upRestartWindowMs(upHangMs)) return {};
  const w = { until: Date.now() + upRestartWindowMs(upHangMs) - hungMs, hangMs: upHangMs, workers };
  restarts.set(key, w);
  return { words: words(w) };
}

/**
 * Seconds left of the window `up` was given to replace the hung workers of `key`, while their
 * record says `up` still watches them (one that stopped cleanly, `up` stopping, removed it): the
 * moment between the kill and the new worker's connection, when none is connected.
 */
export async function restartUnderWay(ctx: CliContext, restarts: UpRestarts, key: string): Promise<number | undefined> {
  const granted = restarts.get(key);
  if (!granted || Date.now() >= granted.until) return undefined;
  if ((await ctx.services.supervised.hangMsOf(granted.workers).catch(() => undefined)) === undefined) return undefined;
  return Math.ceil((granted.until - Date.now()) / 1000);
}

/** The window given to `up` to replace hung workers, by what waits on them, until something moves (upRestart). */
export type UpRestarts = Map<string, UpRestartWindow>;
interface UpRestartWindow {
  until: number;
  hangMs: number;
  workers: string[];
}

/** Since when each stage's connected workers have been seen moving nothing, and in which state. */
type HungSince = Map<string, { state: string; at: number }>;
/** What the dataset wait keeps for movesNothing: HungSince, and the least time a state must last. */
export interface HungWatch {
  since: HungSince;
  atLeastMs: number;
  /** the window given to `up` to replace a stage's hung workers, until something moves (upRestart) */
  restarts: UpRestarts;
}

/** What restarts a hung worker under `up`: said where one may be hung. */
export const RESTARTED_BY = 'under up, a worker that is stopped or blocked is restarted once its /healthz has gone unanswered for TL_UP_HANG_SECONDS';

/**
 * The worker (its PROCESS_NAME) a BullMQ connection belongs to: BullMQ names a worker's
 * `<prefix>:<base64 of the queue's name>:w:<worker>`; undefined for one that is no worker's.
 */
export function workerIdOf(client: Record<string, string>): string | undefined {
  const name = client.rawname ?? '';
  const at = name.lastIndexOf(':w:');
  return at < 0 || at + 3 === name.length ? undefined : name.slice(at + 3);
}

/**
 * When a queue's connected workers move nothing (and nothing moved for the stall timeout), the
 * state they are in (the same state, seen again, is the same hang) and what to tell the user:
 * every job they hold has lost its lock (the worker holding them stopped renewing it, and no
 * other took them up), or they hold none while jobs wait (a worker that can take work takes it
 * at once). Either way the worker is hung: SIGSTOPped, its event loop blocked, or cut off from
 * Redis; its connection, still open, counts it as connected. Jobs held back by backpressure keep
 * their locks; delayed ones (backoff) do not wait. More active jobs than are looked at: not said.
 */
async function movesNothing(
  ctx: CliContext,
  queue: Pick<Queue, 'name' | 'keys' | 'toKey' | 'getJob' | 'getWorkers'>,
): Promise<{ state: string; symptom: string; message: string; workers: string[] } | undefined> {
  const hung = '(hung: SIGSTOPped, its event loop blocked, or cut off from Redis?)';
  const { active, unlocked, waiting } = await unlockedActiveJobs(ctx.services.redis, queue);
  if (active === 0) {
    if (!waiting) return undefined;
    const symptom = `its connected workers take none of the ${waiting} jobs waiting in ${queue.name} ${hung}`;
    // (their connections' names end with the worker's PROCESS_NAME; one without a name is no one's to restart)
    const workers = (await queue.getWorkers()).map((w) => workerIdOf(w) ?? '');
    return { state: 'take-none', symptom, message: `${symptom}; restart them, or start another (${RESTARTED_BY})`, workers };
  }
  if (unlocked.length < active) return undefined;
  const holder = (await queue.getJob(unlocked[0]!))?.processedBy;
  const [them, it] = active === 1 ? ['the job', 'it'] : [`all ${active} jobs`, 'them'];
  const symptom = `${them} its workers hold lost ${active === 1 ? 'its lock' : 'their locks'}: ${holder ? `worker ${holder}` : 'their worker'} stopped renewing ${it} ${hung}, and no other worker took ${it} up`;
  return { state: `unlocked:${[...unlocked].sort().join(',')}`, symptom, message: `${symptom}; restart it, or start another (${RESTARTED_BY})`, workers: holder ? [holder] : [] };
}

/**
 * Longest an embed worker may be loading its model (a download of the weights, a first build)
 * before a wait stops counting on it: loading for longer, it is stuck.
 */
export const EMBED_START_LIMIT_MS = 10 * 60_000;

/**
 * Why no embed worker of `space` is live, naming the one that beat last if it did so lately (the
 * registry keeps a silent worker four TTLs); or, while one is loading its model, a note that the
 * wait is for it (not a reason to give up, until it has loaded for EMBED_START_LIMIT_MS).
 */
async function noEmbedWorker(ctx: CliContext, space: string, hung: HungWatch): Promise<NoWorker> {
  const none = `no embed worker of ${space} is live`;
  // (a trial: "that space's settings" left the user to work them out from its id)
  const settings = await spaceSettingsWords(ctx, space);
  const starting = await ctx.services.spaces.startingWorkers(space).catch(() => []);
  // (the latest to start first: one started since, by the advice below, is waited for)
  if (starting.length) {
    const { worker, startingMs } = starting[0]!;
    const it = `its worker ${worker.workerId} has been loading its model for ${Math.round(startingMs / 1000)} s`;
    if (startingMs < EMBED_START_LIMIT_MS) return { note: `an embed worker of ${space} is on its way: ${it} (a download of the weights or a first build can take minutes)` };
    return `${none}: ${it}, more than the ${EMBED_START_LIMIT_MS / 60_000} minutes a load takes (stuck? see its log); restart it, or start another`;
  }
  const [last] = await ctx.services.spaces.silentWorkers(space).catch(() => []);
  if (!last) {
    // a failed start further back than the registry names silent workers (starts minutes apart,
    // as Kubernetes backs a crashing pod off): why, and how long ago
    const failed = await ctx.services.spaces.failureOf(space).catch(() => undefined);
    if (failed) return `${none}: ${failed}`;
    // silent for longer than the registry names it, yet still connected to the queue: hung (a
    // user's trial: a worker SIGSTOPped minutes before was not named)
    const hungIds = (await ctx.queues.embed(space).getWorkers().catch(() => [])).map(workerIdOf).filter((id): id is string => !!id);
    if (hungIds.length) {
      const them = hungIds.length === 1 ? `its worker ${hungIds[0]} is` : `its workers ${hungIds.join(', ')} are`;
      return { gone: `${none}: ${them} connected to its queue but ${hungIds.length === 1 ? 'beats' : 'beat'} no more (hung: SIGSTOPped, its event loop blocked, or cut off from Redis?); restart ${hungIds.length === 1 ? 'it' : 'them'}, or start one with that space's settings${settings}` };
    }
    return { gone: `${none} (start one with that space's settings${settings})` };
  }
  // silent while loading: a build of the model can hold its beat (a busy machine); waited for as
  // long as the registry names a silent worker (four TTLs), then given up as gone
  const ago = Math.round(last.silentMs / 1000);
  if (last.worker.failed) return `${none}: ${couldNotStart(last.worker)} (${ago} s ago)`;
  if (last.worker.starting) {
    return { note: `an embed worker of ${space} is on its way: its worker ${last.worker.workerId} is loading its model, and last beat ${ago} s ago (a build can hold its beat on a busy machine)` };
  }
  const silent = `its worker ${last.worker.workerId} last beat ${ago} s ago (stopped, hung, or cut off from Redis?)`;
  // (it hung about when it last beat)
  const restart = await upRestart(ctx, 'embed', [last.worker.workerId], last.silentMs, hung.restarts);
  if (restart.words) return { note: `${none}: ${silent}; ${restart.words}` };
  return `${none}: ${silent}; restart it, or start one with that space's settings${settings} (${RESTARTED_BY})${restart.expired ?? ''}`;
}

/** `: TL_RESIZE=crop TL_MODEL_WEIGHTS=random …`, the settings an embed worker of `space` needs that are not the defaults (none: the defaults); empty when the space is not published. */
async function spaceSettingsWords(ctx: CliContext, space: string): Promise<string> {
  const published = await ctx.services.spaces.get(space).catch(() => undefined);
  if (!published) return '';
  const set = spaceSettings(published);
  return set.length ? `: ${set.map((v) => `${v.name}=${v.value}`).join(' ')}` : ': the defaults';
}
