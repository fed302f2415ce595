import { createLogger } from '@transferline/shared/service-runtime';
import { loadTfRuntime } from '@transferline/shared/tf';
import { beforeAll, describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { shareThreads, startEmbedRuntime, startOnnxThread } from './embed-runtime.js';
import { buildEfficientNetB0, EFFICIENTNET_B0_EMBEDDING_DIM } from './model/efficientnet-b0.model.js';
import { exportEfficientNetB0ToOnnx, ONNX_BUILDER_VERSION, ONNX_OUTPUT_NAME } from './model/onnx-export.js';
import { checksumPath } from './model/onnx-model.cache.js';
import * as tf from '@tensorflow/tfjs';

const SIZE = 64;
const log = createLogger('embed-runtime-test', 'fatal');

/** Whether `p` settles (either way) within `ms`. */
async function settles(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const hung = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
  try {
    return await Promise.race([p.then(() => true, () => true), hung]);
  } finally {
    clearTimeout(timer);
  }
}

describe('a forward pass in its thread, once the model is disposed', () => {
  let bytes: Uint8Array;
  beforeAll(async () => {
    await loadTfRuntime('cpu');
    const net = buildEfficientNetB0({ seed: 5, inputSize: SIZE });
    bytes = exportEfficientNetB0ToOnnx(net, { inputSize: SIZE });
    net.dispose();
  }, 120_000);

  it('fails at once instead of waiting for ever (serve swapping a model under a slow request)', async () => {
    const embedder = await startOnnxThread({ bytes, output: { name: ONNX_OUTPUT_NAME, dim: EFFICIENTNET_B0_EMBEDDING_DIM }, inputSize: SIZE, threads: 1, warmupBatch: 1 }, log);
    const image = new Uint8Array(SIZE * SIZE * 3).fill(90);
    expect((await embedder.embedBatch([image])).length).toBe(EFFICIENTNET_B0_EMBEDDING_DIM);
    // asked just before the dispose: it runs, or fails saying why, but it does not hang
    const inFlight = embedder.embedBatch([image, image]);
    await embedder.dispose();
    expect(await settles(inFlight, 10_000)).toBe(true);
    const after = embedder.embedBatch([image]);
    expect(await settles(after, 10_000)).toBe(true);
    await expect(after).rejects.toThrow(/unloaded/);
  }, 60_000);
});

describe('auto', () => {
  it('says why it passed over the GPU backend, without naming a setting nobody made', async () => {
    const cacheDir = await mkdtemp(path.join(os.tmpdir(), 'tl-rt-'));
    try {
      const gpuPackage = '@tensorflow/tfjs-node-gpu'; // optional: absent where its installer failed
      const gpu = await import(gpuPackage).then(() => true, () => false);
      const rt = await startEmbedRuntime({ preference: 'auto', weightsKey: 'random-seed3', seed: 3, inputSize: SIZE, threads: 1, streams: 1, cacheDir, warmupBatch: 1 }, log);
      try {
        // where tfjs-node-gpu loads (the GPU image) there is nothing to pass over
        if (gpu) return void expect(rt.backend).toBe('tensorflow');
        expect(rt.backend).toBe('onnx');
        expect(rt.skipped).toHaveLength(1);
        expect(rt.skipped[0]).toMatch(/^tensorflow: no native TensorFlow\.js package loads \(@tensorflow\/tfjs-node-gpu: \S.+\)$/);
        expect(rt.skipped[0]).not.toMatch(/TL_BACKEND/);
      } finally {
        await rt.embedder.dispose();
      }
    } finally {
      await rm(cacheDir, { recursive: true, force: true });
    }
  }, 120_000);
});

describe('the cached ONNX graph', () => {
  const spec = (cacheDir: string) => ({ preference: 'onnx' as const, weightsKey: 'random-seed4', seed: 4, inputSize: SIZE, threads: 1, streams: 1, cacheDir, warmupBatch: 1 });
  const graphPath = (cacheDir: string) => path.join(cacheDir, `efficientnet-b0-random-seed4-${SIZE}-${ONNX_BUILDER_VERSION}.onnx`);
  /** writes `bytes` as the cached graph, with a checksum that matches them */
  const cacheAsWhole = async (cacheDir: string, bytes: Uint8Array) => {
    await writeFile(graphPath(cacheDir), bytes);
    await writeFile(checksumPath(graphPath(cacheDir)), `${createHash('sha256').update(bytes).digest('hex')}  x.onnx\n`);
  };
  const image = new Uint8Array(SIZE * SIZE * 3).map((_, i) => (i * 7) % 251);
  let cacheDir: string;
  let reference: Float32Array;
  beforeAll(async () => {
    cacheDir = await mkdtemp(path.join(os.tmpdir(), 'tl-rt-cache-'));
    const rt = await startEmbedRuntime(spec(cacheDir), log);
    expect(rt.onnx).toMatchObject({ path: graphPath(cacheDir), built: true });
    reference = Float32Array.from(await rt.embedder.embedBatch([image]));
    await rt.embedder.dispose();
    return () => rm(cacheDir, { recursive: true, force: true });
  }, 120_000);

  it('damaged on disk (an operator\'s trial: 2,000 bytes changed still parsed, and gave NaN embeddings): built again, said, and the embeddings are as before', async () => {
    const whole = await readFile(graphPath(cacheDir));
    const damaged = Uint8Array.from(whole);
    for (let i = 0; i < 2000; i++) damaged[(i * 7919) % damaged.length]! ^= 0x55;
    await writeFile(graphPath(cacheDir), damaged);
    const rt = await startEmbedRuntime(spec(cacheDir), log);
    try {
      expect(rt.onnx).toMatchObject({ built: true, warning: expect.stringMatching(/does not match its checksum .*: damaged, so built again from the weights$/) });
      expect([...(await rt.embedder.embedBatch([image]))]).toEqual([...reference]);
      expect((await readFile(graphPath(cacheDir))).equals(whole)).toBe(true);
    } finally {
      await rt.embedder.dispose();
    }
  }, 120_000);

  it('whole by its checksum but refused by ONNX Runtime (truncated before it was summed): built again once, and said, not a fall back to wasm at every start', async () => {
    const whole = await readFile(graphPath(cacheDir));
    await cacheAsWhole(cacheDir, whole.subarray(0, 8_000));
    const rt = await startEmbedRuntime({ ...spec(cacheDir), preference: 'auto' }, log);
    try {
      expect(rt.backend).toBe('onnx');
      expect(rt.onnx).toMatchObject({ built: true, warning: expect.stringMatching(/^the cached ONNX graph \S+ was refused \(.+\): built again from the weights$/) });
      expect([...(await rt.embedder.embedBatch([image]))]).toEqual([...reference]);
    } finally {
      await rt.embedder.dispose();
    }
  }, 120_000);

  it('a cached graph that gives a blank image NaN, though whole by its checksum (a faulty build summed it), is built again once, and said, where every start went to wasm (a review)', async () => {
    await loadTfRuntime('cpu');
    const net = buildEfficientNetB0({ seed: 4, inputSize: SIZE });
    const top = net.getLayer('top_conv');
    top.setWeights(top.getWeights().map((w) => tf.fill(w.shape, Number.NaN)));
    const nanGraph = exportEfficientNetB0ToOnnx(net, { inputSize: SIZE });
    net.dispose();
    await cacheAsWhole(cacheDir, nanGraph);
    const rt = await startEmbedRuntime({ ...spec(cacheDir), preference: 'auto' }, log);
    try {
      expect(rt.backend).toBe('onnx');
      expect(rt.onnx).toMatchObject({ built: true, warning: `the cached ONNX graph ${graphPath(cacheDir)} was refused (it gives a blank image NaN or Infinity): built again from the weights` });
      expect([...(await rt.embedder.embedBatch([image]))]).toEqual([...reference]);
    } finally {
      await rt.embedder.dispose();
    }
    // a model that gives NaN whatever is done (its weights): it does not start, saying why
    await expect(startOnnxThread({ bytes: nanGraph, output: { name: ONNX_OUTPUT_NAME, dim: EFFICIENTNET_B0_EMBEDDING_DIM }, inputSize: SIZE, threads: 1, warmupBatch: 1 }, log)).rejects.toThrow(
      'the model gives a blank image an embedding that is not finite numbers (NaN or Infinity): its weights or its graph are damaged, and every embedding it made would be too',
    );
  }, 120_000);

  it('names TL_TF_BACKEND in its error when that set the backend', async () => {
    // (a model that cannot be built: an input below EfficientNet's least)
    await expect(startEmbedRuntime({ ...spec(cacheDir), inputSize: 16, preferenceVariable: 'TL_TF_BACKEND' }, log)).rejects.toThrow(/^TL_TF_BACKEND=onnx does not load: /);
  }, 60_000);

  it('a folder it cannot write: the graph built is used, with a warning, and handed to the other streams', async () => {
    const file = path.join(cacheDir, 'a-file');
    await writeFile(file, 'x');
    const rt = await startEmbedRuntime({ ...spec(file), streams: 2, threads: 2 }, log);
    try {
      expect(rt.onnx).toMatchObject({ built: true, warning: expect.stringMatching(/could not be cached in .*a-file/) });
      expect(rt.onnx).not.toHaveProperty('bytes');
      const two = await rt.embedder.embedBatch([image, image]);
      expect([...two.subarray(0, EFFICIENTNET_B0_EMBEDDING_DIM)]).toEqual([...reference]);
      // each stream answers alike (the second opened the graph the first built)
      const [a, b] = await Promise.all([rt.embedder.embedBatch([image]), rt.embedder.embedBatch([image])]);
      expect([...a!]).toEqual([...b!]);
    } finally {
      await rt.embedder.dispose();
    }
  }, 120_000);
});

describe('shareThreads', () => {
  it('gives each stream its share of the threads, as evenly as whole threads go', () => {
    expect(shareThreads(2, 2)).toEqual([1, 1]);
    expect(shareThreads(2, 1)).toEqual([2]);
    expect(shareThreads(6, 4)).toEqual([2, 2, 1, 1]);
    expect(shareThreads(8, 4)).toEqual([2, 2, 2, 2]);
  });

  it('refuses a stream without a thread of its own', () => {
    expect(() => shareThreads(2, 3)).toThrow('3 streams need at least 3 threads, and there are 2');
  });
});
