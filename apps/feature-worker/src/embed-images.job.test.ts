import { describe, expect, it } from 'vitest';
import { PermanentError, redisKeys } from '@transferline/shared';
import { createMetrics } from '@transferline/shared/service-runtime';
import { TensorStore } from '@transferline/shared/tensors';
import { EmbedStage, type EmbedDeps, type EmbedStageOptions } from './embed-images.job.js';
import { ShardWriter } from './shard-writer.js';
import type { Embedder } from './embedder.js';

const sha = (n: number) => n.toString(16).padStart(64, '0');
const ID = 'efficientnet-b0.test.squash224';

/** Plain fakes: an in-memory cache and Redis under the real tensor store, an embedder that counts its forward passes. */
function fakeDeps(pixels: Record<string, Uint8Array>, cached: string[] = [], o: { afterPixelRead?: () => void } = {}) {
  const index = new Map<string, string>(cached.map((h) => [h, 'old 0']));
  const shards: { hashes: string[]; data: Float32Array }[] = [];
  /** set to hold shard writes until it resolves, or to fail them */
  const writes: { gate?: Promise<void>; failNext?: Error } = {};
  const deleted: string[] = [];
  const failures = new Map<string, string>();
  const forward: number[] = [];
  const keys = redisKeys('t');
  // pixels are stored per space: a key of another space names nothing here
  const mine = keys.tensor(ID, '');
  const hashOf = (key: string) => (key.startsWith(mine) ? key.slice(mine.length) : `other space: ${key}`);
  const mget = (ks: string[]) => ks.map((k) => (pixels[hashOf(k)] ? Buffer.from(pixels[hashOf(k)]!) : null));
  const redis = {
    // the pixel read that also asks the index (MGET + HMGET in one round trip, run in order;
    // `afterPixelRead` plays what other clients do between the two)
    pipeline: () => {
      const replies: unknown[] = [];
      const pipe = {
        hmget: (key: string, ...hs: string[]) => (replies.push(key === keys.embeddingIndex(ID) ? hs.map((h) => index.get(h) ?? null) : hs.map(() => null)), pipe),
        mgetBuffer: (...ks: string[]) => (replies.push(mget(ks)), o.afterPixelRead?.(), pipe),
        exec: async () => replies.map((r) => [null, r]),
      };
      return pipe;
    },
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
          await writes.gate;
          const fail = writes.failNext;
          writes.failNext = undefined;
          if (fail) throw fail;
          shards.push({ hashes, data });
          hashes.forEach((h, i) => index.set(h, `s${shards.length} ${i}`));
          return `s${shards.length}`;
        },
      },
      tensors: new TensorStore(redis as never, keys, 0),
    },
  } as unknown as EmbedDeps;
  return { deps, index, shards, deleted, failures, forward, writes };
}

const px = (v: number) => Uint8Array.from({ length: 12 }, () => v);
const job = (n: number) => ({ sha256: sha(n), embedderId: ID });

/** The embed stage's image counts by outcome, as Prometheus would scrape them. */
async function counted(deps: EmbedDeps): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const v of (await deps.metrics.images.get()).values) if (v.labels.stage === 'embed') out[String(v.labels.outcome)] = v.value;
  return out;
}

/** A stage on the fakes whose batches form from the jobs submitted together (no waiting for more). */
function stageOf(deps: EmbedDeps, o: Partial<EmbedStageOptions> = {}) {
  const stage = new EmbedStage(deps, { batchSize: 8, batchWaitMs: 0, shardRows: 64, shardMaxDelayMs: 60_000, ...o });
  const run = (ns: number[]) => Promise.allSettled(ns.map((n) => stage.embed(job(n)))).then((rs) => rs.map((r) => (r.status === 'fulfilled' ? r.value : (r.reason as Error))));
  return { stage, run };
}

describe('EmbedStage', () => {
  it('embeds a batch in one forward pass, stores it as one shard, then frees the pixels', async () => {
    const f = fakeDeps({ [sha(1)]: px(1), [sha(2)]: px(2) });
    const r = await stageOf(f.deps, { batchSize: 2 }).run([1, 2]);
    expect(r).toEqual(['embedded', 'embedded']);
    expect(f.forward).toEqual([2]);
    expect(f.shards).toHaveLength(1);
    expect([...f.shards[0]!.data]).toEqual([1, 1, 1, 2, 2, 2]);
    expect(f.deleted.sort()).toEqual([sha(1), sha(2)]);
  });

  it('fails an image whose pixels are gone alone, with a reason, and embeds the rest', async () => {
    const f = fakeDeps({ [sha(1)]: px(1), [sha(3)]: px(3) });
    const r = await stageOf(f.deps, { batchSize: 3 }).run([1, 2, 3]);
    expect(r[0]).toBe('embedded');
    expect(r[1]).toBeInstanceOf(PermanentError);
    expect((r[1] as PermanentError).reason).toBe('pixels-expired');
    expect(r[2]).toBe('embedded');
    expect(f.forward).toEqual([2]);
    expect(f.shards.map((s) => s.hashes)).toEqual([[sha(1), sha(3)]]);
  });

  it('caches no embedding that is not finite numbers: that image fails (to be tried again), saying why, and the rest are embedded', async () => {
    const f = fakeDeps({ [sha(1)]: px(1), [sha(2)]: px(2), [sha(3)]: px(3) });
    const embed = f.deps.embedder.embedBatch;
    // a damaged model: NaN for one image, Infinity for another
    f.deps.embedder.embedBatch = async (images) => (await embed(images)).map((v) => (v === 2 ? Number.NaN : v === 3 ? Number.POSITIVE_INFINITY : v));
    const r = await stageOf(f.deps, { batchSize: 3 }).run([1, 2, 3]);
    expect(r[0]).toBe('embedded');
    for (const e of [r[1], r[2]]) {
      expect(e).toBeInstanceOf(Error);
      expect(e).not.toBeInstanceOf(PermanentError);
      expect((e as Error).message).toBe("the model gave this image an embedding that is not finite numbers (NaN or Infinity): this embed worker's model (its weights or ONNX graph) is damaged; not cached");
    }
    expect(f.shards.map((s) => s.hashes)).toEqual([[sha(1)]]);
    expect(f.deleted).toEqual([sha(1)]); // the pixels of the others kept for their next try
  });

  it('running the same jobs twice embeds once (the second run finds them cached)', async () => {
    const f = fakeDeps({ [sha(1)]: px(1) });
    let lookups = 0;
    const has = f.deps.services.cache.has.bind(f.deps.services.cache);
    f.deps.services.cache.has = (id, hs) => (lookups++, has(id, hs));
    const { run } = stageOf(f.deps);
    expect(await run([1])).toEqual(['embedded']);
    expect(await run([1])).toEqual(['cached']);
    expect(f.forward).toEqual([1]);
    expect(f.shards).toHaveLength(1);
    // found by the pixel read, which asks the index in the same round trip: no look-up of its own
    expect(lookups).toBe(0);
  });

  it('frees the pixels of an image found indexed (stored again after it was embedded), not leaving them to their TTL', async () => {
    // preprocess looked it up just before another job embedded it, then stored its pixels again
    const f = fakeDeps({ [sha(5)]: px(5), [sha(6)]: px(6) }, [sha(5)]);
    const { run } = stageOf(f.deps, { batchSize: 2 });
    expect(await run([5, 6])).toEqual(['cached', 'embedded']);
    expect(f.forward).toEqual([1]);
    expect(f.deleted.sort()).toEqual([sha(5), sha(6)]);
    // a batch of only indexed images is freed as well, with no forward pass
    const g = fakeDeps({ [sha(7)]: px(7) }, [sha(7)]);
    expect(await stageOf(g.deps).run([7])).toEqual(['cached']);
    expect(g.forward).toEqual([]);
    expect(g.deleted).toEqual([sha(7)]);
    // a job run twice finds its pixels already freed by its first run: nothing to delete
    const h = fakeDeps({}, [sha(8)]);
    expect(await stageOf(h.deps).run([8])).toEqual(['cached']);
    expect(h.deleted).toEqual([]);
  });

  it('keeps the results of a batch when freeing the pixels of an indexed image fails (they expire with their TTL)', async () => {
    const f = fakeDeps({ [sha(5)]: px(5), [sha(6)]: px(6) }, [sha(5)]);
    const warned: unknown[] = [];
    (f.deps as { log?: unknown }).log = { warn: (o: unknown) => warned.push(o) };
    let dels = 0;
    (f.deps.services.tensors as unknown as { delete: () => Promise<void> }).delete = () => (dels++ === 0 ? Promise.reject(new Error('READONLY')) : Promise.resolve());
    expect(await stageOf(f.deps, { batchSize: 2 }).run([5, 6])).toEqual(['cached', 'embedded']);
    expect(f.shards.map((s) => s.hashes)).toEqual([[sha(6)]]);
    expect(warned).toHaveLength(1);
  });

  it('halves a batch that does not fit in device memory instead of failing it', async () => {
    const n = 5;
    const f = fakeDeps(Object.fromEntries(Array.from({ length: n }, (_, i) => [sha(i + 1), px(i + 1)])));
    const embed = f.deps.embedder.embedBatch;
    f.deps.embedder.embedBatch = (images) => {
      if (images.length > 2) throw new Error('OOM when allocating tensor with shape[5,112,112,96]');
      return embed(images);
    };
    const r = await stageOf(f.deps, { batchSize: n }).run([1, 2, 3, 4, 5]);
    expect(r).toEqual(Array(n).fill('embedded'));
    expect(f.forward).toEqual([2, 1, 2]);
    expect([...f.shards[0]!.data]).toEqual([1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5]);
    // any other error is not a memory problem: the batch fails (and is retried by the queue)
    const g = fakeDeps({ [sha(9)]: px(9), [sha(10)]: px(10) });
    g.deps.embedder.embedBatch = () => {
      throw new Error('device lost');
    };
    const failed = await stageOf(g.deps, { batchSize: 2 }).run([9, 10]);
    expect(failed.map((e) => (e as Error).message)).toEqual(['device lost', 'device lost']);
    expect(g.shards).toHaveLength(0);
  });

  it('lets an embedder that reads the pixels itself do so, and look the index up in that same read', async () => {
    const stored: Record<string, Uint8Array> = { [sha(1)]: px(1), [sha(2)]: Uint8Array.of(1, 2, 3), [sha(4)]: px(4), [sha(5)]: px(5) };
    const f = fakeDeps({}, [sha(5)]);
    let readHere = 0;
    f.deps.services.tensors.getBatch = () => {
      readHere++;
      return Promise.resolve({ images: [], sizes: [], cached: [] });
    };
    const lookedUpHere: string[][] = [];
    const has = f.deps.services.cache.has.bind(f.deps.services.cache);
    f.deps.services.cache.has = (id, hs) => {
      lookedUpHere.push(hs);
      return has(id, hs);
    };
    const asked: { hashes: string[]; space: string }[] = [];
    f.deps.embedder.embedStored = async (space, hashes) => {
      asked.push({ hashes, space });
      const cached = hashes.map((h) => space === ID && f.index.has(h));
      const ok = hashes.filter((h, i) => !cached[i] && stored[h]?.length === 12).map((h) => stored[h]!);
      return { sizes: hashes.map((h) => stored[h]?.length ?? -1), data: ok.length ? await f.deps.embedder.embedBatch(ok) : new Float32Array(0), cached };
    };
    const r = await stageOf(f.deps, { batchSize: 6 }).run([1, 2, 3, 4, 1, 5]);
    expect(readHere).toBe(0);
    // one round trip for the batch: the index is asked in the embedder's read, never here
    // (not even for the image whose pixels are gone)
    expect(lookedUpHere).toEqual([]);
    expect(asked).toEqual([{ hashes: [sha(1), sha(2), sha(3), sha(4), sha(5)], space: ID }]); // the duplicate is asked for once
    expect(r[0]).toBe('embedded');
    expect((r[1] as PermanentError).reason).toBe('bad-pixels');
    expect((r[2] as PermanentError).reason).toBe('pixels-expired');
    expect(r[3]).toBe('embedded');
    expect(r[4]).toBe('cached'); // the same image twice: written once, both wait for that write
    expect(r[5]).toBe('cached'); // indexed already: its pixels are not embedded again
    expect(f.forward).toEqual([2]);
    expect(f.shards).toHaveLength(1);
    expect(f.shards[0]!.hashes).toEqual([sha(1), sha(4)]);
    expect([...f.shards[0]!.data]).toEqual([1, 1, 1, 4, 4, 4]);
    // the embedded ones' pixels once written; the indexed one's at once (no job needs them)
    expect(f.deleted.sort()).toEqual([sha(1), sha(4), sha(5)]);
    // (its failed images are counted by the worker, where every job's final failure goes)
    expect(await counted(f.deps)).toMatchObject({ embedded: 2, cached: 2 });
    expect((await counted(f.deps)).failed ?? 0).toBe(0);
    // a batch found all indexed runs no forward pass, and the metrics count none
    const passes = async () => (await f.deps.metrics.forwardSeconds.get()).values.find((v) => v.metricName?.endsWith('_count'))?.value;
    expect(await passes()).toBe(1);
    expect(await stageOf(f.deps, { batchSize: 2 }).run([1, 5])).toEqual(['cached', 'cached']);
    expect(f.forward).toEqual([2]);
    expect(await passes()).toBe(1);
  });

  it('refuses a job made for another embedding space', async () => {
    const f = fakeDeps({ [sha(1)]: px(1) });
    const r = await stageOf(f.deps).stage.embed({ sha256: sha(1), embedderId: 'efficientnet-b0.other.crop224' }).catch((e: unknown) => e);
    expect((r as PermanentError).reason).toBe('wrong-embedder');
    expect(f.forward).toEqual([]);
  });

  it('writes the embeddings of several forward batches as one shard, and completes no job before it is written', async () => {
    const ns = [1, 2, 3, 4, 5, 6, 7];
    const f = fakeDeps(Object.fromEntries(ns.map((n) => [sha(n), px(n)])));
    let release!: () => void;
    f.writes.gate = new Promise<void>((resolve) => (release = resolve));
    const { stage } = stageOf(f.deps, { batchSize: 2, shardRows: 6 });
    const settled: number[] = [];
    const all = Promise.all(ns.map((n) => stage.embed(job(n)).then((o) => (settled.push(n), o))));
    // four forward batches (2+2+2+1); the first six rows fill a shard, the seventh is written once nothing more comes
    await expect.poll(() => f.forward).toEqual([2, 2, 2, 1]);
    await new Promise((r) => setTimeout(r, 20));
    expect(settled).toEqual([]);
    expect(f.shards).toHaveLength(0);
    release();
    expect(await all).toEqual(Array(7).fill('embedded'));
    expect(f.shards.map((s) => s.hashes)).toEqual([ns.slice(0, 6).map(sha), [sha(7)]]);
    expect([...f.shards[0]!.data]).toEqual(ns.slice(0, 6).flatMap((n) => [n, n, n]));
    expect(f.deleted.sort()).toEqual(ns.map(sha));
  });

  it('holds jobs enough that the forward pass fills the next shard while one is being written', async () => {
    const ns = Array.from({ length: 30 }, (_, i) => i + 1);
    const f = fakeDeps(Object.fromEntries(ns.map((n) => [sha(n), px(n)])));
    let release!: () => void;
    f.writes.gate = new Promise<void>((resolve) => (release = resolve));
    const o = { batchSize: 1, shardRows: 6 };
    const { stage } = stageOf(f.deps, o);
    // a BullMQ worker: as many jobs at once as the stage asks for, the next taken as one completes
    const queued = [...ns];
    const slot = async () => {
      for (let n = queued.shift(); n !== undefined; n = queued.shift()) await stage.embed(job(n));
    };
    const all = Promise.all(Array.from({ length: EmbedStage.concurrency(o) }, slot));
    // the first shard's write is held: the forward pass goes on until the next shard is full
    await expect.poll(() => f.forward.length, { timeout: 2_000 }).toBeGreaterThanOrEqual(2 * o.shardRows);
    release();
    await all;
    expect(f.shards.flatMap((s) => s.hashes).sort()).toEqual(ns.map(sha).sort());
  });

  it('writes a lone job as soon as nothing more is coming, not after the longest delay', async () => {
    const f = fakeDeps({ [sha(1)]: px(1) });
    // shardMaxDelayMs is a minute: only the idle forward stage can let this finish within the test's timeout
    const { run } = stageOf(f.deps, { batchSize: 8, batchWaitMs: 5, shardRows: 64, shardMaxDelayMs: 60_000 });
    expect(await run([1])).toEqual(['embedded']);
    expect(f.shards).toHaveLength(1);
  });

  it('fails every job of a shard whose write failed, keeps their pixels, and embeds them when they run again', async () => {
    const f = fakeDeps({ [sha(1)]: px(1), [sha(2)]: px(2) });
    f.writes.failNext = new Error('S3 is down');
    const { run } = stageOf(f.deps, { batchSize: 2 });
    const r = await run([1, 2]);
    expect(r.map((e) => (e as Error).message)).toEqual(['S3 is down', 'S3 is down']);
    expect(f.deleted).toEqual([]);
    expect(f.index.size).toBe(0);
    expect((await counted(f.deps)).embedded ?? 0).toBe(0);
    expect(await run([1, 2])).toEqual(['embedded', 'embedded']);
    expect(f.deleted.sort()).toEqual([sha(1), sha(2)]);
    expect(await counted(f.deps)).toEqual({ embedded: 2 });
  });

  it('writes waiting rows as soon as a later batch ends without any (all cached), not after the longest delay', async () => {
    const f = fakeDeps({ [sha(1)]: px(1) }, [sha(2)]);
    // the cached image's batch ends last: only then is nothing more coming
    const has = f.deps.services.cache.has.bind(f.deps.services.cache);
    f.deps.services.cache.has = async (id, hs) => {
      if (hs.includes(sha(2))) await new Promise((r) => setTimeout(r, 50));
      return has(id, hs);
    };
    const { run } = stageOf(f.deps, { batchSize: 1, shardMaxDelayMs: 60_000 });
    expect(await run([1, 2])).toEqual(['embedded', 'cached']);
    expect(f.shards.map((s) => s.hashes)).toEqual([[sha(1)]]);
  });

  it('writes an image whose job ran twice at once (two batches) once, and counts the second run as cached', async () => {
    const f = fakeDeps({ [sha(1)]: px(1) });
    const { run } = stageOf(f.deps, { batchSize: 1 });
    expect(await run([1, 1])).toEqual(['embedded', 'cached']);
    expect(f.forward).toEqual([1, 1]);
    expect(f.shards.map((s) => s.hashes)).toEqual([[sha(1)]]);
    expect(await counted(f.deps)).toEqual({ embedded: 1, cached: 1 });
  });

  it('does not fail an image whose pixels are gone because it was embedded meanwhile (a second run of its job)', async () => {
    // the pixel read finds them gone: the other run indexed the image, then freed its pixels,
    // just before; the index is read after the pixels, in the same round trip, and finds it
    const f = fakeDeps({}, [], { afterPixelRead: () => void f.index.set(sha(5), 'other-run 0') });
    let looked = 0;
    f.deps.services.cache.has = async (_id, hs) => (looked++, hs.map(() => false));
    expect(await stageOf(f.deps).run([5])).toEqual(['cached']);
    expect(looked).toBe(0); // no look of its own
    expect(f.forward).toEqual([]);
    // gone, and not indexed: gone for good
    const g = fakeDeps({});
    expect((((await stageOf(g.deps).run([5]))[0]) as PermanentError).reason).toBe('pixels-expired');
  });

  it('drain runs the batch still collecting and writes its shard before it resolves', async () => {
    const f = fakeDeps({ [sha(1)]: px(1), [sha(2)]: px(2), [sha(3)]: px(3) });
    const { stage } = stageOf(f.deps, { batchSize: 8, batchWaitMs: 60_000, shardMaxDelayMs: 60_000 });
    const jobs = Promise.all([1, 2, 3].map((n) => stage.embed(job(n))));
    await new Promise((r) => setTimeout(r, 10));
    expect(f.forward).toEqual([]);
    await stage.drain();
    expect(f.shards.map((s) => s.hashes)).toEqual([[sha(1), sha(2), sha(3)]]);
    expect(f.deleted.sort()).toEqual([sha(1), sha(2), sha(3)]);
    expect(await jobs).toEqual(['embedded', 'embedded', 'embedded']);
  });
});

describe('ShardWriter', () => {
  const row = (v: number) => Float32Array.of(v, v, v);

  it('writes after the longest delay when more rows keep being announced but none come', async () => {
    const written: string[][] = [];
    const w = new ShardWriter(async (hashes) => void written.push(hashes), { dim: 3, maxRows: 64, maxDelayMs: 30, moreComing: () => true });
    await w.add(sha(1), row(1));
    expect(written).toEqual([[sha(1)]]);
  });

  it('splits what waits into shards of at most maxRows, and refuses a row of the wrong size', async () => {
    const written: string[][] = [];
    const w = new ShardWriter(async (hashes) => void written.push(hashes), { dim: 3, maxRows: 2, maxDelayMs: 60_000, moreComing: () => true });
    await Promise.all([1, 2, 3, 4].map((n) => w.add(sha(n), row(n))));
    expect(written).toEqual([
      [sha(1), sha(2)],
      [sha(3), sha(4)],
    ]);
    await expect(w.add(sha(5), Float32Array.of(1, 2))).rejects.toThrow('an embedding of 2 values, expected 3');
  });
});
