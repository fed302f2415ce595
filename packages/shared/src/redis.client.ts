import { Redis, type RedisOptions } from 'ioredis';

export { Redis };

/**
 * A Redis connection. Long-running workers retry forever (BullMQ needs
 * `maxRetriesPerRequest: null` for its blocking connections); one-shot CLI commands fail fast
 * so the user hears about a missing server at once instead of a silent hang.
 */
export function createRedis(url: string, mode: 'worker' | 'oneshot', options: RedisOptions = {}, onError?: (err: Error) => void): Redis {
  const redis = new Redis(url, {
    maxRetriesPerRequest: mode === 'worker' ? null : 1,
    enableOfflineQueue: true,
    lazyConnect: false,
    retryStrategy: mode === 'worker' ? (times) => Math.min(times * 200, 5_000) : (times) => (times > 2 ? null : 200),
    ...options,
  });
  // Connection errors are retried by the strategy above; without a listener ioredis would print
  // each one as an "Unhandled error event". Commands still reject with their own errors.
  redis.on('error', onError ?? (() => {}));
  return redis;
}

/** Waits for a connection or throws a clear error (for one-shot commands). */
export async function pingRedis(redis: Redis, url: string): Promise<void> {
  try {
    await redis.ping();
  } catch (err) {
    throw new Error(`cannot reach Redis at ${url}: ${(err as Error).message}. Is it running? (set REDIS_URL, or run "transferline up")`);
  }
}
