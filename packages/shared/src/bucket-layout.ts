/**
 * Every object key transferline writes in its bucket (`TL_BUCKET`, under `TL_PREFIX`), in one
 * place, as keys.ts is for Redis. Writers and readers both build keys here, so the layout the
 * README documents is the layout the code uses.
 */
export function bucketLayout(prefix: string) {
  const models = `${prefix}models/`;
  const run = (dataset: string, runId: string) => `${models}${dataset}/${runId}/`;
  const reviews = (dataset: string) => `${prefix}reviews/${dataset}/`;
  const results = (model: string, runId?: string) => `${prefix}results/${model}/${runId === undefined ? '' : `${runId}/`}`;
  return {
    /** folder of one embedding space's shards */
    embeddings: (embedderId: string) => `${prefix}embeddings/${embedderId}/`,
    /** the folder that holds one folder per embedding space */
    embeddingSpaces: () => `${prefix}embeddings/`,
    /** one shard: float32 [n, dim] (`.npy`) and its manifest of content hashes (`.json`) */
    shard: (embedderId: string, shardId: string, ext: 'npy' | 'json') => `${prefix}embeddings/${embedderId}/${shardId}.${ext}`,
    /** which shard, and which of its two objects, a key of `embeddings/<space>/` names (for listings) */
    parseShardKey(key: string): { shardId: string; ext: 'npy' | 'json' } | undefined {
      const m = /\/([^/]+)\.(npy|json)$/.exec(key);
      return key.startsWith(`${prefix}embeddings/`) && m ? { shardId: m[1]!, ext: m[2] as 'npy' | 'json' } : undefined;
    },
    /** folder of every trained model (`models/`), or of one dataset's runs */
    models: (dataset?: string) => (dataset ? `${models}${dataset}/` : models),
    /** folder of one run: model.json, weights.bin, labels.json, run.json, report.json */
    run,
    runFile: (dataset: string, runId: string, file: RunFile) => `${run(dataset, runId)}${file}`,
    /** pointer to a dataset's newest run */
    latest: (dataset: string) => `${models}${dataset}/latest.json`,
    /** the dataset a `models/…` key belongs to, and which file it is (for listings) */
    parseModelKey(key: string): { dataset: string; runId?: string; file: string } | undefined {
      if (!key.startsWith(models)) return undefined;
      const parts = key.slice(models.length).split('/');
      if (parts.length === 2 && parts[1] === 'latest.json') return { dataset: parts[0]!, file: 'latest.json' };
      if (parts.length === 3) return { dataset: parts[0]!, runId: parts[1]!, file: parts[2]! };
      return undefined;
    },
    /** one review of a dataset's labels (JSON Lines, most doubtful first) */
    review: (dataset: string, stamp: string) => `${reviews(dataset)}${stamp}.jsonl`,
    /** folder of a dataset's reviews */
    reviews,
    /** one classify round's JSON Lines */
    classifyResults: (model: string, runId: string, stamp: string) => `${results(model, runId)}${stamp}.jsonl`,
    /** folder of every classify round of a model's runs, or of one run's */
    results,
  };
}
export type BucketLayout = ReturnType<typeof bucketLayout>;

/** The files of a trained run. */
export type RunFile = 'model.json' | 'weights.bin' | 'labels.json' | 'run.json' | 'report.json' | 'promoted.json';
