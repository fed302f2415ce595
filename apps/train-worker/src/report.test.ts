import { describe, expect, it } from 'vitest';
import { evaluate } from './report.js';

describe('evaluate', () => {
  it('computes accuracy, a confusion matrix whose sums match, and per-class scores', () => {
    const labels = ['cat', 'dog', 'fox'];
    const truth = [0, 0, 0, 1, 1, 2, 2, 2, 2, 2];
    const pred = [0, 0, 1, 1, 1, 2, 2, 2, 0, 1];
    const r = evaluate(labels, truth, pred);
    expect(r.accuracy).toBeCloseTo(7 / 10);
    expect(r.confusionMatrix).toEqual([
      [2, 1, 0],
      [0, 2, 0],
      [1, 1, 3],
    ]);
    // rows sum to the class supports, everything to the example count
    expect(r.confusionMatrix.map((row) => row.reduce((a, b) => a + b))).toEqual([3, 2, 5]);
    expect(r.confusionMatrix.flat().reduce((a, b) => a + b)).toBe(10);
    expect(r.perClass.find((c) => c.label === 'dog')).toEqual({ label: 'dog', precision: 0.5, recall: 1, f1: 2 / 3, support: 2 });
    expect(r.perClass.find((c) => c.label === 'fox')!.precision).toBe(1);
    expect(r.perClass.find((c) => c.label === 'fox')!.recall).toBeCloseTo(0.6);
  });

  it('gives zeros, not NaN, to a class never predicted', () => {
    const r = evaluate(['a', 'b'], [0, 1], [0, 0]);
    expect(r.perClass.find((c) => c.label === 'b')).toEqual({ label: 'b', precision: 0, recall: 0, f1: 0, support: 1 });
  });
});

describe('rocAuc and bestThreshold', () => {
  it('is 1 for a perfect ranking, 0.5 for ties, and the Mann–Whitney value otherwise', async () => {
    const { rocAuc, bestThreshold } = await import('./report.js');
    expect(rocAuc([0.1, 0.2, 0.8, 0.9], [false, false, true, true])).toBe(1);
    expect(rocAuc([0.5, 0.5, 0.5, 0.5], [false, true, false, true])).toBe(0.5);
    // positives at 0.4 and 0.9, negatives at 0.1, 0.6: 3 of 4 pairs ordered
    expect(rocAuc([0.4, 0.9, 0.1, 0.6], [true, true, false, false])).toBe(0.75);
    expect(rocAuc([0.3], [true])).toBeNaN();
    // every threshold in (0.35, 0.4] separates these: the middle of the gap
    const t = bestThreshold([0.1, 0.35, 0.4, 0.8, 0.9], [false, false, true, true, true]);
    expect(t.threshold).toBeCloseTo(0.375, 12);
    expect(t).toMatchObject({ tpr: 1, fpr: 0 });
    // a new positive at 0.9 is not called negative because the lowest positive seen was 0.96
    expect(bestThreshold([0.99, 0.97, 0.96, 0.6, 0.4, 0.02], [true, true, true, false, false, false]).threshold).toBeCloseTo(0.78, 12);
    // 0.5 (the most probable label) when it separates as well as any
    expect(bestThreshold([0.2, 0.3, 0.7, 0.9], [false, false, true, true]).threshold).toBe(0.5);
    // the best is to call everything positive: below the lowest score
    expect(bestThreshold([0.2, 0.3, 0.35], [true, true, false]).threshold).toBeLessThanOrEqual(0.2);
  });

  it('bestThreshold refuses a score that is not a number, where it swept for ever (NaN equals no score: a trial hung a train worker)', async () => {
    const { bestThreshold } = await import('./report.js');
    expect(() => bestThreshold([Number.NaN, 0.2], [true, false])).toThrow('score 0 of 2 is NaN, not a probability');
    expect(() => bestThreshold([0.3, Number.POSITIVE_INFINITY], [true, false])).toThrow('score 1 of 2 is Infinity, not a probability');
  });
});
