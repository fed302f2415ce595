import { DatasetRepository, isClassifyDataset, LostSources, parseDocument, redactUrl, redisKeys, RunDoc, SpaceRegistry, type Redis, type RedisKeys } from '@transferline/shared';
import type { CliContext } from './cli-context.js';
import { globLiteral, redisKeysMatching } from './redis-scan.js';
import { latestRun, listModelRuns } from './commands/models.command.js';
import { printable, shellQuote } from './terminal.js';

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
  const { cache } = ctx.services;
  if (!(await recordLossBeforeRebuild(ctx, space))) return;
  // it reads every manifest of the space: a large cache takes a while
  ctx.out.write(`note: the embedding index of ${space} is empty while its shards are in s3://${ctx.config.s3.bucket}/${ctx.services.layout.embeddings(space)} (Redis lost its data?): restoring it from them…\n`);
  const { indexed } = await cache.rebuildIndex(space);
  ctx.out.write(`note: restored the embedding index of ${space}: ${indexed} images, which are not embedded again\n`);
}

/**
 * Records a loss, when `space`'s index is lost, before anything rebuilds it: once rebuilt, the
 * index no longer shows the loss, and the datasets it took would never be named (status does not
 * record one in a Redis no embed worker has sent a heartbeat to). Every path that rebuilds an
 * index calls it: ingest and classify (restoreLostIndex), and `cache rebuild-index`. Returns
 * whether the index was lost.
 */
export async function recordLossBeforeRebuild(ctx: CliContext, space: string): Promise<boolean> {
  if (!(await ctx.services.cache.indexLost(space))) return false;
  // (under a TL_QUEUE_PREFIX that is not the workers', the index is theirs, and nothing was lost)
  if ((await indexUnderOtherPrefixes(ctx, space).catch(() => [])).length === 0) await recordLostDatasets(ctx);
  return true;
}

/**
 * The other queue prefixes (TL_QUEUE_PREFIX) under which this Redis holds `space`'s embedding
 * index. A process whose prefix is not the workers' finds its own index empty while the shards
 * are in the bucket: that is no loss, and nothing is recorded for it. (A SCAN: run only for an
 * index that looks lost.)
 */
export async function indexUnderOtherPrefixes(ctx: CliContext, space: string): Promise<string[]> {
  // Only while no worker has published the space under this prefix: one has, after a real loss
  // (within a heartbeat), whatever another deployment sharing this Redis holds.
  if ((await ctx.services.spaces.get(space)) !== undefined) return [];
  return prefixesHolding(ctx, ctx.services.keys.embeddingIndex(space));
}

/** The other queue prefixes under which this Redis holds the key `own` (one of this prefix's keys): a SCAN. */
async function prefixesHolding(ctx: CliContext, own: string): Promise<string[]> {
  const tail = own.slice(ctx.config.redis.prefix.length);
  const found = await redisKeysMatching(ctx, `*${globLiteral(tail)}`);
  return [...new Set(found.filter((k) => k !== own && k.endsWith(tail)).map((k) => k.slice(0, -tail.length)))].sort();
}

/** What a process whose prefix is not the workers' is told (status, train): `others`, from indexUnderOtherPrefixes or datasetUnderOtherPrefixes. */
export function otherPrefixWords(ctx: CliContext, others: string[], what = 'the index'): string {
  return `this process's queue prefix is TL_QUEUE_PREFIX=${printable(ctx.config.redis.prefix)}, and this Redis holds ${what} under ${others.map((p) => `TL_QUEUE_PREFIX=${printable(p)}`).join(', ')}: set TL_QUEUE_PREFIX as the workers have it`;
}

/**
 * The other queue prefixes under which this Redis holds published embedding spaces, when this
 * prefix holds none: a shell whose TL_QUEUE_PREFIX is not the workers' sees none of their spaces.
 * (A SCAN: run only when no space could be chosen.)
 */
export async function spacesUnderOtherPrefixes(ctx: CliContext): Promise<string[]> {
  // Only for a prefix with no spaces, no datasets, and no worker that failed to start: a
  // deployment of its own, whose worker cannot start, is told why, not sent to another. And only
  // prefixes whose workers are live now (a spaces hash outlives its deployment).
  const { spaces, datasets, redis } = ctx.services;
  if ((await spaces.list()).length || (await datasets.list()).length || (await spaces.recentFailures()).length) return [];
  const live: string[] = [];
  for (const prefix of await prefixesHolding(ctx, ctx.services.keys.embedWorkers())) {
    if ((await new SpaceRegistry(redis, redisKeys(prefix)).liveWorkers()).length) live.push(prefix);
  }
  return live;
}

/**
 * The other queue prefixes under which a worker of queue `name` is connected to this Redis (BullMQ
 * names a worker's connection `<prefix>:<base64 of the queue's name>`, then `:w:<worker>` when it
 * has a name): a worker started with another TL_QUEUE_PREFIX than its deployment's serves a queue
 * no one fills. (CLIENT LIST: run only when a stage has no worker.)
 */
export async function workersUnderOtherPrefixes(ctx: CliContext, name: string): Promise<string[]> {
  const tail = `:${Buffer.from(name).toString('base64')}`;
  const db = String(ctx.services.redis.options.db ?? 0);
  const prefixes = new Set<string>();
  for (const line of String(await ctx.services.redis.client('LIST')).split('\n')) {
    // (a worker of another database of this server serves other queues)
    if (/ db=(\d+)/.exec(line)?.[1] !== db) continue;
    const client = / name=(\S+)/.exec(line)?.[1];
    const at = client?.indexOf(tail) ?? -1;
    if (at <= 0) continue;
    const rest = client!.slice(at + tail.length);
    if (rest !== '' && !rest.startsWith(':w:')) continue; // (`:qe`: a QueueEvents, not a worker)
    const prefix = client!.slice(0, at);
    if (prefix !== ctx.config.redis.prefix) prefixes.add(prefix);
  }
  return [...prefixes].sort();
}

/**
 * The other queue prefixes under which this Redis holds dataset `name`: a shell whose
 * TL_QUEUE_PREFIX is not the workers' finds none of their datasets. (A SCAN: run only for a
 * dataset not found, under a prefix that holds no dataset.)
 */
export async function datasetUnderOtherPrefixes(ctx: CliContext, name: string): Promise<string[]> {
  // Only for a prefix without datasets: one with datasets of its own is a deployment (several
  // may share a Redis), where a dataset not found is not there. (Not its published spaces: a
  // worker once started with the wrong prefix leaves its space published there for good.)
  if ((await ctx.services.datasets.list()).length) return [];
  return prefixesHolding(ctx, ctx.services.keys.datasetItems(name));
}

/**
 * The error for a dataset this process does not find: held under another TL_QUEUE_PREFIX (the
 * setting to fix, rather than an ingest to run or runs to delete), else the datasets it knows.
 */
export async function noSuchDataset(ctx: CliContext, name: string, none = '(none)'): Promise<Error> {
  const others = await datasetUnderOtherPrefixes(ctx, name).catch(() => []);
  if (others.length) return new Error(`no dataset named ${name} here: ${otherPrefixWords(ctx, others, 'it')}`);
  // (the sets classify keeps of a model's images are named only to one who asks for such a set)
  const known = (await ctx.services.datasets.list()).filter((d) => isClassifyDataset(name) || !isClassifyDataset(d));
  // none at all: the shell may look at another deployment than meant (a REDIS_URL or TL_QUEUE_PREFIX of another), so it says which
  const where = known.length ? '' : ` in Redis ${redactUrl(ctx.config.redis.url)} under TL_QUEUE_PREFIX=${ctx.config.redis.prefix}`;
  return new Error(`no dataset named ${name}${where}; known: ${known.join(', ') || none}`);
}

/**
 * Remembers the datasets with trained runs that Redis has no records of, once per loss: a loss
 * was just found. Once, so that a dataset settled since (`delete dataset`) is not named again by
 * the next `status` while an index is still empty. The marker is written last (a failure on the
 * way leaves the loss to be recorded by the next call), and goes when `status` finds no index
 * lost any more (lossOver), or with the next flush.
 */
export async function recordLostDatasets(ctx: CliContext): Promise<void> {
  const { redis, keys } = ctx.services;
  if (await redis.exists(keys.dataLossRecorded())) return;
  const { lost, recorded } = await datasetsWithoutRecords(ctx);
  const tx = redis.multi();
  if (lost.length) tx.sadd(keys.datasetsLost(), ...lost);
  for (const [d, r] of recorded) if (r) tx.hset(keys.datasetsLostSources(), d, JSON.stringify(r satisfies LostSources));
  tx.set(keys.dataLossRecorded(), new Date().toISOString());
  await tx.exec();
}

/**
 * The datasets with trained runs that Redis has no records of, each with what it came from, as
 * its runs say now: a run trained later on the part ingested again (train --partial) records only
 * that part, and must not make the rest forgotten. Reads only.
 */
async function datasetsWithoutRecords(ctx: CliContext): Promise<{ lost: string[]; recorded: (readonly [string, LostSources | undefined])[] }> {
  const known = new Set(await ctx.services.datasets.list());
  const lost = [...new Set((await listModelRuns(ctx)).map((r) => r.dataset))].filter((d) => !known.has(d)).sort();
  const recorded = await Promise.all(lost.map(async (d) => [d, await recordedSources(ctx, d)] as const));
  return { lost, recorded };
}

/**
 * The datasets a loss would be recorded for, as `lostDatasets` names them, without recording it:
 * for a Redis that may be no deployment's (a shell's REDIS_URL that is not the workers').
 */
export async function lossUnrecorded(ctx: CliContext): Promise<LostDataset[]> {
  const { recorded } = await datasetsWithoutRecords(ctx);
  return recorded.map(([dataset, r]) => lostEntry(dataset, false, r, r?.sources));
}

/** A lost dataset as it is named: the prefixes still to ingest again, each with its command (when its runs recorded them). */
function lostEntry(dataset: string, partly: boolean, recorded: LostSources | undefined, missing: string[] | undefined): LostDataset {
  return { dataset, partly, ...(recorded && missing && { missing, commands: missing.map((src) => ingestCommand(dataset, src, recorded.embedderId)) }) };
}

/** No space's index is lost any more: a later loss is a new one, to be recorded again. */
export async function lossOver(ctx: CliContext): Promise<void> {
  await ctx.services.redis.del(ctx.services.keys.dataLossRecorded());
}

/**
 * The datasets a loss left without records, each with the ingest commands still to run: those of
 * its recorded prefixes not ingested again yet (undefined when its runs do not record them). A
 * dataset is forgotten here once every prefix is ingested again and listed to the end (or,
 * unrecorded, once some prefix is), once none of its runs is left, or when `delete dataset`
 * settles it. `partly`: it has records again, from an ingest cut short or from only some prefixes.
 */
export async function lostDatasets(ctx: CliContext): Promise<LostDataset[]> {
  const { datasets, redis, keys } = ctx.services;
  const remembered = (await redis.smembers(keys.datasetsLost())).sort();
  if (remembered.length === 0) return [];
  const trained = new Set((await listModelRuns(ctx)).map((r) => r.dataset));
  const atLoss = await redis.hmget(keys.datasetsLostSources(), ...remembered);
  const settled: string[] = [];
  const left: LostDataset[] = [];
  for (const [i, dataset] of remembered.entries()) {
    const stored = parseLostSources(ctx, dataset, atLoss[i]);
    // (a loss recorded by an older version kept no sources: its runs' say)
    const recorded = trained.has(dataset) ? (stored ?? (await recordedSources(ctx, dataset))) : undefined;
    const exists = await datasets.exists(dataset);
    // ingested again: listed to the end (an ingest cut short after its first page is not enough)
    const ingested = new Set(exists ? (await datasets.listedSources(dataset)).map((s) => DatasetRepository.objectUrl(s)) : []);
    const missing = recorded?.sources.filter((s) => !ingested.has(s));
    if (!trained.has(dataset) || (missing ? missing.length === 0 : ingested.size > 0)) settled.push(dataset);
    else left.push(lostEntry(dataset, exists, recorded, missing));
  }
  if (settled.length) await forgetLost(redis, keys, settled);
  return left;
}

export interface LostDataset {
  dataset: string;
  /** the prefixes (s3://bucket/prefix/) not ingested again yet, and the commands that do it; undefined when its runs do not record its prefixes */
  missing?: string[];
  commands?: string[];
  /** it has records again, from an ingest cut short or from only some of its prefixes */
  partly: boolean;
}

/** A lost dataset settled (ingested again, deleted, or without runs): no longer named. */
export async function forgetLost(redis: Redis, keys: RedisKeys, datasets: string[]): Promise<void> {
  await redis.multi().srem(keys.datasetsLost(), ...datasets).hdel(keys.datasetsLostSources(), ...datasets).exec();
}

/** How a lost dataset is named (status warns with it, train refuses with it), with what brings it back. */
export function lostDatasetLine(l: LostDataset): string {
  const again = l.commands?.join('; ') ?? 'its runs do not record its prefixes (trained before they did): ingest them as before';
  return l.partly
    ? `dataset ${l.dataset} lost its records with Redis's data and is not ingested again to the end yet (an ingest cut short, or prefixes left): ${again}`
    : `dataset ${l.dataset} has trained runs but lost its records with Redis's data; ingest it again (its images come from the cache once the index is back): ${again}`;
}

/**
 * The commands that ingest a dataset again, from the prefixes its runs recorded: as they were when
 * a loss was found, else its latest run's (run.json `sources`), else its newest run's; undefined
 * when it has no run, or runs too old to record them. With the space they recorded.
 */
export async function reingestCommands(ctx: CliContext, dataset: string): Promise<{ commands: string[]; space: string } | undefined> {
  const { redis, keys } = ctx.services;
  const recorded = parseLostSources(ctx, dataset, await redis.hget(keys.datasetsLostSources(), dataset)) ?? (await recordedSources(ctx, dataset));
  return recorded && { commands: recorded.sources.map((src) => ingestCommand(dataset, src, recorded.embedderId)), space: recorded.embedderId };
}

/** A lost dataset's sources as recorded at the loss (datasetsLostSources), if they were. */
function parseLostSources(ctx: CliContext, dataset: string, raw: string | null | undefined): LostSources | undefined {
  return raw ? parseDocument(LostSources, JSON.parse(raw), `${ctx.services.keys.datasetsLostSources()} ${dataset}`) : undefined;
}

async function recordedSources(ctx: CliContext, dataset: string): Promise<{ sources: string[]; embedderId: string } | undefined> {
  const runId = (await latestRun(ctx, dataset))?.runId ?? (await listModelRuns(ctx, dataset)).find((r) => r.dataset === dataset)?.runId;
  if (runId === undefined) return undefined;
  const run = await ctx.services.store.getDocument(RunDoc, ctx.config.s3.bucket, ctx.services.layout.runFile(dataset, runId, 'run.json'));
  return run?.sources?.length ? { sources: run.sources, embedderId: run.embedderId } : undefined;
}

/** In the run's own space (its models classify there), quoted for a shell when the prefix needs it. */
function ingestCommand(dataset: string, source: string, embedderId: string): string {
  return `transferline ingest ${shellQuote(printable(source))} -d ${dataset} --embedder ${embedderId}`;
}
