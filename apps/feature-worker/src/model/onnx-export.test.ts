import * as tf from '@tensorflow/tfjs';
import { loadTfRuntime } from '@transferline/shared/tf';
import onnxProto from 'onnx-proto';
import * as ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildEfficientNetB0, EFFICIENTNET_B0_EMBEDDING_DIM } from './efficientnet-b0.model.js';
import { exportEfficientNetB0ToOnnx, ONNX_BUILDER_VERSION, OnnxExportError } from './onnx-export.js';
import { createOnnxEmbedder } from './onnx.embedder.js';

// Small enough for a fast forward pass, large enough that the 7 stages keep a 2×2 map.
const SIZE = 64;

/** Deterministic uniform values in [lo, hi) (a 32-bit LCG). */
function uniform(seed: number, n: number, lo: number, hi: number): Float32Array {
  let state = seed >>> 0;
  return Float32Array.from({ length: n }, () => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return lo + ((hi - lo) * state) / 2 ** 32;
  });
}

/**
 * Trained-looking BatchNormalization statistics and squeeze-excite biases, plus a non-default
 * Normalization, so that folding and the preprocessing collapse are exercised: with identity BN
 * and zero biases a wrong fold would still pass.
 */
function randomiseStatistics(model: tf.LayersModel): void {
  const ranges: Record<string, [number, number]> = {
    gamma: [0.6, 1.4],
    beta: [-0.3, 0.3],
    moving_mean: [-0.3, 0.3],
    moving_variance: [0.5, 2],
    bias: [-0.5, 0.5],
    mean: [0.3, 0.7],
    variance: [0.03, 0.2],
  };
  model.layers.forEach((layer, li) => {
    const randomise =
      layer.getClassName() === 'BatchNormalization' ||
      /_se_(reduce|expand)$/.test(layer.name) ||
      layer.name === 'normalization';
    if (!randomise) return;
    const values = layer.weights.map((w, wi) => {
      const [lo, hi] = ranges[w.originalName.split('/').pop() ?? ''] ?? [NaN, NaN];
      if (Number.isNaN(lo)) return w.read().clone(); // kernels and Normalization's count stay as they are
      const shape = w.shape as number[]; // weights always have a concrete shape
      return tf.tensor(uniform(li * 101 + wi, shape.reduce((a, b) => a * b, 1), lo, hi), shape);
    });
    layer.setWeights(values);
    tf.dispose(values);
  });
}

function image(kind: 'noise' | 'gradient' | 'blocks', seed: number): Uint8Array {
  const pixels = new Uint8Array(SIZE * SIZE * 3);
  const noise = uniform(seed, pixels.length, 0, 256);
  for (let i = 0; i < pixels.length; i += 1) {
    const [y, x, c] = [Math.floor(i / (SIZE * 3)), Math.floor(i / 3) % SIZE, i % 3];
    if (kind === 'noise') pixels[i] = Math.floor(noise[i] ?? 0);
    else if (kind === 'gradient') pixels[i] = Math.floor(((x + y) * 255) / (2 * SIZE - 2)) ^ (c * 40);
    else pixels[i] = ((x >> 3) + (y >> 3)) % 2 === 0 ? 230 - c * 50 : 20 + c * 60;
  }
  return pixels;
}

const dot = (a: Float32Array, b: Float32Array): number => a.reduce((s, v, i) => s + v * (b[i] ?? NaN), 0);
const norm = (a: Float32Array): number => Math.sqrt(dot(a, a));
const relativeError = (a: Float32Array, b: Float32Array): number => norm(a.map((v, i) => v - (b[i] ?? NaN))) / norm(b);

describe('exportEfficientNetB0ToOnnx', () => {
  let model: tf.LayersModel;

  beforeAll(async () => {
    await loadTfRuntime('wasm');
    model = buildEfficientNetB0({ seed: 3, inputSize: SIZE });
    randomiseStatistics(model);
  });

  afterAll(() => model.dispose());

  it('computes the TF.js embeddings on ONNX Runtime, with BatchNormalization folded', async () => {
    const bytes = exportEfficientNetB0ToOnnx(model, { inputSize: SIZE });
    const images = [image('noise', 1), image('gradient', 2), image('blocks', 3)];

    const input = tf.tensor4d(Float32Array.from(images.flatMap((i) => [...i])), [3, SIZE, SIZE, 3]);
    const expected = tf.tidy(() => (model.predict(input) as tf.Tensor).dataSync() as Float32Array);
    input.dispose();
    const embedder = await createOnnxEmbedder(bytes, { intraOpThreads: 1, inputSize: SIZE });
    const actual = await embedder.embedBatch(images);
    await embedder.dispose();

    const dim = EFFICIENTNET_B0_EMBEDDING_DIM;
    expect(actual).toHaveLength(3 * dim);
    const row = (data: Float32Array, i: number): Float32Array => data.subarray(i * dim, (i + 1) * dim);
    for (let i = 0; i < 3; i += 1) {
      const [a, b] = [row(actual, i), row(expected, i)];
      expect(dot(a, b) / (norm(a) * norm(b)), `cosine of image ${i}`).toBeGreaterThanOrEqual(0.99999);
      expect(relativeError(a, b), `relative error of image ${i}`).toBeLessThanOrEqual(1e-4);
    }
    // The images must give clearly different embeddings, or the comparison above proves little.
    for (const [i, j] of [[0, 1], [0, 2], [1, 2]] as const) {
      expect(relativeError(row(expected, i), row(expected, j)), `images ${i} and ${j}`).toBeGreaterThan(0.05);
    }
  });

  it('writes a folded NCHW graph: no BatchNormalization, Pad or Reshape, one Mul + Add of preprocessing', () => {
    const decoded = onnxProto.onnx.ModelProto.decode(exportEfficientNetB0ToOnnx(model));
    const ops = decoded.graph?.node?.map((n) => n.opType ?? '') ?? [];
    const count = (op: string): number => ops.filter((o) => o === op).length;
    expect(decoded.producerVersion).toBe(ONNX_BUILDER_VERSION);
    expect(ops.slice(0, 4)).toEqual(['Cast', 'Transpose', 'Mul', 'Add']);
    expect(ops.at(-1)).toBe('Flatten');
    expect(count('Conv')).toBe(81); // 49 with BN folded in, 32 squeeze-excite
    expect(count('GlobalAveragePool')).toBe(17);
    expect(count('Add')).toBe(1 + 9); // preprocessing + residuals
    expect(ops.some((o) => ['BatchNormalization', 'Pad', 'Reshape', 'Dropout'].includes(o))).toBe(false);
    const stem = decoded.graph?.node?.find((n) => n.name === 'stem_conv+stem_bn');
    expect(stem?.attribute?.find((a) => a.name === 'pads')?.ints?.map(Number)).toEqual([0, 0, 1, 1]);
    const dw5 = decoded.graph?.node?.find((n) => n.name === 'block3a_dwconv+block3a_bn');
    expect(dw5?.attribute?.find((a) => a.name === 'pads')?.ints?.map(Number)).toEqual([1, 1, 2, 2]);
    expect(Number(dw5?.attribute?.find((a) => a.name === 'group')?.i)).toBe(144);
  });

  it('rejects a size that differs from the model input', () => {
    expect(() => exportEfficientNetB0ToOnnx(model, { inputSize: 224 })).toThrow(/does not match inputSize 224/);
  });
});

describe('exportEfficientNetB0ToOnnx on other models', () => {
  beforeAll(async () => {
    await loadTfRuntime('wasm');
  });

  /** input [8, 8, 3] → the given layers → global average pool. */
  function tiny(...layers: tf.layers.Layer[]): tf.LayersModel {
    const input = tf.input({ shape: [8, 8, 3], name: 'input_1' });
    let x = input;
    for (const layer of [...layers, tf.layers.globalAveragePooling2d({ name: 'avg_pool' })]) {
      x = layer.apply(x) as tf.SymbolicTensor;
    }
    return tf.model({ inputs: input, outputs: x });
  }

  const conv = (name: string, args: Partial<Parameters<typeof tf.layers.conv2d>[0]> = {}): tf.layers.Layer =>
    tf.layers.conv2d({ filters: 4, kernelSize: 3, padding: 'same', useBias: false, name, ...args });

  it('folds BatchNormalization into convs with a bias, and pads even stride-1 kernels as TF does', async () => {
    const bn = (name: string): tf.layers.Layer => tf.layers.batchNormalization({ name, epsilon: 0.01 });
    const model = tiny(
      conv('c1', { kernelSize: 2, useBias: true, biasInitializer: 'randomNormal' }),
      bn('bn1'),
      tf.layers.depthwiseConv2d({ kernelSize: 3, padding: 'same', useBias: true, biasInitializer: 'randomNormal', name: 'dw' }),
      bn('bn2'),
    );
    randomiseStatistics(model);
    const pixels = Uint8Array.from(uniform(9, 2 * 8 * 8 * 3, 0, 256));
    const input = tf.tensor4d(Float32Array.from(pixels), [2, 8, 8, 3]);
    const expected = tf.tidy(() => (model.predict(input) as tf.Tensor).dataSync() as Float32Array);
    const session = await ort.InferenceSession.create(exportEfficientNetB0ToOnnx(model));
    const result = await session.run({ pixels: new ort.Tensor('uint8', pixels, [2, 8, 8, 3]) });
    const actual = result.embedding?.data as Float32Array;
    expect(result.embedding?.dims).toEqual([2, 4]);
    expect(relativeError(actual, expected)).toBeLessThan(1e-5);
    await session.release();
    input.dispose();
    model.dispose();
  });

  it.each([
    ['an unknown layer class, naming it', () => tiny(tf.layers.maxPooling2d({ poolSize: 2, name: 'pool' })), /'pool' \(MaxPooling2D\)/],
    ['a strided same-padded conv', () => tiny(conv('c', { strides: 2 })), /'c' \(Conv2D\).*padding 'same' with strides \[2, 2\]/],
    ['an unknown activation', () => tiny(conv('c', { activation: 'relu' })), /'c' \(Conv2D\).*activation 'relu'/],
    [
      'a BatchNormalization after an activation',
      () => tiny(conv('c', { activation: 'swish' }), tf.layers.batchNormalization({ name: 'bn' })),
      /'bn' \(BatchNormalization\).*must directly follow/,
    ],
    [
      'padding that no conv absorbs',
      () => tiny(tf.layers.zeroPadding2d({ padding: 1, name: 'pad' })),
      /ZeroPadding2D 'pad'.*only a Conv2D or DepthwiseConv2D/,
    ],
  ])('rejects %s', (_, build, message) => {
    const model = build();
    expect(() => exportEfficientNetB0ToOnnx(model)).toThrow(OnnxExportError);
    expect(() => exportEfficientNetB0ToOnnx(model)).toThrow(message);
    model.dispose();
  });
});
