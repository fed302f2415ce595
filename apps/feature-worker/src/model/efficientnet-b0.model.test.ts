import { readFileSync } from 'node:fs';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-wasm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  buildEfficientNetB0,
  EFFICIENTNET_B0_EMBEDDING_DIM,
  EFFICIENTNET_B0_INPUT_SIZE,
} from './efficientnet-b0.model.js';
import { IMAGENET_MEAN_RGB, IMAGENET_STD_RGB } from './normalization.layer.js';

// A copy of /work/shared/efficientnet-b0-layers.txt: every Keras layer with class and weight shapes.
const REFERENCE_PATH = new URL('./fixtures/efficientnet-b0-layers.txt', import.meta.url);

interface LayerRow {
  name: string;
  className: string;
  weights: { name: string; shape: number[] }[];
}

function parseReference(text: string): LayerRow[] {
  return text
    .split('\n')
    .filter((line) => line.trim() !== '')
    .map((line) => {
      const [name = '', className = ''] = line.trim().split(/\s+/);
      const weights = [...line.matchAll(/(\w+)\[([\d, ]*)\]/g)].map((m) => ({
        name: m[1] ?? '',
        shape: (m[2] ?? '').split(',').filter((d) => d.trim() !== '').map(Number),
      }));
      return { name, className, weights };
    });
}

function describeModel(model: tf.LayersModel): LayerRow[] {
  return model.layers.map((layer) => ({
    name: layer.name,
    className: layer.getClassName(),
    weights: layer.weights.map((w) => ({
      name: w.originalName.split('/').pop() ?? '',
      shape: [...w.shape] as number[],
    })),
  }));
}

const size = (shape: readonly (number | null)[]): number => shape.reduce<number>((a, b) => a * (b ?? 1), 1);
const countOf = (variables: readonly tf.LayerVariable[]): number => variables.reduce((s, v) => s + size(v.shape), 0);

function outputShape(model: tf.LayersModel, layerName: string): (number | null)[] {
  return (model.getLayer(layerName).output as tf.SymbolicTensor).shape;
}

describe('buildEfficientNetB0', () => {
  let model: tf.LayersModel;
  let small: tf.LayersModel;

  beforeAll(async () => {
    await tf.setBackend('wasm');
    await tf.ready();
    model = buildEfficientNetB0({ seed: 7 });
    small = buildEfficientNetB0({ seed: 7, inputSize: 32 });
  });

  afterAll(() => {
    model.dispose();
    small.dispose();
  });

  it('has every Keras layer, class and weight shape, in order', () => {
    const reference = parseReference(readFileSync(REFERENCE_PATH, 'utf8'));
    expect(reference).toHaveLength(239);
    expect(describeModel(model)).toEqual(reference);
    // Weight shapes do not depend on the input size.
    expect(describeModel(small)).toEqual(reference);
  });

  it('takes float32 [batch, 224, 224, 3] and returns [batch, 1280]', () => {
    expect(EFFICIENTNET_B0_INPUT_SIZE).toBe(224);
    expect(EFFICIENTNET_B0_EMBEDDING_DIM).toBe(1280);
    expect(model.inputs[0]?.shape).toEqual([null, 224, 224, 3]);
    expect(model.inputs[0]?.dtype).toBe('float32');
    expect(model.inputs[0]?.name).toMatch(/^input_1/);
    expect(model.outputs[0]?.shape).toEqual([null, 1280]);
  });

  it('has the Keras parameter counts', () => {
    const normalization = model.getLayer('normalization');
    const bnMovingStats = model.layers
      .filter((l) => l.getClassName() === 'BatchNormalization')
      .flatMap((l) => l.weights.filter((w) => /moving_(mean|variance)$/.test(w.originalName)));

    expect(model.countParams()).toBe(4_049_571);
    expect(model.countParams() - countOf(normalization.weights)).toBe(4_049_564);
    expect(countOf(model.trainableWeights)).toBe(4_007_548);
    expect(countOf(bnMovingStats)).toBe(42_016);
    // Keras counts the normalization weights as non-trainable too: 42,016 + 7.
    expect(countOf(model.nonTrainableWeights)).toBe(42_023);
    expect(model.layers.filter((l) => l.weights.length > 0 && l !== normalization)).toHaveLength(130);
  });

  it('halves the spatial size 224 → 112 → 56 → 28 → 14 → 7 at the stride-2 stages', () => {
    expect(outputShape(model, 'stem_conv_pad')).toEqual([null, 225, 225, 3]);
    expect(outputShape(model, 'stem_activation')).toEqual([null, 112, 112, 32]);
    expect(outputShape(model, 'block1a_project_bn')).toEqual([null, 112, 112, 16]);
    expect(outputShape(model, 'block2a_dwconv_pad')).toEqual([null, 113, 113, 96]);
    expect(outputShape(model, 'block2b_add')).toEqual([null, 56, 56, 24]);
    expect(outputShape(model, 'block3a_dwconv_pad')).toEqual([null, 59, 59, 144]);
    expect(outputShape(model, 'block3b_add')).toEqual([null, 28, 28, 40]);
    expect(outputShape(model, 'block4c_add')).toEqual([null, 14, 14, 80]);
    expect(outputShape(model, 'block5c_add')).toEqual([null, 14, 14, 112]);
    expect(outputShape(model, 'block6a_dwconv_pad')).toEqual([null, 17, 17, 672]);
    expect(outputShape(model, 'block6d_add')).toEqual([null, 7, 7, 192]);
    expect(outputShape(model, 'block7a_project_bn')).toEqual([null, 7, 7, 320]);
    expect(outputShape(model, 'top_activation')).toEqual([null, 7, 7, 1280]);
    expect(outputShape(model, 'block2a_se_excite')).toEqual([null, 56, 56, 96]);
    expect(outputShape(model, 'block2a_se_reshape')).toEqual([null, 1, 1, 96]);
  });

  it('has a registered, non-trainable Normalization with ImageNet defaults and an int32 count', async () => {
    const normalization = model.getLayer('normalization');
    expect(tf.serialization.SerializationMap.getMap().classNameMap.Normalization).toBeDefined();
    expect(normalization.trainableWeights).toHaveLength(0);
    expect(normalization.weights.map((w) => w.dtype)).toEqual(['float32', 'float32', 'int32']);
    const [mean, variance, count] = normalization.getWeights();
    expect(Array.from(await mean!.data())).toEqual(Array.from(Float32Array.from(IMAGENET_MEAN_RGB)));
    expect(Array.from(await variance!.data())).toEqual(Array.from(Float32Array.from(IMAGENET_STD_RGB)));
    expect(await count!.data()).toEqual(new Int32Array([0]));
  });

  it('preprocesses to (x/255 − mean)/std, as Keras ≥ 2.9 does with the ImageNet weights', () => {
    const probe = tf.model({ inputs: small.inputs, outputs: small.getLayer('rescaling_1').output });
    const pixels = tf.tidy(() => tf.tensor4d([0, 128, 255, 30, 60, 90], [1, 1, 2, 3]).tile([1, 32, 16, 1]));
    const out = tf.tidy(() => (probe.predict(pixels) as tf.Tensor).slice([0, 0, 0, 0], [1, 1, 2, 3]).dataSync());
    const expected = [0, 128, 255, 30, 60, 90].map(
      (v, i) => (v / 255 - IMAGENET_MEAN_RGB[i % 3]!) / IMAGENET_STD_RGB[i % 3]!,
    );
    expected.forEach((value, i) => expect(out[i]).toBeCloseTo(value, 4));
    pixels.dispose();
  });

  it('keeps random-weight activations finite and of ordinary size through all 16 blocks', () => {
    const blockOutputs = model.layers
      .map((l) => l.name)
      .filter((name, i, names) => /^block\d[a-d]_/.test(name) && !names[i + 1]?.startsWith(name.slice(0, 8)));
    expect(blockOutputs).toHaveLength(16);
    const probe = tf.model({
      inputs: model.inputs,
      outputs: [...blockOutputs, 'avg_pool'].map((name) => model.getLayer(name).output as tf.SymbolicTensor),
    });
    const images = tf.tidy(() =>
      tf.concat([
        tf.randomUniform([1, 224, 224, 3], 0, 255, 'float32', 11),
        tf.linspace(0, 255, 224 * 224 * 3).reshape([1, 224, 224, 3]),
      ]),
    );
    const outputs = probe.predict(images) as tf.Tensor[];
    const stds = outputs.map((t) => tf.tidy(() => tf.moments(t).variance.sqrt().dataSync()[0] ?? NaN));
    stds.slice(0, 16).forEach((std, i) => {
      expect(std, blockOutputs[i]).toBeGreaterThan(0.1);
      expect(std, blockOutputs[i]).toBeLessThan(100);
    });

    const embedding = outputs[16]!;
    expect(embedding.shape).toEqual([2, 1280]);
    const [first, second] = embedding.arraySync() as number[][];
    expect([...first!, ...second!].every(Number.isFinite)).toBe(true);
    expect(Math.max(...first!.map(Math.abs))).toBeGreaterThan(1e-3);
    expect(Math.max(...first!) - Math.min(...first!)).toBeGreaterThan(1e-3);
    expect(Math.max(...first!.map((v, i) => Math.abs(v - second![i]!)))).toBeGreaterThan(1e-3);
    tf.dispose([images, ...outputs]);
  });

  it('produces bit-identical weights for the same seed and different ones for another', () => {
    const again = buildEfficientNetB0({ seed: 7, inputSize: 32 });
    const other = buildEfficientNetB0({ seed: 8, inputSize: 32 });
    const bytes = (m: tf.LayersModel): Buffer[] =>
      m.getWeights().map((t) => Buffer.from(t.dataSync().buffer.slice(0)));
    const [a, b, c] = [bytes(small), bytes(again), bytes(other)];
    expect(a.length).toBe(b.length);
    a.forEach((w, i) => expect(w.equals(b[i]!), small.weights[i]?.name).toBe(true));
    const convKernels = small.weights.map((w, i) => [w, i] as const).filter(([w]) => /kernel$/.test(w.originalName));
    convKernels.forEach(([w, i]) => expect(a[i]!.equals(c[i]!), w.name).toBe(false));
    again.dispose();
    other.dispose();
  });

  it('survives a toJSON / modelFromJSON round trip with the same outputs', async () => {
    const copy = await tf.models.modelFromJSON({ modelTopology: small.toJSON(null, false) });
    copy.setWeights(small.getWeights());
    const image = tf.randomUniform([1, 32, 32, 3], 0, 255, 'float32', 5);
    const [expected, actual] = [small, copy].map((m) => tf.tidy(() => (m.predict(image) as tf.Tensor).dataSync()));
    expect(Array.from(actual!)).toEqual(Array.from(expected!));
    copy.dispose();
    image.dispose();
  });

  it('rejects an input size below 32', () => {
    expect(() => buildEfficientNetB0({ inputSize: 31 })).toThrow(/≥ 32/);
  });
});
