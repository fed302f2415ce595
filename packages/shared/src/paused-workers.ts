import os from 'node:os';
import type { RedisKeys } from './keys.js';
import { RedisScript, type Redis } from './redis.client.js';

/** A worker paused by an outage of one of its dependencies, as the CLI shows it. */
export interface PausedWorker {
  /** host:pid */
  worker: string;
  dependency: string;
  /** what is wrong, e.g. "S3 at http://s3:9000 is unreachable" */
  reason: string;
  /** what ends the pause, e.g. "they resume by themselves when that is mended" */
  remedy: string;
  /** when it paused (ms since the epoch, the worker's clock) */
  since: number;
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
  return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')`, 1);

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
    const since = Date.now();
    const key = this.keys.pausedWorkers(queue);
    let entry = '';
    const write = () => {
      const before = entry;
      entry = JSON.stringify({ worker: `${os.hostname()}:${process.pid}`, dependency: o.dependency, ...o.describe(), since } satisfies PausedWorker);
      return MARK.run(this.redis, [key], [entry, TTL_MS, before === entry ? '' : before]).catch(onError);
    };
    void write();
    const timer = setInterval(() => void write(), REFRESH_MS);
    timer.unref();
    return async () => {
      clearInterval(timer);
      await this.redis.zrem(key, entry).catch(onError);
    };
  }

  /** The workers of `queue` paused now. */
  async list(queue: string): Promise<PausedWorker[]> {
    const entries = (await LIVE.run(this.redis, [this.keys.pausedWorkers(queue)], [])) as string[];
    return entries.map((e) => JSON.parse(e) as PausedWorker);
  }
}
