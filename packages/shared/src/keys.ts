/**
 * Every Redis key transferline writes, in one place (BullMQ's own keys aside: queue names are in
 * jobs.catalog.ts). All start with the configured prefix, so several deployments (or test runs)
 * can share one Redis.
 */
export function redisKeys(prefix: string) {
  return {
    /** hash: `bucket/key` → ItemRecord JSON, one per object of a dataset */
    datasetItems: (dataset: string) => `${prefix}:ds:${dataset}:items`,
    /** hash: a dataset's own facts (`space`: the embedding space it was last ingested into) */
    datasetMeta: (dataset: string) => `${prefix}:ds:${dataset}:meta`,
    /** set: `bucket/prefix` of every prefix ingested into a dataset (relabel finds an object's label folder from it) */
    datasetSources: (dataset: string) => `${prefix}:ds:${dataset}:sources`,
    /** set: the `sources` some ingest listed to the end since the dataset's records began (one cut short may have left objects out) */
    datasetListed: (dataset: string) => `${prefix}:ds:${dataset}:listed`,
    /**
     * string: StorageRecord JSON, the bucket and prefix (TL_BUCKET, TL_PREFIX) this deployment
     * keeps its embeddings and models in, recorded by its first process (up, or an embed or train worker): a later one
     * with others would write where the rest never read (claimStorage)
     */
    storage: () => `${prefix}:storage`,
    /** set of dataset names */
    datasets: () => `${prefix}:datasets`,
    /** hash: `bucket/key` → `etag sha256`, so a known object is not downloaded again to learn its hash */
    objectHashes: () => `${prefix}:objects`,
    /** hash: sha256 → `shardId row` for one embedding space */
    embeddingIndex: (embedderId: string) => `${prefix}:emb:${embedderId}`,
    /** hash: sha256 → EmbedFailure JSON, images whose embedding failed for good in one space */
    embeddingFailures: (embedderId: string) => `${prefix}:embfail:${embedderId}`,
    /**
     * hash: embedder id → EmbeddingSpace JSON, every space an embed worker (or `up`) has published;
     * and field `@since`: the time (ms, Redis clock) of the first heartbeat this hash holds
     */
    spaces: () => `${prefix}:spaces`,
    /** sorted set: embed worker id → time of its last heartbeat (ms, Redis clock) */
    embedWorkers: () => `${prefix}:embed-workers`,
    /**
     * sorted set: embed worker id → time of its last heartbeat (ms, Redis clock) while it loads its
     * model; it moves to embedWorkers once live (readers that know only that set never see it)
     */
    embedWorkersStarting: () => `${prefix}:embed-workers:starting`,
    /** hash: embed worker id → EmbedWorkerInfo JSON (its space, backend, host) */
    embedWorkerInfo: () => `${prefix}:embed-workers:info`,
    /**
     * hash: embedder id → the latest worker of that space to give up starting, `{"at": ms (Redis
     * clock), "worker": EmbedWorkerInfo}`; removed when a worker of the space goes live
     */
    embedStartFailures: () => `${prefix}:embed-workers:failed`,
    /** sorted set: backpressure reservations (id → expiry) for one space's embed backlog */
    backpressure: (embedderId: string) => `${prefix}:backpressure:${embedderId}`,
    /**
     * string, with a TTL: a worker process (PROCESS_NAME) that `up` watches and restarts when it
     * hangs: SupervisedWorker JSON
     */
    supervisedWorker: (name: string) => `${prefix}:supervised:${name}`,
    /** sorted set: PausedWorker JSON → expiry (ms, Redis clock), the workers of one queue an outage pauses */
    pausedWorkers: (queue: string) => `${prefix}:paused:${queue}`,
    /**
     * set: datasets with trained runs whose records Redis lost (found when a space's index was
     * found empty while its shards are in the bucket); `status` names each until it is ingested
     * again or deleted
     */
    datasetsLost: () => `${prefix}:datasets-lost`,
    /**
     * hash: lost dataset → LostSources JSON, the prefixes to ingest again as its runs recorded them
     * when the loss was found (a run trained since on part of it records only that part)
     */
    datasetsLostSources: () => `${prefix}:datasets-lost-sources`,
    /** string: when the datasets a loss left without records were remembered (once per loss: status removes it once no index is lost) */
    dataLossRecorded: () => `${prefix}:data-loss-recorded`,
    /** sorted set: ModelUser JSON (a command using a run of the dataset: classify) → its lease's end (ms, Redis clock); delete run refuses while one holds its run */
    modelUsers: (dataset: string) => `${prefix}:model-users:${dataset}`,
    /** string, with a TTL: a train run asked to stop (`train --cancel`); its worker checks it at start and after each epoch */
    trainCancel: (runId: string) => `${prefix}:cancel:${runId}`,
    /** string (TrainWait JSON), with a TTL: a run's wait for the images on their way when it started, across its put-backs */
    trainWaiting: (runId: string) => `${prefix}:train-waiting:${runId}`,
    /**
     * string, with a TTL: held by a `train` command from its look for a queued run with the same
     * settings to the queueing of its own, so that two at once do not both queue one
     */
    trainQueueing: (dataset: string) => `${prefix}:train-queueing:${dataset}`,
    /**
     * hash: `bucket/key` → `etag sha256 outputKey` of the images already classified with one model
     * run; `etag - outputKey failed` (or with its sha256) for one whose line says it failed
     */
    classified: (model: string, runId: string) => `${prefix}:classified:${model}:${runId}`,
    /**
     * string: pixels waiting for one embedding space's embed stage (its input size and resize
     * policy: another space's pixels of the same image differ), with a TTL
     */
    tensor: (embedderId: string, sha256: string) => `${prefix}:tensor:${embedderId}:${sha256}`,
  };
}
export type RedisKeys = ReturnType<typeof redisKeys>;
