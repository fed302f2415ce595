import { Queue, UnrecoverableError, Worker, type Job } from 'bullmq';
import type { Redis } from 'ioredis';
import { PermanentError } from './errors.js';
import { JOBS, jobOptions, type JobName, type JobPayload } from './jobs.catalog.js';
import type { Logger } from './logger.js';
import type { Metrics } from './metrics.js';

/** What a handler may do besides its work: log, report progress. It never sees BullMQ. */
export interface JobContext {
  log: Logger;
  progress: (value: number | object) => Promise<void>;
  attempt: number;
}

export type Handler<N extends JobName, R = unknown> = (payload: JobPayload<N>, ctx: JobContext) => Promise<R>;

export type Queues = { [N in JobName]: Queue };

/** One Queue per job name, sharing a connection. */
export function createQueues(connection: Redis, prefix: string): Queues {
  const entries = (Object.keys(JOBS) as JobName[]).map((n) => [n, new Queue(JOBS[n].queue, { connection, prefix })]);
  return Object.fromEntries(entries) as Queues;
}

export async function closeQueues(queues: Queues): Promise<void> {
  await Promise.all(Object.values(queues).map((q) => q.close()));
}

/** Adds jobs with their content-derived ids; an id that is already queued is not added again. */
export async function enqueue<N extends JobName>(queue: Queue, name: N, jobs: { id: string; payload: JobPayload<N> }[]): Promise<void> {
  if (jobs.length === 0) return;
  await queue.addBulk(jobs.map((j) => ({ name, data: j.payload, opts: jobOptions(name, j.id) })));
}

export interface WorkerSettings {
  connection: Redis;
  prefix: string;
  concurrency: number;
  log: Logger;
  metrics: Metrics;
  /**
   * How long a job's lock lasts (ms). BullMQ renews it at half-time while the job runs; when a
   * worker dies, other workers find its jobs stalled once it expires and run them again.
   */
  lockDuration: number;
}

/**
 * The one place a handler meets BullMQ: the payload is `unknown` until its schema parses it
 * (a bad payload is a permanent failure, not a retry), PermanentError becomes
 * UnrecoverableError, everything else is retried with the catalog's backoff.
 */
export function startWorker<N extends JobName>(name: N, handler: Handler<N>, s: WorkerSettings): Worker {
  const spec = JOBS[name];
  const processor = async (job: Job) => {
    const log = s.log.child({ queue: spec.queue, jobId: job.id, attempt: job.attemptsMade + 1 });
    const end = s.metrics.jobDuration.startTimer({ queue: spec.queue });
    const parsed = spec.schema.safeParse(job.data as unknown);
    if (!parsed.success) {
      s.metrics.jobs.inc({ queue: spec.queue, outcome: 'invalid' });
      s.metrics.failures.inc({ stage: spec.queue, reason: 'bad-payload' });
      throw new UnrecoverableError(`bad-payload: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
    }
    try {
      const result = await handler(parsed.data as JobPayload<N>, {
        log,
        progress: (v) => job.updateProgress(v),
        attempt: job.attemptsMade + 1,
      });
      s.metrics.jobs.inc({ queue: spec.queue, outcome: 'completed' });
      return result;
    } catch (err) {
      if (err instanceof PermanentError) {
        s.metrics.jobs.inc({ queue: spec.queue, outcome: 'failed' });
        s.metrics.failures.inc({ stage: spec.queue, reason: err.reason });
        log.warn({ reason: err.reason, err: err.message }, 'permanent failure');
        throw new UnrecoverableError(`${err.reason}: ${err.message}`);
      }
      s.metrics.jobs.inc({ queue: spec.queue, outcome: 'retried' });
      log.warn({ err: (err as Error).message }, 'job failed; will retry if attempts remain');
      throw err;
    } finally {
      end();
    }
  };
  const worker = new Worker(spec.queue, processor, {
    connection: s.connection,
    prefix: s.prefix,
    concurrency: s.concurrency,
    lockDuration: s.lockDuration,
    stalledInterval: Math.min(30_000, s.lockDuration),
    autorun: true,
  });
  worker.on('error', (err) => s.log.error({ err: err.message }, 'worker error'));
  return worker;
}
