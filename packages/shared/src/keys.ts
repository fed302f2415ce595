/**
 * Every Redis key transferline writes, in one place. All start with the configured prefix, so
 * several deployments (or test runs) can share one Redis.
 */
export function redisKeys(prefix: string) {
  return {
    /** hash: `bucket/key` → ItemRecord JSON, one per object of a dataset */
    datasetItems: (dataset: string) => `${prefix}:ds:${dataset}:items`,
    /** set of dataset names */
    datasets: () => `${prefix}:datasets`,
    /** hash: `bucket/key` → `etag sha256`, so a known object is not downloaded again to learn its hash */
    objectHashes: () => `${prefix}:objects`,
    /** hash: sha256 → `shardId row` for one embedding space */
    embeddingIndex: (embedderId: string) => `${prefix}:emb:${embedderId}`,
    /** hash: sha256 → reason, images whose embedding failed for good */
    embeddingFailures: (embedderId: string) => `${prefix}:embfail:${embedderId}`,
    /** hash: `bucket/key` → `etag sha256 outputKey` of the images already classified with one model run */
    classified: (model: string, runId: string) => `${prefix}:classified:${model}:${runId}`,
    /** string: 224×224×3 uint8 pixels waiting for embed, with a TTL */
    tensor: (sha256: string) => `${prefix}:tensor:${sha256}`,
  };
}
export type RedisKeys = ReturnType<typeof redisKeys>;
