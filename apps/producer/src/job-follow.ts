import { QueueEvents, type Job, type Queue } from 'bullmq';
import { sleep } from '@transferline/shared';
import type { CliContext } from './cli-context.js';
import { CliExit, EXIT } from './exit-codes.js';

export interface FollowOptions {
  /** what the job is, for messages ("run 2026…", "classify round") */
  what: string;
  /** the role that runs such jobs, for the message when none is connected */
  role: string;
  /** seconds a job may wait with no worker connected before we give up (it stays queued) */
  stallSeconds: number;
  onProgress?: (data: unknown) => void;
}

/**
 * Waits for one job to finish and returns its result, following its progress. Never waits for
 * ever: if the job still waits and no worker of its queue has been connected for
 * `stallSeconds`, it says so and ends with EXIT.stalled (the job stays queued for when a worker
 * comes); Ctrl-C ends with EXIT.interrupted. A failed job throws its reason.
 */
export async function followJob<R>(ctx: CliContext, queue: Queue, job: Job, o: FollowOptions): Promise<R> {
  // A blocking connection of its own; BullMQ leaves a connection it was given open, so we close
  // it ourselves (an open one would keep the CLI from exiting).
  const connection = ctx.services.redis.duplicate({ maxRetriesPerRequest: null });
  connection.on('error', () => {});
  const events = new QueueEvents(queue.name, { connection, prefix: ctx.config.redis.prefix });
  events.on('error', () => {});
  const onProgress = ({ jobId, data }: { jobId: string; data: unknown }) => {
    if (jobId === job.id) o.onProgress?.(data);
  };
  try {
    await events.waitUntilReady();
    events.on('progress', onProgress);
    const finished = job.waitUntilFinished(events) as Promise<R>;
    const watchdog = new AbortController();
    const stalled = watch(ctx, queue, job, o, watchdog.signal);
    try {
      return await Promise.race([finished, stalled]);
    } catch (err) {
      if (err instanceof CliExit) throw err;
      throw new Error(`${o.what} failed: ${(err as Error).message}`);
    } finally {
      watchdog.abort();
    }
  } finally {
    events.off('progress', onProgress);
    await events.close();
    connection.disconnect();
  }
}

/** Rejects when the job is stuck waiting with no worker, or on Ctrl-C; never resolves otherwise. */
async function watch(ctx: CliContext, queue: Queue, job: Job, o: FollowOptions, stop: AbortSignal): Promise<never> {
  let noWorkerSince: number | undefined;
  for (;;) {
    await sleep(1_000, AbortSignal.any([stop, ...(ctx.signal ? [ctx.signal] : [])]));
    if (stop.aborted) return new Promise<never>(() => {});
    if (ctx.signal?.aborted) throw new CliExit(EXIT.interrupted, `\ninterrupted; ${o.what} goes on in the ${o.role} worker`);
    const state = await queue.getJobState(job.id!);
    const waiting = state === 'waiting' || state === 'delayed' || state === 'prioritized';
    if (!waiting || (await queue.getWorkersCount()) > 0) {
      noWorkerSince = undefined;
      continue;
    }
    noWorkerSince ??= Date.now();
    if (Date.now() - noWorkerSince > o.stallSeconds * 1000) {
      throw new CliExit(EXIT.stalled, `${o.what} has waited ${o.stallSeconds} s and no ${o.role} worker is connected: start one (transferline up, or the ${o.role} worker); the job stays queued until then`);
    }
  }
}
