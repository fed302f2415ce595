import { Job, QueueEvents, type Queue } from 'bullmq';
import { JOBS, execPipeline, hungAfterMs, jobLock, permanentFailureOf, sleep, unlockedActiveJobs, type JobName, type Redis } from '@transferline/shared';
import type { CliContext } from './cli-context.js';
import { redisOutage, restartUnderWay, RESTARTED_BY, upRestart, workerIdOf, type UpRestarts } from './dataset-wait.js';
import { CliExit, EXIT } from './exit-codes.js';
import { waitingFor } from '@transferline/train-worker/train-head.job';

export interface FollowOptions {
  /** what the job is, for messages ("run 2026…", "classify round") */
  what: string;
  /** the role that runs such jobs, for the message when none is connected */
  role: string;
  /** seconds a job may wait with no worker connected before we give up (it stays queued) */
  stallSeconds: number;
  /** the command that follows the job again, told on Ctrl-C ("transferline train --follow RUN") */
  followAgain?: string;
  /** the command that stops the work for good, said with the Ctrl-C line */
  cancel?: string;
  /** whether the job, found gone from its queue, was removed by that command (then: exit 1, saying so) */
  wasCancelled?: () => Promise<boolean>;
  onProgress?: (data: unknown) => void;
}

/**
 * Waits for one job to finish and returns its result, following its progress. Never waits for
 * ever: when nothing can move the job for `stallSeconds` (no worker of its queue connected, or
 * the queue paused), or the job is gone from its queue, it says so and ends with EXIT.stalled
 * (a queued job stays queued for when a worker comes); Ctrl-C ends with EXIT.interrupted. A
 * failed job throws its reason.
 */
export async function followJob<R>(ctx: CliContext, queue: Queue, job: Job, o: FollowOptions): Promise<R> {
  // A blocking connection of its own; BullMQ leaves a connection it was given open, so we close
  // it ourselves (an open one would keep the CLI from exiting).
  const connection = ctx.services.redis.duplicate({ maxRetriesPerRequest: null });
  connection.on('error', () => {});
  const events = new QueueEvents(queue.name, { connection, prefix: ctx.config.redis.prefix });
  events.on('error', () => {});
  const queued = queueWatch(ctx, job, o);
  const pace = new ProgressPace();
  // (a run followed while it waits in the queue for its images says so before its next progress)
  pace.phase = (job.progress as { phase?: string } | undefined)?.phase;
  const onProgress = ({ jobId, data }: { jobId: string; data: unknown }) => {
    if (jobId !== job.id) return;
    // progress means a worker has it: "started" comes before its first line, not after the next poll
    queued.started();
    pace.seen((data as { phase?: string } | undefined)?.phase);
    o.onProgress?.(data);
  };
  // The job's end as its events say it, at once; the poll below finds it too, within a second,
  // if the event is missed. (Not BullMQ's waitUntilFinished: it leaves a listener on the queue
  // when its own event does not end the wait, one more per round of classify --watch.)
  let onEnd: { completed: (a: { jobId: string; returnvalue: unknown }) => void; failed: (a: { jobId: string; failedReason: string }) => void } | undefined;
  const finished = new Promise<R>((resolve, reject) => {
    onEnd = {
      // (QueueEvents has parsed the return value's JSON already)
      completed: (a) => {
        if (a.jobId === job.id) resolve(a.returnvalue as R);
      },
      failed: (a) => {
        if (a.jobId === job.id) reject(new Error(a.failedReason));
      },
    };
  });
  try {
    await events.waitUntilReady();
    events.on('progress', onProgress);
    events.on('completed', onEnd!.completed);
    events.on('failed', onEnd!.failed);
    const watchdog = new AbortController();
    const polled = watch<R>(ctx, queue, job, o, { queued, pace }, watchdog.signal);
    try {
      return await Promise.race([finished, polled]);
    } catch (err) {
      if (err instanceof CliExit) throw err;
      // a cancel someone asked for (train --cancel) is not a failure of the job's own
      const permanent = permanentFailureOf((err as Error).message);
      if (permanent?.reason === 'cancelled') throw new CliExit(EXIT.error, permanent.detail);
      throw new Error(`${o.what} failed: ${(err as Error).message}`);
    } finally {
      watchdog.abort();
    }
  } finally {
    events.off('progress', onProgress);
    events.off('completed', onEnd!.completed);
    events.off('failed', onEnd!.failed);
    await events.close();
    connection.disconnect();
  }
}

/**
 * The job's end as its state says it, polled each second: its result, or its failure thrown.
 * The completion event alone can be missed: QueueEvents reads its stream from the moment its
 * first read reaches Redis ("$"), so a job that ends between the follower's first look and that
 * read sends an event no one reads, and waiting for the event alone waited for ever.
 *
 * Rejects when nothing can move the job, or on Ctrl-C. Nothing can
 * move it when, for `stallSeconds`: no worker of its queue is connected (whether the job waits,
 * or is active in a worker that is gone: only a live worker moves a stalled job back), its
 * queue is paused, or it is active in a worker that hung (lockLost) with no other to take it
 * up. A job that is gone from the queue (removed, or Redis lost it) ends the wait at once.
 * Redis going away is waited out, as the dataset wait does.
 */
async function watch<R>(ctx: CliContext, queue: Queue, job: Job, o: FollowOptions, { queued, pace }: { queued: QueueWatch; pace: ProgressPace }, stop: AbortSignal): Promise<R> {
  const outage = redisOutage(ctx, o.stallSeconds, `${o.what} goes on in the ${o.role} worker when it is back`);
  let stuckSince: number | undefined;
  let goneOnce = false;
  // (its words once `up` was said to restart the holder: the same story, not another)
  const holder = holderWatch(ctx, job, o, (w) => lapsed.replacing?.includes(w) ?? false);
  // since when the job's lock was first seen lost, and the window `up` has to replace its hung worker (lockLost)
  const lapsed: Lapsed = { restarts: new Map() };
  // (each note once, until the job moves again)
  const note = (kind: string, line: string) => {
    if (lapsed.noted !== kind) say(ctx, `${o.what}: ${line}`);
    lapsed.noted = kind;
    lapsed.replacing = lapsed.restarts.get(job.id!)?.workers;
    // what goes on was said: no "may be hung" on top of it until the run moves again
    pace.hold();
  };
  // (the first look at once: the job may have ended already)
  for (let look = 0; ; look++) {
    if (look > 0) await sleep(1_000, AbortSignal.any([stop, ...(ctx.signal ? [ctx.signal] : [])]));
    if (stop.aborted) return new Promise<never>(() => {});
    if (ctx.signal?.aborted) throw new CliExit(EXIT.interrupted, `\ninterrupted; ${o.what} goes on in the ${o.role} worker${o.followAgain ? ` (follow it again: ${o.followAgain}${o.cancel ? `; stop it: ${o.cancel}` : ''})` : ''}`);
    let why: string | undefined;
    try {
      const state = await queue.getJobState(job.id!);
      if (state === 'unknown') {
        // A job removed when it completed may be seen gone just before its completion event lands: look twice.
        if (goneOnce && (await o.wasCancelled?.())) throw new CliExit(EXIT.error, `${o.what} was cancelled (${o.cancel ?? 'cancelled'}) ${pace.phase === 'waiting' ? 'while it waited for images on their way' : 'before it started'}`);
        if (goneOnce) throw new CliExit(EXIT.stalled, `${o.what} is gone from the ${queue.name} queue (removed, or Redis lost it): nothing will run it; start it again`);
        goneOnce = true;
        continue;
      }
      goneOnce = false;
      if (state === 'completed' || state === 'failed') {
        const done = await Job.fromId(queue, job.id!);
        // (the same end still: not a job retried from the queue board between the two reads)
        if (done?.finishedOn !== undefined && (await queue.getJobState(job.id!)) === state) {
          if (state === 'failed') throw new JobFailed(done.failedReason);
          return done.returnvalue as R;
        }
      }
      // A paused queue holds its waiting jobs; one already running goes on.
      const waiting = state === 'waiting' || state === 'delayed' || state === 'prioritized';
      const pending = waiting || state === 'active';
      if (waiting && (await queue.isPaused())) why = `the ${queue.name} queue is paused: resume it (the console's queue board) and the job goes on`;
      else if (pending) {
        const workers = await queue.getWorkers();
        const connected = workers.length;
        if (state === 'active' && connected > 0) {
          await holder.check(queue, workers);
          const lost = await lockLost(ctx, queue, job, workers, o.role, lapsed);
          if (typeof lost === 'object') note('restart', lost.note);
          else why = lost;
          // (a worker said gone is not then said "may be hung": its silence is that)
          const quiet = why === undefined && lapsed.noted === undefined && !holder.saidGone() ? pace.quiet() : undefined;
          if (quiet) {
            say(ctx, `${o.what}: ${await quietWords(ctx, queue, job, o.role, quiet)}`);
            pace.hold();
          }
        }
        await queued.check(queue, state, connected);
        const restart = connected === 0 && state === 'active' ? await goneUnderUp(ctx, queue, job, lapsed) : {};
        if (restart.left !== undefined) {
          note('restarting', `its ${o.role} worker (${restart.holder}), which up watches, is gone and none is connected: up starts it again; waiting for that (for ${restart.left} s more at most)`);
        } else if (connected === 0) {
          why =
            state === 'active'
              ? `its ${o.role} worker is gone and no ${o.role} worker is connected${restart.expired ?? ''}: start one (transferline up, or the ${o.role} worker) and it takes the job up again`
              : `no ${o.role} worker is connected: start one (transferline up, or the ${o.role} worker); the job stays queued until then`;
        } else if (waiting) {
          const paused = await ctx.services.paused.allPaused(queue.name, connected);
          if (paused) why = `it waits for the ${queue.name} queue, and ${paused}`;
        }
      }
      outage.up();
    } catch (err) {
      if (err instanceof JobFailed) throw err;
      // the job's end came by its event while this look was in flight: the command has closed its
      // connections since, and this look's failure is that, not an outage (a trial saw it said)
      if (stop.aborted) return new Promise<never>(() => {});
      outage.down(err);
      // (the worker's progress waits for Redis too: silence is counted from when it is back)
      pace.restart();
      stuckSince = undefined; // an outage is not a stall of the workers
      continue;
    }
    if (!why) {
      stuckSince = undefined;
      continue;
    }
    stuckSince ??= Date.now();
    if (Date.now() - stuckSince > o.stallSeconds * 1000) throw new CliExit(EXIT.stalled, `${o.what} has not moved for ${o.stallSeconds} s: ${why}`);
  }
}

/**
 * How often a followed job reports progress while it trains, and whether it has been silent for
 * much longer than that. A hung worker keeps its job's lock until the lock runs out: a minute
 * for a training run by default, then two stalled-job intervals before the follower may call it
 * hung; silence tells the user sooner that something may be wrong (only a note). Armed by three
 * training steps in a row: loading (a new holder's too) and saving have no pace to go by.
 */
export class ProgressPace {
  private last?: number;
  private gaps: number[] = [];
  private held = false;

  /** the phase of the last progress (a run waiting for images goes back to the queue between its looks) */
  phase?: string;

  seen(phase?: string): void {
    this.phase = phase;
    const now = Date.now();
    if (phase !== 'training') this.gaps = [];
    else if (this.last !== undefined) this.gaps = [...this.gaps.slice(-19), now - this.last];
    this.last = now;
    this.held = false;
  }

  /** Silent for long: said once (or what goes on was said otherwise), until the next progress. */
  hold(): void {
    this.held = true;
  }

  /** Silence counted again from now (Redis was away: progress could not come). */
  restart(): void {
    if (this.last !== undefined) this.last = Date.now();
  }

  /** The silence and the usual gap, when the silence is past QUIET_AFTER_MS and 20 usual gaps. */
  quiet(): { silentMs: number; everyMs: number } | undefined {
    if (this.held || this.last === undefined || this.gaps.length < 3) return undefined;
    const everyMs = [...this.gaps].sort((a, b) => a - b)[this.gaps.length >> 1]!;
    const silentMs = Date.now() - this.last;
    return silentMs < Math.max(QUIET_AFTER_MS, 20 * everyMs) ? undefined : { silentMs, everyMs };
  }
}

const QUIET_AFTER_MS = 15_000;

/** The note on a job silent for long (ProgressPace): its worker may be hung, and what `up` does about it if it watches it. */
async function quietWords(ctx: CliContext, queue: Queue, job: Job, role: string, q: { silentMs: number; everyMs: number }): Promise<string> {
  const holder = (await queue.getJob(job.id!))?.processedBy;
  const hangMs = holder ? await ctx.services.supervised.hangMsOf([holder]).catch(() => undefined) : undefined;
  const every = q.everyMs < 1_000 ? 'several times a second' : `every ${Math.round(q.everyMs / 1000)} s`;
  const up = hangMs ? `; up, which watches it, restarts a worker whose /healthz has gone unanswered for ${Math.round(hangMs / 1000)} s` : '';
  return `no progress for ${Math.round(q.silentMs / 1000)} s, where it came ${every}: its ${role} worker${holder ? ` (${holder})` : ''} may be hung (SIGSTOPped, its event loop blocked, or cut off from Redis?)${up}; waiting`;
}

/** Since when a followed job's lock has been seen lost, the window given to `up` to replace its worker, and what was said of it. */
interface Lapsed {
  since?: number;
  restarts: UpRestarts;
  noted?: string;
  /** the workers `up` was last said to replace */
  replacing?: string[];
}

/**
 * For an active job whose worker is gone with none connected: whether that worker is one `up`
 * watches (its record stays when it is killed or crashes; a clean stop removes it), so `up` is
 * starting it again, and for how long that is waited for (its holder, seconds left); once that
 * window has passed, the words that say so. At the default locks `up` kills a hung worker before
 * the follower has seen its lock lapse for two stalled-job intervals: the window opens here then.
 */
async function goneUnderUp(ctx: CliContext, queue: Queue, job: Job, lapsed: Lapsed): Promise<{ left?: number; holder?: string; expired?: string }> {
  const id = job.id!;
  const granted = lapsed.restarts.get(id);
  if (!granted) {
    const holder = (await queue.getJob(id))?.processedBy;
    if (holder) await upRestart(ctx, id, [holder], lapsed.since === undefined ? 0 : Date.now() - lapsed.since, lapsed.restarts);
  }
  const window = lapsed.restarts.get(id);
  if (!window) return {};
  const left = await restartUnderWay(ctx, lapsed.restarts, id);
  if (left !== undefined) return { left, holder: window.workers.join(', ') };
  return Date.now() >= window.until ? { expired: (await upRestart(ctx, id, window.workers, 0, lapsed.restarts)).expired } : {};
}

/**
 * Why nothing will move an active job whose lock has run out while its worker's connection stays
 * open (hung: SIGSTOPped, its event loop blocked, cut off from Redis), when no other worker of the
 * queue is connected to take it up (one that is does, within its stalled-job interval). A note
 * instead while `up`, which watches that worker, has time left to replace it (upRestart).
 */
async function lockLost(ctx: CliContext, queue: Queue, job: Job, workers: Record<string, string>[], role: string, lapsed: Lapsed): Promise<string | { note: string } | undefined> {
  const jobId = job.id!;
  const { unlocked } = await unlockedActiveJobs(ctx.services.redis, queue);
  if (!unlocked.includes(jobId)) {
    // it moved (a worker holds its lock): a hang from here on is another
    delete lapsed.since;
    delete lapsed.noted;
    lapsed.restarts.clear();
    return undefined;
  }
  // A worker alive but slow to renew (TF.js holding its event loop) loses the lock too; its own
  // stalled-job check then moves the job back within two intervals: only a loss that outlasts them is a hang.
  lapsed.since ??= Date.now();
  if (job.name in JOBS && Date.now() - lapsed.since < hungAfterMs(job.name as JobName, ctx.config)) return undefined;
  const holder = (await queue.getJob(jobId))?.processedBy;
  // Another worker takes it up, unless it is paused by an outage (a paused worker runs no
  // stalled-job check). BullMQ lists every worker under the queue's name; `rawname` is its
  // connection's own name.
  const paused = (await ctx.services.paused.list(queue.name)).map((p) => p.worker);
  const named = workers.some((w) => w.rawname);
  const others = named ? workers.filter((w) => ![holder, ...paused].some((n) => n && workerIdOf(w) === n)).length : workers.length - 1 - new Set(paused.filter((p) => p !== holder)).size;
  if (others > 0) return undefined;
  const hung = `its ${role} worker${holder ? ` (${holder})` : ''} stopped renewing its lock (hung: SIGSTOPped, its event loop blocked, or cut off from Redis?), and no other ${role} worker ${paused.length ? 'that is not paused ' : ''}is connected to take it up`;
  const restart = holder ? await upRestart(ctx, jobId, [holder], Date.now() - lapsed.since, lapsed.restarts) : {};
  if (restart.words) return { note: `${hung}; ${restart.words}` };
  return `${hung}: restart it, or start another (${RESTARTED_BY})${restart.expired ?? ''}`;
}

/** The followed job failed: its reason, thrown as the completion event's failure would be. */
class JobFailed extends Error {}

interface QueueWatch {
  /** the job was seen active, or reported progress */
  started(): void;
  check(queue: Queue, state: string, connected: number): Promise<void>;
}

/**
 * Says, once, when the job waits behind others (a train worker runs one run at a time, so a run
 * queued behind a long one is silent otherwise), and then when it starts. It looks at the queue
 * once, at the first poll that finds a worker connected: a job with nothing ahead of it starts
 * at once, and reading every waiting job each second would be work for nothing.
 */
function queueWatch(ctx: CliContext, job: Job, o: FollowOptions): QueueWatch {
  let looked = false;
  let said = false;
  let started = false;
  const start = () => {
    if (said && !started) say(ctx, `${o.what}: started`);
    started = true;
  };
  return {
    started: start,
    async check(queue: Queue, state: string, connected: number): Promise<void> {
      if (state === 'active') return start();
      if (looked || started || connected === 0 || state !== 'waiting') return;
      looked = true;
      const [all, before] = await Promise.all([queue.getActive(), waitingAhead(ctx.services.redis, queue, job.id!)]);
      // it may have started meanwhile (its first progress said so): then it waits behind nothing
      if (started) return;
      const running = all.filter((j) => j.id !== job.id);
      const active = running.length;
      const ahead = active + before;
      // a training run is named by its run id
      const names = running.map((j) => (j.data as { runId?: string } | undefined)?.runId ?? j.id).join(', ');
      if (ahead === 0) return;
      said = true;
      const free = connected === 1 ? `the ${o.role} worker is free` : `one of the ${connected} ${o.role} workers is free`;
      say(ctx, `${o.what}: queued behind ${ahead} job${ahead === 1 ? '' : 's'} of the ${queue.name} queue (${active} running${names ? `: ${names}` : ''}; ${before} waiting before it); it starts when ${free}`);
    },
  };
}

/**
 * One line of the follower's own, among the progress lines: on a terminal (the bar on stderr,
 * this line on the same screen), after a line break that ends the bar's line; in a log, as a line
 * of its own (no blank line before it).
 */
export function say(ctx: CliContext, line: string): void {
  const sameScreen = process.stderr.isTTY && (ctx.out as Partial<NodeJS.WriteStream>).isTTY === true;
  ctx.out.write(`${sameScreen ? '\n' : ''}${line}\n`);
}

/**
 * How many waiting jobs a worker takes before this one: those to its right in the wait list
 * (BullMQ pushes new jobs on the left and workers take from the right), exact whatever the
 * clocks of the clients that added them. 0 when it is no longer there.
 */
async function waitingAhead(redis: Redis, queue: Queue, id: string): Promise<number> {
  const wait = queue.toKey('wait');
  const [pos, len] = await execPipeline(redis.pipeline().lpos(wait, id).llen(wait));
  return typeof pos === 'number' && typeof len === 'number' ? len - 1 - pos : 0;
}

/**
 * Whether the worker that holds a job (its `processedBy`) is connected, from the queue's workers
 * (BullMQ lists every worker under the queue's name; `rawname` is its connection's own name).
 * Undefined when Redis lists no client names (CLIENT refused): then nothing can be told.
 */
export function holderConnected(workers: Record<string, string>[], holder: string): boolean | undefined {
  if (!workers.some((w) => w.rawname)) return undefined;
  return workers.some((w) => workerIdOf(w) === holder);
}

/** How long a job held by a worker that is gone waits before a connected worker takes it up again: its lock and one stalled-job check. */
export function takenUpWithinSeconds(name: JobName, ctx: Pick<CliContext, 'config'>): number {
  const lock = jobLock(name, ctx.config);
  return Math.ceil((lock.lockMs + lock.stalledIntervalMs) / 1000);
}

/**
 * Says when the worker running the job is stopping or gone while others are connected (stopped,
 * crashed, or its connection lost): if it does not finish the job, nothing moves until its lock
 * runs out and a connected worker takes the job up again, which for a training run is a minute
 * or more of silence otherwise. Then says which worker took it up, or that the same one is back.
 * Workers name their blocking connection (PROCESS_NAME) and BullMQ records the name of the one
 * that holds a job (`processedBy`). A worker stopping cleanly closes that connection first and
 * then finishes its job, hence "stopping or gone"; a holder must be missing on two polls in a row
 * (a reconnect is not a death); a Redis that lists no client names (CLIENT refused) is not read.
 */
function holderWatch(ctx: CliContext, job: Job, o: FollowOptions, replacedByUp: (worker: string) => boolean) {
  const name = job.name in JOBS ? (job.name as JobName) : undefined;
  let gone: string | undefined;
  let missing: { holder: string; polls: number } | undefined;
  // the holder last seen: another one since, with none said gone, is a job put back and taken up at once
  let last: string | undefined;
  return {
    /** whether the job's worker has been said gone (and not back since) */
    saidGone: () => gone !== undefined,
    async check(queue: Queue, workers: Record<string, string>[]): Promise<void> {
      if (!workers.some((w) => w.rawname)) return;
      const now = await queue.getJob(job.id!);
      const holder = now?.processedBy;
      if (!holder) return;
      // (a run waiting for images goes back to the queue between its looks: any train worker may take the next)
      const looking = waitingFor(now.progress) !== undefined;
      const before = last;
      last = holder;
      if (holderConnected(workers, holder)) {
        missing = undefined;
        if (gone === holder) say(ctx, `${o.what}: its ${o.role} worker (${holder}) is connected again`);
        else if (gone !== undefined || (before !== undefined && before !== holder && !looking)) say(ctx, `${o.what} started again on ${o.role} worker ${holder}`);
        gone = undefined;
        return;
      }
      missing = missing?.holder === holder ? { holder, polls: missing.polls + 1 } : { holder, polls: 1 };
      if (missing.polls < 2 || gone === holder) return;
      gone = holder;
      const within = name ? `, within about ${takenUpWithinSeconds(name, ctx)} s` : '';
      // (up replaces it after its hang time, past most of the lock: no "within" to add)
      if (replacedByUp(holder)) say(ctx, `${o.what}: its ${o.role} worker (${holder}) is gone, replaced by up; a ${o.role} worker takes it up again once its lock has run out`);
      // (a train worker that stops puts its run back at the end of the epoch: see trainHead)
      else if (name === 'train') say(ctx, `${o.what}: its ${o.role} worker (${holder}) is stopping or gone; one that stops puts the run back at the end of its epoch, or finishes it first if it can within its stop deadline; if it was killed, another ${o.role} worker takes it up again when its lock runs out${within}`);
      else say(ctx, `${o.what}: its ${o.role} worker (${holder}) is stopping or gone; if it does not finish it, another ${o.role} worker takes it up again when its lock runs out${within}`);
    },
  };
}
