import { classifyDatasetName, enqueue, jobIds, parseS3Url, sleep, type ClassifyJob, type ClassifyResult } from '@transferline/shared';
import { QueueEvents } from 'bullmq';
import type { CliContext } from '../cli-context.js';
import { ingestPrefix } from '../ingest.service.js';
import { waitForDataset } from './ingest.command.js';

export interface ClassifyOptions {
  /** `dataset` (its latest run) or `dataset@run` */
  model: string;
  watch: boolean;
  intervalSeconds: number;
  /** for tests: stop watching after this many rounds */
  maxRounds?: number;
  signal?: AbortSignal;
}

/** Resolves `dataset[@run]` to a run that exists in the bucket, and checks it was trained in this embedding space. */
export async function resolveModel(ctx: CliContext, spec: string): Promise<{ dataset: string; runId: string }> {
  const [dataset, at] = spec.split('@') as [string, string | undefined];
  const { bucket, prefix } = ctx.config.s3;
  const runId = at ?? (await ctx.services.store.getJson<{ runId: string }>(bucket, `${prefix}models/${dataset}/latest.json`))?.runId;
  if (!runId) throw new Error(`no trained model for ${dataset}: run "transferline train --dataset ${dataset}" first`);
  const run = await ctx.services.store.getJson<{ embedderId: string }>(bucket, `${prefix}models/${dataset}/${runId}/run.json`);
  if (!run) throw new Error(`no run ${runId} of ${dataset} in s3://${bucket}/${prefix}models/ (see "transferline models")`);
  if (run.embedderId !== ctx.embedderId) {
    throw new Error(`model ${dataset}@${runId} was trained on ${run.embedderId} embeddings, but this configuration embeds with ${ctx.embedderId}: set the same TL_MODEL_WEIGHTS/TL_RESIZE as for training`);
  }
  return { dataset, runId };
}

/**
 * `transferline classify s3://bucket/prefix --model NAME[@run] [--watch]`: the images go through
 * the same preprocess and embed stages as training (the cache is reused), then the train worker
 * applies the head and writes JSON Lines to `results/<model>/<run>/<time>.jsonl`. The images are
 * kept in their own dataset (`_classify.<model>`), so they never enter a training dataset.
 * With --watch it keeps picking up new objects every interval.
 */
export async function classifyCommand(ctx: CliContext, url: string, o: ClassifyOptions): Promise<ClassifyResult[]> {
  const { bucket, prefix } = parseS3Url(url);
  const model = await resolveModel(ctx, o.model);
  const dataset = classifyDatasetName(model.dataset);
  const results: ClassifyResult[] = [];
  const events = new QueueEvents(ctx.queues.classify.name, { connection: ctx.services.redis.duplicate({ maxRetriesPerRequest: null }), prefix: ctx.config.redis.prefix });
  try {
    await events.waitUntilReady();
    for (let round = 1; ; round++) {
      const counts = await ingestPrefix({ bucket, prefix, dataset, embedderId: ctx.embedderId, labels: 'none' }, { services: ctx.services, preprocessQueue: ctx.queues.preprocess });
      if (counts.enqueued) await waitForDataset(ctx, dataset, 30);
      const stamp = new Date().toISOString().replace(/[:.]/g, '-');
      const payload: ClassifyJob = { dataset, model: model.dataset, runId: model.runId, embedderId: ctx.embedderId, bucket, prefix, outputKey: `${ctx.config.s3.prefix}results/${model.dataset}/${model.runId}/${stamp}.jsonl` };
      await enqueue(ctx.queues.classify, 'classify', [{ id: jobIds.classify(payload), payload }]);
      const job = await ctx.queues.classify.getJob(jobIds.classify(payload));
      const r = (await job!.waitUntilFinished(events)) as ClassifyResult;
      results.push(r);
      const labels = Object.entries(r.byLabel).map(([l, n]) => `${l} ${n}`).join(', ');
      ctx.out.write(
        `classified ${r.classified} image(s) under s3://${bucket}/${prefix} with ${model.dataset}@${model.runId}` +
          `${labels ? ` (${labels})` : ''}${r.failed ? `, ${r.failed} failed` : ''}${r.skipped ? `, ${r.skipped} already done` : ''}` +
          ` → s3://${ctx.config.s3.bucket}/${r.outputKey}\n`,
      );
      if (!o.watch || (o.maxRounds !== undefined && round >= o.maxRounds) || o.signal?.aborted) break;
      await sleep(o.intervalSeconds * 1000, o.signal);
      if (o.signal?.aborted) break;
    }
  } finally {
    await events.close();
  }
  return results;
}
