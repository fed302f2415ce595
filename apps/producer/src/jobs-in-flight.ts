import type { Queue } from 'bullmq';

/** The states of a job that has not ended: one of these may still write what it was given to write. */
const IN_FLIGHT = ['active', 'waiting', 'delayed', 'prioritized', 'waiting-children'] as const;

/** Jobs read from Redis at a time: a queue of a million preprocess jobs is not held in memory at once. */
const PAGE = 1_000;

/** The jobs of a queue that have not ended and whose data matches, with their state (the first `limit` found). */
export async function jobsInFlight<D>(queue: Queue, match: (data: D) => boolean, limit = Number.POSITIVE_INFINITY): Promise<{ id: string; data: D; state: string }[]> {
  const found: { id: string; data: D; state: string }[] = [];
  for (const state of IN_FLIGHT) {
    for (let start = 0; found.length < limit; start += PAGE) {
      const page = await queue.getJobs([state], start, start + PAGE - 1);
      for (const job of page) if (job?.id && match(job.data as D) && found.length < limit) found.push({ id: job.id, data: job.data as D, state });
      if (page.length < PAGE) break;
    }
  }
  return found;
}
