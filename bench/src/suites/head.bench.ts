import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import sharp from 'sharp';
import * as tf from '@tensorflow/tfjs';
import { createEfficientNetEmbedder } from '@transferline/feature-worker/embedder';
import { argmaxRows, fitHead, predictProba, type HeadOptions, type Matrix } from '@transferline/train-worker/head.trainer';
import { encodeNpyFloat32, loadConfig, resolveWeights } from '@transferline/shared';
import { loadTfRuntime } from '@transferline/shared/tf';
import { readFashionMnist } from '../fashion-mnist.js';
import { machine, withRatios, type Row, type SuiteResult } from '../report.js';

const script = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'python', 'sklearn_logreg.py');

interface Labelled {
  x: Matrix;
  y: Int32Array;
}

function rows(m: Labelled, from: number, to: number): Labelled {
  return { x: { data: m.x.data.subarray(from * m.x.dim, to * m.x.dim), rows: to - from, dim: m.x.dim }, y: m.y.subarray(from, to) };
}

/** Fits our head (early stopping on the last 10% of train) and measures time, test accuracy and the RSS peak. */
async function ours(train: Labelled, test: Labelled, o: Partial<HeadOptions>) {
  const nVal = Math.round(train.x.rows * 0.1);
  const fitPart = rows(train, 0, train.x.rows - nVal);
  const valPart = rows(train, train.x.rows - nVal, train.x.rows);
  // Growth over the RSS at the start, so earlier suites in the same process do not count.
  const before = process.memoryUsage().rss;
  let peak = before;
  const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 50);
  const start = performance.now();
  const fit = await fitHead(tf, {
    train: fitPart,
    validation: valPart,
    numClasses: 10,
    options: { hiddenUnits: 0, dropout: 0, learningRate: 0.001, batchSize: 128, epochs: 40, l2: 1e-5, patience: 5, classWeights: 'none', seed: 1, ...o },
  });
  const seconds = (performance.now() - start) / 1000;
  clearInterval(sampler);
  // predicting (what a run's report, classify and review do) against its ceiling: one matMul and softmax of the same weights over every row
  let t = performance.now();
  const pred = argmaxRows(await predictProba(tf, fit.model, test.x), 10);
  const predictSeconds = (performance.now() - t) / 1000;
  const [w, b] = fit.model.getWeights() as [tf.Tensor2D, tf.Tensor1D];
  t = performance.now();
  tf.tidy(() => tf.softmax(tf.tensor2d(test.x.data, [test.x.rows, test.x.dim]).matMul(w).add(b)).dataSync());
  const rawPredictSeconds = (performance.now() - t) / 1000;
  fit.model.dispose();
  const accuracy = pred.reduce((a, p, i) => a + (p === test.y[i] ? 1 : 0), 0) / test.y.length;
  return { seconds, accuracy, epochs: fit.history.length, bestEpoch: fit.bestEpoch, peakRssGrowthMb: (peak - before) / 2 ** 20, fitRows: fitPart.x.rows, predictSeconds, rawPredictSeconds };
}

/** scikit-learn on the same rows our head was fitted on (the validation tenth left out), same test set. */
async function sklearn(train: Labelled, test: Labelled, dir: string) {
  const nFit = train.x.rows - Math.round(train.x.rows * 0.1);
  const fit = rows(train, 0, nFit);
  await writeFile(path.join(dir, 'X_train.npy'), encodeNpyFloat32(fit.x.data, fit.x.rows, fit.x.dim));
  await writeFile(path.join(dir, 'y_train.npy'), encodeNpyFloat32(Float32Array.from(fit.y), fit.x.rows, 1));
  await writeFile(path.join(dir, 'X_test.npy'), encodeNpyFloat32(test.x.data, test.x.rows, test.x.dim));
  await writeFile(path.join(dir, 'y_test.npy'), encodeNpyFloat32(Float32Array.from(test.y), test.x.rows, 1));
  const { stdout } = await promisify(execFile)('/usr/bin/python3', [script, dir, '1000'], { timeout: 1_800_000, maxBuffer: 1 << 20 });
  return JSON.parse(stdout) as { accuracy: number; fitSeconds: number; iterations: number };
}

function pixels(d: { images: Uint8Array; labels: Uint8Array; n: number }, n = d.n): Labelled {
  const data = new Float32Array(n * 784);
  for (let i = 0; i < n * 784; i++) data[i] = d.images[i]! / 255;
  return { x: { data, rows: n, dim: 784 }, y: Int32Array.from(d.labels.subarray(0, n)) };
}

/**
 * Issue 5: our head against scikit-learn's LogisticRegression on the same split, on Fashion-MNIST
 * (a) raw pixels, all 70,000 images; (b) EfficientNet-B0 embeddings of a subset.
 */
export async function headBench(o: { embedTrain: number; embedTest: number }): Promise<SuiteResult> {
  const startedAt = new Date().toISOString();
  const rt = await loadTfRuntime('auto');
  const rowsOut: Row[] = [];
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tl-head-bench-'));
  const details: Record<string, unknown> = { backend: rt.backend };
  try {
    const trainSet = await readFashionMnist('train');
    const testSet = await readFashionMnist('t10k');
    // (a) raw pixels
    const a = { train: pixels(trainSet), test: pixels(testSet) };
    const sk = await sklearn(a.train, a.test, dir);
    process.stderr.write(`head: sklearn on pixels ${JSON.stringify(sk)}\n`);
    // The same L2 strength as scikit-learn's default C = 1 (it minimises ½‖w‖² + C·Σ loss, i.e.
    // mean loss + ‖w‖² / (2·C·n)), trained until the validation loss stops improving.
    const l2For = (rows: number) => 1 / (2 * (rows - Math.round(rows * 0.1)));
    const our = await ours(a.train, a.test, { l2: l2For(a.train.x.rows) });
    process.stderr.write(`head: ours on pixels ${JSON.stringify(our)}\n`);
    details.pixels = { ours: our, sklearn: sk };
    rowsOut.push(
      { name: 'pixels: scikit-learn LogisticRegression test accuracy', value: sk.accuracy, unit: 'fraction', note: `${sk.iterations} lbfgs iterations` },
      { name: 'pixels: our softmax head test accuracy', value: our.accuracy, unit: 'fraction', vs: 'pixels: scikit-learn LogisticRegression test accuracy', target: 'within 1 point', note: `${our.epochs} epochs, best ${our.bestEpoch}` },
      { name: 'pixels: scikit-learn fit time (54,000 × 784)', value: sk.fitSeconds, unit: 's' },
      { name: 'pixels: our fit time (54,000 × 784)', value: our.seconds, unit: 's', vs: 'pixels: scikit-learn fit time (54,000 × 784)' },
      { name: 'pixels: our RSS growth while fitting (54,000 × 784 floats = 161 MiB)', value: our.peakRssGrowthMb, unit: 'MiB' },
      { name: 'pixels: one matMul + softmax of the head over the test set (10,000 × 784)', value: a.test.x.rows / our.rawPredictSeconds, unit: 'rows/s' },
      { name: 'pixels: predictProba over the test set (report, classify, review)', value: a.test.x.rows / our.predictSeconds, unit: 'rows/s', vs: 'pixels: one matMul + softmax of the head over the test set (10,000 × 784)', target: '≥ 0.5' },
    );
    a.train.x.data = new Float32Array(0);

    // (b) EfficientNet-B0 embeddings of a subset: 28×28 grey upscaled to 224×224 RGB
    const config = loadConfig({ ...process.env });
    const weights = await resolveWeights(config.embed).catch(() => undefined);
    details.weights = weights ? `imagenet (${weights.md5})` : 'random (seeded): the ImageNet file is not in the cache and cannot be downloaded here';
    const embedder = await createEfficientNetEmbedder(rt, { seed: 42, ...(weights && { weights: weights.bytes }) });
    const embed = async (d: typeof trainSet, n: number): Promise<Labelled> => {
      const data = new Float32Array(n * 1280);
      const batch: Uint8Array[] = [];
      let done = 0;
      for (let i = 0; i < n; i++) {
        const img = await sharp(Buffer.from(d.images.subarray(i * 784, (i + 1) * 784)), { raw: { width: 28, height: 28, channels: 1 } })
          .resize(224, 224, { fit: 'fill' })
          .toColourspace('srgb')
          .raw()
          .toBuffer();
        batch.push(new Uint8Array(img));
        if (batch.length === 16 || i === n - 1) {
          data.set(await embedder.embedBatch(batch), done * 1280);
          done += batch.length;
          batch.length = 0;
        }
      }
      return { x: { data, rows: n, dim: 1280 }, y: Int32Array.from(d.labels.subarray(0, n)) };
    };
    const t0 = performance.now();
    const b = { train: await embed(trainSet, o.embedTrain), test: await embed(testSet, o.embedTest) };
    const embedSeconds = (performance.now() - t0) / 1000;
    embedder.dispose();
    const skB = await sklearn(b.train, b.test, dir);
    const ourB = await ours(b.train, b.test, { l2: l2For(b.train.x.rows), patience: 30, epochs: 400, batchSize: 32 });
    details.embeddings = { ours: ourB, sklearn: skB, images: o.embedTrain + o.embedTest, embedSeconds };
    rowsOut.push(
      { name: `embeddings (${o.embedTrain}+${o.embedTest} images): scikit-learn test accuracy`, value: skB.accuracy, unit: 'fraction' },
      { name: `embeddings (${o.embedTrain}+${o.embedTest} images): our head test accuracy`, value: ourB.accuracy, unit: 'fraction', vs: `embeddings (${o.embedTrain}+${o.embedTest} images): scikit-learn test accuracy`, target: 'within 1 point', note: weights ? 'ImageNet weights' : 'random weights' },
      { name: 'embeddings: scikit-learn fit time', value: skB.fitSeconds, unit: 's' },
      { name: 'embeddings: our fit time', value: ourB.seconds, unit: 's', vs: 'embeddings: scikit-learn fit time' },
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  return { suite: 'head', startedAt, machine: machine(), rows: withRatios(rowsOut), details };
}
