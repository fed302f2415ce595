import sharp from 'sharp';
import { ObjectNotFoundError, ObjectTooLargeError, PermanentError, contentHash, type ItemRecord, type JobContext, type PreprocessJob } from '@transferline/shared';
import { describe, expect, it } from 'vitest';
import { preprocessImage, type PreprocessDeps } from './preprocess-image.job.js';

const JOB: PreprocessJob = { dataset: 'pets', bucket: 'photos', key: 'train/cats/1.jpg', etag: 'e1', label: 'cats', embedderId: 'emb', resize: 'squash' };
const ctx = { log: { debug: () => {}, info: () => {}, warn: () => {} }, progress: async () => {}, attempt: 1 } as unknown as JobContext;

/** Plain fakes that record what the handler did, in order. */
function fakes(o: { object?: () => Promise<Buffer>; cached?: boolean; enqueue?: () => Promise<void> }) {
  const calls: string[] = [];
  const items = new Map<string, ItemRecord>();
  const tensors = new Map<string, Uint8Array>();
  const deps: PreprocessDeps = {
    services: {
      store: { getObject: async () => (o.object ? o.object() : sharp({ create: { width: 64, height: 48, channels: 3, background: '#884422' } }).jpeg().toBuffer()) },
      datasets: {
        rememberHash: async () => void calls.push('rememberHash'),
        putItem: async (_d: string, id: string, r: ItemRecord) => void items.set(id, r),
      },
      cache: { has: async () => [o.cached ?? false] },
      tensors: { put: async (sha: string, px: Uint8Array) => void (calls.push('put'), tensors.set(sha, px)) },
    } as unknown as PreprocessDeps['services'],
    enqueueEmbed: async () => {
      calls.push('enqueue');
      await o.enqueue?.();
    },
    gate: {
      admit: async () => {
        calls.push('admit');
        return { release: async () => void calls.push('release') };
      },
    },
    image: { size: 224, maxInputPixels: 1e7, background: { r: 255, g: 255, b: 255 } },
    maxObjectBytes: 1e6,
  };
  return { deps, calls, items, tensors };
}

describe('preprocessImage', () => {
  it('stores the pixels under room from the gate, enqueues embed, then releases the room', async () => {
    const f = fakes({});
    expect(await preprocessImage(JOB, f.deps, ctx)).toBe('queued');
    expect(f.calls).toEqual(['rememberHash', 'admit', 'put', 'enqueue', 'release']);
    const [sha] = [...f.tensors.keys()];
    expect(f.tensors.get(sha!)!.length).toBe(224 * 224 * 3);
    expect(f.items.get('photos/train/cats/1.jpg')).toEqual({ label: 'cats', etag: 'e1', space: 'emb', sha256: sha, state: 'queued' });
  });

  it('asks the gate for nothing when the embedding is cached', async () => {
    const bytes = Buffer.from('cached bytes: never decoded');
    const f = fakes({ cached: true, object: async () => bytes });
    expect(await preprocessImage(JOB, f.deps, ctx)).toBe('cached');
    expect(f.calls).toEqual(['rememberHash']);
    expect(f.items.get('photos/train/cats/1.jpg')).toEqual({ label: 'cats', etag: 'e1', space: 'emb', sha256: contentHash(bytes), state: 'cached' });
  });

  it('releases the room when enqueueing fails, and leaves the item for the retry', async () => {
    const f = fakes({ enqueue: async () => Promise.reject(new Error('redis went away')) });
    await expect(preprocessImage(JOB, f.deps, ctx)).rejects.toThrow('redis went away');
    expect(f.calls.at(-1)).toBe('release');
    expect(f.items.size).toBe(0);
  });

  it('fails for good with a reason code on bad input, before asking for room (the worker records it on the item)', async () => {
    const cases: [() => Promise<Buffer>, string][] = [
      [async () => Promise.reject(new ObjectNotFoundError('photos', JOB.key)), 'not-found'],
      [async () => Promise.reject(new ObjectTooLargeError('photos', JOB.key, 2e6, 1e6)), 'too-large'],
      [async () => Buffer.from('plain text'), 'not-an-image'],
    ];
    for (const [object, reason] of cases) {
      const f = fakes({ object });
      const err = await preprocessImage(JOB, f.deps, ctx).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(PermanentError);
      expect((err as PermanentError).reason).toBe(reason);
      expect(f.calls).not.toContain('admit');
      expect(f.tensors.size).toBe(0);
    }
  });

  it('lets transient errors through for a retry, the item untouched', async () => {
    const f = fakes({ object: async () => Promise.reject(Object.assign(new Error('socket hang up'), { name: 'TimeoutError' })) });
    await expect(preprocessImage(JOB, f.deps, ctx)).rejects.toThrow('socket hang up');
    expect(f.items.size).toBe(0);
  });
});
