import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openCliContext, type CliContext } from '../apps/producer/src/cli-context.js';
import { ingestCommand } from '../apps/producer/src/commands/ingest.command.js';
import { statusCommand } from '../apps/producer/src/commands/status.command.js';
import { waitForDataset } from '../apps/producer/src/dataset-wait.js';
import { renderSample, SAMPLE_CLASSES, type SampleClass } from '../apps/producer/src/demo/sample-images.js';
import { randomBytes } from 'node:crypto';
import { EmbeddingCache, ObjectStore, enqueue, jobIds } from '../packages/shared/src/index.js';
import { guardLeaks } from './support/leak-guard.js';
import { runCli, startTestStack, until, type TestStack } from './support/stack.js';

guardLeaks();

let stack: TestStack;
let ctx: CliContext;
const sink = { write: () => true } as unknown as NodeJS.WritableStream;
const photos = 'photos-cache';

beforeAll(async () => {
  // short job locks, so a crashed worker's jobs come back within seconds
  // shards of one batch each, so compaction has small shards to merge
  stack = await startTestStack({ TL_EMBED_BATCH_SIZE: '4', TL_EMBED_BATCH_WAIT_MS: '50', TL_EMBED_SHARD_ROWS: '4', TL_MODEL_WEIGHTS: 'random', TL_JOB_LOCK_MS: '3000' });
  ctx = await openCliContext(stack.config, sink);
  await ctx.services.store.ensureBucket(photos);
});
afterAll(async () => {
  await ctx?.close();
  await stack?.destroy();
});

async function drop(prefix: string, perClass: number, seed: number): Promise<number> {
  let n = 0;
  for (const kind of Object.keys(SAMPLE_CLASSES) as SampleClass[]) {
    for (let i = 0; i < perClass; i++, n++) await ctx.services.store.putObject(photos, `${prefix}${kind}/${i}.jpg`, await renderSample(kind, i, seed));
  }
  return n;
}

describe('the embedding cache', () => {
  let total = 0;

  it('loses nothing when the embed worker is killed in the middle of its batches', async () => {
    total += await drop('a/', 8, 1);
    await ingestCommand(ctx, `s3://${photos}/a/`, { dataset: 'crash', wait: false });
    const deadline = Date.now() + 60_000;
    while ((await ctx.queues.embed(stack.space.id).getJobCounts('active')).active === 0) {
      if (Date.now() > deadline) throw new Error('embed never became active');
      await new Promise((r) => setTimeout(r, 20));
    }
    const killed = stack.supervisor.pids()['embed#1'];
    expect(stack.supervisor.signal('embed', 1, 'SIGKILL')).toBe(true);
    // status leaves it out at once, not for its heartbeat's 15 s (a user's trial: "2 embed workers" for 16 s after a kill)
    const workersInStatus = async () => {
      const json = await statusCommand({ ...ctx, out: { write: () => true } as unknown as NodeJS.WritableStream }, { json: true });
      return json.spaces.find((sp) => sp.space.id === stack.space.id)?.workers.map((w) => w.pid) ?? [];
    };
    await until('status to leave the killed embed worker out', async () => !(await workersInStatus()).includes(killed!), 5, 200);
    // the supervisor restarts it; the new process finds the dead one's jobs stalled and runs them again
    const s = await waitForDataset(ctx, 'crash', { space: stack.space.id, stallSeconds: 60 });
    expect(s).toMatchObject({ total, embedded: total, failed: 0, pending: 0 });
    expect(await ctx.services.cache.size(stack.space.id)).toBe(total);
    expect(stack.events.some((e) => /embed#1 exited \(SIGKILL\)/.test(e))).toBe(true);
    expect(await ctx.queues.embed(stack.space.id).getJobCounts('failed')).toEqual({ failed: 0 });
  }, 120_000);

  it('rebuilds its Redis index from the bucket after Redis loses it', async () => {
    await ctx.services.redis.del(ctx.services.keys.embeddingIndex(stack.space.id));
    expect((await ctx.services.inspector.status('crash')).embedded).toBe(0);
    const r = await runCli(['cache', 'rebuild-index'], stack.env);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`0 → ${total} images`);
    expect((await ctx.services.inspector.status('crash')).embedded).toBe(total);
  });

  it('never leaves a manifest without its data: a write whose .npy fails leaves nothing compaction or rebuild-index would read', async () => {
    const failingNpy = new (class extends ObjectStore {
      override putObject(bucket: string, key: string, body: Uint8Array | string, contentType?: string) {
        // the .npy is refused after a delay, as a slow PUT cut short by a kill or an outage
        if (key.endsWith('.npy')) return new Promise<void>((_, reject) => setTimeout(() => reject(new Error('S3 refused the .npy')), 200));
        return super.putObject(bucket, key, body, contentType);
      }
    })(stack.config.s3);
    try {
      const cache = new EmbeddingCache(ctx.services.redis, ctx.services.keys, failingNpy, stack.config.s3.bucket, stack.config.s3.prefix);
      const space = 'efficientnet-b0.write-order.squash224';
      const hash = 'ab'.repeat(32);
      await expect(cache.writeShard(space, [hash], new Float32Array(4), 4)).rejects.toThrow('S3 refused the .npy');
      expect(await cache.listShards(space)).toEqual([]);
      expect(await cache.has(space, [hash])).toEqual([false]);
      expect(await cache.rebuildIndex(space)).toEqual({ indexed: 0, dropped: 0 });
    } finally {
      failingNpy.close();
    }
  });

  it('rebuild-index drops the entries of a shard deleted from the bucket, or of its data alone, and works for a space Redis no longer knows', async () => {
    const { cache, store, layout, redis, keys } = ctx.services;
    const bucket = stack.config.s3.bucket;
    // a space no worker here runs (nor published): as after Redis lost its data
    const space = 'efficientnet-b0.rebuild-stale.squash224';
    const hashes = Array.from({ length: 9 }, () => randomBytes(32).toString('hex'));
    const shardOf = async (first: string) => (await cache.listShards(space)).find((s) => s.hashes.includes(first))!;
    await cache.writeShard(space, hashes.slice(0, 3), new Float32Array(3 * 4).fill(1), 4);
    await cache.writeShard(space, hashes.slice(3, 6), new Float32Array(3 * 4).fill(2), 4);
    await cache.writeShard(space, hashes.slice(6), new Float32Array(3 * 4).fill(3), 4);
    const deleted = await shardOf(hashes[3]!);
    const dataless = await shardOf(hashes[6]!);
    // a team deletes one shard from the bucket by hand, and the data of another; the index still points at both
    for (const ext of ['json', 'npy'] as const) await store.deleteObject(bucket, layout.shard(space, deleted.shardId, ext));
    await store.deleteObject(bucket, layout.shard(space, dataless.shardId, 'npy'));
    expect(await cache.size(space)).toBe(9);
    // what a training run that needs them fails with: the file, and what to do
    await expect(cache.load(space, hashes.slice(3, 6))).rejects.toThrow(
      `the embedding index of ${space} names shard ${deleted.shardId}, whose data s3://${bucket}/${layout.shard(space, deleted.shardId, 'npy')} is not in the bucket (deleted, or written under another TL_BUCKET/TL_PREFIX): transferline cache rebuild-index --embedder ${space} drops its entries; an ingest of their images then embeds them again`,
    );

    const r = await runCli(['cache', 'rebuild-index', '--embedder', space], stack.env);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`embedding space ${space} is not published in Redis`);
    expect(r.stdout).toContain(`embedding index for ${space}: 9 → 3 images`);
    expect(r.stdout).toContain('6 entries dropped: their shard, or its data (.npy), is no longer in the bucket');
    expect(await cache.has(space, hashes)).toEqual([true, true, true, false, false, false, false, false, false]);
    // what is left loads; compaction passes over the manifest without data instead of failing on it
    expect((await cache.load(space, hashes.slice(0, 3))).rows).toBe(3);
    expect(await cache.compact(space, 16)).toEqual({ shardsBefore: 1, shardsAfter: 1, rows: 3 });
    // a space with nothing in the bucket either is still refused
    const none = await runCli(['cache', 'rebuild-index', '--embedder', 'efficientnet-b0.nowhere.squash224'], stack.env);
    expect(none.code).toBe(1);
    expect(none.stderr).toMatch(/no embedding space efficientnet-b0\.nowhere\.squash224 is known here/);
    await redis.del(keys.embeddingIndex(space));
  });

  it('rebuild-index while cache compact merges the shards it is reading: every row still loads', async () => {
    const { cache, redis, keys } = ctx.services;
    const space = 'efficientnet-b0.rebuild-compact.squash224';
    const hashes = Array.from({ length: 12 }, () => randomBytes(32).toString('hex'));
    for (let i = 0; i < 4; i++) await cache.writeShard(space, hashes.slice(3 * i, 3 * i + 3), new Float32Array(3 * 4).fill(i + 1), 4);
    const values = (await cache.load(space, hashes)).data;
    await redis.del(keys.embeddingIndex(space)); // Redis lost it
    // the restore reads the four small manifests; as it reads the last, a compaction merges them
    // (writing and indexing the merged shard, deleting the small ones) before the restore indexes them
    let manifests = 0;
    const racing = new (class extends ObjectStore {
      override async getJson<T>(bucket: string, key: string): Promise<T | undefined> {
        const got = await super.getJson<T>(bucket, key);
        if (++manifests === 4) expect(await cache.compact(space, 64)).toEqual({ shardsBefore: 4, shardsAfter: 1, rows: 12 });
        return got;
      }
    })(stack.config.s3);
    try {
      const restoring = new EmbeddingCache(redis, keys, racing, stack.config.s3.bucket, stack.config.s3.prefix);
      expect(await restoring.rebuildIndex(space)).toEqual({ indexed: 12, dropped: 0 });
    } finally {
      racing.close();
    }
    expect(manifests).toBeGreaterThanOrEqual(4);
    // no entry points at a small shard the compaction deleted
    expect(Buffer.compare(Buffer.from((await cache.load(space, hashes)).data.buffer), Buffer.from(values.buffer))).toBe(0);
    await redis.del(keys.embeddingIndex(space));
  });

  it('rebuild-index that reads a merged shard and the small ones compaction is about to delete: their rows point at the merged shard', async () => {
    const { cache, store, layout, redis, keys } = ctx.services;
    const bucket = stack.config.s3.bucket;
    const space = 'efficientnet-b0.rebuild-compact-late.squash224';
    // two small shards and the merged one, written and indexed as compaction does before it
    // deletes the small ones; the merged shard listed first, so the restore indexes the small after it
    let small: string[] = [];
    let hashes: string[] = [];
    let merged = '';
    for (let tries = 0; ; tries++) {
      hashes = Array.from({ length: 6 }, () => randomBytes(32).toString('hex'));
      small = [await cache.writeShard(space, hashes.slice(0, 3), new Float32Array(12).fill(1), 4), await cache.writeShard(space, hashes.slice(3), new Float32Array(12).fill(2), 4)];
      merged = await cache.writeShard(space, hashes, Float32Array.from({ length: 24 }, (_, i) => (i < 12 ? 1 : 2)), 4);
      if (small.every((id) => merged < id)) break;
      for (const id of [...small, merged]) for (const ext of ['json', 'npy'] as const) await store.deleteObject(bucket, layout.shard(space, id, ext));
      expect(tries).toBeLessThan(30);
    }
    await redis.del(keys.embeddingIndex(space)); // Redis lost it
    // as the restore reads the last manifest, the compaction deletes the small shards
    let manifests = 0;
    const racing = new (class extends ObjectStore {
      override async getJson<T>(b: string, key: string): Promise<T | undefined> {
        const got = await super.getJson<T>(b, key);
        if (++manifests === 3) for (const id of small) for (const ext of ['json', 'npy'] as const) await store.deleteObject(bucket, layout.shard(space, id, ext));
        return got;
      }
    })(stack.config.s3);
    try {
      const restoring = new EmbeddingCache(redis, keys, racing, bucket, stack.config.s3.prefix);
      expect(await restoring.rebuildIndex(space)).toEqual({ indexed: 6, dropped: 0 });
    } finally {
      racing.close();
    }
    expect(manifests).toBe(3);
    expect(Array.from((await cache.load(space, hashes)).data)).toEqual(Array.from({ length: 24 }, (_, i) => (i < 12 ? 1 : 2)));
    await redis.del(keys.embeddingIndex(space));
  });

  it('after compaction, loads N embeddings with one request per large shard, values unchanged', async () => {
    const items: string[] = [];
    for await (const page of ctx.services.datasets.scan('crash')) for (const [, rec] of page) items.push(rec.sha256!);
    const before = await ctx.services.cache.load(stack.space.id, items);
    const shardsBefore = (await ctx.services.cache.listShards(stack.space.id)).length;
    expect(shardsBefore).toBeGreaterThanOrEqual(total / 4);

    const r = await runCli(['cache', 'compact', '--rows', '16'], stack.env);
    expect(r.code).toBe(0);
    const shards = await ctx.services.cache.listShards(stack.space.id);
    expect(shards.length).toBe(Math.ceil(total / 16));
    expect(shards.reduce((a, s) => a + s.rows, 0)).toBe(total);

    let gets = 0;
    const counting = new (class extends ObjectStore {
      override getObject(bucket: string, key: string, max?: number) {
        gets++;
        return super.getObject(bucket, key, max);
      }
    })(stack.config.s3);
    try {
      const cache = new EmbeddingCache(ctx.services.redis, ctx.services.keys, counting, stack.config.s3.bucket, stack.config.s3.prefix);
      const after = await cache.load(stack.space.id, items);
      expect(gets).toBe(shards.length);
      expect(Buffer.compare(Buffer.from(after.data.buffer), Buffer.from(before.data.buffer))).toBe(0);
    } finally {
      counting.close();
    }
  });

  it('cache compact deletes shard data that no manifest names once it is old enough, and nothing else', async () => {
    const { store, layout, cache } = ctx.services;
    const bucket = stack.config.s3.bucket;
    const space = stack.space.id;
    // what a write cut short between its .npy and its manifest leaves (a kill, a failed PUT)
    const orphan = layout.shard(space, 'f'.repeat(32), 'npy');
    await store.putObject(bucket, orphan, Buffer.alloc(256, 1));
    const items: string[] = [];
    for await (const page of ctx.services.datasets.scan('crash')) for (const [, rec] of page) items.push(rec.sha256!);
    const before = await cache.load(space, items);
    const shards = (await cache.listShards(space)).map((s) => s.shardId).sort();

    // young data may be a write in progress: the default age keeps it
    const young = await runCli(['cache', 'compact', '--rows', '16'], stack.env);
    expect(young.code).toBe(0);
    expect(young.stdout).not.toContain('leftover');
    expect(await store.headObject(bucket, orphan)).toBeDefined();

    const swept = await runCli(['cache', 'compact', '--rows', '16', '--orphans-older-than', '0'], stack.env);
    expect(swept.code).toBe(0);
    // the planted one, and any that the kill in the first test left
    expect(swept.stdout).toMatch(/\b[1-9]\d* leftover \.npy without a manifest deleted/);
    expect(await store.headObject(bucket, orphan)).toBeUndefined();
    // every shard that a manifest names keeps its data
    expect((await cache.listShards(space)).map((s) => s.shardId).sort()).toEqual(shards);
    for (const id of shards) expect(await store.headObject(bucket, layout.shard(space, id, 'npy'))).toBeDefined();
    const after = await cache.load(space, items);
    expect(Buffer.compare(Buffer.from(after.data.buffer), Buffer.from(before.data.buffer))).toBe(0);
  });

  it('an embed job whose image is indexed meanwhile is not embedded again, though its pixels are still there', async () => {
    const space = stack.space.id;
    const [fresh, indexed] = [randomBytes(32).toString('hex'), randomBytes(32).toString('hex')];
    for (const h of [fresh, indexed]) await ctx.services.tensors.put(space, h, randomBytes(224 * 224 * 3));
    // the same images queued for another space (its own resize policy): pixels of its own
    const other = 'efficientnet-b0.other-weights.crop224';
    for (const h of [fresh, indexed]) await ctx.services.tensors.put(other, h, randomBytes(224 * 224 * 3));
    // as a first run of its job would have left it: embedded and indexed, its pixels not yet freed
    await ctx.services.redis.hset(ctx.services.keys.embeddingIndex(space), indexed, 'earlier-shard 0');
    const queue = ctx.queues.embed(space);
    const jobs = [fresh, indexed].map((sha256) => ({ id: jobIds.embed({ sha256, embedderId: space }), payload: { sha256, embedderId: space } }));
    await enqueue(queue, 'embed', jobs);
    await until('both embed jobs to finish', async () => {
      const c = await queue.getJobCounts('waiting', 'active', 'delayed', 'prioritized', 'failed');
      return Object.values(c).every((v) => v === 0);
    }, 60);
    const index = await ctx.services.redis.hmget(ctx.services.keys.embeddingIndex(space), fresh, indexed);
    expect(index[0]).toMatch(/^[0-9a-f]{32} \d+$/); // embedded into a shard of its own run
    expect(index[1]).toBe('earlier-shard 0'); // found in the index by the read of its pixels: no second forward pass
    // both images' pixels are freed: the embedded one's once written, the indexed one's at once,
    // not left in Redis for their TTL; the other space's pixels of the same images are its own
    const { keys } = ctx.services;
    expect(await ctx.services.redis.exists(keys.tensor(space, fresh), keys.tensor(space, indexed))).toBe(0);
    expect(await ctx.services.redis.exists(keys.tensor(other, fresh), keys.tensor(other, indexed))).toBe(2);
    await ctx.services.tensors.delete(other, [fresh, indexed]);
    await ctx.services.redis.hdel(ctx.services.keys.embeddingIndex(space), indexed); // it names no real shard
  });
});
