import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadTfRuntime } from '@transferline/shared/tf';
import { seededRandom } from '@transferline/shared';
import { argmaxRows, fitHead, predictProba, type HeadOptions, type Matrix } from './head.trainer.js';

beforeAll(async () => {
  await loadTfRuntime('wasm');
});

const base: HeadOptions = { hiddenUnits: 0, dropout: 0, learningRate: 0.01, batchSize: 16, epochs: 30, l2: 0, patience: 0, classWeights: 'none', seed: 3 };

/** Gaussian blobs: class c centred at `centres[c]` in the first dims, noise elsewhere; features offset and scaled like embeddings. */
function blobs(perClass: number[], dim: number, spread: number, seed: number): { x: Matrix; y: Int32Array } {
  const rand = seededRandom(seed);
  const gauss = () => Math.sqrt(-2 * Math.log(rand() + 1e-12)) * Math.cos(2 * Math.PI * rand());
  const rows = perClass.reduce((a, b) => a + b, 0);
  const data = new Float32Array(rows * dim);
  const y = new Int32Array(rows);
  let r = 0;
  perClass.forEach((n, c) => {
    for (let i = 0; i < n; i++, r++) {
      y[r] = c;
      for (let d = 0; d < dim; d++) data[r * dim + d] = 5 + 3 * (gauss() * spread + (d === c ? 1 : 0));
    }
  });
  return { x: { data, rows, dim }, y };
}

const accuracy = async (model: tf.LayersModel, s: { x: Matrix; y: Int32Array }, k: number) => {
  const pred = argmaxRows(await predictProba(tf, model, s.x), k);
  return pred.reduce((a, p, i) => a + (p === s.y[i] ? 1 : 0), 0) / s.y.length;
};

describe('fitHead', () => {
  it('learns separable classes, and the returned model takes raw (unstandardised) features', async () => {
    const train = blobs([60, 60, 60], 16, 0.2, 1);
    const val = blobs([20, 20, 20], 16, 0.2, 2);
    const fit = await fitHead(tf, { train, validation: val, numClasses: 3, options: base });
    expect(fit.history.at(-1)!.valAccuracy).toBeGreaterThan(0.95);
    expect(await accuracy(fit.model, val, 3)).toBeCloseTo(fit.history[fit.bestEpoch - 1]!.valAccuracy, 5);
    fit.model.dispose();
  });

  it('gives back its inputs as they were (it standardises them in place while it trains)', async () => {
    const train = blobs([30, 30], 8, 0.5, 3);
    const val = blobs([10, 10], 8, 0.5, 4);
    const before = [train.x.data.slice(), val.x.data.slice()];
    const fit = await fitHead(tf, { train, validation: val, numClasses: 2, options: { ...base, epochs: 3 } });
    fit.model.dispose();
    for (const [i, now] of [train.x.data, val.x.data].entries()) {
      let worst = 0;
      now.forEach((v, j) => (worst = Math.max(worst, Math.abs(v - before[i]![j]!))));
      expect(worst).toBeLessThan(1e-4);
    }
  });

  it('is reproducible: same data and seed, same history and weights; another seed differs', async () => {
    const run = async (seed: number) => {
      const train = blobs([40, 40], 12, 0.8, 5);
      const val = blobs([15, 15], 12, 0.8, 6);
      const fit = await fitHead(tf, { train, validation: val, numClasses: 2, options: { ...base, hiddenUnits: 8, dropout: 0.3, epochs: 8, seed } });
      const weights = fit.model.getWeights().map((w) => Array.from(w.dataSync()));
      fit.model.dispose();
      return { history: fit.history.map(({ examplesPerSecond: _, ...h }) => h), weights };
    };
    const a = await run(9);
    const b = await run(9);
    const c = await run(10);
    expect(b.history).toEqual(a.history);
    expect(b.weights).toEqual(a.weights);
    expect(c.weights).not.toEqual(a.weights);
  });

  it('stops early when validation loss stops improving and restores the best epoch', async () => {
    // few noisy examples in many dimensions: it overfits fast, validation loss turns up
    const train = blobs([12, 12], 64, 1.5, 7);
    const val = blobs([40, 40], 64, 1.5, 8);
    const fit = await fitHead(tf, { train, validation: val, numClasses: 2, options: { ...base, learningRate: 0.05, epochs: 200, patience: 5 } });
    expect(fit.stoppedEarly).toBe(true);
    expect(fit.history.length).toBe(fit.bestEpoch + 5);
    const best = fit.history[fit.bestEpoch - 1]!;
    expect(Math.min(...fit.history.map((h) => h.valLoss))).toBe(best.valLoss);
    expect(fit.history.at(-1)!.valLoss).toBeGreaterThan(best.valLoss);
    // the model it returns is the best epoch's, not the last one's
    expect(await accuracy(fit.model, val, 2)).toBeCloseTo(best.valAccuracy, 5);
    fit.model.dispose();
  });

  it('balanced class weights move the decision towards a rare class', async () => {
    const train = blobs([380, 20], 4, 0.9, 11);
    const val = blobs([190, 10], 4, 0.9, 12);
    const recallOfRare = async (classWeights: 'none' | 'balanced') => {
      const fit = await fitHead(tf, { train, validation: val, numClasses: 2, options: { ...base, epochs: 40, classWeights } });
      const pred = argmaxRows(await predictProba(tf, fit.model, val.x), 2);
      fit.model.dispose();
      let hit = 0;
      val.y.forEach((c, i) => c === 1 && pred[i] === 1 && hit++);
      return { recall: hit / 10, weights: fit.classWeights };
    };
    const plain = await recallOfRare('none');
    const balanced = await recallOfRare('balanced');
    expect(plain.weights).toEqual([1, 1]);
    expect(balanced.weights[1]! / balanced.weights[0]!).toBeCloseTo(19, 5);
    expect(balanced.recall).toBeGreaterThan(plain.recall);
  });

  it('a hidden layer learns what a softmax head cannot (XOR)', async () => {
    const make = (n: number, seed: number) => {
      const rand = seededRandom(seed);
      const data = new Float32Array(n * 2);
      const y = new Int32Array(n);
      for (let i = 0; i < n; i++) {
        const a = rand() * 2 - 1;
        const b = rand() * 2 - 1;
        data.set([a, b], i * 2);
        y[i] = a * b > 0 ? 1 : 0;
      }
      return { x: { data, rows: n, dim: 2 }, y };
    };
    const train = make(400, 1);
    const val = make(200, 2);
    const linear = await fitHead(tf, { train, validation: val, numClasses: 2, options: { ...base, epochs: 60 } });
    const hidden = await fitHead(tf, { train, validation: val, numClasses: 2, options: { ...base, epochs: 60, hiddenUnits: 16 } });
    expect(await accuracy(linear.model, val, 2)).toBeLessThan(0.7);
    expect(await accuracy(hidden.model, val, 2)).toBeGreaterThan(0.9);
    linear.model.dispose();
    hidden.model.dispose();
  });

  it('predictProba gives the event loop its turns over many rows (a worker renews its locks and answers /healthz meanwhile), with the same figures as one pass', async () => {
    const train = blobs([40, 40], 8, 0.2, 5);
    const fit = await fitHead(tf, { train, validation: train, numClasses: 2, options: { ...base, epochs: 3 } });
    const many = blobs([9000, 9000], 8, 0.2, 6); // five chunks of 4,096 rows
    const said: string[] = [];
    // a turn of the event loop, counted each time it comes, until the rows are done
    let counting = true;
    const turn = () => {
      if (!counting) return;
      said.push('turn');
      setImmediate(turn);
    };
    const pending = predictProba(tf, fit.model, many.x).then((r) => (said.push('done'), r));
    setImmediate(turn);
    const p = await pending;
    counting = false;
    // between each two chunks of its five (a review: one turn anywhere passed before). The
    // counter's first turn comes after predictProba's first, its last after the rows are done:
    // four turns of predictProba's are three of the counter's before 'done'; one turn, none.
    expect(said.indexOf('done')).toBeGreaterThanOrEqual(3);
    expect(said.slice(0, said.indexOf('done'))).toEqual(Array(said.indexOf('done')).fill('turn'));
    const whole = tf.tidy(() => (fit.model.predict(tf.tensor2d(many.x.data, [many.x.rows, many.x.dim])) as tf.Tensor).dataSync());
    expect(p.length).toBe(whole.length);
    let worst = 0;
    for (let i = 0; i < p.length; i++) worst = Math.max(worst, Math.abs(p[i]! - whole[i]!));
    expect(worst).toBeLessThan(1e-5);
    fit.model.dispose();
  });

  it('gives the event loop a turn as often as it is asked, whatever the steps (a wide head held a worker\'s /metrics for 14 s between turns every 25 steps)', async () => {
    const train = blobs([100, 100], 8, 0.2, 7);
    const steps = 2 * Math.ceil(200 / 16); // two epochs of batches of 16
    let turns = 0;
    let counting = true;
    const count = () => {
      if (!counting) return;
      turns++;
      setImmediate(count);
    };
    setImmediate(count);
    const fit = await fitHead(tf, { train, validation: train, numClasses: 2, options: { ...base, epochs: 2 }, yieldEveryMs: 0 });
    counting = false;
    fit.model.dispose();
    // (a turn after every step at least; the old code gave about one in 25)
    expect(turns).toBeGreaterThanOrEqual(steps);
  });
});

