import type { ChainableCommander, Redis } from 'ioredis';
import type { RedisKeys } from './keys.js';

/**
 * Transient pixels between preprocess and embed: 224×224×3 uint8 (147 KB) under the image's
 * content hash, with a TTL so an abandoned tensor cannot pin Redis memory for ever. Binary data
 * never travels inside job payloads (BullMQ stores those as JSON).
 */
export class TensorStore {
  constructor(
    private readonly redis: Redis,
    private readonly keys: RedisKeys,
    private readonly ttlSeconds: number,
  ) {}

  /** Stores pixels under their content hash, with the TTL; with `pipe`, queues the write there instead. */
  async put(sha256: string, pixels: Uint8Array, pipe?: ChainableCommander): Promise<void> {
    const value = Buffer.from(pixels.buffer, pixels.byteOffset, pixels.byteLength);
    if (pipe) pipe.set(this.keys.tensor(sha256), value, 'EX', this.ttlSeconds);
    else await this.redis.set(this.keys.tensor(sha256), value, 'EX', this.ttlSeconds);
  }

  async get(sha256: string): Promise<Buffer | null> {
    return this.redis.getBuffer(this.keys.tensor(sha256));
  }

  /**
   * A batch's pixels in one round trip, as a forward pass takes them: `images` holds, in order,
   * those whose stored value is `bytes` long; `sizes[i]` is the stored length of `sha256s[i]`
   * (-1: gone, its TTL passed or it was evicted), so a caller can tell a gone image from a
   * malformed one.
   */
  async getBatch(sha256s: string[], bytes: number): Promise<{ images: Buffer[]; sizes: number[] }> {
    if (sha256s.length === 0) return { images: [], sizes: [] };
    const values = await this.redis.mgetBuffer(...sha256s.map((s) => this.keys.tensor(s)));
    return { images: values.filter((v): v is Buffer => v?.length === bytes), sizes: values.map((v) => (v ? v.length : -1)) };
  }

  /**
   * getBatch, and in the same round trip which of `sha256s` the embedding space `space` has in
   * its index already (`cached`): those are left out of `images`, whatever their pixels.
   */
  async getBatchUnlessIndexed(sha256s: string[], bytes: number, space: string): Promise<{ images: Buffer[]; sizes: number[]; cached: boolean[] }> {
    if (sha256s.length === 0) return { images: [], sizes: [], cached: [] };
    const pipe = this.redis.pipeline();
    pipe.hmget(this.keys.embeddingIndex(space), ...sha256s);
    pipe.mgetBuffer(...sha256s.map((s) => this.keys.tensor(s)));
    const replies = (await pipe.exec()) ?? [];
    for (const [err] of replies) if (err) throw err;
    const indexed = replies[0]![1] as (string | null)[];
    const values = replies[1]![1] as (Buffer | null)[];
    const cached = indexed.map((v) => v !== null);
    return {
      images: values.filter((v, i): v is Buffer => !cached[i] && v?.length === bytes),
      sizes: values.map((v) => (v ? v.length : -1)),
      cached,
    };
  }

  async delete(sha256s: string[]): Promise<void> {
    if (sha256s.length) await this.redis.del(...sha256s.map((s) => this.keys.tensor(s)));
  }

  /** How many tensors are waiting (for backpressure and metrics); SCAN-based, so O(keys). */
  async count(): Promise<number> {
    let n = 0;
    let cursor = '0';
    do {
      const [next, keys] = await this.redis.scan(cursor, 'MATCH', this.keys.tensor('*'), 'COUNT', 1000);
      cursor = next;
      n += keys.length;
    } while (cursor !== '0');
    return n;
  }
}
