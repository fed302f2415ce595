import os from 'node:os';
import type { Redis } from 'ioredis';
import { ConfigError, DEFAULT_ALPHA_BACKGROUND, type Config } from './config.js';
import { DocumentError, EmbeddingSpace, EmbedWorkerInfo, parseDocument, StorageRecord } from './documents.js';
import { redisKeys, type RedisKeys } from './keys.js';
import { PROCESS_NAME, sleep } from './lifecycle.js';
import { globLiteral, RedisScript, scanKeys } from './redis.client.js';
import { redactUrl } from './redact.js';

/** EfficientNet-B0's input side and embedding length. */
export const EFFICIENTNET_B0 = { inputSize: 224, dim: 1280 } as const;

/**
 * The embedding space this process's configuration runs. Only the embed worker (which runs it)
 * and `up` (which starts the embed workers) may call this: every other process reads the spaces
 * the workers published (see SpaceRegistry), so a CLI whose environment differs from the
 * workers' can never enqueue work nobody will do.
 */
export function spaceFromConfig(config: Pick<Config, 'embed' | 'preprocess'>): EmbeddingSpace {
  const { weights, weightsMd5, seed } = config.embed;
  const { resize, background } = config.preprocess;
  const w = weights === 'random' ? `random-seed${seed}` : `imagenet-${weightsMd5.slice(0, 8)}`;
  // The background changes the pixels of every image with transparency, so it names the space;
  // the default names none, so the spaces of deployments from before it keep their ids.
  const bg = background === DEFAULT_ALPHA_BACKGROUND ? '' : `.bg${background.slice(1)}`; // (read back by spaceBackground)
  return {
    id: `efficientnet-b0.${w}.${resize}${EFFICIENTNET_B0.inputSize}${bg}`,
    model: 'efficientnet-b0',
    weights,
    ...(weights === 'random' ? { seed } : { weightsMd5 }),
    resize,
    background,
    inputSize: EFFICIENTNET_B0.inputSize,
    dim: EFFICIENTNET_B0.dim,
  };
}

/**
 * The colour an embedding space flattens transparent pixels onto (`#rrggbb`), as its record says,
 * or a preprocess job of it. A job without it (from a CLI of a version before jobs named it) has
 * its space's id, which names any colour but the default; a space recorded before spaces named it
 * is taken as the default (README: "Embedding spaces").
 */
export function spaceBackground(space: Pick<EmbeddingSpace, 'id' | 'background'>): string {
  if (space.background !== undefined) return space.background;
  const named = /\.bg([0-9a-f]{6})$/.exec(space.id);
  return named ? `#${named[1]}` : DEFAULT_ALPHA_BACKGROUND;
}

/** Where a deployment keeps embeddings and models: its TL_BUCKET and TL_PREFIX. */
export type Storage = Pick<StorageRecord, 'bucket' | 'prefix'>;

/**
 * Records this process's storage as the deployment's if none is recorded yet, else checks that it
 * is the one recorded: an embed worker with another TL_PREFIX would file embeddings in the cache
 * index that every other process looks for elsewhere (and a train worker would read and write
 * runs where no one else looks). With no record (a deployment of an older version, or a Redis that
 * lost its data), the live embed workers' storage, which they publish, stands for it: the first to
 * start does not win against them. Nor is a storage another queue prefix's deployment recorded
 * taken for this one (a mistyped TL_QUEUE_PREFIX: its commands would see none of that
 * deployment's records, and delete what they think unused). Refused with a ConfigError naming the
 * settings to set, and how to record another storage when the deployment really moved.
 */
export async function claimStorage(redis: Redis, keys: RedisKeys, own: Storage, settings: { prefix: string; url: string }, who = 'this worker'): Promise<void> {
  const record: StorageRecord = { bucket: own.bucket, prefix: own.prefix, by: PROCESS_NAME, at: new Date().toISOString() };
  const same = (s: Storage) => sameStorage(s, own);
  let theirs = await recordedStorage(redis, keys);
  if (theirs === undefined) {
    const live = (await new SpaceRegistry(redis, keys).liveWorkers()).flatMap((w) => (w.storage ? [w.storage] : []));
    const other = live.find((s) => !same(s));
    if (other && !live.some(same)) throw refusedStorage(other, 'as its live embed workers say (no record yet)', own, keys, settings, who, false);
    const owners = live.length ? [] : await storageOwners(redis, settings.prefix, own);
    if (owners.length) throw new ConfigError(`${ownedElsewhereWords(owners, own, settings, who)} (If that deployment has moved to this prefix: with its workers stopped, delete its record, redis-cli -u ${redactUrl(settings.url)} DEL ${owners[0]!.key})`);
    if ((await redis.set(keys.storage(), JSON.stringify(record), 'NX')) === 'OK') return;
    theirs = await recordedStorage(redis, keys);
    // (removed between the two: this process's storage is recorded on its next start)
    if (theirs === undefined) return;
  }
  if (!same(theirs)) throw refusedStorage(theirs, `as recorded by its first process (${theirs.by}, ${theirs.at})`, own, keys, settings, who, true);
}

/** The deployment's storage as recorded (keys.storage), if it is; a record that cannot be read is said with its key and how to mend it. */
export async function recordedStorage(redis: Redis, keys: RedisKeys): Promise<StorageRecord | undefined> {
  const raw = await redis.get(keys.storage());
  if (raw === null) return undefined;
  let value: unknown;
  try {
    value = JSON.parse(raw);
  } catch {
    value = undefined;
  }
  try {
    return parseDocument(StorageRecord, value, `the deployment's recorded storage (Redis key ${keys.storage()})`);
  } catch (err) {
    throw new DocumentError(`${(err as Error).message.replace(/; was it written by another version\?$/, '')}: damaged, or not written by transferline; delete it (redis-cli DEL ${keys.storage()}) and the next embed or train worker, or up, records it again`);
  }
}

/**
 * The backends a space's live workers run, each with its threads, as `status` and the console
 * say them (`onnx on 2 threads, wasm on 1 thread`): an operator sees a worker that took every core
 * beside another, or one that fell back to wasm.
 */
export function workerBackends(workers: readonly EmbedWorkerInfo[]): string {
  return [...new Set(workers.map((w) => (w.threads ? `${w.backend} on ${w.threads} thread${w.threads > 1 ? 's' : ''}` : w.backend)))].join(', ');
}

/** A storage another queue prefix's deployment recorded as its own. */
export interface StorageOwner {
  /** that deployment's TL_QUEUE_PREFIX */
  prefix: string;
  /** its record's Redis key */
  key: string;
  record: StorageRecord;
}

/**
 * The other queue prefixes on this Redis whose deployments recorded `own` as their storage (a
 * SCAN of the records' keys: asked only where this prefix has none). A Redis that refuses SCAN,
 * or a key this client may not read (ACLs by prefix), or a record that cannot be read, leaves
 * that one out: nothing is known of it.
 */
export async function storageOwners(redis: Redis, queuePrefix: string, own: Storage): Promise<StorageOwner[]> {
  const ownKey = redisKeys(queuePrefix).storage();
  const tail = ownKey.slice(queuePrefix.length);
  let keys: string[];
  try {
    keys = await scanKeys(redis, `*${globLiteral(tail)}`);
  } catch {
    return [];
  }
  const found: StorageOwner[] = [];
  for (const key of keys) {
    if (key === ownKey || !key.endsWith(tail)) continue;
    const prefix = key.slice(0, -tail.length);
    const record = await recordedStorage(redis, redisKeys(prefix)).catch(() => undefined);
    if (record && sameStorage(record, own)) found.push({ prefix, key, record });
  }
  return found.sort((a, b) => a.prefix.localeCompare(b.prefix));
}

/** Why a process whose queue prefix holds no deployment may not take `own`, which `owners` recorded: the setting to set. */
export function ownedElsewhereWords(owners: StorageOwner[], own: Storage, settings: { prefix: string }, who: string): string {
  const named = owners.map((o) => `TL_QUEUE_PREFIX=${o.prefix}`).join(', ');
  const first = owners[0]!;
  return (
    `s3://${own.bucket}/${own.prefix} is where the deployment under ${named} on this Redis keeps its embeddings and models (recorded by its first process, ${first.record.by}, ${first.record.at}), and ${who}'s TL_QUEUE_PREFIX=${settings.prefix} has no deployment recorded: ` +
    `set TL_QUEUE_PREFIX=${first.prefix} as its workers have it, or another TL_BUCKET or TL_PREFIX for a deployment of its own.`
  );
}

/** What to change for `own` to be `theirs`: `set TL_BUCKET=… and TL_PREFIX=…`, or `… and unset TL_PREFIX` for theirs empty. */
function storageFix(theirs: Storage, own: Storage): string {
  const set = [theirs.bucket !== own.bucket && `TL_BUCKET=${theirs.bucket}`, theirs.prefix !== own.prefix && theirs.prefix !== '' && `TL_PREFIX=${theirs.prefix}`].filter(Boolean);
  const unset = theirs.prefix !== own.prefix && theirs.prefix === '';
  return [set.length > 0 && `set ${set.join(' and ')}`, unset && 'unset TL_PREFIX'].filter(Boolean).join(' and ');
}

function refusedStorage(theirs: Storage, source: string, own: Storage, keys: RedisKeys, redis: { prefix: string; url: string }, who: string, recorded: boolean): ConfigError {
  // (the deployment's record names it: how to record another, when the deployment really moved)
  const moved = recorded
    ? ` (If the deployment has moved, its files with it: with its workers stopped, delete the record, redis-cli -u ${redactUrl(redis.url)} DEL ${keys.storage()}, and start them with the new settings)`
    : '';
  return new ConfigError(`${otherStorageWords(theirs, source, own, redis, who, 'as the others have it')}${moved}`);
}

/**
 * Why a process whose TL_BUCKET/TL_PREFIX (`own`) are not its deployment's (`theirs`) may not work
 * on it, and which settings to set: the workers' refusal to start, and the CLI's.
 */
export function otherStorageWords(theirs: Storage, source: string, own: Storage, redis: { prefix: string }, who: string, have: string): string {
  return (
    `this deployment (TL_QUEUE_PREFIX=${redis.prefix} on its Redis) keeps its embeddings and models in s3://${theirs.bucket}/${theirs.prefix}, ${source}; ` +
    // (not "where no one looks": it may be another deployment's, sharing this Redis and bucket)
    `${who} has s3://${own.bucket}/${own.prefix}, which is not this deployment's: ${storageFix(theirs, own)} ${have}, or another TL_QUEUE_PREFIX for a deployment of its own.`
  );
}

/** Whether two storages are one: the same bucket and prefix. */
export function sameStorage(a: Storage, b: Storage): boolean {
  return a.bucket === b.bucket && a.prefix === b.prefix;
}

/**
 * When this process's TL_BUCKET/TL_PREFIX are none of the live workers' (a shell set up apart
 * from them), the line that says so and which settings to set; undefined when one matches, or
 * when no live worker says (none live, or a version before workers said where).
 */
export function storageAdvice(
  own: Storage,
  workers: readonly { storage?: Storage }[],
  whose: { keep: string; have: string } = { keep: 'the live embed workers keep', have: 'as the workers have it' },
): string | undefined {
  const theirs = [...new Map(workers.flatMap((w) => (w.storage ? [[`s3://${w.storage.bucket}/${w.storage.prefix}`, w.storage] as const] : []))).entries()].sort(([a], [b]) => a.localeCompare(b));
  if (theirs.length === 0 || theirs.some(([, s]) => s.bucket === own.bucket && s.prefix === own.prefix)) return undefined;
  const looks = `this shell looks in s3://${own.bucket}/${own.prefix}, but ${whose.keep} embeddings and models in`;
  // workers that disagree among themselves: which of them is right is not this line's to say
  if (theirs.length > 1) return `${looks} ${theirs.map(([url]) => url).join(' and ')} (they disagree: set TL_BUCKET and TL_PREFIX as the workers whose models you want have them)`;
  const [[url, s]] = theirs as [[string, Storage]];
  return `${looks} ${url}: ${storageFix(s, own)} ${whose.have}`;
}

/** A space with the embed workers that run it now. */
export interface SpaceWorkers {
  space: EmbeddingSpace;
  /** live: they take its jobs */
  workers: EmbedWorkerInfo[];
  /** beating, and still loading their model, the latest to start first */
  starting: StartingWorker[];
}

/** A worker that has stopped beating, and for how long (Redis's clock). */
export interface SilentWorker {
  worker: EmbedWorkerInfo;
  silentMs: number;
  /** a failed start kept past the registry's silent workers (FAILED_START_KEPT_MS): said with how long ago */
  kept?: true;
}

/** A worker loading its model, and for how long it has been (Redis's clock). */
export interface StartingWorker {
  worker: EmbedWorkerInfo;
  startingMs: number;
}

/** No space could be chosen without the user's help; the message says which exist and what to do. */
export class SpaceResolutionError extends Error {
  override readonly name = 'SpaceResolutionError';
}

/** One embed worker's heartbeat: `ready` once its model is loaded (it is live from then), `stop` when it stops. */
export interface WorkerBeat {
  workerId: string;
  ready: (backend: string, threads?: number) => Promise<void>;
  /** it gave up starting: said, with why, to those waiting on its space, for three TTLs */
  failed: (reason: string) => Promise<void>;
  stop: () => Promise<void>;
}

/** The chosen space, how many workers run it now, and a line for the user. */
export interface ResolvedSpace {
  space: EmbeddingSpace;
  workers: number;
  message: string;
}

/**
 * The field of the spaces hash that holds when its first heartbeat was written: kept in the hash
 * itself, so that whatever loses the spaces (a flush, an eviction, a delete) loses it too.
 */
const SINCE_FIELD = '@since';

// Heartbeats use Redis's clock, so machines whose clocks disagree still agree on who is alive.
// Each beat of a live worker publishes the space again, so the registry heals itself if Redis
// lost its data; the first beat the spaces hash holds is remembered in it: one beat later, every
// live worker's space is in it again. A worker loading its model beats in the starting set, and
// publishes nothing: one that never loads leaves no space behind.
const BEAT = new RedisScript('tlEmbedWorkerBeat', `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
if ARGV[7] == 'starting' then
  redis.call('ZADD', KEYS[4], now, ARGV[1])
else
  redis.call('ZREM', KEYS[4], ARGV[1])
  redis.call('ZADD', KEYS[1], now, ARGV[1])
  redis.call('HDEL', KEYS[5], ARGV[4])
  redis.call('HSET', KEYS[3], ARGV[4], ARGV[5])
  redis.call('HSETNX', KEYS[3], ARGV[6], now)
end
for _, set in ipairs({ KEYS[1], KEYS[4] }) do
  local stale = redis.call('ZRANGEBYSCORE', set, '-inf', now - tonumber(ARGV[3]) * 4)
  for _, id in ipairs(stale) do
    redis.call('ZREM', set, id)
    if not redis.call('ZSCORE', KEYS[1], id) and not redis.call('ZSCORE', KEYS[4], id) then redis.call('HDEL', KEYS[2], id) end
  end
end
return now`, 5);
/**
 * A worker that gave up starting: its record, silent at once (not loading any more), and named as
 * silent ones are for three TTLs more (45 s by default); and its space's latest failed start,
 * kept until a worker of the space goes live (or FAILED_START_KEPT_MS has passed), for starts
 * further apart than that (Kubernetes backs a crashing pod off up to 5 minutes).
 */
const FAILED = new RedisScript('tlEmbedWorkerFailed', `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[1], now - tonumber(ARGV[3]) - 1, ARGV[1])
redis.call('HSET', KEYS[3], ARGV[4], '{"at":' .. now .. ',"worker":' .. ARGV[2] .. '}')
return now`, 3);
/** Each space's latest failed start, and Redis's clock. */
const START_FAILURES = new RedisScript('tlEmbedStartFailures', `
local t = redis.call('TIME')
return { tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), redis.call('HGETALL', KEYS[1]) }`, 1);
/** How long a space's latest failed start is named (unless a worker of the space goes live first). */
export const FAILED_START_KEPT_MS = 15 * 60_000;
/** Redis's clock, and the workers that beat within a TTL: live ones, and those loading their model. */
const BEATING = new RedisScript('tlBeatingEmbedWorkers', `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local since = now - tonumber(ARGV[1])
return { now, redis.call('ZRANGEBYSCORE', KEYS[1], since, '+inf'), redis.call('ZRANGEBYSCORE', KEYS[2], since, '+inf') }`, 2);
const SILENT = new RedisScript('tlSilentEmbedWorkers', `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local before = '(' .. (now - tonumber(ARGV[1]))
return { now, redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', before, 'WITHSCORES'), redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', before, 'WITHSCORES') }`, 2);
/** How long ago (ms, Redis clock) the first heartbeat the spaces hash holds was written; -1 when it holds none. */
const REGISTRY_AGE = new RedisScript('tlSpacesAge', `
local since = redis.call('HGET', KEYS[1], ARGV[1])
if not since then return -1 end
local t = redis.call('TIME')
return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(since)`, 1);

/**
 * The embedding spaces of a deployment, as cluster state in Redis: embed workers publish the
 * space they run and keep a heartbeat; readers see which spaces exist and which have live
 * workers, and choose one (see `resolve`).
 */
export class SpaceRegistry {
  constructor(
    private readonly redis: Redis,
    private readonly keys: RedisKeys,
    /** a worker whose last heartbeat is older than this is gone */
    private readonly ttlMs = 15_000,
  ) {}

  /** How often a worker beats (and publishes its space again): three beats to a TTL. */
  private get beatMs(): number {
    return Math.max(500, Math.floor(this.ttlMs / 3));
  }

  /** Records a space (idempotent). */
  async publish(space: EmbeddingSpace): Promise<void> {
    await this.redis.hset(this.keys.spaces(), space.id, JSON.stringify(space));
  }

  /** A space by id, if one was ever published, or a worker loading its model will publish it. */
  async get(id: string): Promise<EmbeddingSpace | undefined> {
    if (id === SINCE_FIELD) return undefined;
    const raw = await this.redis.hget(this.keys.spaces(), id);
    if (raw !== null) return parseDocument(EmbeddingSpace, JSON.parse(raw), `space ${id}`);
    // not yet published: the space of a worker loading its model
    return (await this.startingWorkers(id))[0]?.worker.starting;
  }

  /**
   * Every space published, and those of workers loading their model, with the workers alive in
   * each now and those loading.
   */
  async list(): Promise<SpaceWorkers[]> {
    const [all, beating] = await Promise.all([this.redis.hgetall(this.keys.spaces()), this.beating()]);
    const spaces = new Map<string, EmbeddingSpace>();
    for (const [id, raw] of Object.entries(all)) if (id !== SINCE_FIELD) spaces.set(id, parseDocument(EmbeddingSpace, JSON.parse(raw), 'a published space'));
    for (const { worker } of beating.starting) if (!spaces.has(worker.space)) spaces.set(worker.space, worker.starting!);
    return [...spaces.values()]
      .map((space) => ({ space, workers: beating.live.filter((w) => w.space === space.id), starting: beating.starting.filter((w) => w.worker.space === space.id) }))
      .sort((a, b) => b.workers.length - a.workers.length || a.space.id.localeCompare(b.space.id));
  }

  /** Embed workers whose heartbeat is recent and that have loaded their model (they take jobs). */
  async liveWorkers(): Promise<EmbedWorkerInfo[]> {
    return (await this.beating()).live;
  }

  /** Embed workers of any space beating from `host` (live, or loading their model): the processes that may share its cores. */
  async workersOn(host: string): Promise<EmbedWorkerInfo[]> {
    const { live, starting } = await this.beating();
    return [...live, ...starting.map((s) => s.worker)].filter((w) => w.host === host);
  }

  /** Workers of one space that beat and are still loading their model, the latest to start first. */
  async startingWorkers(spaceId: string): Promise<StartingWorker[]> {
    return (await this.beating()).starting.filter((w) => w.worker.space === spaceId);
  }

  /** Every embed worker whose heartbeat is recent: live, and loading (with how long, by Redis's clock). */
  private async beating(): Promise<{ live: EmbedWorkerInfo[]; starting: StartingWorker[] }> {
    const [now, live, starting] = (await BEATING.run(this.redis, [this.keys.embedWorkers(), this.keys.embedWorkersStarting()], [this.ttlMs])) as [number, string[], string[]];
    const infos = await this.infos([...live, ...starting]);
    return {
      live: infos.slice(0, live.length).filter((w): w is EmbedWorkerInfo => w !== undefined && !w.starting),
      starting: infos
        .slice(live.length)
        .filter((w): w is EmbedWorkerInfo => w?.starting !== undefined)
        .map((worker) => ({ worker, startingMs: Math.max(0, now - Date.parse(worker.startedAt)) }))
        .sort((a, b) => a.startingMs - b.startingMs),
    };
  }

  private async infos(ids: string[]): Promise<(EmbedWorkerInfo | undefined)[]> {
    if (ids.length === 0) return [];
    const raw = await this.redis.hmget(this.keys.embedWorkerInfo(), ...ids);
    return raw.map((r) => (r === null ? undefined : parseDocument(EmbedWorkerInfo, JSON.parse(r), 'an embed worker heartbeat')));
  }

  /**
   * Workers of one space that beat lately and have stopped (killed, SIGSTOPped, blocked, or cut
   * off from Redis; loading their model, or live), with how long ago they last beat, the latest
   * first: silent for less than four TTLs (a beat clears them then; with none beating they would
   * stay for ever).
   */
  async silentWorkers(spaceId: string): Promise<SilentWorker[]> {
    return (await this.silent()).filter((w) => w.worker.space === spaceId);
  }

  /**
   * Why the latest worker of `spaceId` to give up starting could not, as said to users: lately
   * (three TTLs) as it is, and for FAILED_START_KEPT_MS with how long ago, unless a worker of
   * the space has gone live since.
   */
  async failureOf(spaceId: string): Promise<string | undefined> {
    const failed = (await this.recentFailures()).find((w) => w.worker.space === spaceId);
    return failed && failedStart(failed);
  }

  /** Workers of any space that gave up starting lately (their records say why), the latest first; then each space's kept failed start. */
  async recentFailures(): Promise<SilentWorker[]> {
    const recent = (await this.silent()).filter((w) => w.worker.failed !== undefined);
    const kept = (await this.startFailures()).filter((k) => !recent.some((r) => r.worker.space === k.worker.space));
    return [...recent, ...kept];
  }

  /** Each space's latest failed start within FAILED_START_KEPT_MS, with how long ago (`silentMs`), the latest first. */
  private async startFailures(): Promise<SilentWorker[]> {
    const [now, flat] = (await START_FAILURES.run(this.redis, [this.keys.embedStartFailures()], [])) as [number, string[]];
    const out: SilentWorker[] = [];
    for (let i = 0; i + 1 < flat.length; i += 2) {
      const { at, worker } = JSON.parse(flat[i + 1]!) as { at: number; worker: unknown };
      if (now - at < FAILED_START_KEPT_MS) out.push({ worker: parseDocument(EmbedWorkerInfo, worker, 'a failed start'), silentMs: now - at, kept: true });
    }
    return out.sort((a, b) => a.silentMs - b.silentMs);
  }

  /** Every worker silent for less than four TTLs, live or loading before, the latest first. */
  private async silent(): Promise<SilentWorker[]> {
    const [now, ...sets] = (await SILENT.run(this.redis, [this.keys.embedWorkers(), this.keys.embedWorkersStarting()], [this.ttlMs])) as [number, string[], string[]];
    const beats = new Map<string, number>();
    for (const flat of sets) for (let i = 0; i + 1 < flat.length; i += 2) beats.set(flat[i]!, Number(flat[i + 1]));
    return (await this.infos([...beats.keys()]))
      .filter((w): w is EmbedWorkerInfo => w !== undefined)
      .map((worker) => ({ worker, silentMs: now - beats.get(worker.workerId)! }))
      .filter((w) => w.silentMs < 4 * this.ttlMs)
      .sort((a, b) => a.silentMs - b.silentMs);
  }

  /** Whether any embed worker has beaten in this Redis since its registry began (since Redis lost its data, if it did). */
  async everBeaten(): Promise<boolean> {
    return Number(await REGISTRY_AGE.run(this.redis, [this.keys.spaces()], [SINCE_FIELD])) >= 0;
  }

  /** Live workers of one space. */
  async workersOf(spaceId: string): Promise<number> {
    return (await this.liveWorkers()).filter((w) => w.space === spaceId).length;
  }

  /**
   * Publishes `space` and beats for this worker every ttl/3 until `stop()`, which removes it at
   * once (a crashed worker drops out when its beat goes stale).
   */
  async startHeartbeat(space: EmbeddingSpace, backend: string, onError: (err: Error) => void, storage?: Storage): Promise<WorkerBeat> {
    const beat = this.beatFor(space, { backend, onError, storage });
    await beat.ready(backend);
    return beat;
  }

  /**
   * Beats for this worker as loading its model, from before it loads it: a command waiting on its
   * space sees one is on its way (not that none is live), and can choose the space. Its first
   * beat is not waited for (the model loads meanwhile, Redis or not); `ready(backend)` makes it
   * live and publishes the space.
   */
  announceStarting(space: EmbeddingSpace, onError: (err: Error) => void, storage?: Storage): WorkerBeat {
    return this.beatFor(space, { starting: true, onError, storage });
  }

  private beatFor(space: EmbeddingSpace, o: { backend?: string; starting?: true; onError: (err: Error) => void; storage?: Storage | undefined }): WorkerBeat {
    let info: EmbedWorkerInfo = {
      workerId: PROCESS_NAME,
      space: space.id,
      backend: o.backend ?? 'loading',
      host: os.hostname(),
      pid: process.pid,
      startedAt: new Date().toISOString(),
      ...(o.storage && { storage: o.storage }),
      ...(o.starting && { starting: space }),
    };
    const beat = () =>
      BEAT.run(
        this.redis,
        [this.keys.embedWorkers(), this.keys.embedWorkerInfo(), this.keys.spaces(), this.keys.embedWorkersStarting(), this.keys.embedStartFailures()],
        [info.workerId, JSON.stringify(info), this.ttlMs, space.id, JSON.stringify(space), SINCE_FIELD, info.starting ? 'starting' : 'live'],
      );
    let timer: NodeJS.Timeout | undefined;
    // nothing is written once it stops, and a beat on its way lands before the record goes
    let stopped = false;
    let inflight: Promise<unknown> = Promise.resolve();
    const guarded = () => {
      if (stopped) return Promise.resolve(0);
      const p = beat();
      inflight = p.catch(() => undefined);
      return p;
    };
    const every = () => {
      clearInterval(timer);
      timer = setInterval(() => void guarded().catch(o.onError), this.beatMs);
      timer.unref();
    };
    if (o.starting) {
      // its start by Redis's clock, as readers time a load (this machine's may be off), written
      // at once in a second beat
      void guarded()
        .then((now) => {
          info = { ...info, startedAt: new Date(Number(now)).toISOString() };
          return guarded();
        })
        .catch(o.onError);
      every();
    }
    return {
      workerId: info.workerId,
      ready: async (backend, threads) => {
        const { starting: _, ...live } = info;
        info = { ...live, backend, ...(threads !== undefined && { threads }) };
        await guarded();
        every();
      },
      failed: async (reason) => {
        stopped = true;
        clearInterval(timer);
        await inflight;
        await FAILED.run(this.redis, [this.keys.embedWorkersStarting(), this.keys.embedWorkerInfo(), this.keys.embedStartFailures()], [info.workerId, JSON.stringify({ ...info, failed: reason }), this.ttlMs, space.id]);
      },
      stop: async () => {
        stopped = true;
        clearInterval(timer);
        await inflight;
        await this.redis.multi().zrem(this.keys.embedWorkers(), info.workerId).zrem(this.keys.embedWorkersStarting(), info.workerId).hdel(this.keys.embedWorkerInfo(), info.workerId).exec();
      },
    };
  }

  /**
   * Chooses the space a command works in: the one named by `requested` (`--embedder ID`), else
   * `current` (the space of the dataset the command works on, once published: refused while
   * only other spaces' workers are live), else the one space with live workers, else the one
   * space ever published. Anything ambiguous or
   * empty is a SpaceResolutionError whose one line lists the spaces and their workers. `reason`
   * says why `requested` was asked for, in the message. A requested space not published is
   * waited for until one heartbeat has passed since the first this Redis holds: after Redis lost
   * its data, a live worker publishes it again within that (the command `status` prints then
   * names it). A space still unknown after that (a typo) is refused at once.
   */
  async resolve(requested?: string, reason = 'chosen with --embedder', current?: string): Promise<ResolvedSpace> {
    let waited = 0;
    // (or the space of a worker loading its model: it publishes it once live)
    const published = async (id: string) => id !== SINCE_FIELD && ((await this.redis.hexists(this.keys.spaces(), id)) === 1 || (await this.startingWorkers(id)).length > 0);
    const sought = requested ?? current;
    if (sought !== undefined && !(await published(sought))) {
      const age = Number(await REGISTRY_AGE.run(this.redis, [this.keys.spaces()], [SINCE_FIELD]));
      const oneBeat = this.beatMs + 1_000;
      waited = age < 0 ? oneBeat : Math.max(0, oneBeat - age);
      const deadline = Date.now() + waited;
      while (Date.now() < deadline && !(await published(sought))) await sleep(250);
    }
    const spaces = await this.list();
    const describe = (list: SpaceWorkers[]) => list.map((s) => `${s.space.id} (${plural(s.workers.length, 'worker')}${s.starting.length ? `, ${s.starting.length} loading` : ''})`).join(', ');
    const chosen = (s: SpaceWorkers, why: string): ResolvedSpace => ({
      space: s.space,
      workers: s.workers.length,
      message:
        s.workers.length > 0
          ? `embedding space ${s.space.id} (${why}; ${plural(s.workers.length, 'embed worker')}: ${[...new Set(s.workers.map((w) => w.backend))].join(', ')})`
          : s.starting.length > 0
            ? `embedding space ${s.space.id} (${why}); no embed worker is live for it yet: ${plural(s.starting.length, 'worker')} loading the model, images wait in its queue until then`
            : `embedding space ${s.space.id} (${why}); no embed worker is live for it now: images wait in its queue until one starts`,
    });
    if (requested !== undefined) {
      const s = spaces.find((x) => x.space.id === requested);
      if (!s) {
        const known = spaces.length ? `known: ${describe(spaces)}` : 'no space is published in this Redis: start the stack (transferline up) or an embed worker of that space';
        const why =
          (await this.failureOf(requested)) ??
          (waited > 0
            ? `none was published within ${Math.max(1, Math.round(waited / 1000))} s`
            : 'no embed worker has published it');
        throw new SpaceResolutionError(`no embedding space ${requested} is known here (${why}); ${known}`);
      }
      return chosen(s, reason);
    }
    const live = spaces.filter((s) => s.workers.length > 0);
    // A dataset stays in its space: whatever other spaces' workers are live, or none. It moves to
    // another only when asked (--embedder), as its images are embedded again there.
    const own = current === undefined ? undefined : spaces.find((s) => s.space.id === current);
    if (current !== undefined && !own) {
      // its worker never went live (it could not load its model, say): a dataset is not moved to
      // whatever else is published without being asked
      const why = (await this.failureOf(current)) ?? 'no embed worker of it is live or has published it here';
      throw new SpaceResolutionError(
        `the dataset is in embedding space ${current}, which is not published here (${why}): start a worker of it (the images in its queue wait for one), or move the dataset with --embedder ID (its images are embedded again there)${spaces.length ? `; known: ${describe(spaces)}` : ''}`,
      );
    }
    if (own && own.workers.length > 0) return chosen(own, live.length > 1 ? `the dataset's space; embed workers of ${live.length} spaces are live` : 'the one with live embed workers');
    if (own && live.length === 0) return chosen(own, "the dataset's space");
    if (own) {
      throw new SpaceResolutionError(
        `the dataset is in embedding space ${own.space.id}, and no embed worker of it is live now${own.starting.length ? ` (${plural(own.starting.length, 'worker')} loading the model)` : ''} while those of ${describe(live)} are: ${own.starting.length ? 'wait for it' : `start a worker of ${own.space.id}`} (or ingest with --embedder ${own.space.id}: the images wait in its queue), or move the dataset with --embedder ID (its images are embedded again there)`,
      );
    }
    if (live.length === 1) return chosen(live[0]!, 'the one with live embed workers');
    if (live.length > 1) throw new SpaceResolutionError(`embed workers of ${live.length} embedding spaces are live: ${describe(live)}; choose one with --embedder ID`);
    if (spaces.length === 1) return chosen(spaces[0]!, 'the only one published');
    if (spaces.length > 1) throw new SpaceResolutionError(`no embed worker is live, and ${spaces.length} embedding spaces are known: ${describe(spaces)}; choose one with --embedder ID`);
    const [failed] = await this.recentFailures();
    throw new SpaceResolutionError(
      failed
        ? `no embed worker has published its embedding space in this Redis: ${failedStart(failed)} (a worker of ${failed.worker.space})`
        : 'no embed worker has published its embedding space in this Redis: start the stack (transferline up) or an embed worker (feature-worker embed) with the same REDIS_URL and TL_QUEUE_PREFIX',
    );
  }
}

/** A worker that gave up starting, as every command says it; `agoMs`: when that was, said for one that is not recent. */
export function couldNotStart(worker: EmbedWorkerInfo, agoMs?: number): string {
  const ago = agoMs === undefined ? '' : `, ${agoMs < 120_000 ? `${Math.round(agoMs / 1000)} s` : `${Math.round(agoMs / 60_000)} min`} ago`;
  return `its worker ${worker.workerId} could not start${ago}: ${worker.failed}`;
}

/** A failed start as the registry reports it: a kept one (not recent) with how long ago. */
function failedStart(w: SilentWorker): string {
  return couldNotStart(w.worker, w.kept && w.silentMs);
}

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}
