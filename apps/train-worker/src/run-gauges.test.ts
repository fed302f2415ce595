import { describe, expect, it } from 'vitest';
import { createMetrics } from '@transferline/shared/service-runtime';
import { runGauges } from './run-gauges.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('the per-run gauges of a dataset', () => {
  it("keep a finished run's last values for a while, then go; a run that starts meanwhile keeps them", async () => {
    const m = createMetrics('train');
    const series = async () => (await m.registry.metrics()).split('\n').filter((l) => /^tl_train_(epoch|loss|accuracy|learning_rate|examples_per_second|best_validation_loss|best_validation_accuracy)\{/.test(l));
    const gauges = runGauges(m, 200);
    const run = (dataset: string) => {
      const end = gauges.begin(dataset);
      m.trainEpoch.set({ dataset }, 7);
      m.trainLearningRate.set({ dataset }, 0.001);
      m.trainExamplesPerSecond.set({ dataset }, 900);
      m.trainBestValidationLoss.set({ dataset }, 0.2);
      m.trainBestValidationAccuracy.set({ dataset }, 0.85);
      for (const split of ['train', 'validation']) {
        m.trainLoss.set({ dataset, split }, 0.3);
        m.trainAccuracy.set({ dataset, split }, 0.9);
      }
      m.trainRuns.inc({ dataset, outcome: 'completed' });
      return end;
    };
    run('a')();
    run('b')();
    expect(await series()).toHaveLength(18);
    // a new run of b before the first one's series go: b's stay
    await sleep(100);
    const again = run('b');
    await sleep(250);
    const left = await series();
    expect(left.filter((l) => l.includes('dataset="a"'))).toEqual([]);
    expect(left.filter((l) => l.includes('dataset="b"'))).toHaveLength(9);
    again();
    await sleep(250);
    expect(await series()).toEqual([]);
    // the runs counted stay
    expect(await m.registry.metrics()).toMatch(/^tl_train_runs_total\{dataset="b",outcome="completed"[^}]*\} 2$/m);
  });
});
