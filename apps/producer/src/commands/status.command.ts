import { JOBS, type DatasetStatus, type JobName } from '@transferline/shared';
import type { CliContext } from '../cli-context.js';
import { printDatasetSummary } from './ingest.command.js';

export interface StatusReport {
  queues: Record<string, Record<string, number> & { workers: number }>;
  datasets: DatasetStatus[];
}

/** `transferline status`: jobs per queue and state, workers connected, each dataset's progress. */
export async function statusCommand(ctx: CliContext, o: { dataset?: string; json?: boolean }): Promise<StatusReport> {
  const queues: StatusReport['queues'] = {};
  for (const name of Object.keys(JOBS) as JobName[]) {
    const q = ctx.queues[name];
    const counts = await q.getJobCounts('waiting', 'active', 'delayed', 'prioritized', 'failed', 'completed');
    queues[name] = { ...counts, workers: await q.getWorkersCount() };
  }
  const names = o.dataset ? [o.dataset] : await ctx.services.datasets.list();
  const datasets = await Promise.all(names.map((d) => ctx.services.datasets.status(d, ctx.embedderId)));
  if (o.json) {
    ctx.out.write(`${JSON.stringify({ queues, datasets }, null, 2)}\n`);
    return { queues, datasets };
  }
  const w = (s: string) => ctx.out.write(`${s}\n`);
  w(`queue        workers  waiting  active  delayed  failed`);
  for (const [name, c] of Object.entries(queues)) {
    w(`${name.padEnd(12)} ${String(c.workers).padStart(7)}  ${String((c.waiting ?? 0) + (c.prioritized ?? 0)).padStart(7)}  ${String(c.active ?? 0).padStart(6)}  ${String(c.delayed ?? 0).padStart(7)}  ${String(c.failed ?? 0).padStart(6)}`);
  }
  w(`embedding cache (${ctx.embedderId}): ${await ctx.services.cache.size(ctx.embedderId)} images`);
  if (datasets.length === 0) w('no datasets yet: transferline ingest s3://bucket/prefix --dataset NAME');
  for (const d of datasets) printDatasetSummary(ctx, d);
  return { queues, datasets };
}
