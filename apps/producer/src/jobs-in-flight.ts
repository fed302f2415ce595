import type { Queue } from 'bullmq';

/** The states of a job that has not ended: one of these may still write what it was given to write. */
const IN_FLIGHT = ['active', 'waiting', 'delayed', 'prioritized', 'waiting-children'] as const;

/** The jobs of a queue that have not ended and whose data matches, with their state. */
export async function jobsInFlight<D>(queue: Queue, match: (data: D) => boolean): Promise<{ id: string; data: D; state: string }[]> {
  const found: { id: string; data: D; state: string }[] = [];
  for (const state of IN_FLIGHT) {
    for (const job of await queue.getJobs([state])) if (job?.id && match(job.data as D)) found.push({ id: job.id, data: job.data as D, state });
  }
  return found;
}
