import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createEfficientNetEmbedder } from '../apps/feature-worker/src/embedder.js';
import { prepareImage } from '../apps/feature-worker/src/image.ops.js';
import { buildEfficientNetB0 } from '../apps/feature-worker/src/model/efficientnet-b0.model.js';
import { loadKerasH5Weights } from '../apps/feature-worker/src/model/keras-h5-weights.loader.js';
import { exportEfficientNetB0ToOnnx } from '../apps/feature-worker/src/model/onnx-export.js';
import { createOnnxEmbedder } from '../apps/feature-worker/src/model/onnx.embedder.js';
import { loadTfRuntime } from '../packages/shared/src/tf-runtime.js';
import { repoRoot } from './support/stack.js';

/**
 * Our two backends against an independent reference: a float64 forward pass in numpy, written
 * from Keras's efficientnet.py semantics (test/support/python/, not from our TypeScript), on a
 * weights file that the reference itself writes with h5py in Keras's legacy layout, with
 * realistic statistics (every BatchNorm's moving mean and variance measured on real photos, so
 * different images give clearly different embeddings and a wrong layer shows). The photos are
 * Debian's mate-backgrounds JPEGs, preprocessed by our own sharp pipeline.
 */

const PY = '/usr/bin/python3';
const REF = path.join(repoRoot, 'test', 'support', 'python', 'keras_efficientnet_b0_reference.py');
const PHOTOS = '/usr/share/backgrounds/mate/nature';
const SIZE = 224;
const PER = SIZE * SIZE * 3;

let dir: string;
let weights: Uint8Array;
let pixels: Uint8Array[];
let reference: Float64Array[];

function py(args: string[]): string {
  try {
    return execFileSync(PY, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    throw new Error(`${PY} ${args.join(' ')} failed (needs python3-numpy, python3-h5py, python3-pil): ${(err as { stderr?: string }).stderr ?? (err as Error).message}`);
  }
}

beforeAll(async () => {
  if (!existsSync(PHOTOS)) throw new Error(`${PHOTOS} is missing: apt-get install mate-backgrounds (the test preflight installs it)`);
  const photos = readdirSync(PHOTOS).filter((f) => f.endsWith('.jpg')).sort().map((f) => path.join(PHOTOS, f));
  expect(photos.length).toBeGreaterThanOrEqual(12);
  dir = await mkdtemp(path.join(os.tmpdir(), 'tl-ref-'));
  // 8 photos calibrate the BatchNorm statistics; the other 4 are the test images.
  py([REF, 'photos', '--out', path.join(dir, 'calib.npy'), ...photos.slice(0, 8)]);
  py([REF, 'make-weights', '--calib', path.join(dir, 'calib.npy'), '--seed', '7', '--out', path.join(dir, 'w.h5')]);
  weights = new Uint8Array(await readFile(path.join(dir, 'w.h5')));
  const opts = { size: SIZE, maxInputPixels: 1e8, background: '#ffffff', resize: 'squash' as const };
  pixels = await Promise.all(photos.slice(8, 12).map(async (p) => prepareImage(await readFile(p), opts)));
  const raw = new Uint8Array(pixels.length * PER);
  pixels.forEach((p, i) => raw.set(p, i * PER));
  await writeFile(path.join(dir, 'pixels.bin'), raw);
  // numpy reads and writes the exchange files, so no npy code of ours is between us and the reference
  py(['-c', 'import numpy as np, sys; np.save(sys.argv[2], np.fromfile(sys.argv[1], dtype=np.uint8).reshape(-1, 224, 224, 3))', path.join(dir, 'pixels.bin'), path.join(dir, 'pixels.npy')]);
  py([REF, 'embed', '--weights', path.join(dir, 'w.h5'), '--pixels', path.join(dir, 'pixels.npy'), '--out', path.join(dir, 'ref.npy')]);
  py(['-c', "import numpy as np, sys; np.load(sys.argv[1]).astype('<f8').tofile(sys.argv[2])", path.join(dir, 'ref.npy'), path.join(dir, 'ref.bin')]);
  const buf = await readFile(path.join(dir, 'ref.bin'));
  const all = new Float64Array(buf.buffer, buf.byteOffset, buf.byteLength / 8);
  reference = pixels.map((_, i) => all.slice(i * 1280, (i + 1) * 1280));
}, 180_000);
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

function compare(a: ArrayLike<number>, b: ArrayLike<number>): { cosine: number; relative: number } {
  let dot = 0;
  let na = 0;
  let nb = 0;
  let diff = 0;
  for (let i = 0; i < b.length; i++) {
    dot += a[i]! * b[i]!;
    na += a[i]! ** 2;
    nb += b[i]! ** 2;
    diff += (a[i]! - b[i]!) ** 2;
  }
  return { cosine: dot / Math.sqrt(na * nb), relative: Math.sqrt(diff / nb) };
}

const rows = (data: Float32Array) => pixels.map((_, i) => data.subarray(i * 1280, (i + 1) * 1280));

describe('EfficientNet-B0 against a float64 numpy reference (Keras semantics, realistic weights)', () => {
  let tfjs: Float32Array[];
  let ort: Float32Array[];

  it('the test can fail: the reference gives distinct photos clearly different embeddings', () => {
    for (let i = 0; i < reference.length; i++) {
      for (let j = i + 1; j < reference.length; j++) expect(compare(reference[i]!, reference[j]!).cosine).toBeLessThan(0.99);
    }
  });

  it('TF.js (wasm) matches it: cosine ≥ 0.99999, relative error ≤ 1e-4 per image', async () => {
    const rt = await loadTfRuntime('wasm');
    const embedder = await createEfficientNetEmbedder(rt, { seed: 1, weights });
    tfjs = rows(await embedder.embedBatch(pixels));
    embedder.dispose();
    for (const [i, e] of tfjs.entries()) {
      const c = compare(e, reference[i]!);
      expect(c.cosine, `image ${i}`).toBeGreaterThanOrEqual(0.99999);
      expect(c.relative, `image ${i}`).toBeLessThanOrEqual(1e-4);
    }
  }, 60_000);

  it('ONNX Runtime, on the graph built from the same file, matches it too', async () => {
    await loadTfRuntime('cpu');
    const net = buildEfficientNetB0({ seed: 1 });
    await loadKerasH5Weights(net, weights);
    const onnx = exportEfficientNetB0ToOnnx(net);
    net.dispose();
    const embedder = await createOnnxEmbedder(onnx, { intraOpThreads: 2 });
    ort = rows(await embedder.embedBatch(pixels));
    await embedder.dispose();
    for (const [i, e] of ort.entries()) {
      const c = compare(e, reference[i]!);
      expect(c.cosine, `image ${i}`).toBeGreaterThanOrEqual(0.99999);
      expect(c.relative, `image ${i}`).toBeLessThanOrEqual(1e-4);
    }
  }, 60_000);

  it('the two backends agree on real photos, so they share one embedding cache', () => {
    for (const [i, e] of ort.entries()) {
      const c = compare(e, tfjs[i]!);
      expect(c.cosine, `image ${i}`).toBeGreaterThanOrEqual(0.99999);
      expect(c.relative, `image ${i}`).toBeLessThanOrEqual(1e-4);
    }
  });
});
