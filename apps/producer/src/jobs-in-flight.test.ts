import type { Queue } from 'bullmq';
import { describe, expect, it } from 'vitest';
import { jobsInFlight } from './jobs-in-flight.js';

/** A queue of one job, waiting, that a worker takes (it becomes active) right after the first read of the queue's states. */
function movingQueue(): Queue {
  const states = ['waiting', 'active'];
  let at = 0;
  return {
    getJobs: async (asked: string[]) => {
      const here = asked.includes(states[at]!) ? [{ id: 'j1', data: { dataset: 'd' } }] : [];
      at = Math.min(at + 1, states.length - 1);
      return here;
    },
  } as unknown as Queue;
}

describe('jobsInFlight', () => {
  it('finds a job taken by a worker (waiting, then active) while the states are read (a review: read active first, it was in neither)', async () => {
    const found = await jobsInFlight<{ dataset: string }>(movingQueue(), (d) => d.dataset === 'd');
    expect(found.map((f) => f.id)).toContain('j1');
  });

  it('lists a job read in two states (waiting, then active) once, in the state read last (a review: refusals named one run twice)', async () => {
    const queue = {
      getJobs: async (asked: string[]) => (asked.includes('waiting') || asked.includes('active') ? [{ id: 'j1', data: { dataset: 'd' } }] : []),
    } as unknown as Queue;
    expect(await jobsInFlight<{ dataset: string }>(queue, (d) => d.dataset === 'd')).toEqual([{ id: 'j1', data: { dataset: 'd' }, state: 'active' }]);
  });
});
