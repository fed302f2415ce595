import type { Queue } from 'bullmq';

/**
 * The states of a job that has not ended: one of these may still write what it was given to write.
 * Read in the order a job goes through them (a review: read active first, a job that became active
 * after that read and before the read of waiting was in neither), so a job that moves on while
 * they are read is met again in the next state read. (One put back, active to delayed for a retry
 * or to waiting when stalled, can still be missed: a caller that must not miss one looks again.)
 */
const IN_FLIGHT = ['waiting-children', 'delayed', 'prioritized', 'waiting', 'active'] as const;

/** Jobs read from Redis at a time: a queue of a million preprocess jobs is not held in memory at once. */
const PAGE = 1_000;

/** The jobs of a queue that have not ended and whose data matches, with their state (the first `limit` found). */
export async function jobsInFlight<D>(queue: Queue, match: (data: D) => boolean, limit = Number.POSITIVE_INFINITY): Promise<{ id: string; data: D; state: string }[]> {
  // by id: a job read in one state and again in the next it moved to is one job, in its last state
  const found = new Map<string, { id: string; data: D; state: string }>();
  for (const state of IN_FLIGHT) {
    for (let start = 0; found.size < limit; start += PAGE) {
      const page = await queue.getJobs([state], start, start + PAGE - 1);
      for (const job of page) if (job?.id && match(job.data as D) && (found.size < limit || found.has(job.id))) found.set(job.id, { id: job.id, data: job.data as D, state });
      if (page.length < PAGE) break;
    }
  }
  return [...found.values()];
}
