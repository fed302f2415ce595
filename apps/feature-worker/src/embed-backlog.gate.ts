import { randomBytes } from 'node:crypto';
import type { JobContext, Logger, Metrics, Redis } from '@transferline/shared';
import type { Queue } from 'bullmq';
import type { TensorGate } from './preprocess-image.job.js';

/**
 * Backpressure: at most `bound` tensors wait for embed, across every preprocess process.
 * A tensor is counted by its embed job (waiting, active, delayed or prioritized) or, between
 * storing the pixels and adding that job, by a reservation in a sorted set; one Lua script
 * checks the count and reserves atomically, so the bound holds exactly, however many processes
 * and jobs in hand. A job that finds no room keeps its pixels in memory and polls; when all of a
 * process's slots are held it takes no new job. Reservations expire (a process that dies while
 * holding one frees it within RESERVATION_MS).
 */
export class EmbedBacklogGate implements TensorGate {
  private static readonly RESERVATION_MS = 60_000;
  private static readonly POLL_MS = 200;
  private static readonly SCRIPT = `
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
    local n = redis.call('ZCARD', KEYS[1]) + redis.call('LLEN', KEYS[2]) + redis.call('LLEN', KEYS[3])
      + redis.call('LLEN', KEYS[4]) + redis.call('ZCARD', KEYS[5]) + redis.call('ZCARD', KEYS[6])
    if n < tonumber(ARGV[1]) then
      redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
      return {1, n + 1}
    end
    return {0, n}`;

  private held = 0;
  private closed = false;
  private readonly keys: string[];

  constructor(
    private readonly redis: Redis,
    embedQueue: Queue,
    reservationsKey: string,
    private readonly bound: number,
    private readonly metrics: Metrics,
    private readonly log: Logger,
  ) {
    this.keys = [reservationsKey, ...['wait', 'paused', 'active', 'delayed', 'prioritized'].map((t) => embedQueue.toKey(t))];
  }

  async admit(ctx: JobContext): Promise<{ release: () => Promise<void> }> {
    const id = randomBytes(8).toString('hex');
    let waiting = false;
    try {
      for (;;) {
        if (this.closed) throw new Error('worker stopping while waiting for room in the embed backlog; the job will be retried');
        const [ok, n] = (await this.redis.eval(EmbedBacklogGate.SCRIPT, this.keys.length, ...this.keys, this.bound, id, EmbedBacklogGate.RESERVATION_MS)) as [number, number];
        this.metrics.queueJobs.set({ queue: 'embed', state: 'backlog' }, n);
        if (ok === 1) break;
        if (!waiting) {
          waiting = true;
          if (this.held++ === 0) this.log.info({ backlog: n, bound: this.bound }, 'embed backlog at the bound: holding preprocess jobs until embed catches up');
          this.metrics.queueJobs.set({ queue: 'preprocess', state: 'held' }, this.held);
          ctx.log.debug({ backlog: n }, 'waiting for room in the embed backlog');
        }
        await new Promise((r) => setTimeout(r, EmbedBacklogGate.POLL_MS * (0.75 + Math.random() / 2)));
      }
    } finally {
      if (waiting) {
        if (--this.held === 0) this.log.info('embed backlog below the bound again: preprocess resumed');
        this.metrics.queueJobs.set({ queue: 'preprocess', state: 'held' }, this.held);
      }
    }
    return { release: async () => void (await this.redis.zrem(this.keys[0]!, id)) };
  }

  /** Makes jobs waiting for room give up (on shutdown). */
  close(): void {
    this.closed = true;
  }
}
