import { createMetrics } from '@transferline/shared/service-runtime';
import { describe, expect, it } from 'vitest';
import { runCounters } from './run-counters.js';

/** tl_train_runs_total as a scrape reads it: `dataset outcome value` lines. */
async function scraped(m: ReturnType<typeof createMetrics>): Promise<string[]> {
  const text = await m.registry.metrics();
  return [...text.matchAll(/^tl_train_runs_total\{dataset="([^"]+)",outcome="([^"]+)"[^}]*\} (\d+)$/gm)].map(([, d, o, v]) => `${d} ${o} ${v}`).sort();
}

describe('run counters', () => {
  it("are at 0 for every dataset on the scrape that first lists it, and go with a deleted dataset once a scrape has read its last run's outcome", async () => {
    const m = createMetrics('train');
    let listed = ['a', 'b'];
    const runs = runCounters(m, async () => listed);
    m.setTrainRunsSource(() => runs.refresh());
    // the first scrape already has them: a run that ends before the next is seen by increase()
    expect(await scraped(m)).toEqual(['a cancelled 0', 'a completed 0', 'a failed 0', 'b cancelled 0', 'b completed 0', 'b failed 0']);
    // a dataset made since the last scrape: from its run's start
    const endC = runs.begin('c');
    expect((await m.registry.getSingleMetricAsString('tl_train_runs_total')).match(/dataset="c"/g)).toHaveLength(3);
    // b deleted: gone at the next scrape; c, not listed, stays while its run is in hand
    listed = ['a'];
    expect((await scraped(m)).filter((l) => !l.startsWith('a '))).toEqual(['c cancelled 0', 'c completed 0', 'c failed 0']);
    // c's run cancelled, then c deleted before a scrape: that scrape reads the outcome, the next drops it
    endC();
    runs.count('c', 'cancelled');
    expect(await scraped(m)).toContain('c cancelled 1');
    expect((await scraped(m)).filter((l) => l.startsWith('c '))).toEqual([]);
    // a's counts go on
    runs.count('a', 'completed');
    expect(await scraped(m)).toContain('a completed 1');
  });
});
