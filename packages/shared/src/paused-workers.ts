import type { RedisKeys } from './keys.js';
import { PROCESS_NAME } from './lifecycle.js';
import { RedisScript, type Redis } from './redis.client.js';

/** A worker paused by an outage of one of its dependencies, as the CLI shows it. */
export interface PausedWorker {
  /** the worker's PROCESS_NAME (host:pid:random) */
  worker: string;
  dependency: string;
  /** what is wrong, e.g. "S3 at http://s3:9000 is unreachable" */
  reason: string;
  /** what ends the pause, e.g. "they resume by themselves when that is mended" */
  remedy: string;
  /** when it paused (ms since the epoch, Redis's clock) */
  since: number;
}

/** A paused worker as `list` gives it: how long it has been paused, measured on Redis's clock. */
export interface PausedWorkerNow extends PausedWorker {
  pausedSeconds: number;
}

const TTL_MS = 20_000;
const REFRESH_MS = 5_000;
// Expiry on Redis's clock, so that machines whose clocks differ agree on what is live.
const MARK = new RedisScript('tlMarkPaused', `
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  if ARGV[3] ~= '' then redis.call('ZREM', KEYS[1], ARGV[3]) end
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[2]))
  return 1`, 1);
const LIVE = new RedisScript('tlLivePaused', `
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local live = redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
  table.insert(live, 1, tostring(now))
  return live`, 1);

/**
 * Which workers of a queue are paused by an outage (S3 unreachable, credentials refused): a
 * paused worker still holds its Redis connection, so it counts as connected, and a CLI waiting
 * for its work would otherwise wait for ever ("workers are connected"). Each paused worker keeps
 * an entry alive (every 5 s, expiring after 20 s: a worker that dies while paused drops out).
 */
export class PausedWorkers {
  constructor(
    private readonly redis: Redis,
    private readonly keys: Pick<RedisKeys, 'pausedWorkers'>,
  ) {}

  /**
   * Marks this process's worker of `queue` paused until the returned function is called. What
   * is wrong is asked again at each refresh (an outage may turn into refused credentials).
   */
  mark(queue: string, o: { dependency: string; describe: () => { reason: string; remedy: string } }, onError: (err: unknown) => void = () => {}): () => Promise<void> {
    const key = this.keys.pausedWorkers(queue);
    // Redis's clock, as the CLI's "paused for N s" is measured on it (this machine's may differ).
    const since = this.redis.time().then(
      ([s, us]) => Number(s) * 1000 + Math.floor(Number(us) / 1000),
      () => Date.now(),
    );
    let entry = '';
    let stopped = false;
    // One write at a time, in order: each replaces the entry the one before it wrote.
    let writing: Promise<void> = Promise.resolve();
    const write = () => {
      writing = writing.then(async () => {
        const at = await since;
        if (stopped) return;
        const before = entry;
        entry = JSON.stringify({ worker: PROCESS_NAME, dependency: o.dependency, ...o.describe(), since: at } satisfies PausedWorker);
        await MARK.run(this.redis, [key], [entry, TTL_MS, before === entry ? '' : before]).catch(onError);
      });
    };
    write();
    const timer = setInterval(write, REFRESH_MS);
    timer.unref();
    return async () => {
      stopped = true;
      clearInterval(timer);
      await writing;
      if (entry) await this.redis.zrem(key, entry).catch(onError);
    };
  }

  /**
   * When every one of the `connected` workers of `queue` is paused, why, how long, and what ends
   * it ("all 2 of its workers are paused: S3 at … is unreachable (for 40 s); they resume by
   * themselves when that is mended"); undefined when one is not (or none is connected), or, with
   * `forAtLeastSeconds`, when one has been paused for less than that.
   */
  async allPaused(queue: string, connected: number, forAtLeastSeconds = 0): Promise<string | undefined> {
    const paused = await this.list(queue);
    if (connected === 0 || paused.length < connected) return undefined;
    if (Math.min(...paused.map((p) => p.pausedSeconds)) < forAtLeastSeconds) return undefined;
    const reasons = [...new Set(paused.map((p) => p.reason))].join('; ');
    const remedies = [...new Set(paused.map((p) => p.remedy))].join('; ');
    const longest = Math.max(...paused.map((p) => p.pausedSeconds));
    return `${connected === 1 ? 'its worker is' : `all ${connected} of its workers are`} paused: ${reasons} (for ${longest} s); ${remedies}`;
  }

  /** The workers of `queue` paused now. */
  async list(queue: string): Promise<PausedWorkerNow[]> {
    const [now, ...entries] = (await LIVE.run(this.redis, [this.keys.pausedWorkers(queue)], [])) as string[];
    return entries.map((e) => {
      const w = JSON.parse(e) as PausedWorker;
      return { ...w, pausedSeconds: Math.max(0, Math.round((Number(now) - w.since) / 1000)) };
    });
  }
}
