import { PermanentError, type EmbedJob, type Metrics, type Services } from '@transferline/shared';
import type { Embedder } from './embedder.js';

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
  const todo: { i: number; sha256: string; pixels: Uint8Array }[] = [];
  // Two round trips for the whole batch: which are cached, and every image's pixels.
  const [cached, stored] = await Promise.all([cache.has(deps.embedderId, jobs.map((j) => j.sha256)), tensors.getMany(jobs.map((j) => j.sha256))]);
  for (const [i, job] of jobs.entries()) {
    if (job.embedderId !== deps.embedderId) {
      results[i] = new PermanentError('wrong-embedder', `job is for ${job.embedderId}, this worker runs ${deps.embedderId}`);
    } else if (cached[i] || todo.some((t) => t.sha256 === job.sha256)) {
      results[i] = 'cached';
    } else {
      const pixels = stored[i];
      if (!pixels) {
        results[i] = new PermanentError('pixels-expired', 'the preprocessed pixels are gone from Redis (TTL passed or evicted); ingest again');
      } else if (pixels.length !== deps.embedder.inputSize * deps.embedder.inputSize * 3) {
        results[i] = new PermanentError('bad-pixels', `stored pixels are ${pixels.length} bytes, expected ${deps.embedder.inputSize ** 2 * 3}`);
      } else {
        todo.push({ i, sha256: job.sha256, pixels });
      }
    }
  }
  if (todo.length) {
    const data = await forwardFitting(deps, todo.map((t) => t.pixels));
    await cache.writeShard(deps.embedderId, todo.map((t) => t.sha256), data, deps.embedder.dim);
    await tensors.delete(todo.map((t) => t.sha256));
    for (const t of todo) results[t.i] = 'embedded';
  }
  for (const r of results) deps.metrics.images.inc({ stage: 'embed', outcome: r instanceof Error ? 'failed' : r });
  return results;
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
