import { randomBytes } from 'node:crypto';
import { QueueEvents } from 'bullmq';
import { enqueue, jobIds, TrainJob, type TrainJobInput, type TrainResult } from '@transferline/shared';
import type { CliContext } from '../cli-context.js';
import { createProgress } from '../progress.js';

export interface TrainOptions {
  dataset: string;
  runId?: string;
  epochs?: number;
  learningRate?: number;
  batchSize?: number;
  seed?: number;
  wait: boolean;
}

/** A sortable, unique run id: 20261127-213000-3fa2. */
export function newRunId(now = new Date()): string {
  const iso = now.toISOString().replace(/[-:]/g, '').replace('T', '-').slice(0, 15);
  return `${iso}-${randomBytes(2).toString('hex')}`;
}

/**
 * `transferline train --dataset NAME`: enqueues a run for the train-worker and follows it
 * epoch by epoch; prints the report when it lands in the bucket.
 */
export async function trainCommand(ctx: CliContext, o: TrainOptions): Promise<{ runId: string; result?: TrainResult; report?: unknown }> {
  if (!(await ctx.services.datasets.exists(o.dataset))) {
    throw new Error(`no dataset named ${o.dataset}; known: ${(await ctx.services.datasets.list()).join(', ') || '(none; run ingest first)'}`);
  }
  const input: TrainJobInput = {
    dataset: o.dataset,
    runId: o.runId ?? newRunId(),
    embedderId: ctx.embedderId,
    ...(o.epochs !== undefined && { epochs: o.epochs }),
    ...(o.learningRate !== undefined && { learningRate: o.learningRate }),
    ...(o.batchSize !== undefined && { batchSize: o.batchSize }),
    ...(o.seed !== undefined && { seed: o.seed }),
  };
  const payload = TrainJob.parse(input);
  const id = jobIds.train(payload);
  const events = new QueueEvents(ctx.queues.train.name, { connection: ctx.services.redis.duplicate({ maxRetriesPerRequest: null }), prefix: ctx.config.redis.prefix });
  try {
    await events.waitUntilReady();
    await enqueue(ctx.queues.train, 'train', [{ id, payload }]);
    ctx.out.write(`run ${payload.runId} queued for dataset ${payload.dataset} (${payload.epochs} epochs)\n`);
    if (!o.wait) return { runId: payload.runId };
    const job = await ctx.queues.train.getJob(id);
    if (!job) throw new Error(`run ${payload.runId} vanished from the queue`);
    const bar = createProgress(`training ${payload.dataset}`);
    const onProgress = ({ jobId, data }: { jobId: string; data: unknown }) => {
      if (jobId !== id || typeof data !== 'object' || data === null) return;
      const p = data as { phase: string; epoch: number; epochs: number; loss?: number; valAccuracy?: number };
      const detail = p.phase === 'training' ? `loss ${p.loss?.toFixed(4)} val_acc ${p.valAccuracy?.toFixed(3)}` : p.phase;
      bar.update(p.epoch, p.epochs, detail);
    };
    events.on('progress', onProgress);
    let result: TrainResult;
    try {
      result = (await job.waitUntilFinished(events)) as TrainResult;
    } catch (err) {
      throw new Error(`run ${payload.runId} failed: ${(err as Error).message}`);
    } finally {
      bar.stop();
      events.off('progress', onProgress);
    }
    const report = await ctx.services.store.getJson<Record<string, unknown>>(ctx.config.s3.bucket, `${result.modelPrefix}report.json`);
    printReport(ctx, result, report);
    return { runId: payload.runId, result, report };
  } finally {
    await events.close();
  }
}

function printReport(ctx: CliContext, result: TrainResult, report: Record<string, unknown> | undefined): void {
  const w = (s: string) => ctx.out.write(`${s}\n`);
  w(`run ${result.runId}: validation accuracy ${(result.validationAccuracy * 100).toFixed(1)}% on ${result.examples} images`);
  w(`model: s3://${ctx.config.s3.bucket}/${result.modelPrefix} (model.json, weights.bin, labels.json, report.json)`);
  const v = report?.validation as { confusionMatrix: number[][]; perClass: Record<string, { precision: number; recall: number; f1: number; support: number }> } | undefined;
  const labels = report?.labels as string[] | undefined;
  if (!v || !labels) return;
  const width = Math.max(8, ...labels.map((l) => l.length)) + 2;
  w('validation confusion matrix (rows: true, columns: predicted):');
  w(' '.repeat(width) + labels.map((l) => l.padStart(width)).join(''));
  v.confusionMatrix.forEach((row, i) => w(labels[i]!.padEnd(width) + row.map((n) => String(n).padStart(width)).join('')));
  w('per class:  precision  recall  f1  support');
  for (const l of labels) {
    const c = v.perClass[l]!;
    w(`  ${l.padEnd(width)} ${c.precision.toFixed(3)}  ${c.recall.toFixed(3)}  ${c.f1.toFixed(3)}  ${c.support}`);
  }
}
