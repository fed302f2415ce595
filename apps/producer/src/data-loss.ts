import { RunDoc } from '@transferline/shared';
import type { CliContext } from './cli-context.js';
import { latestRun, listModelRuns } from './commands/models.command.js';
import { printable } from './terminal.js';

/**
 * What Redis losing its data (a restart without persistence, a flush) leaves, and what brings it
 * back. The bucket keeps the embeddings and the trained runs; Redis kept the indexes and the
 * datasets' records. A loss is found when a space's index is empty while its shards are in the
 * bucket; the datasets that had trained runs and no records at that moment are remembered in
 * Redis (`datasetsLost`), so `status` names every one of them until it is ingested again, not
 * only until the first ingest restores the index.
 */

/**
 * Before images are looked up in the cache: an index Redis lost is restored from the bucket (and
 * said), so nothing cached is embedded again. Ingest and classify both call it.
 */
export async function restoreLostIndex(ctx: CliContext, space: string): Promise<void> {
  const restored = await ctx.services.cache.restoreLostIndex(space);
  if (!restored) return;
  await recordLostDatasets(ctx);
  ctx.out.write(
    `note: the embedding index of ${space} was empty while its shards are in s3://${ctx.config.s3.bucket}/${ctx.services.layout.embeddings(space)} (Redis lost its data?): restored from them, ${restored} images; those are not embedded again\n`,
  );
}

/** Remembers the datasets with trained runs that Redis has no records of: a loss was just found. */
export async function recordLostDatasets(ctx: CliContext): Promise<void> {
  const { datasets, redis, keys } = ctx.services;
  const known = new Set(await datasets.list());
  const lost = [...new Set((await listModelRuns(ctx)).map((r) => r.dataset))].filter((d) => !known.has(d));
  if (lost.length) await redis.sadd(keys.datasetsLost(), ...lost);
}

/**
 * The datasets a loss left without records that are still without them; those ingested again
 * since (or deleted on purpose: `delete dataset` forgets them) are forgotten here.
 */
export async function lostDatasets(ctx: CliContext): Promise<string[]> {
  const { datasets, redis, keys } = ctx.services;
  const remembered = (await redis.smembers(keys.datasetsLost())).sort();
  const back: string[] = [];
  for (const d of remembered) if (await datasets.exists(d)) back.push(d);
  if (back.length) await redis.srem(keys.datasetsLost(), ...back);
  return remembered.filter((d) => !back.includes(d));
}

/**
 * The commands that ingest a dataset again, from the prefixes a run of it recorded (run.json
 * `sources`): its latest run's, else its newest run's; undefined when it has no run, or runs too
 * old to record them.
 */
export async function reingestCommands(ctx: CliContext, dataset: string): Promise<string[] | undefined> {
  const runId = (await latestRun(ctx, dataset))?.runId ?? (await listModelRuns(ctx, dataset)).find((r) => r.dataset === dataset)?.runId;
  if (runId === undefined) return undefined;
  const { bucket } = ctx.config.s3;
  const run = await ctx.services.store.getDocument(RunDoc, bucket, ctx.services.layout.runFile(dataset, runId, 'run.json'));
  // in the run's own space (its models classify there), quoted for a shell when the prefix needs it
  const quote = (s: string) => (/^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`);
  return run?.sources?.length ? run.sources.map((src) => `transferline ingest ${quote(printable(src))} -d ${dataset} --embedder ${run.embedderId}`) : undefined;
}
