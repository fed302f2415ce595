import { createHash } from 'node:crypto';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-wasm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildEfficientNetB0 } from './efficientnet-b0.model.js';
import { readHdf5Bytes } from './hdf5-bytes.adapter.js';
import { KerasH5WeightsError, loadKerasH5Weights } from './keras-h5-weights.loader.js';
import { kerasH5LayersFromModel, writeKerasH5Weights, type KerasH5Layer } from './keras-h5-weights.writer.js';
import { IMAGENET_STD_RGB } from './normalization.layer.js';

// Weight shapes do not depend on the input size, and 32×32 keeps every forward pass cheap.
const INPUT_SIZE = 32;
const STEM_LAYERS = new Set(['normalization', 'stem_conv', 'stem_bn']);

/** Deterministic values in [lo, hi) (a 32-bit LCG), so the stem test uses non-trivial weights. */
function pseudoRandom(seed: number, n: number, lo: number, hi: number): Float32Array {
  let state = seed >>> 0;
  return Float32Array.from({ length: n }, () => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return lo + ((hi - lo) * state) / 2 ** 32;
  });
}

/**
 * The model's layer table with known values: the stem gets pseudo-random weights, every other
 * weight is a constant unique to its layer and position, and `count` is an int64 12345.
 */
function knownLayers(model: tf.LayersModel): KerasH5Layer[] {
  return kerasH5LayersFromModel(model).map((layer, li) => ({
    name: layer.name,
    weights: layer.weights.map((w, wi) => {
      const n = w.shape.reduce((a, b) => a * b, 1);
      if (w.values instanceof BigInt64Array) return { ...w, values: BigInt64Array.of(12345n) };
      if (!STEM_LAYERS.has(layer.name)) return { ...w, values: new Float32Array(n).fill(li + wi / 10) };
      // Variances (and BN gamma) stay positive; everything else straddles zero.
      const positive = /(variance|gamma):0$/.test(w.name);
      return { ...w, values: pseudoRandom(li * 31 + wi, n, positive ? 0.5 : -0.5, positive ? 1.5 : 0.5) };
    }),
  }));
}

function valuesOf(layers: KerasH5Layer[], layerName: string, weightIndex: number): Float32Array {
  const values = layers.find((l) => l.name === layerName)?.weights[weightIndex]?.values;
  if (!(values instanceof Float32Array)) throw new Error(`no float weight ${layerName}[${weightIndex}]`);
  return values;
}

/** normalize → rescale → pad [[0,1],[0,1]] → 3×3 stride-2 conv → BN (inference) → swish, in plain JS. */
function stemReference(image: Float32Array, size: number, layers: KerasH5Layer[]): Float64Array {
  const [mean, variance] = [0, 1].map((i) => valuesOf(layers, 'normalization', i));
  const kernel = valuesOf(layers, 'stem_conv', 0); // [3, 3, 3, 32]
  const [gamma, beta, movingMean, movingVariance] = [0, 1, 2, 3].map((i) => valuesOf(layers, 'stem_bn', i));
  const input = Float64Array.from(image, (v, i) => {
    const c = i % 3;
    const normalized = (v / 255 - mean![c]!) / Math.max(Math.sqrt(variance![c]!), 1e-7);
    return normalized / Math.sqrt(IMAGENET_STD_RGB[c]!);
  });
  const outSize = size / 2;
  const out = new Float64Array(outSize * outSize * 32);
  for (let oy = 0; oy < outSize; oy += 1) {
    for (let ox = 0; ox < outSize; ox += 1) {
      for (let co = 0; co < 32; co += 1) {
        let sum = 0;
        for (let ky = 0; ky < 3; ky += 1) {
          for (let kx = 0; kx < 3; kx += 1) {
            // Padding 0 on top/left and 1 on bottom/right: row/column `size` is the zero pad.
            const iy = oy * 2 + ky;
            const ix = ox * 2 + kx;
            if (iy >= size || ix >= size) continue;
            for (let ci = 0; ci < 3; ci += 1) {
              sum += input[(iy * size + ix) * 3 + ci]! * kernel[((ky * 3 + kx) * 3 + ci) * 32 + co]!;
            }
          }
        }
        const bn = ((sum - movingMean![co]!) / Math.sqrt(movingVariance![co]! + 1e-3)) * gamma![co]! + beta![co]!;
        out[(oy * outSize + ox) * 32 + co] = bn / (1 + Math.exp(-bn));
      }
    }
  }
  return out;
}

function bytesOf(array: ArrayBufferView): Buffer {
  return Buffer.from(array.buffer, array.byteOffset, array.byteLength);
}

/** A digest of all weights; comparing 16 MB with toEqual would take minutes. */
function weightsDigest(model: tf.LayersModel): string {
  const hash = createHash('sha256');
  for (const tensor of model.getWeights()) hash.update(tensor.dataSync());
  return hash.digest('hex');
}

describe('loadKerasH5Weights', () => {
  let model: tf.LayersModel;
  let known: KerasH5Layer[];
  let knownFile: Uint8Array;

  beforeAll(async () => {
    await tf.setBackend('wasm');
    await tf.ready();
    model = buildEfficientNetB0({ seed: 1, inputSize: INPUT_SIZE });
    known = knownLayers(buildEfficientNetB0({ seed: 2, inputSize: INPUT_SIZE }));
    knownFile = await writeKerasH5Weights(known);
  });

  afterAll(() => model.dispose());

  it('puts every value in the layer and weight it belongs to', async () => {
    const summary = await loadKerasH5Weights(model, knownFile);

    expect(summary).toEqual({ layers: 131, weights: 312, parameters: 4_049_571 });
    for (const layer of known) {
      const actual = model.getLayer(layer.name).getWeights();
      expect(actual, layer.name).toHaveLength(layer.weights.length);
      layer.weights.forEach((weight, i) => {
        const expected = weight.values instanceof BigInt64Array ? Int32Array.of(12345) : weight.values;
        const data = actual[i]!.dataSync();
        expect(data.constructor, weight.name).toBe(expected.constructor);
        // Byte comparison: toEqual over 4 M numbers element by element takes ~20 s.
        expect(Buffer.compare(bytesOf(data), bytesOf(expected)), weight.name).toBe(0);
      });
    }
  });

  it('gives stem_activation outputs equal to a plain-JS computation of the stem', async () => {
    await loadKerasH5Weights(model, knownFile);
    const stem = tf.model({ inputs: model.inputs, outputs: model.getLayer('stem_activation').output });
    const image = Float32Array.from({ length: INPUT_SIZE * INPUT_SIZE * 3 }, (_, i) => (i * 37) % 256);
    const actual = tf.tidy(() =>
      (stem.predict(tf.tensor4d(image, [1, INPUT_SIZE, INPUT_SIZE, 3])) as tf.Tensor).dataSync(),
    );
    const expected = stemReference(image, INPUT_SIZE, known);

    expect(actual).toHaveLength(expected.length);
    const maxError = Math.max(...Array.from(actual, (v, i) => Math.abs(v - expected[i]!)));
    expect(maxError).toBeLessThan(1e-4);
    // The pattern must actually exercise the numbers (not all ~0).
    expect(Math.max(...Array.from(expected, Math.abs))).toBeGreaterThan(0.5);
  });

  it('reads the full-model layout (model_weights) with layer_names split into chunks', async () => {
    const bytes = await writeKerasH5Weights(known, { fullModel: true, maxAttributeBytes: 1024 });
    const attributes = await readHdf5Bytes(bytes, (root) => ({
      root: Object.keys(root.attrs),
      nested: Object.keys((root.get('model_weights') as typeof root).attrs),
    }));
    expect(attributes.root).not.toContain('layer_names');
    expect(attributes.nested).toEqual(expect.arrayContaining(['layer_names0', 'layer_names1', 'layer_names5']));

    const fresh = buildEfficientNetB0({ seed: 3, inputSize: INPUT_SIZE });
    await loadKerasH5Weights(fresh, bytes);
    expect(weightsDigest(fresh)).toEqual(weightsDigest(model));
    fresh.dispose();
  });

  it('rejects a wrong shape, naming the layer, the weight and both shapes, and keeps the old weights', async () => {
    const wrong = known.map((layer) =>
      layer.name !== 'block1a_se_reduce'
        ? layer
        : {
            ...layer,
            weights: [
              { name: 'block1a_se_reduce/kernel:0', shape: [1, 1, 32, 9], values: new Float32Array(32 * 9) },
              { name: 'block1a_se_reduce/bias:0', shape: [9], values: new Float32Array(9) },
            ],
          },
    );
    const fresh = buildEfficientNetB0({ seed: 4, inputSize: INPUT_SIZE });
    const before = weightsDigest(fresh);

    const load = loadKerasH5Weights(fresh, await writeKerasH5Weights(wrong));
    await expect(load).rejects.toThrow(KerasH5WeightsError);
    await expect(load).rejects.toThrow(
      "layer 'block1a_se_reduce' weight 'kernel' (block1a_se_reduce/kernel:0): " +
        'shape mismatch, file [1, 1, 32, 9] vs model [1, 1, 32, 8]',
    );
    expect(weightsDigest(fresh)).toEqual(before);
    fresh.dispose();
  });

  it('rejects a file without one of the model layers', async () => {
    const bytes = await writeKerasH5Weights(known.filter((layer) => layer.name !== 'top_bn'));
    await expect(loadKerasH5Weights(model, bytes)).rejects.toThrow(
      /layer 'top_bn' \(BatchNormalization\) is missing from the weights file/,
    );
  });

  it('rejects weights listed in a different order than the model expects', async () => {
    const swapped = known.map((layer) =>
      layer.name !== 'stem_bn'
        ? layer
        : { ...layer, weights: [layer.weights[1]!, layer.weights[0]!, ...layer.weights.slice(2)] },
    );
    await expect(loadKerasH5Weights(model, await writeKerasH5Weights(swapped))).rejects.toThrow(
      "layer 'stem_bn' weight 0: the file has 'stem_bn/beta:0', the model expects 'gamma'",
    );
  });

  it('rejects extra weighted layers unless told to ignore them', async () => {
    const withTop = [
      ...known,
      { name: 'predictions', weights: [{ name: 'predictions/bias:0', shape: [2], values: new Float32Array(2) }] },
    ];
    const bytes = await writeKerasH5Weights(withTop);
    await expect(loadKerasH5Weights(model, bytes)).rejects.toThrow(/weighted layers the model lacks: predictions/);
    await expect(loadKerasH5Weights(model, bytes, { ignoreExtraLayers: true })).resolves.toMatchObject({ layers: 131 });
  });

  it('rejects bytes that are not HDF5', async () => {
    const notHdf5 = [new Uint8Array(0), new TextEncoder().encode('{"weights": []}'), new Uint8Array(4096).fill(7)];
    for (const bytes of notHdf5) {
      await expect(loadKerasH5Weights(model, bytes)).rejects.toThrow(/^not an HDF5 file \(\d+ bytes/);
    }
  });

  it('rejects a truncated file', async () => {
    const truncated = knownFile.slice(0, Math.floor(knownFile.length / 2));
    await expect(loadKerasH5Weights(model, truncated)).rejects.toThrow(/the file is truncated/);
  });

  it('rejects an HDF5 file that is not in the Keras layout', async () => {
    const { writeHdf5Bytes } = await import('./hdf5-bytes.adapter.js');
    const bytes = await writeHdf5Bytes((root) => {
      root.create_dataset({ name: 'data', data: new Float32Array(3) });
    });
    await expect(loadKerasH5Weights(model, bytes)).rejects.toThrow(/no 'layer_names' attribute/);
  });
});
