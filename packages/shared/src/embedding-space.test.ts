import { describe, expect, it } from 'vitest';
import { storageAdvice, workerBackends } from './embedding-space.js';
import type { EmbedWorkerInfo } from './documents.js';

const worker = (storage?: { bucket: string; prefix: string }): EmbedWorkerInfo => ({ workerId: 'w', space: 's', backend: 'onnx', host: 'h', pid: 1, startedAt: '', ...(storage && { storage }) });

describe('storageAdvice', () => {
  it('says nothing when a live worker keeps what this shell reads, or no worker says where it keeps it', () => {
    expect(storageAdvice({ bucket: 'tl', prefix: '' }, [worker({ bucket: 'other', prefix: '' }), worker({ bucket: 'tl', prefix: '' })])).toBeUndefined();
    // workers of a version that did not say (a rolling upgrade), or none live
    expect(storageAdvice({ bucket: 'tl', prefix: '' }, [worker()])).toBeUndefined();
    expect(storageAdvice({ bucket: 'tl', prefix: '' }, [])).toBeUndefined();
  });

  it('names the settings that differ, and every place the workers keep theirs', () => {
    expect(storageAdvice({ bucket: 'photos', prefix: 'tl/' }, [worker({ bucket: 'tl', prefix: 'tl/' }), worker()])).toBe(
      'this shell looks in s3://photos/tl/, but the live embed workers keep embeddings and models in s3://tl/tl/: set TL_BUCKET=tl as the workers have it',
    );
    expect(storageAdvice({ bucket: 'tl', prefix: 'mine/' }, [worker({ bucket: 'tl', prefix: '' }), worker({ bucket: 'tl', prefix: '' })])).toBe(
      'this shell looks in s3://tl/mine/, but the live embed workers keep embeddings and models in s3://tl/: unset TL_PREFIX as the workers have it',
    );
    // workers that disagree: both places named, no one setting claimed right
    expect(storageAdvice({ bucket: 'tl', prefix: 'mine/' }, [worker({ bucket: 'tl', prefix: '' }), worker({ bucket: 'b', prefix: 'x/' })])).toBe(
      'this shell looks in s3://tl/mine/, but the live embed workers keep embeddings and models in s3://b/x/ and s3://tl/ (they disagree: set TL_BUCKET and TL_PREFIX as the workers whose models you want have them)',
    );
  });
});

describe('workerBackends', () => {
  it('names each backend with its threads, once each, and a worker of an earlier version (no threads) by its backend', () => {
    const w = (backend: string, threads?: number): EmbedWorkerInfo => ({ ...worker(), backend, ...(threads && { threads }) });
    expect(workerBackends([w('onnx', 2), w('onnx', 1), w('onnx', 2), w('wasm', 1), w('tensorflow')])).toBe('onnx on 2 threads, onnx on 1 thread, wasm on 1 thread, tensorflow');
    expect(workerBackends([])).toBe('');
  });
});
