import * as tf from '@tensorflow/tfjs';
import { loadTfRuntime } from '@transferline/shared/tf';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildEfficientNetB0, EFFICIENTNET_B0_EMBEDDING_DIM } from './efficientnet-b0.model.js';
import { exportEfficientNetB0ToOnnx } from './onnx-export.js';
import { createOnnxEmbedder, type OnnxEmbedder } from './onnx.embedder.js';

const SIZE = 224;
const BYTES = SIZE * SIZE * 3;

function image(seed: number): Uint8Array {
  return Uint8Array.from({ length: BYTES }, (_, i) => (i * 7 + seed * 131 + ((i >> 9) ^ seed)) & 0xff);
}

describe('createOnnxEmbedder on the full 224×224 model', () => {
  let model: tf.LayersModel;
  let bytes: Uint8Array;
  let embedder: OnnxEmbedder;

  beforeAll(async () => {
    await loadTfRuntime('wasm');
    model = buildEfficientNetB0({ seed: 5 });
    bytes = exportEfficientNetB0ToOnnx(model);
    embedder = await createOnnxEmbedder(bytes, { intraOpThreads: 2 });
  });

  afterAll(async () => {
    await embedder.dispose();
    model.dispose();
  });

  it('embeds batches of 1 and 3 (symbolic batch) as TF.js does', async () => {
    expect(embedder.inputSize).toBe(SIZE);
    expect(embedder.dim).toBe(EFFICIENTNET_B0_EMBEDDING_DIM);
    const images = [image(1), image(2), image(3)];
    const one = await embedder.embedBatch(images.slice(0, 1));
    const three = await embedder.embedBatch(images);
    expect(one).toBeInstanceOf(Float32Array);
    expect(one).toHaveLength(1280);
    expect(three).toHaveLength(3 * 1280);
    expect(three.every(Number.isFinite)).toBe(true);
    // Row 0 does not depend on what else is in the batch.
    const first = three.subarray(0, 1280);
    first.forEach((v, i) => expect(Math.abs(v - one[i]!)).toBeLessThan(1e-4 * (1 + Math.abs(v))));

    const expected = tf.tidy(() => (model.predict(tf.tensor4d(Float32Array.from(images[0]!), [1, SIZE, SIZE, 3])) as tf.Tensor).dataSync());
    const dot = first.reduce((s, v, i) => s + v * expected[i]!, 0);
    const norms = Math.hypot(...first) * Math.hypot(...expected);
    expect(dot / norms).toBeGreaterThan(0.99999);
  });

  it('gives each row its own image, over batches of changing sizes, one after another and overlapping', async () => {
    const images = [image(11), image(12), image(13), image(14)];
    const single: Float32Array[] = [];
    for (const im of images) single.push(await embedder.embedBatch([im]));
    const expectRows = (out: Float32Array, which: number[]) => {
      expect(out).toHaveLength(which.length * 1280);
      which.forEach((k, row) => {
        const got = out.subarray(row * 1280, (row + 1) * 1280);
        const worst = Math.max(...got.map((v, i) => Math.abs(v - single[k]![i]!) / (1 + Math.abs(v))));
        expect(worst, `row ${row} (image ${k})`).toBeLessThan(1e-4);
      });
    };
    // The input buffer is kept between calls: a smaller batch after a larger one uses part of it.
    const a = await embedder.embedBatch([images[0]!, images[1]!, images[2]!]);
    const b = await embedder.embedBatch([images[3]!, images[1]!]);
    // Two calls at once: the second must not write into the buffer the first is running on.
    const [c, d] = await Promise.all([embedder.embedBatch([images[2]!, images[0]!]), embedder.embedBatch([images[1]!, images[3]!, images[0]!])]);
    expectRows(a, [0, 1, 2]);
    expectRows(b, [3, 1]);
    expectRows(c, [2, 0]);
    expectRows(d, [1, 3, 0]);
  });

  it('returns nothing for no images and names a wrongly sized image', async () => {
    expect(await embedder.embedBatch([])).toHaveLength(0);
    await expect(embedder.embedBatch([image(1), new Uint8Array(10)])).rejects.toThrow(
      /image 1 of 2 has 10 bytes, expected 150528 \(224×224×3 uint8 RGB\)/,
    );
  });

  it('refuses a model exported for another input size, and bad thread counts', async () => {
    await expect(createOnnxEmbedder(bytes, { intraOpThreads: 1, inputSize: 64 })).rejects.toThrow(/224×224, but inputSize is 64/);
    await expect(createOnnxEmbedder(bytes, { intraOpThreads: 0 })).rejects.toThrow(/intraOpThreads/);
  });
});
