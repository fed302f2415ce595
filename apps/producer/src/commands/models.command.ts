import type { CliContext } from '../cli-context.js';

export interface ModelRun {
  dataset: string;
  runId: string;
  createdAt: string;
  embedderId: string;
  labels: string[];
  validationAccuracy: number;
  testAccuracy?: number;
  latest: boolean;
}

interface StoredReport {
  dataset: string;
  runId: string;
  createdAt: string;
  embedderId: string;
  labels: string[];
  validation: { accuracy: number };
  test?: { accuracy: number };
}

/** Every trained run in the bucket (from its report.json), newest first per dataset. */
export async function listModelRuns(ctx: CliContext, dataset?: string): Promise<ModelRun[]> {
  const { bucket, prefix } = ctx.config.s3;
  const root = `${prefix}models/${dataset ? `${dataset}/` : ''}`;
  const runs: ModelRun[] = [];
  const latest = new Map<string, string>();
  for await (const o of ctx.services.store.listObjects(bucket, root)) {
    if (o.key.endsWith('/latest.json')) {
      const l = await ctx.services.store.getJson<{ runId: string }>(bucket, o.key);
      if (l) latest.set(o.key.slice(`${prefix}models/`.length, -'/latest.json'.length), l.runId);
    } else if (o.key.endsWith('/report.json')) {
      const r = await ctx.services.store.getJson<StoredReport>(bucket, o.key);
      if (!r) continue;
      runs.push({
        dataset: r.dataset,
        runId: r.runId,
        createdAt: r.createdAt,
        embedderId: r.embedderId,
        labels: r.labels,
        validationAccuracy: r.validation.accuracy,
        ...(r.test && { testAccuracy: r.test.accuracy }),
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
    ctx.out.write('no trained models yet: transferline train --dataset NAME\n');
    return runs;
  }
  const pct = (x?: number) => (x === undefined ? '   –  ' : `${(x * 100).toFixed(1).padStart(5)}%`);
  ctx.out.write('dataset          run                          val acc  test acc  classes  embeddings\n');
  for (const r of runs) {
    ctx.out.write(
      `${r.dataset.padEnd(16)} ${(r.runId + (r.latest ? ' *' : '')).padEnd(28)} ${pct(r.validationAccuracy)}  ${pct(r.testAccuracy)}   ${String(r.labels.length).padStart(7)}  ${r.embedderId}\n`,
    );
  }
  ctx.out.write('* latest run of its dataset (what classify --model DATASET uses)\n');
  return runs;
}
