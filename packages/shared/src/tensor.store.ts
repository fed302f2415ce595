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

  /** The pixels of many images in one round trip (null where they are gone). */
  async getMany(sha256s: string[]): Promise<(Buffer | null)[]> {
    if (sha256s.length === 0) return [];
    return this.redis.mgetBuffer(...sha256s.map((s) => this.keys.tensor(s)));
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
