import sharp from 'sharp';
import { BucketNotFoundError, ObjectNotFoundError, ObjectTooLargeError, PermanentError, contentHash, type ItemRecord, type JobContext, type PreprocessJob } from '@transferline/shared';
import { describe, expect, it } from 'vitest';
import type { Room } from './embed-backlog.gate.js';
import { preprocessImage, type PreprocessDeps } from './preprocess-image.job.js';

const JOB: PreprocessJob = { dataset: 'pets', bucket: 'photos', key: 'train/cats/1.jpg', etag: 'e1', label: 'cats', embedderId: 'emb', resize: 'squash' };
const ctx = { log: { debug: () => {}, info: () => {}, warn: () => {} }, progress: async () => {}, attempt: 1 } as unknown as JobContext;

/** Plain fakes that record what the handler did, in order. */
function fakes(o: { object?: () => Promise<Buffer>; cached?: boolean; handOff?: () => Promise<void> }) {
  const calls: string[] = [];
  const items = new Map<string, ItemRecord>();
  const tensors = new Map<string, Uint8Array>();
  const deps: PreprocessDeps = {
    objects: { getObject: async () => (o.object ? o.object() : sharp({ create: { width: 64, height: 48, channels: 3, background: '#884422' } }).jpeg().toBuffer()) },
    store: {
      lookup: async () => {
        calls.push('lookup');
        if (o.cached) return 'embedded';
        const room: Room = { release: async () => void calls.push('release'), keep: async () => (calls.push('keep'), room) };
        return room;
      },
      record: async (_d, id, r) => void (calls.push('record'), items.set(id, r)),
      handOff: async ({ job, pixels, itemId, record }) => {
        calls.push('handOff');
        await o.handOff?.();
        tensors.set(job.sha256, pixels);
        items.set(itemId, record);
      },
    },
    image: { size: 224, maxInputPixels: 1e7 },
    maxObjectBytes: 1e6,
  };
  return { deps, calls, items, tensors };
}

describe('preprocessImage', () => {
  it('hands new pixels to embed and records the item queued', async () => {
    const f = fakes({});
    expect(await preprocessImage(JOB, f.deps, ctx)).toBe('queued');
    expect(f.calls).toEqual(['lookup', 'keep', 'handOff']);
    const [sha] = [...f.tensors.keys()];
    expect(f.tensors.get(sha!)!.length).toBe(224 * 224 * 3);
    expect(f.items.get('photos/train/cats/1.jpg')).toEqual({ label: 'cats', etag: 'e1', space: 'emb', sha256: sha, state: 'queued' });
  });

  it("flattens transparency onto the background the job's space names, whatever the worker's own setting", async () => {
    // a fully transparent PNG: its pixels are the background alone
    const clear = await sharp({ create: { width: 32, height: 32, channels: 4, background: { r: 0, g: 0, b: 0, alpha: 0 } } }).png().toBuffer();
    const pixelOf = async (job: PreprocessJob) => {
      const f = fakes({ object: async () => clear });
      await preprocessImage(job, f.deps, ctx);
      return [...[...f.tensors.values()][0]!.subarray(0, 3)];
    };
    expect(await pixelOf({ ...JOB, background: '#0a781e' })).toEqual([10, 120, 30]);
    // a job of a CLI from before jobs named it: the space's id names it (a review: white, in a black space's cache)
    expect(await pixelOf({ ...JOB, embedderId: 'efficientnet-b0.random-seed42.squash224.bg0a781e' })).toEqual([10, 120, 30]);
    // and a space on the default names none
    expect(await pixelOf(JOB)).toEqual([255, 255, 255]);
  });

  it('decodes nothing and hands nothing over when the embedding is cached', async () => {
    // a JPEG's signature, then bytes no decoder could read: the sniff passes, a decode would fail
    const bytes = Buffer.concat([Buffer.from([0xff, 0xd8, 0xff, 0xe0]), Buffer.from('cached bytes: never decoded')]);
    const f = fakes({ cached: true, object: async () => bytes });
    expect(await preprocessImage(JOB, f.deps, ctx)).toBe('cached');
    expect(f.calls).toEqual(['lookup', 'record']);
    expect(f.items.get('photos/train/cats/1.jpg')).toEqual({ label: 'cats', etag: 'e1', space: 'emb', sha256: contentHash(bytes), state: 'cached' });
  });

  it('lets a failed hand-off through for a retry, the item untouched', async () => {
    const f = fakes({ handOff: async () => Promise.reject(new Error('redis went away')) });
    await expect(preprocessImage(JOB, f.deps, ctx)).rejects.toThrow('redis went away');
    expect(f.items.size).toBe(0);
  });

  it('fails for good with a reason code on bad input, any room it took given back (the worker records it on the item)', async () => {
    // Room in the embed backlog is taken before the decode: a decode that fails gives it back;
    // bytes that are no image at all fail before they ask for room.
    const jpeg = await sharp({ create: { width: 64, height: 48, channels: 3, background: '#884422' } }).jpeg().toBuffer();
    const cases: [() => Promise<Buffer>, string, string[]][] = [
      [async () => Promise.reject(new ObjectNotFoundError('photos', JOB.key)), 'not-found', []],
      // the whole source bucket deleted since the listing: retrying will not bring it back
      [async () => Promise.reject(new BucketNotFoundError('photos', 'http://127.0.0.1:9000')), 'not-found', []],
      [async () => Promise.reject(new ObjectTooLargeError('photos', JOB.key, 2e6, 1e6)), 'too-large', []],
      [async () => Buffer.from('plain text'), 'not-an-image', []],
      [async () => jpeg.subarray(0, jpeg.length / 2), 'truncated', ['lookup', 'release']],
    ];
    for (const [object, reason, calls] of cases) {
      const f = fakes({ object });
      const err = await preprocessImage(JOB, f.deps, ctx).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(PermanentError);
      expect((err as PermanentError).reason).toBe(reason);
      expect(f.calls).toEqual(calls);
      expect(f.tensors.size).toBe(0);
    }
  });

  it('lets transient errors through for a retry, the item untouched', async () => {
    const f = fakes({ object: async () => Promise.reject(Object.assign(new Error('socket hang up'), { name: 'TimeoutError' })) });
    await expect(preprocessImage(JOB, f.deps, ctx)).rejects.toThrow('socket hang up');
    expect(f.items.size).toBe(0);
  });
});
