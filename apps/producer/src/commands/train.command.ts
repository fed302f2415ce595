import { randomBytes } from 'node:crypto';
import { QueueEvents } from 'bullmq';
import { enqueue, jobIds, TrainJob, type TrainJobInput, type TrainResult } from '@transferline/shared';
import type { CliContext } from '../cli-context.js';
import { createProgress } from '../progress.js';

/** Per-run settings the CLI passes through; unset ones take the job catalog's defaults. */
export type HeadSettings = Partial<Pick<TrainJob, 'epochs' | 'learningRate' | 'batchSize' | 'seed' | 'hiddenUnits' | 'dropout' | 'l2' | 'patience' | 'classWeights' | 'validationFraction' | 'testFraction'>>;

export interface TrainOptions extends HeadSettings {
  dataset: string;
  runId?: string;
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
  const { dataset, runId, wait, ...settings } = o;
  const defined = Object.fromEntries(Object.entries(settings).filter(([, v]) => v !== undefined));
  const input: TrainJobInput = { dataset, runId: runId ?? newRunId(), embedderId: ctx.embedderId, ...defined };
  const parsed = TrainJob.safeParse(input);
  if (!parsed.success) throw new Error(`bad training settings: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
  const payload = parsed.data;
  await enqueue(ctx.queues.train, 'train', [{ id: jobIds.train(payload), payload }]);
  ctx.out.write(`run ${payload.runId} queued for dataset ${payload.dataset} (up to ${payload.epochs} epochs, ${payload.hiddenUnits ? `hidden layer of ${payload.hiddenUnits}` : 'softmax head'})\n`);
  if (!wait) return { runId: payload.runId };
  return followRun(ctx, payload.runId);
}

/**
 * Follows a run epoch by epoch (also one started elsewhere: `transferline train --follow RUN`)
 * and prints its report when it lands in the bucket.
 */
export async function followRun(ctx: CliContext, runId: string): Promise<{ runId: string; result?: TrainResult; report?: unknown }> {
  const id = jobIds.train({ runId });
  const events = new QueueEvents(ctx.queues.train.name, { connection: ctx.services.redis.duplicate({ maxRetriesPerRequest: null }), prefix: ctx.config.redis.prefix });
  try {
    await events.waitUntilReady();
    const job = await ctx.queues.train.getJob(id);
    if (!job) throw new Error(`no run ${runId} in the train queue (finished runs are listed by "transferline models")`);
    const payload = job.data as TrainJob;
    const bar = createProgress(`training ${payload.dataset}`);
    const onProgress = ({ jobId, data }: { jobId: string; data: unknown }) => {
      if (jobId !== id || typeof data !== 'object' || data === null) return;
      const p = data as { phase: string; epoch: number; epochs: number; loss?: number; valLoss?: number; valAccuracy?: number };
      const detail = p.phase === 'training' ? `loss ${p.loss?.toFixed(4)} val_loss ${p.valLoss?.toFixed(4)} val_acc ${p.valAccuracy?.toFixed(3)}` : p.phase;
      bar.update(p.epoch, p.epochs, detail);
    };
    events.on('progress', onProgress);
    let result: TrainResult;
    try {
      result = (await job.waitUntilFinished(events)) as TrainResult;
    } catch (err) {
      throw new Error(`run ${runId} failed: ${(err as Error).message}`);
    } finally {
      bar.stop();
      events.off('progress', onProgress);
    }
    const report = await ctx.services.store.getJson<Record<string, unknown>>(ctx.config.s3.bucket, `${result.modelPrefix}report.json`);
    printReport(ctx, result, report);
    return { runId, result, report };
  } finally {
    await events.close();
  }
}

function printReport(ctx: CliContext, result: TrainResult, report: Record<string, unknown> | undefined): void {
  const w = (s: string) => ctx.out.write(`${s}\n`);
  const pct = (x: number) => `${(x * 100).toFixed(1)}%`;
  w(`run ${result.runId}: validation accuracy ${pct(result.validationAccuracy)}${result.testAccuracy !== undefined ? `, test accuracy ${pct(result.testAccuracy)}` : ''} (${result.examples} images; best epoch ${result.bestEpoch})`);
  const bin = (report?.validation as { binary?: { positiveLabel: string; rocAuc: number; threshold: number } } | undefined)?.binary;
  if (bin) w(`  ROC AUC (validation, positive "${bin.positiveLabel}") ${bin.rocAuc.toFixed(3)}; threshold chosen on validation ${bin.threshold.toFixed(3)}`);
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
