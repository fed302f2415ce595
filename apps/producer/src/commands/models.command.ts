import pMap from 'p-map';
import { DatasetName, LatestDoc, latestPointer, PromotedDoc, ReportDoc, type HeadParams, type TrainJob } from '@transferline/shared';
import { jobsInFlight } from '../jobs-in-flight.js';
import type { CliContext } from '../cli-context.js';
import { CliExit, EXIT } from '../exit-codes.js';
import { nothingHere } from '../storage-hint.js';
import { noSuchDataset } from '../data-loss.js';
import { thresholdText } from '../report-words.js';

export interface ModelRun {
  dataset: string;
  runId: string;
  createdAt: string;
  embedderId: string;
  labels: string[];
  /** at p = 0.5 (argmax), as train's report gives them */
  validationAccuracy: number;
  testAccuracy?: number;
  /** two classes: the threshold classify, serve and export decide at, and the accuracies there */
  atThreshold?: { threshold: number; validation: number; test?: number };
  partial: boolean;
  /** the settings it was trained with (hidden units, dropout, epochs, learning rate, …) and its best epoch: runs compared by how they were made */
  params: HeadParams;
  bestEpoch: number;
  /** trained with --no-promote and never promoted: never taken as latest unless promoted */
  candidate: boolean;
  latest: boolean;
  /** set on a run taken as latest because the run latest.json names (this) is gone from the bucket */
  latestInsteadOf?: string;
}

/** How many documents listModelRuns reads at once. */
const READS_AT_ONCE = 16;

/**
 * The runs read from their report.json, by the report's key and ETag: a report is written once
 * (a run id trained again writes another, with another ETag), so a reader that lists the runs
 * again and again (the console) reads each report once, not on every page.
 */
export type ReadReports = Map<string, { etag: string; run: ModelRun | undefined }>;

/** Every trained run in the bucket (from its report.json), newest first per dataset; with `reports`, each report read once. */
export async function listModelRuns(ctx: CliContext, dataset?: string, reports?: ReadReports): Promise<ModelRun[]> {
  const { bucket } = ctx.config.s3;
  const { store, layout } = ctx.services;
  const runs: ModelRun[] = [];
  const latest = new Map<string, string>();
  // runs trained with --no-promote that `promote` made the latest once (promoted.json)
  const promoted = new Map<string, string>(); // dataset/run → its promoted.json key
  const readReport = async (key: string): Promise<ModelRun | undefined> => {
    const r = await store.getDocument(ReportDoc, bucket, key);
    return (
      r && {
        dataset: r.dataset,
        runId: r.runId,
        createdAt: r.createdAt,
        embedderId: r.embedderId,
        labels: r.labels,
        validationAccuracy: r.validation.accuracy,
        ...(r.test && { testAccuracy: r.test.accuracy }),
        ...(r.validation.binary && {
          atThreshold: {
            threshold: r.validation.binary.threshold,
            validation: r.validation.binary.accuracyAtThreshold,
            ...(r.test?.binary && { test: r.test.binary.accuracyAtThreshold }),
          },
        }),
        partial: r.coverage.partial,
        params: r.params,
        bestEpoch: r.bestEpoch,
        candidate: r.params.promote === false,
        latest: false,
      }
    );
  };
  const read = async ({ key, etag }: { key: string; etag: string }) => {
    const k = layout.parseModelKey(key);
    if (k?.file === 'latest.json') {
      const l = await store.getDocument(LatestDoc, bucket, key);
      if (l) latest.set(k.dataset, l.runId);
    } else if (k?.file === 'report.json') {
      const known = reports?.get(key);
      const run = known?.etag === etag ? known.run : await readReport(key);
      reports?.set(key, { etag, run });
      // a copy: what follows marks it (latest, promoted) for this listing only
      if (run) runs.push({ ...run });
    }
  };
  const keys: { key: string; etag: string }[] = [];
  for await (const o of store.listObjects(bucket, layout.models(dataset))) {
    const k = layout.parseModelKey(o.key);
    if (k?.file === 'latest.json' || k?.file === 'report.json') keys.push(o);
    if (k?.file === 'promoted.json') promoted.set(`${k.dataset}/${k.runId}`, o.key);
  }
  // reports of runs deleted since are forgotten (a listing of one dataset knows only its own)
  if (reports && dataset === undefined) {
    const listed = new Set(keys.map((o) => o.key));
    for (const key of reports.keys()) if (!listed.has(key)) reports.delete(key);
  }
  // A few reads at a time, not one after another: hundreds of runs on a remote S3 would take
  // longer than the console gives a page.
  await pMap(keys, read, { concurrency: READS_AT_ONCE });
  runs.sort((a, b) => a.dataset.localeCompare(b.dataset) || b.createdAt.localeCompare(a.createdAt));
  // a --no-promote run promoted once is a run like the others; a marker is read only for such a
  // run, and counts only when it was written for this run (not an earlier one of the same id)
  await pMap(
    runs.filter((r) => r.candidate && promoted.has(`${r.dataset}/${r.runId}`)),
    async (r) => {
      const marker = await store.getDocument(PromotedDoc, bucket, promoted.get(`${r.dataset}/${r.runId}`)!);
      if (marker?.runCreatedAt === r.createdAt) r.candidate = false;
    },
    { concurrency: READS_AT_ONCE },
  );
  for (const r of runs) r.latest = latest.get(r.dataset) === r.runId;
  // latest.json naming a run deleted from the bucket since: the newest run left stands in (not a --no-promote one never promoted)
  for (const [d, named] of latest) {
    const newest = newestPromotable(runs, d);
    if (newest && !runs.some((r) => r.dataset === d && r.latest)) Object.assign(newest, { latest: true, latestInsteadOf: named });
  }
  return runs;
}

/**
 * When the newest run of `dataset` in the bucket that completed after `after` (ms since the epoch)
 * did, by its report's createdAt (the train worker's clock, as BullMQ's times are), or undefined
 * if none did: one listing, and a read of each report uploaded since, with a minute's slack for
 * S3's clock (a copied bucket's upload times are later than its reports' own, never earlier).
 */
export async function runCompletedAfter(ctx: Pick<CliContext, 'config' | 'services'>, dataset: string, after: number): Promise<number | undefined> {
  const { bucket } = ctx.config.s3;
  const { store, layout } = ctx.services;
  const since: string[] = [];
  for await (const o of store.listObjects(bucket, layout.models(dataset))) {
    if (layout.parseModelKey(o.key)?.file === 'report.json' && (o.lastModified?.getTime() ?? Number.POSITIVE_INFINITY) >= after - 60_000) since.push(o.key);
  }
  const created = await pMap(since, async (key) => (await store.getDocument(ReportDoc, bucket, key))?.createdAt, { concurrency: READS_AT_ONCE });
  const later = created.flatMap((c) => (c === undefined ? [] : [Date.parse(c)])).filter((t) => t > after);
  return later.length ? Math.max(...later) : undefined;
}

/** The run that stands in as a dataset's latest when its own is gone: its newest, leaving out --no-promote runs. */
export function newestPromotable(runs: ModelRun[], dataset: string, except?: string): ModelRun | undefined {
  return runs.find((r) => r.dataset === dataset && !r.candidate && r.runId !== except);
}

/**
 * The run `dataset` means without `@run`: the one its latest.json names, or, when that run was
 * deleted from the bucket since, the newest run left (`insteadOf` then names the missing one).
 * Undefined when the dataset has no run.
 */
export async function latestRun(ctx: CliContext, dataset: string): Promise<{ runId: string; insteadOf?: string; setBy?: LatestDoc['setBy'] } | undefined> {
  const { bucket } = ctx.config.s3;
  const { store, layout } = ctx.services;
  const pointer = await store.getDocument(LatestDoc, bucket, layout.latest(dataset));
  const named = pointer?.runId;
  if (named === undefined) return undefined;
  if (await store.headObject(bucket, layout.runFile(dataset, named, 'report.json'))) return { runId: named, ...(pointer?.setBy && { setBy: pointer.setBy }) };
  const newest = (await listModelRuns(ctx, dataset)).find((r) => r.dataset === dataset && r.latest);
  return newest && { runId: newest.runId, insteadOf: named };
}

/** `transferline models [-d NAME] [--json]`: the runs with their validation and test accuracy. */
export async function modelsCommand(ctx: CliContext, o: { dataset?: string; json?: boolean }): Promise<ModelRun[]> {
  const runs = await listModelRuns(ctx, o.dataset);
  // (a dataset Redis no longer holds still lists its runs in the bucket)
  if (runs.length === 0 && o.dataset && !(await ctx.services.datasets.exists(o.dataset))) throw await noSuchDataset(ctx, o.dataset);
  if (o.json) {
    ctx.out.write(`${JSON.stringify(runs, null, 2)}\n`);
    return runs;
  }
  if (runs.length === 0) {
    ctx.out.write(`${await nothingHere(ctx, `no trained models yet${o.dataset ? ` for ${o.dataset}` : ''}`, `: transferline train --dataset ${o.dataset ?? 'NAME'}`)}\n`);
    return runs;
  }
  const pct = (x?: number) => (x === undefined ? '   –  ' : `${(x * 100).toFixed(1).padStart(5)}%`);
  ctx.out.write('dataset          run                          val acc  test acc  classes  head        best/max  embeddings\n');
  for (const r of runs) {
    ctx.out.write(
      `${r.dataset.padEnd(16)} ${(r.runId + (r.latest ? ' *' : '')).padEnd(28)} ${pct(r.validationAccuracy).padStart('val acc'.length)}  ${pct(r.testAccuracy).padStart('test acc'.length)}  ${String(r.labels.length).padStart('classes'.length)}  ${headWords(r.params).padEnd('head      '.length)}  ${`${r.bestEpoch}/${r.params.epochs}`.padStart('best/max'.length)}  ${r.embedderId}${r.partial ? ' (partial)' : ''}${r.candidate && !r.latest ? ' (--no-promote)' : ''}\n`,
    );
    // the accuracies above are at 0.5; a two-class model decides at its threshold
    const t = r.atThreshold;
    if (t) ctx.out.write(`${' '.repeat(17)}  classify and serve decide at ${thresholdText(t.threshold)}: val ${pct(t.validation).trim()}${t.test !== undefined ? `, test ${pct(t.test).trim()}` : ''}\n`);
  }
  ctx.out.write('* latest run of its dataset (what classify, serve and export use without @run)\n');
  for (const d of new Set(runs.map((r) => r.dataset))) {
    if (!runs.some((r) => r.dataset === d && r.latest)) ctx.out.write(`note: ${d} has no latest run: make one the latest with transferline promote ${d}@RUN\n`);
  }
  for (const r of runs.filter((x) => x.latestInsteadOf)) {
    ctx.out.write(`note: the latest run of ${r.dataset}, ${r.latestInsteadOf}, is no longer in the bucket: its newest run left, ${r.runId}, is used instead\n`);
  }
  return runs;
}

/** A run's head in a table cell: a softmax on the embeddings, or its hidden layer (the rest of its settings: --json). */
function headWords(p: HeadParams): string {
  return p.hiddenUnits > 0 ? `hidden ${p.hiddenUnits}` : 'softmax';
}

/**
 * `-m DATASET[@RUN]` of classify, export and serve: the dataset, and the run when named. A spec
 * that is neither is bad usage (exit 2), said before Redis is asked (a trial: `-m @RUN` and
 * `-m pets@` exited 1).
 */
export function parseModelSpec(spec: string): { dataset: string; runId?: string } {
  const m = /^([^@]*)(?:@(.*))?$/.exec(spec)!;
  // (a run that would name another folder of the bucket is none)
  if (!DatasetName.safeParse(m[1]).success || (m[2] !== undefined && (/^\.{0,2}$/.test(m[2]) || m[2].includes('/')))) {
    throw new CliExit(EXIT.usage, `transferline: --model needs a dataset name, optionally @run (got ${JSON.stringify(spec)})`);
  }
  return { dataset: m[1]!, ...(m[2] !== undefined && { runId: m[2] }) };
}

/** `DATASET@RUN`, a run named in full (commands that change a run take no implicit "latest"). */
export function parseRunSpec(command: string, spec: string): { dataset: string; runId: string } {
  const m = /^([^@]+)@(.+)$/.exec(spec);
  // (a run id that would name another folder of the bucket is none: `.`, `..`, or one with a `/`)
  if (!m || !DatasetName.safeParse(m[1]).success || /^\.{1,2}$/.test(m[2]!) || m[2]!.includes('/')) {
    throw new CliExit(EXIT.usage, `transferline: ${command} needs DATASET@RUN, the run named in full (see "transferline models"); got ${JSON.stringify(spec)}`);
  }
  return { dataset: m[1]!, runId: m[2]! };
}

/**
 * `transferline promote DATASET@RUN`: makes a run its dataset's latest (latest.json), what
 * classify, serve and export use without @run: a run trained with --no-promote, or an older one
 * to roll back to.
 */
export async function promoteCommand(ctx: CliContext, spec: string): Promise<void> {
  const { dataset, runId } = parseRunSpec('promote', spec);
  const { bucket } = ctx.config.s3;
  const { store, layout } = ctx.services;
  const report = await store.getDocument(ReportDoc, bucket, layout.runFile(dataset, runId, 'report.json'));
  if (!report) {
    throw new CliExit(EXIT.error, `transferline: ${await nothingHere(ctx, `no run ${runId} of ${dataset} in s3://${bucket}/${layout.models(dataset)}`, ` (see "transferline models -d ${dataset}")`)}`);
  }
  // A run trained with --no-promote is marked promoted, first: a promote cut short leaves a run
  // that is no longer a candidate, not a latest one that still is. The marker names the run it
  // is for (its createdAt), so one left behind is not taken for a later run of the same id.
  if (report.params.promote === false) {
    await store.putJson(bucket, layout.runFile(dataset, runId, 'promoted.json'), { promotedAt: new Date().toISOString(), runCreatedAt: report.createdAt } satisfies PromotedDoc);
  }
  const before = await latestRun(ctx, dataset);
  if (before?.runId === runId && !before.insteadOf) {
    ctx.out.write(`${dataset}@${runId} is the latest run of ${dataset} already\n`);
    return;
  }
  await store.putJson(bucket, layout.latest(dataset), latestPointer(runId, layout.run(dataset, runId), 'promote'));
  ctx.out.write(`${dataset}@${runId} is now the latest run of ${dataset}${before ? ` (it was ${before.runId})` : ''}: classify, serve and export use it without @run\n`);
  // A run of the dataset that will make itself the latest when it ends undoes this (not one whose
  // report is written: run again, it leaves a pointer set after it alone). Done is done if this fails.
  const inFlight = await jobsInFlight<TrainJob>(ctx.queues.train, (d) => d.dataset === dataset && d.promote !== false).catch((): { id: string; data: TrainJob; state: string }[] => []);
  const coming: typeof inFlight = [];
  for (const r of inFlight) if (!(await store.headObject(bucket, layout.runFile(dataset, r.data.runId, 'report.json')).catch(() => undefined))) coming.push(r);
  for (const r of coming) {
    ctx.out.write(`note: run ${r.data.runId} of ${dataset} is ${r.state === 'active' ? 'training' : 'queued'} and becomes the latest when it ends (it was not started with --no-promote): to keep ${runId}, cancel it (transferline train --cancel ${r.data.runId}) or promote ${runId} again after it\n`);
  }
}
