import type { RedisKeys } from './keys.js';
import { PROCESS_NAME } from './lifecycle.js';
import type { Redis } from './redis.client.js';

/** A worker process that `up` watches, as it records itself in Redis. */
export interface SupervisedWorker {
  by: 'up';
  /** how long its /healthz may go unanswered before `up` kills and starts it again */
  hangMs: number;
}

/**
 * How often a liveness URL is asked, and how long an answer may take, for a process declared
 * hung after `hangMs` without a 200: the Kubernetes manifests' livenessProbe (every 20 s, 5 s
 * timeout, 3 failures) for the default 60 s, proportionally less for a shorter one.
 */
export function livenessProbeTiming(hangMs: number): { periodMs: number; timeoutMs: number } {
  const periodMs = Math.min(20_000, Math.floor(hangMs / 3));
  return { periodMs, timeoutMs: Math.min(5_000, periodMs) };
}

/** Time for a worker `up` restarted to start and take up the jobs its hung predecessor held. */
const RESTART_GRACE_MS = 60_000;

/**
 * How long after a watched worker hung `up` has replaced it, at the latest: the hang time, a probe
 * period and a probe's timeout (it is killed at the first failed probe past the hang time), and
 * time for the new one to start and take the jobs up.
 */
export function upRestartWindowMs(hangMs: number): number {
  const { periodMs, timeoutMs } = livenessProbeTiming(hangMs);
  return hangMs + periodMs + timeoutMs + RESTART_GRACE_MS;
}

/** How often the record is written again; it lasts its hang time and this margin past the last write. */
const REFRESH_MS = 30_000;
const MARGIN_MS = 3 * 60_000;

/**
 * Which worker processes a supervisor restarts when they hang. A command waiting on a worker that
 * moves nothing (SIGSTOPped, its event loop blocked) would give up and tell the user to restart
 * it, while `up` is about to: knowing the worker is watched, it waits for that instead. The
 * record outlives a hung worker (it cannot write) by the hang time and minutes more, and names
 * the worker by its PROCESS_NAME, which BullMQ gives as the holder of its jobs and its connection's
 * name: one left by a killed worker names no one alive.
 */
export class SupervisedWorkers {
  constructor(
    private readonly redis: Redis,
    private readonly keys: Pick<RedisKeys, 'supervisedWorker'>,
  ) {}

  /** Records this process as watched with `hangMs`, until the returned function is called. */
  mark(hangMs: number, onError: (err: unknown) => void = () => {}): () => Promise<void> {
    const key = this.keys.supervisedWorker(PROCESS_NAME);
    const record = JSON.stringify({ by: 'up', hangMs } satisfies SupervisedWorker);
    const write = () => void this.redis.set(key, record, 'PX', hangMs + MARGIN_MS).catch(onError);
    write();
    const timer = setInterval(write, REFRESH_MS);
    timer.unref();
    return async () => {
      clearInterval(timer);
      await this.redis.del(key).catch(onError);
    };
  }

  /**
   * The longest hang time of the supervisors of `workers` (PROCESS_NAMEs), if every one of them
   * is watched: one that is not would never be restarted.
   */
  async hangMsOf(workers: string[]): Promise<number | undefined> {
    if (workers.length === 0) return undefined;
    const records = await this.redis.mget(workers.map((w) => this.keys.supervisedWorker(w)));
    let longest = 0;
    for (const r of records) {
      if (r === null) return undefined;
      const hangMs = Number((JSON.parse(r) as Partial<SupervisedWorker>).hangMs);
      if (!(hangMs > 0)) return undefined;
      longest = Math.max(longest, hangMs);
    }
    return longest;
  }
}
