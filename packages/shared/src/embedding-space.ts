import os from 'node:os';
import type { Redis } from 'ioredis';
import type { Config } from './config.js';
import { EmbeddingSpace, EmbedWorkerInfo, parseDocument } from './documents.js';
import type { RedisKeys } from './keys.js';
import { PROCESS_NAME, sleep } from './lifecycle.js';
import { RedisScript } from './redis.client.js';

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
  const w = weights === 'random' ? `random-seed${seed}` : `imagenet-${weightsMd5.slice(0, 8)}`;
  return {
    id: `efficientnet-b0.${w}.${config.preprocess.resize}${EFFICIENTNET_B0.inputSize}`,
    model: 'efficientnet-b0',
    weights,
    ...(weights === 'random' ? { seed } : { weightsMd5 }),
    resize: config.preprocess.resize,
    inputSize: EFFICIENTNET_B0.inputSize,
    dim: EFFICIENTNET_B0.dim,
  };
}

/** Where a deployment keeps embeddings and models: its TL_BUCKET and TL_PREFIX. */
export interface Storage {
  bucket: string;
  prefix: string;
}

/**
 * When this process's TL_BUCKET/TL_PREFIX are none of the live workers' (a shell set up apart
 * from them), the line that says so and which settings to set; undefined when one matches, or
 * when no live worker says (none live, or a version before workers said where).
 */
export function storageAdvice(own: Storage, workers: readonly EmbedWorkerInfo[]): string | undefined {
  const theirs = [...new Map(workers.flatMap((w) => (w.storage ? [[`s3://${w.storage.bucket}/${w.storage.prefix}`, w.storage] as const] : []))).entries()].sort(([a], [b]) => a.localeCompare(b));
  if (theirs.length === 0 || theirs.some(([, s]) => s.bucket === own.bucket && s.prefix === own.prefix)) return undefined;
  const looks = `this shell looks in s3://${own.bucket}/${own.prefix}, but the live embed workers keep embeddings and models in`;
  // workers that disagree among themselves: which of them is right is not this line's to say
  if (theirs.length > 1) return `${looks} ${theirs.map(([url]) => url).join(' and ')} (they disagree: set TL_BUCKET and TL_PREFIX as the workers whose models you want have them)`;
  const [[url, s]] = theirs as [[string, Storage]];
  const settings = [...(s.bucket !== own.bucket ? [`TL_BUCKET=${s.bucket}`] : []), ...(s.prefix !== own.prefix ? [s.prefix === '' ? 'TL_PREFIX unset' : `TL_PREFIX=${s.prefix}`] : [])];
  return `${looks} ${url}: set ${settings.join(' and ')} as the workers have it`;
}

/** A space with the embed workers that run it now. */
export interface SpaceWorkers {
  space: EmbeddingSpace;
  /** live: they take its jobs */
  workers: EmbedWorkerInfo[];
  /** beating, and still loading their model */
  starting: EmbedWorkerInfo[];
}

/** No space could be chosen without the user's help; the message says which exist and what to do. */
export class SpaceResolutionError extends Error {
  override readonly name = 'SpaceResolutionError';
}

/** One embed worker's heartbeat: `ready` once its model is loaded (it is live from then), `stop` when it stops. */
export interface WorkerBeat {
  workerId: string;
  ready: (backend: string) => Promise<void>;
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
// Each beat publishes the space again, so the registry heals itself if Redis lost its data; the
// first beat the spaces hash holds is remembered in it: one beat later, every live worker's space
// is in it again.
const BEAT = new RedisScript('tlEmbedWorkerBeat', `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[4], ARGV[5])
redis.call('HSETNX', KEYS[3], ARGV[6], now)
local stale = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[3]) * 4)
for _, id in ipairs(stale) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
return now`, 3);
const LIVE = new RedisScript('tlLiveEmbedWorkers', `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[1]), '+inf')`, 1);
const SILENT = new RedisScript('tlSilentEmbedWorkers', `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return { now, redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - tonumber(ARGV[1])), 'WITHSCORES') }`, 1);
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

  /** A space by id, if one was ever published. */
  async get(id: string): Promise<EmbeddingSpace | undefined> {
    if (id === SINCE_FIELD) return undefined;
    const raw = await this.redis.hget(this.keys.spaces(), id);
    return raw === null ? undefined : parseDocument(EmbeddingSpace, JSON.parse(raw), `space ${id}`);
  }

  /** Every space ever published, with the workers alive in each now, and those loading their model. */
  async list(): Promise<SpaceWorkers[]> {
    const [all, beating] = await Promise.all([this.redis.hgetall(this.keys.spaces()), this.beating()]);
    return Object.entries(all)
      .filter(([id]) => id !== SINCE_FIELD)
      .map(([, raw]) => parseDocument(EmbeddingSpace, JSON.parse(raw), 'a published space'))
      .map((space) => {
        const of = beating.filter((w) => w.space === space.id);
        return { space, workers: of.filter((w) => !w.starting), starting: of.filter((w) => w.starting) };
      })
      .sort((a, b) => b.workers.length - a.workers.length || a.space.id.localeCompare(b.space.id));
  }

  /** Embed workers whose heartbeat is recent and that have loaded their model (they take jobs). */
  async liveWorkers(): Promise<EmbedWorkerInfo[]> {
    return (await this.beating()).filter((w) => !w.starting);
  }

  /**
   * Workers of one space that beat and are still loading their model, with how long they have
   * been at it (by this machine's clock), the longest first.
   */
  async startingWorkers(spaceId: string): Promise<{ worker: EmbedWorkerInfo; startingMs: number }[]> {
    return (await this.beating())
      .filter((w) => w.starting && w.space === spaceId)
      .map((worker) => ({ worker, startingMs: Math.max(0, Date.now() - Date.parse(worker.startedAt)) }))
      .sort((a, b) => b.startingMs - a.startingMs);
  }

  /** Every embed worker whose heartbeat is recent, starting or live. */
  private async beating(): Promise<EmbedWorkerInfo[]> {
    const ids = (await LIVE.run(this.redis, [this.keys.embedWorkers()], [this.ttlMs])) as string[];
    if (ids.length === 0) return [];
    const raw = await this.redis.hmget(this.keys.embedWorkerInfo(), ...ids);
    return raw.flatMap((r) => (r === null ? [] : [parseDocument(EmbedWorkerInfo, JSON.parse(r), 'an embed worker heartbeat')]));
  }

  /**
   * Workers of one space that beat lately and have stopped (killed, SIGSTOPped, blocked, or cut
   * off from Redis), with how long ago they last beat, the latest first: silent for less than four
   * TTLs (a live worker's beat clears them then; with none beating they would stay for ever).
   */
  async silentWorkers(spaceId: string): Promise<{ worker: EmbedWorkerInfo; silentMs: number }[]> {
    const [now, flat] = (await SILENT.run(this.redis, [this.keys.embedWorkers()], [this.ttlMs])) as [number, string[]];
    const beats = new Map<string, number>();
    for (let i = 0; i + 1 < flat.length; i += 2) beats.set(flat[i]!, Number(flat[i + 1]));
    if (beats.size === 0) return [];
    const raw = await this.redis.hmget(this.keys.embedWorkerInfo(), ...beats.keys());
    return raw
      .flatMap((r) => (r === null ? [] : [parseDocument(EmbedWorkerInfo, JSON.parse(r), 'an embed worker heartbeat')]))
      .filter((w) => w.space === spaceId)
      .map((worker) => ({ worker, silentMs: now - beats.get(worker.workerId)! }))
      .filter((w) => w.silentMs < 4 * this.ttlMs)
      .sort((a, b) => a.silentMs - b.silentMs);
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
   * Beats for this worker as starting, from before it loads its model: a command waiting on its
   * space sees one is on its way (not that none is live), and its space is published. Its first
   * beat is not waited for (the model loads meanwhile, Redis or not); `ready(backend)` makes it
   * live.
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
      ...(o.starting && { starting: true }),
    };
    const beat = () =>
      BEAT.run(this.redis, [this.keys.embedWorkers(), this.keys.embedWorkerInfo(), this.keys.spaces()], [info.workerId, JSON.stringify(info), this.ttlMs, space.id, JSON.stringify(space), SINCE_FIELD]);
    let timer: NodeJS.Timeout | undefined;
    const every = () => {
      clearInterval(timer);
      timer = setInterval(() => void beat().catch(o.onError), this.beatMs);
      timer.unref();
    };
    if (o.starting) {
      void beat().catch(o.onError);
      every();
    }
    return {
      workerId: info.workerId,
      ready: async (backend) => {
        const { starting: _, ...live } = info;
        info = { ...live, backend };
        await beat();
        every();
      },
      stop: async () => {
        clearInterval(timer);
        await this.redis.multi().zrem(this.keys.embedWorkers(), info.workerId).hdel(this.keys.embedWorkerInfo(), info.workerId).exec();
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
    const published = async (id: string) => id !== SINCE_FIELD && (await this.redis.hexists(this.keys.spaces(), id)) === 1;
    if (requested !== undefined && !(await published(requested))) {
      const age = Number(await REGISTRY_AGE.run(this.redis, [this.keys.spaces()], [SINCE_FIELD]));
      const oneBeat = this.beatMs + 1_000;
      waited = age < 0 ? oneBeat : Math.max(0, oneBeat - age);
      const deadline = Date.now() + waited;
      while (Date.now() < deadline && !(await published(requested))) await sleep(250);
    }
    const spaces = await this.list();
    const describe = (list: SpaceWorkers[]) => list.map((s) => `${s.space.id} (${plural(s.workers.length, 'worker')})`).join(', ');
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
        const why = waited > 0 ? `none was published within ${Math.max(1, Math.round(waited / 1000))} s` : 'no embed worker has published it';
        throw new SpaceResolutionError(`no embedding space ${requested} is known here (${why}); ${known}`);
      }
      return chosen(s, reason);
    }
    const live = spaces.filter((s) => s.workers.length > 0);
    // A dataset stays in its space: whatever other spaces' workers are live, or none. It moves to
    // another only when asked (--embedder), as its images are embedded again there.
    const own = current === undefined ? undefined : spaces.find((s) => s.space.id === current);
    if (own && own.workers.length > 0) return chosen(own, live.length > 1 ? `the dataset's space; embed workers of ${live.length} spaces are live` : 'the one with live embed workers');
    if (own && live.length === 0) return chosen(own, "the dataset's space");
    if (own) {
      throw new SpaceResolutionError(
        `the dataset is in embedding space ${own.space.id}, and no embed worker of it is live now while those of ${describe(live)} are: start a worker of ${own.space.id} (or ingest with --embedder ${own.space.id}: the images wait in its queue), or move the dataset with --embedder ID (its images are embedded again there)`,
      );
    }
    if (live.length === 1) return chosen(live[0]!, 'the one with live embed workers');
    if (live.length > 1) throw new SpaceResolutionError(`embed workers of ${live.length} embedding spaces are live: ${describe(live)}; choose one with --embedder ID`);
    if (spaces.length === 1) return chosen(spaces[0]!, 'the only one published');
    if (spaces.length > 1) throw new SpaceResolutionError(`no embed worker is live, and ${spaces.length} embedding spaces are known: ${describe(spaces)}; choose one with --embedder ID`);
    throw new SpaceResolutionError(
      'no embed worker has published its embedding space in this Redis: start the stack (transferline up) or an embed worker (feature-worker embed) with the same REDIS_URL and TL_QUEUE_PREFIX',
    );
  }
}

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}
