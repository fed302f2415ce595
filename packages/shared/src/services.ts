import type { Redis } from 'ioredis';
import type { Config } from './config.js';
import { DatasetRepository } from './dataset.repository.js';
import { EmbeddingCache } from './embedding-cache.js';
import { redisKeys, type RedisKeys } from './keys.js';
import { createRedis } from './redis.client.js';
import { ObjectStore } from './s3.client.js';
import { TensorStore } from './tensor.store.js';

/** The clients every process builds from config: one Redis connection, one object store, and the stores over them. */
export interface Services {
  redis: Redis;
  store: ObjectStore;
  keys: RedisKeys;
  datasets: DatasetRepository;
  cache: EmbeddingCache;
  tensors: TensorStore;
  close: () => Promise<void>;
}

export function createServices(config: Config, mode: 'worker' | 'oneshot'): Services {
  const redis = createRedis(config.redis.url, mode);
  const store = new ObjectStore(config.s3);
  const keys = redisKeys(config.redis.prefix);
  return {
    redis,
    store,
    keys,
    datasets: new DatasetRepository(redis, keys),
    cache: new EmbeddingCache(redis, keys, store, config.s3.bucket, config.s3.prefix),
    tensors: new TensorStore(redis, keys, config.preprocess.tensorTtlSeconds),
    close: async () => {
      store.close();
      await redis.quit().catch(() => redis.disconnect());
    },
  };
}
