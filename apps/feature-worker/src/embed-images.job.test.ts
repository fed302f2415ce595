import { describe, expect, it } from 'vitest';
import { createMetrics, PermanentError, redisKeys } from '@transferline/shared';
import { TensorStore } from '@transferline/shared/tensors';
import { embedBatch, type EmbedDeps } from './embed-images.job.js';
import type { Embedder } from './embedder.js';

const sha = (n: number) => n.toString(16).padStart(64, '0');
const ID = 'efficientnet-b0.test.squash224';

/** Plain fakes: an in-memory cache and Redis under the real tensor store, an embedder that counts its forward passes. */
function fakeDeps(pixels: Record<string, Uint8Array>, cached: string[] = []) {
  const index = new Map<string, string>(cached.map((h) => [h, 'old 0']));
  const shards: { hashes: string[]; data: Float32Array }[] = [];
  const deleted: string[] = [];
  const failures = new Map<string, string>();
  const forward: number[] = [];
  const keys = redisKeys('t');
  const hashOf = (key: string) => key.slice(keys.tensor('').length);
  const redis = {
    mgetBuffer: async (...ks: string[]) => ks.map((k) => (pixels[hashOf(k)] ? Buffer.from(pixels[hashOf(k)]!) : null)),
    del: async (...ks: string[]) => void deleted.push(...ks.map(hashOf)),
  };
  const embedder: Embedder = {
    inputSize: 2,
    dim: 3,
    embedBatch: async (images) => {
      forward.push(images.length);
      return Float32Array.from(images.flatMap((img) => [img[0]!, img[1]!, img[2]!]));
    },
    dispose: () => {},
  };
  const deps = {
    embedder,
    embedderId: ID,
    metrics: createMetrics('test'),
    services: {
      keys,
      redis: { hset: async (_k: string, f: string, v: string) => void failures.set(f, v) },
      cache: {
        has: async (_id: string, hs: string[]) => hs.map((h) => index.has(h)),
        writeShard: async (_id: string, hashes: string[], data: Float32Array) => {
          shards.push({ hashes, data });
          hashes.forEach((h, i) => index.set(h, `s${shards.length} ${i}`));
          return `s${shards.length}`;
        },
      },
      tensors: new TensorStore(redis as never, keys, 0),
    },
  } as unknown as EmbedDeps;
  return { deps, index, shards, deleted, failures, forward };
}

const px = (v: number) => Uint8Array.from({ length: 12 }, () => v);

describe('embedBatch', () => {
  it('embeds a batch in one forward pass, stores it as one shard, then frees the pixels', async () => {
    const f = fakeDeps({ [sha(1)]: px(1), [sha(2)]: px(2) });
    const r = await embedBatch([{ sha256: sha(1), embedderId: ID }, { sha256: sha(2), embedderId: ID }], f.deps);
    expect(r).toEqual(['embedded', 'embedded']);
    expect(f.forward).toEqual([2]);
    expect(f.shards).toHaveLength(1);
    expect([...f.shards[0]!.data]).toEqual([1, 1, 1, 2, 2, 2]);
    expect(f.deleted.sort()).toEqual([sha(1), sha(2)]);
  });

  it('fails an image whose pixels are gone alone, with a reason, and embeds the rest', async () => {
    const f = fakeDeps({ [sha(1)]: px(1), [sha(3)]: px(3) });
    const r = await embedBatch([1, 2, 3].map((n) => ({ sha256: sha(n), embedderId: ID })), f.deps);
    expect(r[0]).toBe('embedded');
    expect(r[1]).toBeInstanceOf(PermanentError);
    expect((r[1] as PermanentError).reason).toBe('pixels-expired');
    expect(r[2]).toBe('embedded');
    expect(f.forward).toEqual([2]);
  });

  it('running the same jobs twice embeds once (the second run finds them cached)', async () => {
    const f = fakeDeps({ [sha(1)]: px(1) });
    const jobs = [{ sha256: sha(1), embedderId: ID }];
    expect(await embedBatch(jobs, f.deps)).toEqual(['embedded']);
    expect(await embedBatch(jobs, f.deps)).toEqual(['cached']);
    expect(f.forward).toEqual([1]);
    expect(f.shards).toHaveLength(1);
  });

  it('halves a batch that does not fit in device memory instead of failing it', async () => {
    const n = 5;
    const f = fakeDeps(Object.fromEntries(Array.from({ length: n }, (_, i) => [sha(i + 1), px(i + 1)])));
    const embed = f.deps.embedder.embedBatch;
    f.deps.embedder.embedBatch = (images) => {
      if (images.length > 2) throw new Error('OOM when allocating tensor with shape[5,112,112,96]');
      return embed(images);
    };
    const r = await embedBatch(Array.from({ length: n }, (_, i) => ({ sha256: sha(i + 1), embedderId: ID })), f.deps);
    expect(r).toEqual(Array(n).fill('embedded'));
    expect(f.forward).toEqual([2, 1, 2]);
    expect([...f.shards[0]!.data]).toEqual([1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5]);
    // any other error is not a memory problem: the batch fails (and is retried by the queue)
    const g = fakeDeps({ [sha(9)]: px(9), [sha(10)]: px(10) });
    g.deps.embedder.embedBatch = () => {
      throw new Error('device lost');
    };
    await expect(embedBatch([9, 10].map((i) => ({ sha256: sha(i), embedderId: ID })), g.deps)).rejects.toThrow('device lost');
    expect(g.shards).toHaveLength(0);
  });

  it('lets an embedder that reads the pixels itself do so: they never pass through here', async () => {
    const stored: Record<string, Uint8Array> = { [sha(1)]: px(1), [sha(2)]: Uint8Array.of(1, 2, 3), [sha(4)]: px(4) };
    const f = fakeDeps({});
    let readHere = 0;
    f.deps.services.tensors.getBatch = () => {
      readHere++;
      return Promise.resolve({ images: [], sizes: [] });
    };
    const asked: string[][] = [];
    f.deps.embedder.embedStored = async (hashes) => {
      asked.push(hashes);
      const ok = hashes.map((h) => stored[h]).filter((p): p is Uint8Array => p?.length === 12);
      return { sizes: hashes.map((h) => stored[h]?.length ?? -1), data: await f.deps.embedder.embedBatch(ok) };
    };
    const r = await embedBatch([1, 2, 3, 4, 1].map((n) => ({ sha256: sha(n), embedderId: ID })), f.deps);
    expect(readHere).toBe(0);
    expect(asked).toEqual([[sha(1), sha(2), sha(3), sha(4)]]); // the duplicate is asked for once
    expect(r[0]).toBe('embedded');
    expect((r[1] as PermanentError).reason).toBe('bad-pixels');
    expect((r[2] as PermanentError).reason).toBe('pixels-expired');
    expect(r[3]).toBe('embedded');
    expect(r[4]).toBe('cached');
    expect(f.shards).toHaveLength(1);
    expect(f.shards[0]!.hashes).toEqual([sha(1), sha(4)]);
    expect([...f.shards[0]!.data]).toEqual([1, 1, 1, 4, 4, 4]);
    expect(f.deleted.sort()).toEqual([sha(1), sha(4)]);
  });

  it('refuses a job made for another embedding space', async () => {
    const f = fakeDeps({ [sha(1)]: px(1) });
    const [r] = await embedBatch([{ sha256: sha(1), embedderId: 'efficientnet-b0.other.crop224' }], f.deps);
    expect((r as PermanentError).reason).toBe('wrong-embedder');
    expect(f.forward).toEqual([]);
  });
});
