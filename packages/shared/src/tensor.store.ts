import type { ChainableCommander, Redis } from 'ioredis';
import type { RedisKeys } from './keys.js';
import { execPipeline } from './redis.client.js';

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
   * malformed one. With `unlessIndexedIn` (an embedding space), the same round trip asks that
   * space's index too: `cached[i]` says `sha256s[i]` is embedded already, and it is left out of
   * `images`, whatever its pixels (a job run twice, an image embedded meanwhile).
   */
  async getBatch(sha256s: string[], bytes: number, unlessIndexedIn?: string): Promise<{ images: Buffer[]; sizes: number[]; cached: boolean[] }> {
    if (sha256s.length === 0) return { images: [], sizes: [], cached: [] };
    const tensorKeys = sha256s.map((s) => this.keys.tensor(s));
    let values: (Buffer | null)[];
    let cached: boolean[];
    if (unlessIndexedIn === undefined) {
      values = await this.redis.mgetBuffer(...tensorKeys);
      cached = sha256s.map(() => false);
    } else {
      const pipe = this.redis.pipeline();
      pipe.hmget(this.keys.embeddingIndex(unlessIndexedIn), ...sha256s);
      pipe.mgetBuffer(...tensorKeys);
      const [indexed, got] = (await execPipeline(pipe)) as [(string | null)[], (Buffer | null)[]];
      values = got;
      cached = indexed.map((v) => v !== null);
    }
    return { images: values.filter((v, i): v is Buffer => !cached[i] && v?.length === bytes), sizes: values.map((v) => (v ? v.length : -1)), cached };
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
