import { createHash } from 'node:crypto';
import type { Redis } from 'ioredis';
import { decodeNpyFloat32, encodeNpyFloat32 } from './npy.format.js';
import type { RedisKeys } from './keys.js';
import type { ObjectStore } from './s3.client.js';

/** The metadata object stored beside each shard: which content hash each row holds. */
export interface ShardManifest {
  embedderId: string;
  dim: number;
  hashes: string[];
}

/** Where the embeddings of one dataset live, for a loader that reads each shard once. */
export interface EmbeddingMatrix {
  data: Float32Array;
  rows: number;
  dim: number;
}

/**
 * The durable embedding cache: shards in the bucket (`.npy` float32 [n, dim] + a JSON list of
 * content hashes, readable with numpy), an index sha256 → (shard, row) in Redis. A shard's id is
 * derived from the hashes it holds, so writing the same batch twice writes the same objects.
 * The bucket is the source of truth: `rebuildIndex` restores Redis from it.
 */
export class EmbeddingCache {
  constructor(
    private readonly redis: Redis,
    private readonly keys: RedisKeys,
    private readonly store: ObjectStore,
    private readonly bucket: string,
    private readonly prefix: string,
  ) {}

  private shardKey(embedderId: string, shardId: string, ext: 'npy' | 'json'): string {
    return `${this.prefix}embeddings/${embedderId}/${shardId}.${ext}`;
  }

  /** For each hash, whether its embedding is cached. */
  async has(embedderId: string, hashes: string[]): Promise<boolean[]> {
    if (hashes.length === 0) return [];
    const found = await this.redis.hmget(this.keys.embeddingIndex(embedderId), ...hashes);
    return found.map((v) => v !== null);
  }

  /** Number of cached embeddings in this embedding space. */
  async size(embedderId: string): Promise<number> {
    return this.redis.hlen(this.keys.embeddingIndex(embedderId));
  }

  /**
   * Stores a batch of embeddings durably (shard objects first, then the index), so a hash is
   * only ever indexed once its bytes are in the bucket.
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
   * (a few large reads, not one request per image), `parallel` shards at a time.
   */
  async load(embedderId: string, hashes: string[], parallel = 8): Promise<EmbeddingMatrix> {
    const locations = hashes.length ? await this.redis.hmget(this.keys.embeddingIndex(embedderId), ...hashes) : [];
    const byShard = new Map<string, { row: number; out: number }[]>();
    let dim = 0;
    locations.forEach((loc, out) => {
      if (loc === null) throw new Error(`embedding for ${hashes[out]} is not cached in ${embedderId}`);
      const [shardId, row] = loc.split(' ');
      const list = byShard.get(shardId!) ?? [];
      list.push({ row: Number(row), out });
      byShard.set(shardId!, list);
    });
    let data = new Float32Array(0);
    const shardIds = [...byShard.keys()];
    let next = 0;
    const worker = async () => {
      while (next < shardIds.length) {
        const shardId = shardIds[next++]!;
        const npy = decodeNpyFloat32(await this.store.getObject(this.bucket, this.shardKey(embedderId, shardId, 'npy')));
        if (dim === 0) {
          dim = npy.cols;
          data = new Float32Array(hashes.length * dim);
        } else if (npy.cols !== dim) throw new Error(`shard ${shardId} has dim ${npy.cols}, expected ${dim}`);
        for (const { row, out } of byShard.get(shardId)!) {
          if (row >= npy.rows) throw new Error(`shard ${shardId} has ${npy.rows} rows; index points at row ${row}`);
          data.set(npy.data.subarray(row * dim, (row + 1) * dim), out * dim);
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(parallel, shardIds.length) }, worker));
    return { data, rows: hashes.length, dim };
  }

  /** Restores the Redis index of one embedding space from the shards in the bucket. Returns the count indexed. */
  async rebuildIndex(embedderId: string): Promise<number> {
    let count = 0;
    for await (const o of this.store.listObjects(this.bucket, `${this.prefix}embeddings/${embedderId}/`)) {
      if (!o.key.endsWith('.json')) continue;
      const manifest = await this.store.getJson<ShardManifest>(this.bucket, o.key);
      if (!manifest || !Array.isArray(manifest.hashes)) continue;
      const shardId = o.key.slice(o.key.lastIndexOf('/') + 1, -'.json'.length);
      await this.index(embedderId, shardId, manifest.hashes);
      count += manifest.hashes.length;
    }
    return count;
  }
}
