import type * as tfTypes from '@tensorflow/tfjs';
import { seededRandom, type EpochLog } from '@transferline/shared';

export type { EpochLog };

type Tf = typeof tfTypes;

/** Row-major float32 features. */
export interface Matrix {
  data: Float32Array;
  rows: number;
  dim: number;
}

export interface HeadOptions {
  /** 0: softmax (multinomial logistic regression) on the embeddings; > 0: one ReLU hidden layer */
  hiddenUnits: number;
  /** dropout rate after the hidden layer (training only) */
  dropout: number;
  learningRate: number;
  batchSize: number;
  /** most epochs; early stopping may end sooner */
  epochs: number;
  /** L2 penalty on the kernels: l2 · Σ w² */
  l2: number;
  /** stop after this many epochs without a better validation loss, restoring the best; 0 = never */
  patience: number;
  /** 'balanced': weight classes by n / (k · n_c), as scikit-learn does; 'none': every example 1 */
  classWeights: 'balanced' | 'none';
  seed: number;
}

export interface FitResult {
  /** softmax head that takes raw (unstandardised) features */
  model: tfTypes.Sequential;
  history: EpochLog[];
  bestEpoch: number;
  stoppedEarly: boolean;
  classWeights: number[];
}

const CHUNK = 4096;

/**
 * Fits a classification head with a training loop of our own (Adam, seeded shuffles, seeded
 * dropout masks), so that the same data and seed give the same figures. Features are
 * standardised for training IN PLACE, so 200,000 × 1280 embeddings are never held twice, and
 * restored before it returns; the scaling is folded into the first layer of the returned
 * model, which takes raw features.
 * Early stopping on the validation loss restores the best epoch's weights.
 */
export interface FitInput {
  train: { x: Matrix; y: Int32Array };
  validation: { x: Matrix; y: Int32Array };
  numClasses: number;
  options: HeadOptions;
  /** called after every epoch (metrics, progress) */
  onEpoch?: (log: EpochLog) => void | Promise<void>;
  /** the longest the fit holds the event loop between two turns of it (ms; YIELD_EVERY_MS) */
  yieldEveryMs?: number;
}

/**
 * How long a fit runs its steps before it gives the event loop a turn: a step of a wide hidden
 * layer takes a few hundred ms here, and a turn every 25 steps held the train worker's /metrics
 * and /healthz for up to 14 s (an operator's trial: 7 scrapes of 17 failed, and a liveness probe
 * of 5 s would have restarted the worker, losing the run). A turn costs microseconds.
 */
const YIELD_EVERY_MS = 50;

export async function fitHead(tf: Tf, input: FitInput): Promise<FitResult> {
  const { numClasses, options: o, onEpoch } = input;
  const { x: train, y: trainY } = input.train;
  const { x: val, y: valY } = input.validation;
  const dim = train.dim;
  const { mean, std } = columnStats(train);
  standardiseInPlace(train, mean, std);
  standardiseInPlace(val, mean, std);

  const counts = new Array<number>(numClasses).fill(0);
  trainY.forEach((c) => counts[c]!++);
  const classWeights = counts.map((c) => (o.classWeights === 'balanced' && c > 0 ? train.rows / (numClasses * c) : 1));

  const init = (shape: [number, number], seed: number) => tf.variable(tf.initializers.glorotUniform({ seed }).apply(shape) as tfTypes.Tensor2D);
  const hidden = o.hiddenUnits > 0;
  const vars: tfTypes.Variable[] = hidden
    ? [init([dim, o.hiddenUnits], o.seed), tf.variable(tf.zeros([o.hiddenUnits])), init([o.hiddenUnits, numClasses], o.seed + 1), tf.variable(tf.zeros([numClasses]))]
    : [init([dim, numClasses], o.seed), tf.variable(tf.zeros([numClasses]))];
  const kernels = hidden ? [vars[0]!, vars[2]!] : [vars[0]!];
  const logitsOf = (x: tfTypes.Tensor2D, dropoutSeed?: number): tfTypes.Tensor2D => {
    if (!hidden) return x.matMul(vars[0] as tfTypes.Tensor2D).add(vars[1]!);
    let h = tf.relu(x.matMul(vars[0] as tfTypes.Tensor2D).add(vars[1]!)) as tfTypes.Tensor2D;
    if (dropoutSeed !== undefined && o.dropout > 0) {
      const keep = tf.randomUniform(h.shape, 0, 1, 'float32', dropoutSeed).greaterEqual(o.dropout);
      h = h.mul(keep.toFloat()).div(1 - o.dropout);
    }
    return h.matMul(vars[2] as tfTypes.Tensor2D).add(vars[3]!);
  };

  const optimizer = tf.train.adam(o.learningRate);
  const weightTensor = tf.tensor1d(classWeights);
  const batchX = new Float32Array(o.batchSize * dim);
  const batchY = new Int32Array(o.batchSize);
  const history: EpochLog[] = [];
  let best = { loss: Number.POSITIVE_INFINITY, epoch: 0, weights: [] as tfTypes.Tensor[] };
  let stoppedEarly = false;
  let step = 0;
  const yieldEveryMs = input.yieldEveryMs ?? YIELD_EVERY_MS;
  let lastTurn = performance.now();
  try {
    for (let epoch = 1; epoch <= o.epochs; epoch++) {
      const started = performance.now();
      const order = permutation(train.rows, seededRandom(o.seed * 1_000_003 + epoch));
      let lossSum = 0;
      let correct = 0;
      for (let start = 0; start < train.rows; start += o.batchSize) {
        const n = Math.min(o.batchSize, train.rows - start);
        for (let i = 0; i < n; i++) {
          const r = order[start + i]!;
          batchX.set(train.data.subarray(r * dim, (r + 1) * dim), i * dim);
          batchY[i] = trainY[r]!;
        }
        step++;
        let batchCorrect = 0;
        const loss = tf.tidy(() => {
          const xb = tf.tensor2d(batchX.subarray(0, n * dim), [n, dim]);
          const yb = tf.tensor1d(batchY.subarray(0, n), 'int32');
          return optimizer.minimize(() => {
            const logits = logitsOf(xb, o.seed * 7_919 + step);
            const ce = tf.losses.softmaxCrossEntropy(tf.oneHot(yb, numClasses), logits, undefined, undefined, tf.Reduction.NONE);
            const w = weightTensor.gather(yb);
            batchCorrect = logits.argMax(-1).equal(yb).sum().dataSync()[0]!;
            let total = ce.mul(w).sum().div(w.sum()) as tfTypes.Scalar;
            for (const k of kernels) total = total.add(k.square().sum().mul(o.l2));
            return total;
          }, true, vars)!;
        });
        lossSum += loss.dataSync()[0]! * n;
        correct += batchCorrect;
        loss.dispose();
        // A long epoch must not starve the event loop: /metrics answers, the job lock is renewed.
        if (performance.now() - lastTurn >= yieldEveryMs) {
          await yieldToEventLoop();
          lastTurn = performance.now();
        }
      }
      const seconds = (performance.now() - started) / 1000;
      const v = await evaluateLoss(tf, val, valY, numClasses, logitsOf);
      if (v.loss < best.loss - 1e-7) {
        tf.dispose(best.weights);
        best = { loss: v.loss, epoch, weights: vars.map((x) => tf.keep(x.clone())) };
      }
      const log: EpochLog = {
        epoch,
        loss: lossSum / train.rows,
        accuracy: correct / train.rows,
        valLoss: v.loss,
        valAccuracy: v.accuracy,
        bestValLoss: best.loss,
        learningRate: o.learningRate,
        examplesPerSecond: train.rows / seconds,
      };
      history.push(log);
      await onEpoch?.(log);
      if (o.patience > 0 && epoch - best.epoch >= o.patience) {
        stoppedEarly = epoch < o.epochs;
        break;
      }
    }
    if (best.weights.length) vars.forEach((v, i) => v.assign(best.weights[i]!));
    const model = exportModel(tf, vars, hidden, dim, o.hiddenUnits, numClasses, mean, std);
    return { model, history, bestEpoch: best.epoch, stoppedEarly, classWeights };
  } finally {
    tf.dispose([...vars, ...best.weights, weightTensor]);
    optimizer.dispose();
    restoreInPlace(train, mean, std);
    restoreInPlace(val, mean, std);
  }
}

/**
 * Class probabilities of every row, computed in chunks: [rows, classes] row-major. Each chunk is
 * one pass: `predict`'s own batches of 32, concatenated again, took 30 times as long (a trial: the
 * report of a run of 19,000 images held its train worker 11 s after its last epoch, with no
 * progress said and its job lock not renewed). The event loop is given its turn between chunks
 * (about 30 ms each here): a million rows no longer hold the worker's locks, `/healthz` and
 * progress for seconds on end.
 */
export async function predictProba(tf: Tf, model: tfTypes.LayersModel, x: Matrix): Promise<Float32Array> {
  const classes = (model.outputs[0]!.shape[1] as number) ?? 0;
  const out = new Float32Array(x.rows * classes);
  for (let start = 0; start < x.rows; start += CHUNK) {
    if (start > 0) await yieldToEventLoop();
    const n = Math.min(CHUNK, x.rows - start);
    // (apply, not predict: the same layers on the chunk, without predict's own batching and checks, about 4 times as fast here)
    const p = tf.tidy(() => (model.apply(tf.tensor2d(x.data.subarray(start * x.dim, (start + n) * x.dim), [n, x.dim])) as tfTypes.Tensor).dataSync());
    out.set(p, start * classes);
  }
  return out;
}

export function argmaxRows(p: Float32Array, classes: number): Int32Array {
  const out = new Int32Array(p.length / classes);
  for (let r = 0; r < out.length; r++) {
    let best = 0;
    for (let c = 1; c < classes; c++) if (p[r * classes + c]! > p[r * classes + best]!) best = c;
    out[r] = best;
  }
  return out;
}

const yieldToEventLoop = () => new Promise<void>((resolve) => setImmediate(resolve));

async function evaluateLoss(tf: Tf, x: Matrix, y: Int32Array, k: number, logitsOf: (x: tfTypes.Tensor2D) => tfTypes.Tensor2D): Promise<{ loss: number; accuracy: number }> {
  let loss = 0;
  let correct = 0;
  for (let start = 0; start < x.rows; start += CHUNK) {
    const n = Math.min(CHUNK, x.rows - start);
    const [l, c] = tf.tidy(() => {
      const xb = tf.tensor2d(x.data.subarray(start * x.dim, (start + n) * x.dim), [n, x.dim]);
      const yb = tf.tensor1d(y.subarray(start, start + n), 'int32');
      const logits = logitsOf(xb);
      const ce = tf.losses.softmaxCrossEntropy(tf.oneHot(yb, k), logits, undefined, undefined, tf.Reduction.NONE).sum();
      return [ce.dataSync()[0]!, logits.argMax(-1).equal(yb).sum().dataSync()[0]!];
    });
    loss += l;
    correct += c;
    await yieldToEventLoop();
  }
  return { loss: x.rows ? loss / x.rows : Number.NaN, accuracy: x.rows ? correct / x.rows : Number.NaN };
}

function permutation(n: number, rand: () => number): Uint32Array {
  const p = Uint32Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    const t = p[i]!;
    p[i] = p[j]!;
    p[j] = t;
  }
  return p;
}

function columnStats(m: Matrix): { mean: Float32Array; std: Float32Array } {
  const sum = new Float64Array(m.dim);
  const sq = new Float64Array(m.dim);
  for (let r = 0; r < m.rows; r++) {
    const base = r * m.dim;
    for (let c = 0; c < m.dim; c++) {
      const v = m.data[base + c]!;
      sum[c]! += v;
      sq[c]! += v * v;
    }
  }
  const mean = new Float32Array(m.dim);
  const std = new Float32Array(m.dim);
  for (let c = 0; c < m.dim; c++) {
    const mu = m.rows ? sum[c]! / m.rows : 0;
    const variance = m.rows ? Math.max(0, sq[c]! / m.rows - mu * mu) : 0;
    mean[c] = mu;
    // A constant column would divide by zero; leaving it unscaled keeps it harmless.
    std[c] = variance > 1e-12 ? Math.sqrt(variance) : 1;
  }
  return { mean, std };
}

function standardiseInPlace(m: Matrix, mean: Float32Array, std: Float32Array): void {
  for (let r = 0; r < m.rows; r++) {
    const base = r * m.dim;
    for (let c = 0; c < m.dim; c++) m.data[base + c] = (m.data[base + c]! - mean[c]!) / std[c]!;
  }
}

function restoreInPlace(m: Matrix, mean: Float32Array, std: Float32Array): void {
  for (let r = 0; r < m.rows; r++) {
    const base = r * m.dim;
    for (let c = 0; c < m.dim; c++) m.data[base + c] = m.data[base + c]! * std[c]! + mean[c]!;
  }
}

/**
 * The trained weights as a TF.js Sequential model (dense [+ ReLU dense] + softmax), with the
 * standardisation folded into the first layer: W' = W / std (per input row), b' = b − (mean/std)·W.
 */
function exportModel(tf: Tf, vars: tfTypes.Variable[], hidden: boolean, dim: number, units: number, k: number, mean: Float32Array, std: Float32Array): tfTypes.Sequential {
  const layers = hidden
    ? [tf.layers.dense({ inputShape: [dim], units, activation: 'relu', name: 'hidden' }), tf.layers.dense({ units: k, activation: 'softmax', name: 'head' })]
    : [tf.layers.dense({ inputShape: [dim], units: k, activation: 'softmax', name: 'head' })];
  const model = tf.sequential({ layers });
  const weights = tf.tidy(() => {
    const s = tf.tensor2d(std, [dim, 1]);
    const w0 = (vars[0] as tfTypes.Tensor2D).div(s) as tfTypes.Tensor2D;
    const b0 = vars[1]!.sub(tf.tensor2d(mean, [1, dim]).matMul(w0).reshape([-1]));
    return hidden ? [w0, b0, vars[2]!.clone(), vars[3]!.clone()] : [w0, b0];
  });
  model.setWeights(weights);
  tf.dispose(weights);
  return model;
}
