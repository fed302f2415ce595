import { DelayedError, Job, Queue, UnrecoverableError, Worker, createIORedisClient, type QueueOptions } from 'bullmq';
import type { ChainableCommander, Redis } from 'ioredis';
import type { DependencyGuard } from './dependency.guard.js';
import { CONNECTION_CODE_PATTERN, isConnectionCode, PermanentError } from './errors.js';
import { WORKER_FAILURE_REASONS } from './failure-reasons.js';
import { JOBS, jobLock, jobOptions, queueName, type JobLocks, type JobName, type JobPayload } from './jobs.catalog.js';
import { PROCESS_NAME } from './lifecycle.js';
import type { Logger } from './logger.js';
import { redisKeys } from './keys.js';
import { RedisScript } from './redis.client.js';
import type { Metrics } from './metrics.js';
import { PausedWorkers } from './paused-workers.js';

/** What a handler may do besides its work: log, report progress. It never sees BullMQ. */
export interface JobContext {
  log: Logger;
  progress: (value: number | object) => Promise<void>;
  attempt: number;
  /**
   * Whether this worker has begun to stop: a long job (a training run) then puts itself back at
   * its next safe point (throws DeferJob) for another worker to take up at once, where it would
   * hold its lock through the stop deadline, and then for the lock's length once the worker exits.
   */
  stopping: () => boolean;
}

export type Handler<N extends JobName, R = unknown> = (payload: JobPayload<N>, ctx: JobContext) => Promise<R>;

/**
 * Thrown by a handler that cannot go on now for a reason that is not the item's (no room in the
 * next stage's backlog, say): the job goes back to wait for `delayMs` and keeps its attempts.
 */
export class DeferJob extends Error {
  override readonly name = 'DeferJob';
  constructor(
    readonly delayMs: number,
    message: string,
  ) {
    super(message);
  }
}

/** What a job was about, for its log lines: the object, the image's content, the dataset or run. */
function subjectOf(data: unknown): Record<string, string> {
  const d = (typeof data === 'object' && data !== null ? data : {}) as Record<string, unknown>;
  const str = (k: string) => (typeof d[k] === 'string' ? (d[k] as string) : undefined);
  const bucket = str('bucket');
  const key = str('key');
  const subject: Record<string, string> = {};
  if (bucket !== undefined && key !== undefined) subject.object = `s3://${bucket}/${key}`;
  for (const k of ['sha256', 'dataset', 'runId'] as const) {
    const v = str(k);
    if (v !== undefined) subject[k] = v;
  }
  return subject;
}

/** The end of an item's road: why its job failed for good, and after how many attempts. */
export interface FinalFailure {
  /** bounded code: the handler's PermanentError reason, `bad-payload`, `stalled` or `attempts-exhausted` */
  reason: string;
  message: string;
  attempts: number;
}

/** BullMQ's message for a job whose worker died (or hung) holding it more often than allowed. */
const STALLED = 'job stalled more than allowable limit';

/** A job failed for good with a reason code (what PermanentError becomes at the boundary). */
class ItemFailure extends UnrecoverableError {
  constructor(
    readonly reason: string,
    readonly detail: string,
  ) {
    super(`${reason}: ${detail}`);
  }
}

/**
 * The reason code and detail of a job failed for good by a PermanentError, read back from BullMQ's
 * `failedReason` (written by ItemFailure above); undefined for any other failure.
 */
export function permanentFailureOf(failedReason: string | undefined): { reason: string; detail: string } | undefined {
  const m = /^([a-z][a-z-]*): (.*)$/s.exec(failedReason ?? '');
  return m ? { reason: m[1]!, detail: m[2]! } : undefined;
}

/** The queues of one deployment, sharing a connection; embed queues are made per space on first use. */
export class Queues {
  readonly preprocess: Queue;
  readonly train: Queue;
  readonly classify: Queue;
  private readonly embedQueues = new Map<string, Queue>();

  constructor(
    private readonly connection: Redis,
    readonly prefix: string,
    /** TL_RETRY_BACKOFF_SCALE: the jobs added to these queues carry their retry delays times this */
    private readonly retryBackoffScale = 1,
    /**
     * BullMQ writes each queue's `meta` hash (its version, the events' length) when it opens one:
     * workers do. A command does not, so one run with a TL_QUEUE_PREFIX no deployment has leaves no
     * keys under it (BullMQ's scripts take the defaults when the hash is not there).
     */
    private readonly writesMeta = true,
  ) {
    this.preprocess = this.make(queueName('preprocess'));
    this.train = this.make(queueName('train'));
    this.classify = this.make(queueName('classify'));
  }

  /** The embed queue of one embedding space. */
  embed(space: string): Queue {
    let q = this.embedQueues.get(space);
    if (!q) {
      q = this.make(queueName('embed', space));
      this.embedQueues.set(space, q);
    }
    return q;
  }

  /**
   * A pipeline on the queues' connection that BullMQ's scripts can join (`enqueueOn`), so a
   * job's add travels with the caller's own writes. It is ioredis's pipeline, except that
   * `hset` takes an object of fields (BullMQ's form).
   */
  async pipeline(): Promise<ChainableCommander> {
    await this.preprocess.waitUntilReady(); // BullMQ's scripts are defined on the connection
    return createIORedisClient(this.connection).pipeline() as unknown as ChainableCommander;
  }

  /** The queue of a job name (embed needs its space). */
  of(name: JobName, space?: string): Queue {
    return name === 'embed' ? this.embed(space!) : this[name];
  }

  private make(name: string): Queue {
    const q = new DatabaseQueue(name, { connection: this.connection, prefix: this.prefix, skipMetasUpdate: !this.writesMeta }, this.connection.options.db ?? 0);
    BACKOFF_SCALE.set(q, this.retryBackoffScale);
    // Connection errors are reported once by the connection's own listener (redis.client.ts).
    q.on('error', () => {});
    return q;
  }

  async close(): Promise<void> {
    await Promise.all([this.preprocess, this.train, this.classify, ...this.embedQueues.values()].map((q) => q.close()));
  }
}

/**
 * A queue whose workers are those connected to its own Redis database. BullMQ finds a queue's
 * workers by their connections' names in CLIENT LIST, which lists the whole server's: a shell
 * pointed at database 3 (REDIS_URL …/3) counted the workers of database 0 as its own, and waited
 * on them.
 */
class DatabaseQueue extends Queue {
  constructor(
    name: string,
    opts: QueueOptions,
    private readonly db: number,
  ) {
    super(name, opts);
  }

  override async getWorkers(): Promise<{ [index: string]: string }[]> {
    return (await super.getWorkers()).filter((w) => w.db === undefined || Number(w.db) === this.db);
  }
}

/** What the queues take from the configuration: their key prefix, and the retry delays' scale of the jobs added to them. */
export interface QueueSettings {
  redis: { prefix: string };
  retryBackoffScale: number;
}

/** The deployment's queues, as the configuration (TL_QUEUE_PREFIX, TL_RETRY_BACKOFF_SCALE) has them. */
export function createQueues(connection: Redis, config: QueueSettings, o: { writesMeta?: boolean } = {}): Queues {
  return new Queues(connection, config.redis.prefix, config.retryBackoffScale, o.writesMeta ?? true);
}

/** Each queue's retry-delay scale, set by the Queues that made it (one read by both kinds of add). */
const BACKOFF_SCALE = new WeakMap<Queue, number>();
const optionsFor = (queue: Queue, name: JobName, id: string) => jobOptions(name, id, BACKOFF_SCALE.get(queue));

export async function closeQueues(queues: Queues): Promise<void> {
  await queues.close();
}

/** Adds jobs with their content-derived ids; an id that is already queued is not added again. */
export async function enqueue<N extends JobName>(queue: Queue, name: N, jobs: { id: string; payload: JobPayload<N> }[]): Promise<void> {
  if (jobs.length === 0) return;
  await queue.addBulk(jobs.map((j) => ({ name, data: j.payload, opts: optionsFor(queue, name, j.id) })));
}

/**
 * Queues the adds of `enqueue` on a pipeline from `Queues.pipeline()`, so they travel, and run in
 * order, with the caller's other writes in one round trip: BullMQ's own add script. The
 * pipeline's reply for each add is the job id (an id already queued is not added again).
 */
export function enqueueOn<N extends JobName>(pipe: ChainableCommander, queue: Queue, name: N, jobs: { id: string; payload: JobPayload<N> }[]): void {
  if (typeof (pipe as { runCommand?: unknown }).runCommand !== 'function') throw new Error('enqueueOn needs a pipeline from Queues.pipeline()');
  for (const j of jobs) {
    // Queued synchronously; the outcome is the pipeline's reply, which its caller reads.
    new Job(queue, name, j.payload, optionsFor(queue, name, j.id), j.id).addJob(pipe as unknown as Parameters<Job['addJob']>[0]).catch(() => {});
  }
}

/**
 * Enqueues jobs that must run again although a job of the same id may sit in the failed set
 * (BullMQ ignores an add whose id exists): a failed one is moved back to wait by BullMQ's own
 * atomic retry, with its attempts reset; the rest are added. Two callers racing are safe: only
 * one retry of a failed job succeeds (the other finds it no longer failed), and adds dedupe.
 * Returns how many failed jobs were retried.
 */
export async function requeue<N extends JobName>(
  redis: Redis,
  queue: Queue,
  name: N,
  jobs: { id: string; payload: JobPayload<N> }[],
  /** which of the jobs sit in the failed set, when the caller has already asked (see failedScoreKey) */
  knownFailed?: boolean[],
): Promise<number> {
  if (jobs.length === 0) return 0;
  let failed = knownFailed;
  if (!failed) {
    const pipe = redis.pipeline();
    for (const j of jobs) pipe.zscore(queue.toKey('failed'), j.id);
    failed = ((await pipe.exec()) ?? []).map(([, score]) => score !== null && score !== undefined);
  }
  let retried = 0;
  for (const [i, isFailed] of failed.entries()) {
    if (!isFailed) continue;
    const job = await queue.getJob(jobs[i]!.id);
    if (!job) continue;
    try {
      // A fresh start: BullMQ resets the attempts but not the stall count, so a job that failed
      // as 'stalled' would fail again at the next worker death. No worker holds a failed job, so
      // the count is cleared before the job is moved back.
      await redis.hdel(queue.toKey(job.id!), 'stc');
      // It runs with what is asked of it now (an ingest of the parent prefix gives the same object,
      // the same job id, another label): what the job board shows is what runs. The item's label
      // stands either way: a worker's write keeps the record's (PUT_ITEMS).
      if (JSON.stringify(job.data) !== JSON.stringify(jobs[i]!.payload)) await job.updateData(jobs[i]!.payload);
      await job.retry('failed', { resetAttemptsMade: true, resetAttemptsStarted: true });
      retried++;
    } catch (err) {
      // another retry moved it first, or it was removed: either way the add below settles it
      if (!/not in the failed state|Missing key/i.test((err as Error).message)) throw err;
    }
  }
  await enqueue(queue, name, jobs);
  return retried;
}

export interface WorkerSettings<N extends JobName> {
  connection: Redis;
  prefix: string;
  concurrency: number;
  log: Logger;
  metrics: Metrics;
  /**
   * How long a job's lock lasts: the deployment's Config, whose TL_JOB_LOCK_MS or
   * TL_TRAIN_JOB_LOCK_MS each job name takes (`jobLock`). BullMQ renews it at half-time while
   * the job runs; when a worker dies, other workers find its jobs stalled once it expires
   * (checked every half lock) and run them again: a crashed worker's jobs move on within about
   * 1.5 locks.
   */
  locks: JobLocks;
  /** the embedding space of an embed worker (its queue) */
  space?: string;
  /**
   * Called once when a job fails for good, whatever the path (a permanent error, a bad payload,
   * its last attempt, or a worker that died holding it too often): the item records it.
   */
  onFinalFailure?: (payload: JobPayload<N> | undefined, failure: FinalFailure) => Promise<void>;
  /** Called when an attempt failed and another will be made (not for one put back: deferred). */
  onRetry?: () => void;
  /** dependencies whose outage pauses this worker instead of spending attempts */
  guards?: DependencyGuard[];
  /**
   * The reasons its handler fails an item with (PermanentError), besides the ones every worker
   * has (WORKER_FAILURE_REASONS): their `tl_failures_total` series start at 0.
   */
  failureReasons?: readonly string[];
}

/**
 * BullMQ's words for a job this worker no longer holds: its lock ran out, another worker's is
 * there, or the job is gone (run again elsewhere and removed on completion).
 */
const LOST_JOB = /^(?:Missing lock for job (\S+)\.|Lock mismatch for job (\S+)\.|could not renew lock for job (\S+)$|Job (\S+) is not in the active state\.|Missing key for job (\S+)\.)/;

/** The id of the job BullMQ says this worker no longer holds, if `err` says that. */
export function lostJobOf(err: Error): string | undefined {
  const m = LOST_JOB.exec(err.message);
  return m ? m.slice(1).find((id) => id !== undefined) : undefined;
}

/**
 * Jobs a worker lost while it held them: stopped (SIGSTOP, a VM paused), hung, or cut off from
 * Redis past their lock, the stall check gave them back to the queue, and another worker (or this
 * one) runs them again; what this worker then does with them is refused by BullMQ, one error per
 * job and step. That is the at-least-once design working, not a fault of each job: said once as
 * it starts, then as one line per `windowMs` with how many, where each was an error line (a
 * resumed worker logged 210 of them).
 */
export class LostJobs {
  /** the jobs said or counted in this burst (BullMQ refuses each one's completion, then its failure) */
  private known = new Set<string>();
  private uncounted: string[] = [];
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly log: Pick<Logger, 'warn'>,
    private readonly lockMs: number,
    private readonly windowMs = 10_000,
  ) {}

  note(jobId: string): void {
    if (this.known.has(jobId)) return;
    this.known.add(jobId);
    if (this.timer) {
      this.uncounted.push(jobId);
      return;
    }
    this.log.warn(
      { jobId, lockMs: this.lockMs },
      `this worker no longer holds job ${jobId}: it was stopped, hung or cut off from Redis for longer than the job's lock (${this.lockMs / 1000} s), so the job went back to its queue to run again (a job that stalls twice fails as stalled) or has run elsewhere already; its outcome here is not recorded (what it wrote is written again the same way: jobs may run twice)`,
    );
    this.arm();
  }

  /** Says how many more were lost since the last line; a window without any ends the burst. */
  flush(closing = false): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    const n = this.uncounted.length;
    if (n === 0) {
      this.known.clear();
      return;
    }
    this.log.warn({ jobs: n, examples: this.uncounted.slice(0, 3) }, `${n} more job${n > 1 ? 's' : ''} this worker held went back to the queue (their locks ran out, as above)`);
    this.uncounted = [];
    if (!closing) this.arm();
  }

  private arm(): void {
    this.timer = setTimeout(() => this.flush(), this.windowMs);
    this.timer.unref();
  }
}

const JOB_OUTCOMES = ['completed', 'retried', 'failed', 'deferred'] as const;

/**
 * The one place a handler meets BullMQ. The payload is `unknown` until its schema parses it (a
 * bad payload fails for good, not a retry); PermanentError fails at once with its reason;
 * DeferJob, and any error while a guarded dependency is down, puts the job back without spending
 * an attempt (and an outage pauses the worker until the dependency is back); everything else is
 * retried with the catalog's backoff. Every final failure, however it happens, goes through
 * `onFinalFailure` and `tl_jobs_total{outcome="failed"}`.
 */
export function startWorker<N extends JobName>(name: N, handler: Handler<N>, s: WorkerSettings<N>): Worker {
  const spec = JOBS[name];
  // (an embed queue's space, as tl_queue_jobs has it: a stalled space is told from a working one)
  const label = { queue: spec.queue, ...(s.space !== undefined && { space: s.space }) };
  // Every series this worker can count exists from its start, at 0: a counter that appears with
  // its first increment is already at 1 when Prometheus first sees it, and rate() and increase()
  // (the dashboards, the alerts) miss that first failure or run.
  for (const outcome of JOB_OUTCOMES) s.metrics.jobs.inc({ ...label, outcome }, 0);
  for (const reason of [...WORKER_FAILURE_REASONS, ...(s.failureReasons ?? [])]) s.metrics.failures.inc({ stage: spec.queue, reason }, 0);
  const lock = jobLock(name, s.locks);
  const lost = new LostJobs(s.log, lock.lockMs);
  const defer = async (job: Job, token: string | undefined, delayMs: number) => {
    s.metrics.jobs.inc({ ...label, outcome: 'deferred' });
    try {
      await job.moveToDelayed(Date.now() + delayMs, token);
    } catch (err) {
      // gone back to the queue already: nothing of this worker's to put back (BullMQ then takes the next)
      const id = lostJobOf(err as Error);
      if (id === undefined) throw err;
      lost.note(id);
    }
    return new DelayedError();
  };
  // set when the worker's close begins (a stop asked of the process): handlers read it as ctx.stopping
  let closing = false;
  const processor = async (job: Job, token?: string) => {
    const log = s.log.child({ queue: spec.queue, jobId: job.id, attempt: job.attemptsMade + 1 });
    const parsed = spec.schema.safeParse(job.data as unknown);
    if (!parsed.success) throw new ItemFailure('bad-payload', parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; '));
    const down = s.guards?.find((g) => !g.up);
    if (down) throw await defer(job, token, 5_000);
    const end = s.metrics.jobDuration.startTimer(label);
    try {
      const result = await handler(parsed.data as JobPayload<N>, {
        log,
        progress: (v) => job.updateProgress(v),
        attempt: job.attemptsMade + 1,
        stopping: () => closing,
      });
      s.metrics.jobs.inc({ ...label, outcome: 'completed' });
      return result;
    } catch (err) {
      if (err instanceof PermanentError) throw new ItemFailure(err.reason, err.message);
      if (err instanceof DeferJob) {
        log.debug({ reason: err.message }, 'deferred');
        throw await defer(job, token, err.delayMs);
      }
      for (const g of s.guards ?? []) {
        if (await g.isOutage(err)) throw await defer(job, token, 5_000);
      }
      throw err;
    } finally {
      end();
    }
  };
  const worker = new Worker(queueName(name, s.space), processor, {
    connection: s.connection,
    prefix: s.prefix,
    concurrency: s.concurrency,
    lockDuration: lock.lockMs,
    stalledInterval: lock.stalledIntervalMs,
    // The same name as this process's other records in Redis: `followJob` reads the job's
    // `processedBy` and the connected workers' names to tell when the worker holding a job is gone.
    name: PROCESS_NAME,
    autorun: true,
  });
  worker.on('failed', (job, err) => {
    if (!job) return;
    // finishedOn is set only when BullMQ moved the job to failed for good (no retry left).
    const final = job.finishedOn !== undefined && job.finishedOn !== null;
    s.metrics.jobs.inc({ ...label, outcome: final ? 'failed' : 'retried' });
    // `attempt`, as on the job's other lines: the attempt that failed (the last one made)
    const log = s.log.child({ queue: spec.queue, jobId: job.id, attempt: job.attemptsMade });
    if (!final) {
      log.warn({ err }, 'job failed; will retry');
      s.onRetry?.();
      return;
    }
    const failure: FinalFailure =
      err instanceof ItemFailure
        ? { reason: err.reason, message: err.detail, attempts: job.attemptsMade }
        : err.message === STALLED
          ? { reason: 'stalled', message: 'a worker died or hung while holding it, more often than allowed', attempts: job.attemptsMade }
          : { reason: 'attempts-exhausted', message: err.message, attempts: job.attemptsMade };
    s.metrics.failures.inc({ stage: spec.queue, reason: failure.reason });
    log.warn({ ...subjectOf(job.data), reason: failure.reason, detail: failure.message }, 'failed for good');
    const parsed = spec.schema.safeParse(job.data as unknown);
    void s.onFinalFailure?.(parsed.success ? (parsed.data as JobPayload<N>) : undefined, failure).catch((e: unknown) => log.error({ err: e }, 'could not record the failure on the item'));
  });
  worker.on('error', (err) => {
    const id = lostJobOf(err);
    if (id !== undefined) lost.note(id);
    else if (!isConnectionError(err)) s.log.error({ err }, 'worker error');
  });
  // Paused by an outage: said in Redis too, so that a CLI waiting on this queue does not take a
  // paused worker for one that will move its work (see PausedWorkers).
  const paused = new PausedWorkers(s.connection, redisKeys(s.prefix));
  const unmark = new Map<DependencyGuard, () => Promise<void>>();
  for (const g of s.guards ?? []) {
    g.onChange((up) => {
      if (up) {
        void unmark.get(g)?.();
        unmark.delete(g);
        if (unmark.size === 0) worker.resume();
        return;
      }
      void worker.pause(true);
      if (!unmark.has(g)) unmark.set(g, paused.mark(worker.name, { dependency: g.name, describe: () => ({ reason: g.reason, remedy: g.remedy }) }, (err) => s.log.debug({ err }, 'paused state not written')));
    });
  }
  worker.on('closing', () => {
    closing = true;
    lost.flush(true);
    for (const stop of unmark.values()) void stop();
    unmark.clear();
  });
  return worker;
}

/**
 * Whether a worker process is alive for a liveness probe: its workers run, or an outage pauses
 * them (a restart would not bring S3 back), unless a dependency refuses this process's
 * credentials, which it read once, at start: only a restart with others mends that.
 */
export function workersAlive(workers: Pick<Worker, 'isRunning' | 'isPaused'>[], guards: Pick<DependencyGuard, 'refusesCredentials'>[]): boolean {
  return workers.every((w) => w.isRunning() || w.isPaused()) && !guards.some((g) => g.refusesCredentials);
}

const LOST_CONNECTION = new RegExp(`${CONNECTION_CODE_PATTERN}|Connection is closed|getaddrinfo|Stream isn't writeable`);

/** Errors of a lost Redis connection, which the connection's own listener reports once. */
export function isConnectionError(err: Error): boolean {
  return isConnectionCode((err as NodeJS.ErrnoException).code) || LOST_CONNECTION.test(err.message);
}

const UNLOCKED_ACTIVE = new RedisScript('tlUnlockedActive', `
local active = redis.call('LLEN', KEYS[1])
local ids = {}
if tonumber(ARGV[1]) > 0 then ids = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1) end
local unlocked = {}
for _, id in ipairs(ids) do
  if redis.call('EXISTS', KEYS[2] .. id .. ':lock') == 0 then table.insert(unlocked, id) end
end
return { active, unlocked, redis.call('LLEN', KEYS[3]) + redis.call('ZCARD', KEYS[4]) }`, 4);

/**
 * A queue's active jobs, those of them (the first `limit` looked at) whose lock has run out, and
 * how many jobs wait (waiting or prioritized), read at one moment. A job without its lock: the
 * worker holding it stopped renewing it (SIGSTOPped, its event loop blocked, cut off from Redis,
 * or killed) and no worker's stalled-job check has moved it back yet. Its connection may still be
 * open, so BullMQ counts it as a connected worker: a wait that trusted that count would wait for
 * ever on a hung one. One script, so a job that ends meanwhile (its lock deleted with it) is not
 * taken for one that lost it, nor a job added meanwhile for one left waiting.
 */
export async function unlockedActiveJobs(redis: Redis, queue: Pick<Queue, 'keys' | 'toKey'>, limit = 1_000): Promise<{ active: number; unlocked: string[]; waiting: number }> {
  const [active, unlocked, waiting] = (await UNLOCKED_ACTIVE.run(redis, [queue.keys.active!, queue.toKey(''), queue.keys.wait!, queue.keys.prioritized!], [limit])) as [number, string[], number];
  return { active, unlocked, waiting };
}
