import type * as Tf from '@tensorflow/tfjs';
import type { Logger } from './logger.js';

/** Which TensorFlow.js backend to load (`auto`: native if a package loads, else wasm). */
export type BackendPreference = 'auto' | 'tensorflow' | 'wasm' | 'cpu';

export interface TfRuntime {
  tf: typeof Tf;
  /** The backend in use: `tensorflow` (libtensorflow via tfjs-node[-gpu]), `wasm` or `cpu`. */
  backend: string;
  /** Which package provided it, for the log line and the metric label. */
  provider: string;
}

/**
 * TF.js itself, loaded when a backend is chosen (over a second of CPU: an embed worker that ends
 * on ONNX Runtime, having found no GPU package, never loads it).
 */
const loadTf = (): Promise<typeof Tf> => import('@tensorflow/tfjs');

/**
 * Picks the fastest TensorFlow.js backend that loads: tfjs-node-gpu (CUDA), then tfjs-node
 * (libtensorflow on CPU), then wasm (ships its binary, works everywhere; single-threaded under
 * Node, so scale it with processes). The native packages are optional: their installers
 * download libtensorflow and are simply absent where that failed.
 */
export async function loadTfRuntime(preference: BackendPreference, log?: Logger, o: { packages?: string[] } = {}): Promise<TfRuntime> {
  const tried: string[] = [];
  if (preference === 'auto' || preference === 'tensorflow') {
    for (const pkg of o.packages ?? ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node']) {
      try {
        // (a package that is not installed fails here, before TF.js itself is loaded)
        await import(pkg);
        const tf = await loadTf();
        if (await tf.setBackend('tensorflow')) {
          await tf.ready();
          log?.info({ backend: 'tensorflow', provider: pkg }, 'TensorFlow.js backend selected');
          return { tf, backend: 'tensorflow', provider: pkg };
        }
      } catch (err) {
        tried.push(`${pkg}: ${(err as Error).message.split('\n')[0]}`);
      }
    }
    if (preference === 'tensorflow') {
      throw new Error(`no native TensorFlow.js package loads (${tried.join('; ')})`);
    }
  }
  const tf = await loadTf();
  const backend = preference === 'cpu' ? 'cpu' : 'wasm';
  if (backend === 'wasm') await import('@tensorflow/tfjs-backend-wasm');
  if (!(await tf.setBackend(backend))) throw new Error(`TensorFlow.js backend ${backend} failed to initialise`);
  await tf.ready();
  if (backend === 'cpu') quietFirstTensor(tf);
  log?.info({ backend, provider: `@tensorflow/tfjs-backend-${backend}`, skipped: tried.length ? tried : undefined }, 'TensorFlow.js backend selected');
  return { tf, backend, provider: `@tensorflow/tfjs-backend-${backend}` };
}

/**
 * TF.js's CPU backend prints, at its first tensor in Node, advice to install tfjs-node: a
 * package this project does not use (ONNX Runtime is its native path; the CPU backend only
 * builds graphs and fits small heads). That first tensor is made with TF.js's warnings off.
 */
function quietFirstTensor(tf: typeof Tf): void {
  const prod = tf.env().getBool('PROD');
  tf.env().set('PROD', true);
  try {
    tf.scalar(0).dispose();
  } finally {
    tf.env().set('PROD', prod);
  }
}
