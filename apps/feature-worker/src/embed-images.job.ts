import { PermanentError, type EmbedJob, type Metrics, type Services } from '@transferline/shared';
import type { Embedder, StoredEmbeddings } from './embedder.js';

export interface EmbedDeps {
  services: Pick<Services, 'cache' | 'tensors'>;
  embedder: Embedder;
  embedderId: string;
  metrics: Metrics;
}

export type EmbedOutcome = 'embedded' | 'cached';

/**
 * One forward pass for a batch of jobs. An image whose embedding is cached already is skipped
 * (a job may run twice); one whose pixels are gone fails alone; the rest are embedded together,
 * written to one shard, indexed, and only then reported done, so a job completes only once its
 * embedding is durable.
 */
export async function embedBatch(jobs: EmbedJob[], deps: EmbedDeps): Promise<(EmbedOutcome | Error)[]> {
  const { cache, tensors } = deps.services;
  const results: (EmbedOutcome | Error)[] = new Array(jobs.length);
  const todo: { i: number; sha256: string }[] = [];
  const cached = await cache.has(deps.embedderId, jobs.map((j) => j.sha256));
  for (const [i, job] of jobs.entries()) {
    if (job.embedderId !== deps.embedderId) {
      results[i] = new PermanentError('wrong-embedder', `job is for ${job.embedderId}, this worker runs ${deps.embedderId}`);
    } else if (cached[i] || todo.some((t) => t.sha256 === job.sha256)) {
      results[i] = 'cached';
    } else {
      todo.push({ i, sha256: job.sha256 });
    }
  }
  if (todo.length) {
    const per = deps.embedder.inputSize * deps.embedder.inputSize * 3;
    const { sizes, data } = await forwardStored(deps, todo.map((t) => t.sha256), per);
    const done: string[] = [];
    todo.forEach((t, k) => {
      const size = sizes[k]!;
      if (size < 0) results[t.i] = new PermanentError('pixels-expired', 'the preprocessed pixels are gone from Redis (TTL passed or evicted); ingest again');
      else if (size !== per) results[t.i] = new PermanentError('bad-pixels', `stored pixels are ${size} bytes, expected ${per}`);
      else done.push(t.sha256);
    });
    if (data.length !== done.length * deps.embedder.dim) throw new Error(`the forward pass returned ${data.length} values for ${done.length} images of ${deps.embedder.dim}`);
    if (done.length) {
      await cache.writeShard(deps.embedderId, done, data, deps.embedder.dim);
      await tensors.delete(done);
      for (const t of todo) if (results[t.i] === undefined) results[t.i] = 'embedded';
    }
  }
  for (const r of results) deps.metrics.images.inc({ stage: 'embed', outcome: r instanceof Error ? 'failed' : r });
  return results;
}

/**
 * The forward pass on the stored pixels of `hashes`: read where the model runs when the
 * embedder can (its thread's own Redis connection), else here.
 */
async function forwardStored(deps: EmbedDeps, hashes: string[], per: number): Promise<StoredEmbeddings> {
  if (deps.embedder.embedStored) {
    const started = performance.now();
    const r = await deps.embedder.embedStored(hashes);
    deps.metrics.forwardSeconds.observe(r.seconds ?? (performance.now() - started) / 1000);
    const rows = r.data.length / deps.embedder.dim;
    if (rows) deps.metrics.embedBatch.observe(rows);
    return r;
  }
  const { images, sizes } = await deps.services.tensors.getBatch(hashes, per);
  return { sizes, data: images.length ? await forwardFitting(deps, images) : new Float32Array(0) };
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
