import pMap from 'p-map';
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
  /** set on a run taken as latest because the run latest.json names (this) is gone from the bucket */
  latestInsteadOf?: string;
}

/** How many documents listModelRuns reads at once. */
const READS_AT_ONCE = 16;

/** Every trained run in the bucket (from its report.json), newest first per dataset. */
export async function listModelRuns(ctx: CliContext, dataset?: string): Promise<ModelRun[]> {
  const { bucket } = ctx.config.s3;
  const { store, layout } = ctx.services;
  const runs: ModelRun[] = [];
  const latest = new Map<string, string>();
  const read = async (key: string) => {
    const k = layout.parseModelKey(key);
    if (k?.file === 'latest.json') {
      const l = await store.getDocument(LatestDoc, bucket, key);
      if (l) latest.set(k.dataset, l.runId);
    } else if (k?.file === 'report.json') {
      const r = await store.getDocument(ReportDoc, bucket, key);
      if (!r) return;
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
  };
  const keys: string[] = [];
  for await (const o of store.listObjects(bucket, layout.models(dataset))) {
    const file = layout.parseModelKey(o.key)?.file;
    if (file === 'latest.json' || file === 'report.json') keys.push(o.key);
  }
  // A few reads at a time, not one after another: hundreds of runs on a remote S3 would take
  // longer than the console gives a page.
  await pMap(keys, read, { concurrency: READS_AT_ONCE });
  runs.sort((a, b) => a.dataset.localeCompare(b.dataset) || b.createdAt.localeCompare(a.createdAt));
  for (const r of runs) r.latest = latest.get(r.dataset) === r.runId;
  // latest.json naming a run deleted from the bucket since: the newest run left stands in
  for (const [d, named] of latest) {
    const newest = runs.find((r) => r.dataset === d);
    if (newest && !runs.some((r) => r.dataset === d && r.latest)) Object.assign(newest, { latest: true, latestInsteadOf: named });
  }
  return runs;
}

/**
 * The run `dataset` means without `@run`: the one its latest.json names, or, when that run was
 * deleted from the bucket since, the newest run left (`insteadOf` then names the missing one).
 * Undefined when the dataset has no run.
 */
export async function latestRun(ctx: CliContext, dataset: string): Promise<{ runId: string; insteadOf?: string } | undefined> {
  const { bucket } = ctx.config.s3;
  const { store, layout } = ctx.services;
  const named = (await store.getDocument(LatestDoc, bucket, layout.latest(dataset)))?.runId;
  if (named === undefined) return undefined;
  if (await store.headObject(bucket, layout.runFile(dataset, named, 'report.json'))) return { runId: named };
  const newest = (await listModelRuns(ctx, dataset)).find((r) => r.dataset === dataset && r.latest);
  return newest && { runId: newest.runId, insteadOf: named };
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
  for (const r of runs.filter((x) => x.latestInsteadOf)) {
    ctx.out.write(`note: the latest run of ${r.dataset}, ${r.latestInsteadOf}, is no longer in the bucket: its newest run left, ${r.runId}, is used instead\n`);
  }
  return runs;
}
