import type * as tfTypes from '@tensorflow/tfjs';
import { PermanentError, type JobContext, type Metrics, type Services, type TrainJob, type TrainResult } from '@transferline/shared';
import { saveHead } from './head.store.js';
import { evaluate, type EvaluationReport } from './report.js';
import { stratifiedSplit, type Example } from './split.js';

export interface TrainDeps {
  tf: typeof tfTypes;
  backend: string;
  services: Pick<Services, 'datasets' | 'cache' | 'store'>;
  bucket: string;
  prefix: string;
  metrics: Metrics;
}

/** Progress reported after each epoch (the CLI draws its bar from it). */
export interface EpochProgress {
  phase: 'loading' | 'training' | 'saving';
  epoch: number;
  epochs: number;
  loss?: number;
  accuracy?: number;
  valLoss?: number;
  valAccuracy?: number;
}

export interface TrainReport {
  dataset: string;
  runId: string;
  embedderId: string;
  createdAt: string;
  labels: string[];
  split: { train: number; validation: number; seed: number };
  params: Omit<TrainJob, 'dataset' | 'runId' | 'embedderId'>;
  history: { epoch: number; loss: number; accuracy: number; valLoss: number; valAccuracy: number }[];
  validation: EvaluationReport;
  train: EvaluationReport;
}

/**
 * Fits a softmax head on a dataset's cached embeddings and writes the head, `labels.json` and
 * `report.json` under `models/<dataset>/<run>/`, then points `models/<dataset>/latest.json` at
 * it. Features are standardised for training and the scaling is folded into the dense layer
 * afterwards, so the saved head takes raw embeddings.
 */
export async function trainHead(job: TrainJob, deps: TrainDeps, ctx: JobContext): Promise<TrainResult> {
  const { tf, services } = deps;
  const progress = (p: EpochProgress) => ctx.progress(p);
  await progress({ phase: 'loading', epoch: 0, epochs: job.epochs });

  const examples: Example[] = [];
  for await (const page of services.datasets.scan(job.dataset)) {
    const candidates = page.filter(([, r]) => r.sha256 && r.state !== 'failed');
    const present = await services.cache.has(job.embedderId, candidates.map(([, r]) => r.sha256!));
    candidates.forEach(([, r], i) => present[i] && examples.push({ sha256: r.sha256!, label: r.label }));
  }
  const labels = [...new Set(examples.map((e) => e.label))].sort();
  if (examples.length === 0) throw new PermanentError('no-data', `dataset ${job.dataset} has no embedded images (ingest it first)`);
  if (labels.length < 2) throw new PermanentError('one-class', `dataset ${job.dataset} has only one label (${labels[0]}); a classifier needs two or more`);
  const { train, validation } = stratifiedSplit(examples, job.validationFraction, job.seed);
  if (validation.length === 0) throw new PermanentError('too-small', 'too few images for a validation split (need 2+ per class)');
  ctx.log.info({ items: examples.length, train: train.length, validation: validation.length, labels: labels.length }, 'loading embeddings');

  const classIndex = new Map(labels.map((l, i) => [l, i]));
  const trainX = await services.cache.load(job.embedderId, train.map((e) => e.sha256));
  const valX = await services.cache.load(job.embedderId, validation.map((e) => e.sha256));
  const dim = trainX.dim;
  const trainY = Int32Array.from(train, (e) => classIndex.get(e.label)!);
  const valY = Int32Array.from(validation, (e) => classIndex.get(e.label)!);

  const { mean, std } = columnStats(trainX.data, trainX.rows, dim);
  const m = deps.metrics;
  m.trainEpoch.set({ dataset: job.dataset }, 0);

  const model = tf.sequential({
    layers: [
      tf.layers.dense({
        inputShape: [dim],
        units: labels.length,
        activation: 'softmax',
        kernelInitializer: tf.initializers.glorotUniform({ seed: job.seed }),
        name: 'head',
      }),
    ],
  });
  model.compile({ optimizer: tf.train.adam(job.learningRate), loss: 'sparseCategoricalCrossentropy', metrics: ['accuracy'] });

  const history: TrainReport['history'] = [];
  const xs = standardise(tf, trainX.data, trainX.rows, dim, mean, std);
  const vxs = standardise(tf, valX.data, valX.rows, dim, mean, std);
  const ys = tf.tensor1d(trainY, 'float32');
  const vys = tf.tensor1d(valY, 'float32');
  try {
    await model.fit(xs, ys, {
      epochs: job.epochs,
      batchSize: job.batchSize,
      validationData: [vxs, vys],
      shuffle: true,
      verbose: 0,
      callbacks: {
        onEpochEnd: async (epoch, logs = {}) => {
          const h = { epoch: epoch + 1, loss: logs.loss ?? NaN, accuracy: logs.acc ?? logs.accuracy ?? NaN, valLoss: logs.val_loss ?? NaN, valAccuracy: logs.val_acc ?? logs.val_accuracy ?? NaN };
          history.push(h);
          m.trainEpoch.set({ dataset: job.dataset }, h.epoch);
          m.trainLoss.set({ dataset: job.dataset, split: 'train' }, h.loss);
          m.trainLoss.set({ dataset: job.dataset, split: 'validation' }, h.valLoss);
          m.trainAccuracy.set({ dataset: job.dataset, split: 'train' }, h.accuracy);
          m.trainAccuracy.set({ dataset: job.dataset, split: 'validation' }, h.valAccuracy);
          await progress({ phase: 'training', epochs: job.epochs, ...h });
        },
      },
    });
  } finally {
    tf.dispose([xs, vxs, ys, vys]);
  }

  foldStandardisation(tf, model, mean, std);
  const predict = (data: Float32Array, rows: number) =>
    tf.tidy(() => (model.predict(tf.tensor2d(data, [rows, dim])) as tfTypes.Tensor).argMax(-1).dataSync() as Int32Array);
  const report: TrainReport = {
    dataset: job.dataset,
    runId: job.runId,
    embedderId: job.embedderId,
    createdAt: new Date().toISOString(),
    labels,
    split: { train: train.length, validation: validation.length, seed: job.seed },
    params: { epochs: job.epochs, learningRate: job.learningRate, batchSize: job.batchSize, validationFraction: job.validationFraction, seed: job.seed },
    history,
    validation: evaluate(labels, valY, predict(valX.data, valX.rows)),
    train: evaluate(labels, trainY, predict(trainX.data, trainX.rows)),
  };

  await progress({ phase: 'saving', epoch: job.epochs, epochs: job.epochs });
  const modelPrefix = `${deps.prefix}models/${job.dataset}/${job.runId}/`;
  await saveHead(tf, model, services.store, deps.bucket, modelPrefix);
  model.dispose();
  await services.store.putJson(deps.bucket, `${modelPrefix}labels.json`, labels);
  await services.store.putJson(deps.bucket, `${modelPrefix}report.json`, report);
  await services.store.putJson(deps.bucket, `${deps.prefix}models/${job.dataset}/latest.json`, { runId: job.runId, modelPrefix });
  return { dataset: job.dataset, runId: job.runId, modelPrefix, validationAccuracy: report.validation.accuracy, examples: train.length + validation.length };
}

function columnStats(data: Float32Array, rows: number, dim: number): { mean: Float32Array; std: Float32Array } {
  const mean = new Float64Array(dim);
  const sq = new Float64Array(dim);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < dim; c++) {
      const v = data[r * dim + c]!;
      mean[c]! += v;
      sq[c]! += v * v;
    }
  }
  const m = new Float32Array(dim);
  const s = new Float32Array(dim);
  for (let c = 0; c < dim; c++) {
    m[c] = mean[c]! / rows;
    const variance = Math.max(0, sq[c]! / rows - m[c]! * m[c]!);
    // Constant columns would divide by zero; leaving them unscaled keeps them harmless.
    s[c] = variance > 1e-12 ? Math.sqrt(variance) : 1;
  }
  return { mean: m, std: s };
}

function standardise(tf: typeof tfTypes, data: Float32Array, rows: number, dim: number, mean: Float32Array, std: Float32Array): tfTypes.Tensor2D {
  return tf.tidy(() => tf.tensor2d(data, [rows, dim]).sub(tf.tensor1d(mean)).div(tf.tensor1d(std)) as tfTypes.Tensor2D);
}

/** W' = W / std (per input row), b' = b − (mean / std)·W: the head then takes raw embeddings. */
function foldStandardisation(tf: typeof tfTypes, model: tfTypes.Sequential, mean: Float32Array, std: Float32Array): void {
  const layer = model.getLayer('head');
  const [kernel, bias] = layer.getWeights() as [tfTypes.Tensor2D, tfTypes.Tensor1D];
  const folded = tf.tidy(() => {
    const s = tf.tensor2d(std, [std.length, 1]);
    const k = kernel.div(s);
    const b = bias.sub(tf.tensor2d(mean, [1, mean.length]).matMul(k).reshape([-1]));
    return [k, b];
  });
  layer.setWeights(folded);
  tf.dispose(folded);
}
