import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startEmbedRuntime, type EmbedRuntime } from '../apps/feature-worker/src/embed-runtime.js';
import { createRedis, redisKeys, TensorStore, type Redis } from '../packages/shared/src/index.js';
import { createLogger } from '../packages/shared/src/service-runtime.js';
import { guardLeaks } from './support/leak-guard.js';
import { startSilentProxy, type SilentProxy } from './support/silent-proxy.js';
import { startTestStack, type TestStack } from './support/stack.js';

/**
 * The embed thread reads the pixels of each batch from Redis itself. A connection that a NAT or
 * load balancer dropped without a reset looks up and never answers: the read would hang, and
 * with it every later batch, while the worker renews the jobs' locks for ever. Real Redis behind
 * a TCP proxy that can go silent on the connections it has (new ones still pass).
 */

guardLeaks();

const SIZE = 64;
let stack: TestStack;
let redis: Redis;
let dir: string;
let proxy: SilentProxy;
let runtime: EmbedRuntime | undefined;

/** What `p` gave within `ms`, or 'hung'. */
async function within<T>(p: Promise<T>, ms: number): Promise<T | 'hung'> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<'hung'>((resolve) => (timer = setTimeout(() => resolve('hung'), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

beforeAll(async () => {
  stack = await startTestStack({}, { preprocess: 0, embed: 0, train: 0 });
  redis = createRedis(stack.config.redis.url, 'oneshot');
  dir = await mkdtemp(path.join(os.tmpdir(), 'tl-thread-redis-'));
  proxy = await startSilentProxy(new URL(stack.config.redis.url));
  runtime = await startEmbedRuntime(
    {
      preference: 'onnx',
      weightsKey: 'random-seed7',
      seed: 7,
      inputSize: SIZE,
      threads: 1,
      streams: 1,
      cacheDir: dir,
      warmupBatch: 1,
      pixelSource: { redisUrl: proxy.url, redisPrefix: stack.config.redis.prefix, stallMs: 1_000 },
    },
    createLogger('thread-redis-test', 'fatal'),
  );
}, 120_000);

/** The pixels of `n` new images, stored as preprocess stores them; their hashes. */
async function storePixels(n: number): Promise<string[]> {
  const tensors = new TensorStore(redis, redisKeys(stack.config.redis.prefix), 3600);
  const shas: string[] = [];
  for (let i = 0; i < n; i++) {
    const sha = randomBytes(32).toString('hex');
    await tensors.put('s1', sha, randomBytes(SIZE * SIZE * 3));
    shas.push(sha);
  }
  return shas;
}

/** What `p` gave, or a failure when it had not settled within `ms`. */
async function settles<T>(p: Promise<T>, ms: number): Promise<T> {
  const r = await within(p, ms);
  if (r === 'hung') throw new Error(`the read had not settled after ${ms / 1000} s`);
  return r;
}

afterAll(async () => {
  await runtime?.embedder.dispose();
  await proxy?.close();
  redis?.disconnect();
  await stack?.destroy();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe("the embed thread's pixel reads", () => {
  /** Two images read while `fault` breaks the connection the thread settled on: both come back, over a new connection. */
  const readsThrough = async (fault: () => void) => {
    const embedStored = runtime!.embedder.embedStored!;
    const shas = await storePixels(2);
    expect((await embedStored('s1', [shas[0]!])).sizes).toEqual([SIZE * SIZE * 3]); // settle on one connection first
    const before = proxy.connections();
    fault();
    const r = await settles(embedStored('s1', shas), 20_000);
    expect(r.sizes).toEqual([SIZE * SIZE * 3, SIZE * SIZE * 3]);
    expect(r.data.length).toBe(2 * runtime!.embedder.dim);
    expect(proxy.connections()).toBeGreaterThan(before);
  };

  it('come back from a connection that went silent: connected again and read again, the batch embedded', async () => {
    await readsThrough(() => proxy.silence());
  }, 120_000);

  it('make a read again whose connection went silent part way through its answer (ioredis aborts such a pipeline)', async () => {
    // the read is a pipeline (MGET of the pixels, HMGET of the index): the whole MGET answer
    // passes (RESP: *2, then $12288 + bytes for each image), the HMGET answer never comes
    await readsThrough(() => proxy.cutAfter(4 + 2 * (`$${SIZE * SIZE * 3}\r\n`.length + SIZE * SIZE * 3 + 2)));
  }, 120_000);

  it('leave a read that is slow but arriving alone (no new connection, no read sent again)', async () => {
    const embedStored = runtime!.embedder.embedStored!;
    const shas = await storePixels(4);
    // settle on one connection first
    await embedStored('s1', [shas[0]!]);
    const before = proxy.connections();
    proxy.trickle();
    // 4 × 12 kB at 20 kB/s: about 2.5 s of answer, against 1 s of silence allowed
    const started = performance.now();
    const r = await settles(embedStored('s1', shas), 30_000);
    expect(r.sizes).toEqual(shas.map(() => SIZE * SIZE * 3));
    expect(performance.now() - started).toBeGreaterThan(1_500);
    expect(proxy.connections()).toBe(before);
  }, 120_000);

});
