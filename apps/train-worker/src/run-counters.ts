import type { Metrics } from '@transferline/shared';

export const RUN_OUTCOMES = ['completed', 'failed', 'cancelled'] as const;
export type RunOutcome = (typeof RUN_OUTCOMES)[number];

/**
 * `tl_train_runs_total{dataset,outcome}`, kept so that every run is seen. A series that appeared
 * with its first increment would be at 1 when first scraped, and increase() (alerts, dashboards)
 * would miss that run: so every dataset `datasets` lists has its series at 0, brought up to date
 * as each scrape reads them (`refresh`, the counter's collect), and a run's dataset from the run's
 * start (one made since the last scrape). A dataset no longer listed (deleted) loses its series,
 * so labels stay a bounded set: not while a run of it is in hand here, nor before a scrape has
 * read the outcome of its last run.
 */
export function runCounters(metrics: Pick<Metrics, 'trainRuns'>, datasets: () => Promise<string[]>) {
  const counted = new Set<string>();
  /** datasets with a run in hand here, by runs */
  const inRun = new Map<string, number>();
  /** datasets whose run ended since the last scrape */
  const ended = new Set<string>();
  const zero = (dataset: string) => {
    counted.add(dataset);
    for (const outcome of RUN_OUTCOMES) metrics.trainRuns.inc({ dataset, outcome }, 0);
  };
  return {
    async refresh(): Promise<void> {
      const now = new Set(await datasets());
      for (const dataset of now) zero(dataset);
      for (const dataset of counted) {
        if (now.has(dataset) || inRun.has(dataset) || ended.has(dataset)) continue;
        for (const outcome of RUN_OUTCOMES) metrics.trainRuns.remove({ dataset, outcome });
        counted.delete(dataset);
      }
      // (read by this scrape: a dataset deleted since goes at the next, its last run counted)
      ended.clear();
    },
    /** A run of `dataset` begins here; returns what says it is no longer in hand. */
    begin(dataset: string): () => void {
      zero(dataset);
      inRun.set(dataset, (inRun.get(dataset) ?? 0) + 1);
      return () => {
        const left = inRun.get(dataset)! - 1;
        if (left) inRun.set(dataset, left);
        else inRun.delete(dataset);
      };
    },
    count(dataset: string, outcome: RunOutcome): void {
      zero(dataset);
      metrics.trainRuns.inc({ dataset, outcome });
      ended.add(dataset);
    },
  };
}
