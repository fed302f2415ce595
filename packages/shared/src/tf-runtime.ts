import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-wasm';
import type { Logger } from './logger.js';

/** Which TensorFlow.js backend to load (`auto`: native if a package loads, else wasm). */
export type BackendPreference = 'auto' | 'tensorflow' | 'wasm' | 'cpu';

export interface TfRuntime {
  tf: typeof tf;
  /** The backend in use: `tensorflow` (libtensorflow via tfjs-node[-gpu]), `wasm` or `cpu`. */
  backend: string;
  /** Which package provided it, for the log line and the metric label. */
  provider: string;
}

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
        await import(pkg);
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
      throw new Error(`TL_BACKEND=tensorflow but no native TensorFlow.js package loads:\n  ${tried.join('\n  ')}`);
    }
  }
  const backend = preference === 'cpu' ? 'cpu' : 'wasm';
  if (!(await tf.setBackend(backend))) throw new Error(`TensorFlow.js backend ${backend} failed to initialise`);
  await tf.ready();
  log?.info({ backend, provider: `@tensorflow/tfjs-backend-${backend}`, skipped: tried.length ? tried : undefined }, 'TensorFlow.js backend selected');
  return { tf, backend, provider: `@tensorflow/tfjs-backend-${backend}` };
}
