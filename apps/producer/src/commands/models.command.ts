import { LatestDoc, ReportDoc } from '@transferline/shared';
import type { CliContext } from '../cli-context.js';

export interface ModelRun {
  dataset: string;
  runId: string;
  createdAt: string;
  embedderId: string;
  labels: string[];
  validationAccuracy: number;
  testAccuracy?: number;
  partial: boolean;
  latest: boolean;
}

/** Every trained run in the bucket (from its report.json), newest first per dataset. */
export async function listModelRuns(ctx: CliContext, dataset?: string): Promise<ModelRun[]> {
  const { bucket } = ctx.config.s3;
  const { store, layout } = ctx.services;
  const runs: ModelRun[] = [];
  const latest = new Map<string, string>();
  for await (const o of store.listObjects(bucket, layout.models(dataset))) {
    const k = layout.parseModelKey(o.key);
    if (k?.file === 'latest.json') {
      const l = await store.getDocument(LatestDoc, bucket, o.key);
      if (l) latest.set(k.dataset, l.runId);
    } else if (k?.file === 'report.json') {
      const r = await store.getDocument(ReportDoc, bucket, o.key);
      if (!r) continue;
      runs.push({
        dataset: r.dataset,
        runId: r.runId,
        createdAt: r.createdAt,
        embedderId: r.embedderId,
        labels: r.labels,
        validationAccuracy: r.validation.accuracy,
        ...(r.test && { testAccuracy: r.test.accuracy }),
        partial: r.coverage.partial,
        latest: false,
      });
    }
  }
  for (const r of runs) r.latest = latest.get(r.dataset) === r.runId;
  return runs.sort((a, b) => a.dataset.localeCompare(b.dataset) || b.createdAt.localeCompare(a.createdAt));
}

/** `transferline models [-d NAME] [--json]`: the runs with their validation and test accuracy. */
export async function modelsCommand(ctx: CliContext, o: { dataset?: string; json?: boolean }): Promise<ModelRun[]> {
  const runs = await listModelRuns(ctx, o.dataset);
  if (o.json) {
    ctx.out.write(`${JSON.stringify(runs, null, 2)}\n`);
    return runs;
  }
  if (runs.length === 0) {
    if (o.dataset && !(await ctx.services.datasets.exists(o.dataset))) throw new Error(`no dataset named ${o.dataset} and no models for it`);
    ctx.out.write(`no trained models yet${o.dataset ? ` for ${o.dataset}` : ''}: transferline train --dataset NAME\n`);
    return runs;
  }
  const pct = (x?: number) => (x === undefined ? '   –  ' : `${(x * 100).toFixed(1).padStart(5)}%`);
  ctx.out.write('dataset          run                          val acc  test acc  classes  embeddings\n');
  for (const r of runs) {
    ctx.out.write(
      `${r.dataset.padEnd(16)} ${(r.runId + (r.latest ? ' *' : '')).padEnd(28)} ${pct(r.validationAccuracy)}  ${pct(r.testAccuracy)}   ${String(r.labels.length).padStart(7)}  ${r.embedderId}${r.partial ? ' (partial)' : ''}\n`,
    );
  }
  ctx.out.write('* latest run of its dataset (what classify --model DATASET uses)\n');
  return runs;
}
