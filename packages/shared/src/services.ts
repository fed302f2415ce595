import type { Redis } from 'ioredis';
import { bucketLayout, type BucketLayout } from './bucket-layout.js';
import type { Config } from './config.js';
import { DatasetInspector } from './dataset-status.js';
import { DatasetRepository } from './dataset.repository.js';
import { EmbeddingCache } from './embedding-cache.js';
import { SpaceRegistry } from './embedding-space.js';
import { redisKeys, type RedisKeys } from './keys.js';
import { settledWithin } from './lifecycle.js';
import { PausedWorkers } from './paused-workers.js';
import { SupervisedWorkers } from './supervised-workers.js';
import { createRedis } from './redis.client.js';
import { ObjectStore } from './s3.client.js';
import { TensorStore } from './tensor.store.js';

/** The clients every process builds from config: one Redis connection, one object store, and the stores over them. */
export interface Services {
  redis: Redis;
  store: ObjectStore;
  keys: RedisKeys;
  /** object keys in TL_BUCKET */
  layout: BucketLayout;
  datasets: DatasetRepository;
  inspector: DatasetInspector;
  spaces: SpaceRegistry;
  cache: EmbeddingCache;
  tensors: TensorStore;
  /** the workers an outage pauses, per queue */
  paused: PausedWorkers;
  /** worker processes `up` restarts when they hang */
  supervised: SupervisedWorkers;
  close: () => Promise<void>;
}

export function createServices(config: Config, mode: 'worker' | 'oneshot'): Services {
  const redis = createRedis(config.redis.url, mode);
  const store = new ObjectStore(config.s3);
  const keys = redisKeys(config.redis.prefix);
  const datasets = new DatasetRepository(redis, keys);
  return {
    redis,
    store,
    keys,
    layout: bucketLayout(config.s3.prefix),
    datasets,
    inspector: new DatasetInspector(redis, keys, config.redis.prefix, datasets),
    spaces: new SpaceRegistry(redis, keys),
    cache: new EmbeddingCache(redis, keys, store, config.s3.bucket, config.s3.prefix),
    tensors: new TensorStore(redis, keys, config.preprocess.tensorTtlSeconds),
    paused: new PausedWorkers(redis, keys),
    supervised: new SupervisedWorkers(redis, keys),
    close: async () => {
      store.close();
      // QUIT waits for the server's answer: one that takes connections and answers nothing
      // (stopped, wedged) would hold the close, and the process, for ever
      await settledWithin(QUIT_DEADLINE_MS, redis.quit());
      redis.disconnect();
    },
  };
}

/** How long closing waits for Redis to answer QUIT before it drops the connection. */
const QUIT_DEADLINE_MS = 2_000;
