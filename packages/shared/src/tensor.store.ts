import type { ChainableCommander, Redis } from 'ioredis';
import type { RedisKeys } from './keys.js';
import { RedisScript, execPipeline, scanKeys } from './redis.client.js';

/** KEYS: the queue's failed set, the pixels; ARGV: the job id. */
const DELETE_IF_FAILED = new RedisScript('tlDeleteTensorIfFailed', `if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return redis.call('DEL', KEYS[2]) end
return 0`, 2);

/**
 * Transient pixels between preprocess and embed: 224×224×3 uint8 (147 KB) under the embedding
 * space and the image's content hash, with a TTL so an abandoned tensor cannot pin Redis memory
 * for ever. Keyed by space because each space preprocesses for itself (input size, resize
 * policy): the same image queued for two spaces has two sets of pixels, and one space's embed
 * stage frees only its own. Binary data never travels inside job payloads (BullMQ stores those
 * as JSON).
 */
export class TensorStore {
  constructor(
    private readonly redis: Redis,
    private readonly keys: RedisKeys,
    private readonly ttlSeconds: number,
  ) {}

  /** Stores a space's pixels of an image, with the TTL; with `pipe`, queues the write there instead. */
  async put(space: string, sha256: string, pixels: Uint8Array, pipe?: ChainableCommander): Promise<void> {
    const value = Buffer.from(pixels.buffer, pixels.byteOffset, pixels.byteLength);
    if (pipe) pipe.set(this.keys.tensor(space, sha256), value, 'EX', this.ttlSeconds);
    else await this.redis.set(this.keys.tensor(space, sha256), value, 'EX', this.ttlSeconds);
  }

  /**
   * A batch's pixels for `space`, in one round trip with a look at that space's embedding index,
   * as a forward pass takes them: `cached[i]` says `sha256s[i]` is embedded already (a job run
   * twice, an image embedded meanwhile), and it is left out of `images`, whatever its pixels;
   * `images` holds, in order, the others whose stored value is `bytes` long; `sizes[i]` is the
   * stored length of `sha256s[i]` (-1: gone), so a caller can tell a gone image from a malformed
   * one. The pixels are read before the index: the embed stage frees an image's pixels only once
   * it is indexed, so pixels gone because another run embedded the image always come with
   * `cached`, and gone pixels of an image not cached are gone for good (TTL, eviction).
   */
  async getBatch(space: string, sha256s: string[], bytes: number): Promise<{ images: Buffer[]; sizes: number[]; cached: boolean[] }> {
    if (sha256s.length === 0) return { images: [], sizes: [], cached: [] };
    const pipe = this.redis.pipeline();
    pipe.mgetBuffer(...sha256s.map((s) => this.keys.tensor(space, s)));
    pipe.hmget(this.keys.embeddingIndex(space), ...sha256s);
    const [values, indexed] = (await execPipeline(pipe)) as [(Buffer | null)[], (string | null)[]];
    const cached = indexed.map((v) => v !== null);
    return { images: values.filter((v, i): v is Buffer => !cached[i] && v?.length === bytes), sizes: values.map((v) => (v ? v.length : -1)), cached };
  }

  /**
   * Frees a space's pixels of an image whose embed job failed for good: no retry reads them (a
   * re-ingest or `retry` preprocesses the image again), and the embed backlog's bound does not
   * count failed jobs, so left to their TTL they could fill Redis while every embed fails. Only
   * while the job is still in its queue's failed set (`failedKey`): one moved back meanwhile by a
   * hand-off that stored fresh pixels for it keeps them. One script, so the look and the delete
   * see the same state. A hand-off stores its pixels a round trip before it moves the job back:
   * one landing in that moment loses them, and its job fails as `pixels-expired`, which a
   * re-ingest or `retry` runs again. True when pixels were freed.
   */
  async deleteOfFailedJob(space: string, sha256: string, failedKey: string, jobId: string): Promise<boolean> {
    return (await DELETE_IF_FAILED.run(this.redis, [failedKey, this.keys.tensor(space, sha256)], [jobId])) === 1;
  }

  async delete(space: string, sha256s: string[]): Promise<void> {
    if (sha256s.length) await this.redis.del(...sha256s.map((s) => this.keys.tensor(space, s)));
  }

  /** How many tensors are waiting, in every space (for tests and benchmarks); SCAN-based, so O(keys). */
  async count(): Promise<number> {
    return (await scanKeys(this.redis, this.keys.tensor('*', '*'))).length;
  }
}
