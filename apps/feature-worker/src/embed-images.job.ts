import { PermanentError, type EmbedJob, type Logger, type Metrics, type Services } from '@transferline/shared';
import { allFinite } from './model/finite-output.js';
import type { Embedder, StoredEmbeddings } from './embedder.js';
import { MicroBatcher } from './micro-batcher.js';
import { ShardWriter } from './shard-writer.js';

export interface EmbedDeps {
  services: Pick<Services, 'cache' | 'tensors'>;
  embedder: Embedder;
  embedderId: string;
  metrics: Metrics;
  log?: Pick<Logger, 'warn'>;
}

export type EmbedOutcome = 'embedded' | 'cached';

export interface EmbedStageOptions {
  /** most images per forward pass */
  batchSize: number;
  /** longest wait for a forward batch to fill */
  batchWaitMs: number;
  /** most embeddings per shard written: several forward batches share one write */
  shardRows: number;
  /** longest a computed embedding waits for its shard to be written */
  shardMaxDelayMs: number;
}

/**
 * The embed stage of one worker: jobs arrive one by one, are gathered into forward batches
 * (dynamic batching), and their embeddings into shards (group commit), so neither a forward
 * pass nor a write is paid per image. A job completes only once its embedding is durable: its
 * shard's objects are in the bucket and indexed, and its pixels freed.
 */
export class EmbedStage {
  private readonly batcher: MicroBatcher<EmbedJob, Float32Array | 'cached'>;
  private readonly shards: ShardWriter;

  constructor(
    private readonly deps: EmbedDeps,
    o: EmbedStageOptions,
  ) {
    const { cache, tensors } = deps.services;
    // A batch computing on each of the embedder's streams, and one more: the next one's pixels
    // are read while they compute.
    this.batcher = new MicroBatcher((jobs) => forwardBatch(jobs, deps), o.batchSize, o.batchWaitMs, (deps.embedder.streams ?? 1) + 1);
    this.shards = new ShardWriter(
      async (hashes, data) => {
        await cache.writeShard(deps.embedderId, hashes, data, deps.embedder.dim);
        // The embeddings are durable: pixels left behind expire with their TTL, and failing the
        // jobs now would only make their retries find them cached and leave the pixels anyway.
        await tensors.delete(deps.embedderId, hashes).catch((err: unknown) => deps.log?.warn({ err, images: hashes.length }, 'embedded, but their pixels were not deleted from Redis (they expire with their TTL)'));
      },
      { dim: deps.embedder.dim, maxRows: EmbedStage.shardRows(o), maxDelayMs: o.shardMaxDelayMs, moreComing: () => this.batcher.busy },
    );
  }

  /**
   * Jobs a worker should hold at once: a batch computing on each stream, the next one read, one
   * collecting, a shard being written and the next one filling. A job completes only once its
   * shard is written, so with one shard's worth the forward pass ran out of jobs during each
   * write (at batch 1, after the 3 rows left beside the 64 written) and waited for it.
   */
  static concurrency(o: Pick<EmbedStageOptions, 'batchSize' | 'shardRows'>, streams = 1): number {
    return (streams + 2) * o.batchSize + 2 * EmbedStage.shardRows(o);
  }

  /** Most rows per shard: never fewer than one forward batch, so a batch is never split. */
  private static shardRows(o: Pick<EmbedStageOptions, 'batchSize' | 'shardRows'>): number {
    return Math.max(o.shardRows, o.batchSize);
  }

  async embed(job: EmbedJob): Promise<EmbedOutcome> {
    let r: Float32Array | 'cached';
    try {
      r = await this.batcher.submit(job);
    } finally {
      // A batch that ended without rows (all cached or failed) may have been the last one coming.
      this.shards.poke();
    }
    if (r === 'cached') return 'cached';
    // The same image twice at once (a job run twice) is written once: the other caller counts it as cached.
    const outcome = (await this.shards.add(job.sha256, r)) ? 'embedded' : 'cached';
    this.deps.metrics.images.inc({ stage: 'embed', outcome });
    return outcome;
  }

  /** Runs and writes everything submitted so far. */
  async drain(): Promise<void> {
    await this.batcher.drain();
    await this.shards.drain();
  }
}

/** What `tl_images_total{stage="embed"}` counts. */
export const EMBED_OUTCOMES = ['embedded', 'cached', 'failed'] as const;

/**
 * One forward pass for a batch of jobs: each job's embedding (not yet stored), `cached`, or its
 * error. An image whose embedding is cached already is skipped (a job may run twice); one whose
 * pixels are gone fails alone; the rest are embedded together.
 */
export async function forwardBatch(jobs: EmbedJob[], deps: EmbedDeps): Promise<(Float32Array | 'cached' | Error)[]> {
  const dim = deps.embedder.dim;
  const results: (Float32Array | 'cached' | Error)[] = new Array(jobs.length);
  const todo: { i: number; sha256: string }[] = [];
  // The same image twice in a batch (a job run twice at once) is computed once; both wait for its write.
  const twins: [twin: number, first: number][] = [];
  // Images embedded already are found by the pixel read itself (the index asked in the same round trip).
  for (const [i, job] of jobs.entries()) {
    const first = todo.find((t) => t.sha256 === job.sha256);
    if (job.embedderId !== deps.embedderId) {
      results[i] = new PermanentError('wrong-embedder', `job is for ${job.embedderId}, this worker runs ${deps.embedderId}`);
    } else if (first) {
      twins.push([i, first.i]);
    } else {
      todo.push({ i, sha256: job.sha256 });
    }
  }
  if (todo.length) {
    const per = deps.embedder.inputSize * deps.embedder.inputSize * 3;
    // An image embedded meanwhile (a second run of its job, whose first run has just written it
    // and freed its pixels) is found indexed by the same read: gone pixels of an image not
    // indexed are gone for good.
    const { sizes, data, cached: indexed } = await forwardStored(deps, todo.map((t) => t.sha256), per);
    const ok = todo.filter((t, k) => {
      const size = sizes[k]!;
      if (indexed[k]) results[t.i] = 'cached';
      else if (size < 0) results[t.i] = new PermanentError('pixels-expired', 'the preprocessed pixels are gone from Redis (TTL passed or evicted); ingest again');
      else if (size !== per) results[t.i] = new PermanentError('bad-pixels', `stored pixels are ${size} bytes, expected ${per}`);
      return !indexed[k] && size === per;
    });
    // This space's pixels of images found indexed (stored again by a preprocess that looked them
    // up just before they were embedded) serve no job of this space: freed now, not left to
    // their TTL. Only a batch that finds such pixels pays this round trip.
    const stale = todo.filter((_, k) => indexed[k] && sizes[k]! >= 0).map((t) => t.sha256);
    if (stale.length) await deps.services.tensors.delete(deps.embedderId, stale).catch((err: unknown) => deps.log?.warn({ err, images: stale.length }, 'their embeddings are indexed, but their pixels were not deleted from Redis (they expire with their TTL)'));
    if (data.length !== ok.length * dim) throw new Error(`the forward pass returned ${data.length} values for ${ok.length} images of ${dim}`);
    ok.forEach((t, row) => {
      const embedding = data.subarray(row * dim, (row + 1) * dim);
      // Never cached: every run of its dataset would train on it (a NaN row made one hang). Tried
      // again (maybe on a sound worker) while it has tries left; its reason stays when they are spent.
      results[t.i] = allFinite(embedding) ? embedding : new Error(`the model gave this image an embedding that is not finite numbers (NaN or Infinity): this embed worker's model (its weights or ONNX graph) is damaged; not cached`);
    });
    for (const [twin, first] of twins) results[twin] = results[first]!;
  }
  // (a failure is counted where every job's final failure goes, the worker's onFinalFailure:
  // attempts spent and stalls too, and once per job, not per attempt)
  for (const r of results) if (r === 'cached') deps.metrics.images.inc({ stage: 'embed', outcome: 'cached' });
  return results;
}

/**
 * The forward pass on this space's stored pixels of `hashes`, skipping those whose embedding is
 * indexed already (`cached`, asked in the same round trip as the pixels): read where the model
 * runs when the embedder can (its thread's own Redis connection), else here.
 */
async function forwardStored(deps: EmbedDeps, hashes: string[], per: number): Promise<StoredEmbeddings> {
  if (deps.embedder.embedStored) {
    const started = performance.now();
    const r = await deps.embedder.embedStored(deps.embedderId, hashes);
    const rows = r.data.length / deps.embedder.dim;
    // A batch found all indexed (or gone) ran no forward pass: it is not one in the metrics.
    if (rows) {
      deps.metrics.forwardSeconds.observe(r.seconds ?? (performance.now() - started) / 1000);
      deps.metrics.embedBatch.observe(rows);
    }
    return r;
  }
  const { images, sizes, cached } = await deps.services.tensors.getBatch(deps.embedderId, hashes, per);
  return { sizes, data: images.length ? await forwardFitting(deps, images) : new Float32Array(0), cached };
}

const OUT_OF_MEMORY = /out of memory|OOM|resource exhausted|failed to allocate/i;

/**
 * One forward pass, or, when the device runs out of memory (a large batch on a small GPU),
 * halves the batch until it fits: the batch size adapts to device memory instead of failing jobs.
 */
async function forwardFitting(deps: Pick<EmbedDeps, 'embedder' | 'metrics'>, images: Uint8Array[]): Promise<Float32Array> {
  try {
    const end = deps.metrics.forwardSeconds.startTimer();
    const data = await deps.embedder.embedBatch(images);
    end();
    deps.metrics.embedBatch.observe(images.length);
    return data;
  } catch (err) {
    if (images.length < 2 || !OUT_OF_MEMORY.test((err as Error).message)) throw err;
    const half = Math.ceil(images.length / 2);
    const a = await forwardFitting(deps, images.slice(0, half));
    const b = await forwardFitting(deps, images.slice(half));
    const out = new Float32Array(a.length + b.length);
    out.set(a);
    out.set(b, a.length);
    return out;
  }
}
