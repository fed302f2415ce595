import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadTfRuntime, type TfRuntime } from '@transferline/shared/tf';
import { createEfficientNetEmbedder } from './embedder.js';
import { buildEfficientNetB0 } from './model/efficientnet-b0.model.js';
import { writeKerasH5Weights } from './model/keras-h5-weights.writer.js';

let rt: TfRuntime;
beforeAll(async () => {
  rt = await loadTfRuntime('wasm');
});

function image(size: number, seed: number): Uint8Array {
  return Uint8Array.from({ length: size * size * 3 }, (_, i) => (i * 7 + seed * 13) % 256);
}

describe('the EfficientNet-B0 embedder', () => {
  it('embeds with the weights of a Keras HDF5 file, not its own initial ones', async () => {
    const size = 64;
    const source = buildEfficientNetB0({ seed: 7, inputSize: size });
    const h5 = await writeKerasH5Weights(source);
    const expected = tf.tidy(() => (source.predict(tf.tensor4d(image(size, 1), [1, size, size, 3], 'int32').toFloat()) as tf.Tensor).dataSync());
    source.dispose();

    const loaded = await createEfficientNetEmbedder(rt, { seed: 42, inputSize: size, weights: h5 });
    const unloaded = await createEfficientNetEmbedder(rt, { seed: 42, inputSize: size });
    const got = await loaded.embedBatch([image(size, 1)]);
    const other = await unloaded.embedBatch([image(size, 1)]);
    expect(got.length).toBe(1280);
    let maxDiff = 0;
    let otherDiff = 0;
    for (let i = 0; i < got.length; i++) {
      maxDiff = Math.max(maxDiff, Math.abs(got[i]! - expected[i]!));
      otherDiff = Math.max(otherDiff, Math.abs(other[i]! - expected[i]!));
    }
    expect(maxDiff).toBeLessThan(1e-4);
    expect(otherDiff).toBeGreaterThan(1e-2);
    loaded.dispose();
    unloaded.dispose();
  });

  it('gives each image of a batch the embedding it gets alone', async () => {
    const size = 32;
    const e = await createEfficientNetEmbedder(rt, { seed: 3, inputSize: size });
    const batch = await e.embedBatch([image(size, 1), image(size, 2), image(size, 3)]);
    const alone = await e.embedBatch([image(size, 2)]);
    for (let i = 0; i < 1280; i++) expect(batch[1280 + i]).toBeCloseTo(alone[i]!, 4);
    await expect(e.embedBatch([new Uint8Array(10)])).rejects.toThrow(/expected 3072 bytes per image/);
    e.dispose();
  });

  it('leaks no tensor: tf.memory() stays flat over 1,000 batches', async () => {
    const size = 32;
    const e = await createEfficientNetEmbedder(rt, { seed: 1, inputSize: size });
    const batch = [image(size, 1), image(size, 2)];
    e.embedBatch(batch); // first call allocates what stays (kernels, caches)
    const before = tf.memory();
    for (let i = 0; i < 1000; i++) e.embedBatch(batch);
    const after = tf.memory();
    expect(after.numTensors).toBe(before.numTensors);
    expect(after.numBytes).toBe(before.numBytes);
    e.dispose();
    // disposing the model releases its weights too
    expect(tf.memory().numTensors).toBeLessThan(before.numTensors);
  }, 120_000);
});
