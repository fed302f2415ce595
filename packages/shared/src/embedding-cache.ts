import { createHash } from 'node:crypto';
import type { Redis } from 'ioredis';
import pMap from 'p-map';
import { bucketLayout, type BucketLayout } from './bucket-layout.js';
import { parseDocument, ShardManifest } from './documents.js';
import { decodeNpyFloat32, encodeNpyFloat32 } from './npy.format.js';
import type { RedisKeys } from './keys.js';
import { ObjectNotFoundError, type ObjectStore } from './s3.client.js';
import { execPipeline, RedisScript } from './redis.client.js';

/** Where the embeddings of one dataset live, for a loader that reads each shard once. */
export interface EmbeddingMatrix {
  data: Float32Array;
  rows: number;
  dim: number;
}

/**
 * If an index entry still holds the value read (not re-pointed at another shard since): points it
 * at ARGV[3] and returns 2, or, without ARGV[3], deletes it and returns 1; else returns 0.
 */
const REPLACE_IF_UNCHANGED = new RedisScript('tlReplaceIndexEntryIfUnchanged', `if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
if ARGV[3] then redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) return 2 end
redis.call('HDEL', KEYS[1], ARGV[1])
return 1`, 1);

/**
 * The durable embedding cache: shards in the bucket (`.npy` float32 [n, dim] + a JSON list of
 * content hashes, readable with numpy), an index sha256 → (shard, row) in Redis. A shard's id is
 * derived from the hashes it holds, so writing the same rows twice writes the same objects. A
 * shard holds whatever rows waited together, so a job run again after a crash between the write
 * and the index may write its row into a second shard: the index points at one of them, and
 * `compact` keeps each hash once. The bucket is the source of truth: `rebuildIndex` restores
 * Redis from it.
 */
export class EmbeddingCache {
  private readonly layout: BucketLayout;

  constructor(
    private readonly redis: Redis,
    private readonly keys: RedisKeys,
    private readonly store: ObjectStore,
    private readonly bucket: string,
    prefix: string,
  ) {
    this.layout = bucketLayout(prefix);
  }

  private shardKey(embedderId: string, shardId: string, ext: 'npy' | 'json'): string {
    return this.layout.shard(embedderId, shardId, ext);
  }

  /** For each hash, whether its embedding is cached. */
  async has(embedderId: string, hashes: string[]): Promise<boolean[]> {
    return (await this.entries(embedderId, hashes)).map((v) => v !== null);
  }

  /** Each hash's index entry (`shardId row`), or null: in chunks, so one reply never gets huge. */
  async entries(embedderId: string, hashes: string[]): Promise<(string | null)[]> {
    const out: (string | null)[] = [];
    for (let i = 0; i < hashes.length; i += 10_000) {
      out.push(...(await this.redis.hmget(this.keys.embeddingIndex(embedderId), ...hashes.slice(i, i + 10_000))));
    }
    return out;
  }

  /**
   * Drops the index entries of `hashes` (their rows stay in the shards): an ingest of their images
   * embeds them again. For rows that must not be trained on (not finite numbers, made by a damaged
   * model); an entry that has moved to another shard or row since `expected` was read is kept.
   */
  async forget(embedderId: string, entries: { hash: string; expected: string }[]): Promise<number> {
    let dropped = 0;
    for (const e of entries) dropped += Number(await REPLACE_IF_UNCHANGED.run(this.redis, [this.keys.embeddingIndex(embedderId)], [e.hash, e.expected]));
    return dropped;
  }

  /** Number of cached embeddings in this embedding space. */
  async size(embedderId: string): Promise<number> {
    return this.redis.hlen(this.keys.embeddingIndex(embedderId));
  }

  /**
   * Stores embeddings durably: the `.npy`, then its manifest, then the index. A hash is only
   * ever indexed once its bytes are in the bucket, and a manifest only ever names data that is
   * there: `listShards`, `compact` and `rebuildIndex` go by the manifests, so a write cut short
   * (a kill, a failed PUT) may leave data without a manifest, never a manifest without data.
   */
  async writeShard(embedderId: string, hashes: string[], data: Float32Array, dim: number): Promise<string> {
    if (hashes.length === 0) throw new Error('writeShard: empty batch');
    if (data.length !== hashes.length * dim) throw new Error(`writeShard: ${data.length} values for ${hashes.length}×${dim}`);
    const shardId = createHash('sha256').update(hashes.join('\n')).digest('hex').slice(0, 32);
    const manifest: ShardManifest = { embedderId, dim, hashes };
    await this.store.putObject(this.bucket, this.shardKey(embedderId, shardId, 'npy'), encodeNpyFloat32(data, hashes.length, dim));
    await this.store.putJson(this.bucket, this.shardKey(embedderId, shardId, 'json'), manifest);
    await this.index(embedderId, shardId, hashes);
    return shardId;
  }

  private async index(embedderId: string, shardId: string, hashes: string[]): Promise<void> {
    const fields: string[] = [];
    hashes.forEach((h, row) => fields.push(h, `${shardId} ${row}`));
    // HSETNX semantics per field would keep the first shard; either copy is equally valid.
    await this.redis.hset(this.keys.embeddingIndex(embedderId), ...fields);
  }

  /**
   * Loads the embeddings of `hashes` in that order, reading each shard they live in once
   * (a few large reads, not one request per image), `parallel` shards at a time. Memory: the
   * result, plus at most `parallel` shards in flight.
   */
  async load(embedderId: string, hashes: string[], parallel = 4): Promise<EmbeddingMatrix> {
    return (await this.loadMany(embedderId, [hashes], parallel))[0]!;
  }

  /**
   * Loads several lists at once (train, validation, test): each shard is read once and its rows
   * go to whichever lists name them.
   */
  async loadMany(embedderId: string, lists: string[][], parallel = 4): Promise<EmbeddingMatrix[]> {
    const byShard = new Map<string, { list: number; row: number; out: number }[]>();
    for (const [list, hashes] of lists.entries()) {
      const locations = await this.entries(embedderId, hashes);
      locations.forEach((loc, out) => {
        if (loc === null) throw new Error(`embedding for ${hashes[out]} is not cached in ${embedderId}`);
        const [shardId, row] = loc.split(' ');
        const targets = byShard.get(shardId!) ?? [];
        targets.push({ list, row: Number(row), out });
        byShard.set(shardId!, targets);
      });
    }
    let dim = 0;
    let outputs: Float32Array[] = [];
    const read = async (shardId: string) => {
      const key = this.shardKey(embedderId, shardId, 'npy');
      const bytes = await this.store.getObject(this.bucket, key).catch((err: unknown) => {
        // (a user's trial: "….npy does not exist", after an embed worker with another TL_PREFIX indexed its rows)
        if (err instanceof ObjectNotFoundError) {
          throw new Error(
            `the embedding index of ${embedderId} names shard ${shardId}, whose data s3://${this.bucket}/${key} is not in the bucket (deleted, or written under another TL_BUCKET/TL_PREFIX): ` +
              `transferline cache rebuild-index --embedder ${embedderId} drops its entries; an ingest of their images then embeds them again`,
          );
        }
        throw err;
      });
      const npy = decodeNpyFloat32(bytes);
      if (dim === 0) {
        dim = npy.cols;
        outputs = lists.map((l) => new Float32Array(l.length * dim));
      } else if (npy.cols !== dim) throw new Error(`shard ${shardId} has dim ${npy.cols}, expected ${dim}`);
      for (const { list, row, out } of byShard.get(shardId)!) {
        if (row >= npy.rows) throw new Error(`shard ${shardId} has ${npy.rows} rows; index points at row ${row}`);
        outputs[list]!.set(npy.data.subarray(row * dim, (row + 1) * dim), out * dim);
      }
    };
    await pMap(byShard.keys(), read, { concurrency: parallel });
    return lists.map((l, i) => ({ data: outputs[i] ?? new Float32Array(0), rows: l.length, dim }));
  }

  /**
   * The shards of one embedding space, with their row counts, from the bucket: those with both a
   * manifest and its data. (A manifest whose `.npy` is gone, deleted by hand, names rows nothing
   * can read; a write never leaves one, since the data goes first.)
   */
  async listShards(embedderId: string): Promise<{ shardId: string; rows: number; hashes: string[] }[]> {
    return this.readManifests(await this.wholeShards(embedderId));
  }

  /** The rows of these shards, from their manifests (one gone since it was listed is passed over). */
  private async readManifests(manifests: { shardId: string; key: string }[]): Promise<{ shardId: string; rows: number; hashes: string[] }[]> {
    const shards: { shardId: string; rows: number; hashes: string[] }[] = [];
    for (const m of manifests) {
      const raw = await this.store.getJson(this.bucket, m.key);
      if (raw === undefined) continue;
      const manifest = parseDocument(ShardManifest, raw, `s3://${this.bucket}/${m.key}`);
      shards.push({ shardId: m.shardId, rows: manifest.hashes.length, hashes: manifest.hashes });
    }
    return shards;
  }

  /** The manifests in the bucket whose data is there too (a listing only: no manifest is read). */
  private async wholeShards(embedderId: string): Promise<{ shardId: string; key: string }[]> {
    const manifests: { shardId: string; key: string }[] = [];
    const data = new Set<string>();
    for await (const o of this.store.listObjects(this.bucket, this.layout.embeddings(embedderId))) {
      const shard = this.layout.parseShardKey(o.key);
      if (shard?.ext === 'json') manifests.push({ shardId: shard.shardId, key: o.key });
      else if (shard?.ext === 'npy') data.add(shard.shardId);
    }
    return manifests.filter((m) => data.has(m.shardId));
  }

  /**
   * Deletes shard data that no manifest names and that is older than `olderThanMs`: what a write
   * cut short after its `.npy` (a kill, a failed manifest PUT) leaves, or a compaction cut short
   * between deleting a shard's manifest and its data. Nothing reads such data
   * (listing, loading and indexing go by the manifests), so it only takes room in the bucket.
   * Younger data may be a write in progress, whose manifest comes next. Returns the count deleted.
   */
  async sweepOrphans(embedderId: string, olderThanMs: number, now = Date.now()): Promise<number> {
    const manifests = new Set<string>();
    const data: { shardId: string; key: string; lastModified?: Date }[] = [];
    for await (const o of this.store.listObjects(this.bucket, this.layout.embeddings(embedderId))) {
      const shard = this.layout.parseShardKey(o.key);
      if (shard?.ext === 'json') manifests.add(shard.shardId);
      else if (shard?.ext === 'npy') data.push({ shardId: shard.shardId, key: o.key, ...(o.lastModified && { lastModified: o.lastModified }) });
    }
    let removed = 0;
    for (const d of data) {
      // A server that gives no date gets nothing deleted: the age is what tells a leftover from a write in progress.
      if (manifests.has(d.shardId) || !d.lastModified || now - d.lastModified.getTime() < olderThanMs) continue;
      await this.store.deleteObject(this.bucket, d.key);
      removed++;
    }
    return removed;
  }

  /**
   * Merges small shards (the embed stage writes up to `TL_EMBED_SHARD_ROWS` rows at a time) into shards of up to
   * `targetRows`, so training reads N embeddings in about N / targetRows requests. Each merged
   * shard is written and indexed before the small ones are deleted; a hash stored twice (a batch
   * retried after a crash) is kept once. A reader holding an old location may fail once and
   * retry (train jobs do).
   */
  async compact(embedderId: string, targetRows = 4096): Promise<{ shardsBefore: number; shardsAfter: number; rows: number }> {
    const shards = await this.listShards(embedderId);
    const small = shards.filter((s) => s.rows < targetRows / 2).sort((a, b) => (a.shardId < b.shardId ? -1 : 1));
    const bundles: (typeof small)[] = [];
    let current: typeof small = [];
    let rows = 0;
    for (const s of small) {
      if (rows + s.rows > targetRows && current.length) {
        bundles.push(current);
        current = [];
        rows = 0;
      }
      current.push(s);
      rows += s.rows;
    }
    if (current.length > 1) bundles.push(current);
    let removed = 0;
    for (const bundle of bundles) {
      if (bundle.length < 2) continue;
      const hashes: string[] = [];
      const parts: Float32Array[] = [];
      let dim = 0;
      const seen = new Set<string>();
      for (const s of bundle) {
        const npy = decodeNpyFloat32(await this.store.getObject(this.bucket, this.shardKey(embedderId, s.shardId, 'npy')));
        dim = npy.cols;
        s.hashes.forEach((h, row) => {
          if (seen.has(h)) return;
          seen.add(h);
          hashes.push(h);
          parts.push(npy.data.subarray(row * dim, (row + 1) * dim));
        });
      }
      const data = new Float32Array(hashes.length * dim);
      parts.forEach((p, i) => data.set(p, i * dim));
      const merged = await this.writeShard(embedderId, hashes, data, dim);
      for (const s of bundle) {
        if (s.shardId === merged) continue;
        await this.store.deleteObject(this.bucket, this.shardKey(embedderId, s.shardId, 'json'));
        await this.store.deleteObject(this.bucket, this.shardKey(embedderId, s.shardId, 'npy'));
      }
      removed += bundle.length - 1; // one merged shard replaces the bundle
    }
    const total = shards.reduce((a, s) => a + s.rows, 0);
    return { shardsBefore: shards.length, shardsAfter: shards.length - removed, rows: total };
  }

  /**
   * Whether the space's index is empty while a shard of it is in the bucket (Redis lost its
   * data): a manifest with its data, as `listShards` counts shards.
   */
  async indexLost(embedderId: string): Promise<boolean> {
    if ((await this.size(embedderId)) > 0) return false;
    const seen = { json: new Set<string>(), npy: new Set<string>() };
    for await (const o of this.store.listObjects(this.bucket, this.layout.embeddings(embedderId))) {
      const shard = this.layout.parseShardKey(o.key);
      if (!shard) continue;
      seen[shard.ext].add(shard.shardId);
      if (seen[shard.ext === 'json' ? 'npy' : 'json'].has(shard.shardId)) return true;
    }
    return false;
  }

  /**
   * Restores the Redis index of one embedding space from the shards in the bucket, and drops the
   * entries that point at a shard no longer there, or whose data is gone (deleted from the bucket
   * by hand, say: kept, they would call those images embedded while training fails to read them).
   * An entry is only dropped when, at that moment, its shard's manifest or data is still missing
   * and the entry is still the one read, so a shard an embed worker writes meanwhile (data, then
   * manifest, then index) keeps its rows. A `compact` meanwhile writes and indexes merged shards,
   * then deletes the small ones, which this pass may have read and indexed again after it: the
   * shards that appeared since the first listing are indexed too, and an entry left pointing at a
   * shard that went is pointed at another shard still there that holds its row, if one does.
   */
  async rebuildIndex(embedderId: string): Promise<{ indexed: number; dropped: number }> {
    const shards = await this.listShards(embedderId);
    for (const s of shards) await this.index(embedderId, s.shardId, s.hashes);
    // one listing more: the shards there now (what is written after it is checked by HEAD below)
    const now = await this.wholeShards(embedderId);
    const first = new Set(shards.map((s) => s.shardId));
    const later = await this.readManifests(now.filter((m) => !first.has(m.shardId)));
    for (const s of later) await this.index(embedderId, s.shardId, s.hashes);
    const listed = new Set(now.map((m) => m.shardId));
    const key = this.keys.embeddingIndex(embedderId);
    const stale = new Map<string, [string, string][]>(); // shard → its entries
    let cursor = '0';
    do {
      const [next, flat] = await this.redis.hscan(key, cursor, 'COUNT', 1000);
      cursor = next;
      for (let i = 0; i < flat.length; i += 2) {
        const shardId = flat[i + 1]!.split(' ')[0]!;
        if (listed.has(shardId)) continue;
        let entries = stale.get(shardId);
        if (!entries) stale.set(shardId, (entries = []));
        entries.push([flat[i]!, flat[i + 1]!]);
      }
    } while (cursor !== '0');
    let dropped = 0;
    // where each row lies in a shard that is still there (built only when some entry needs it)
    let home: Map<string, string> | undefined;
    for (const [shardId, entries] of stale) {
      const whole = (await this.store.headObject(this.bucket, this.shardKey(embedderId, shardId, 'json'))) && (await this.store.headObject(this.bucket, this.shardKey(embedderId, shardId, 'npy')));
      if (whole) continue;
      if (!home) {
        home = new Map();
        for (const s of [...shards, ...later]) if (listed.has(s.shardId)) s.hashes.forEach((h, row) => home!.set(h, `${s.shardId} ${row}`));
      }
      for (let i = 0; i < entries.length; i += 500) {
        const pipe = this.redis.pipeline();
        for (const [hash, value] of entries.slice(i, i + 500)) {
          const to = home.get(hash);
          REPLACE_IF_UNCHANGED.queue(pipe, [key], to ? [hash, value, to] : [hash, value]);
        }
        for (const n of await execPipeline(pipe)) if (Number(n) === 1) dropped++;
      }
    }
    return { indexed: await this.size(embedderId), dropped };
  }
}
