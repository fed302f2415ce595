import { randomBytes } from 'node:crypto';
import { DatasetRepository, DeferJob, RedisScript, type ChainableCommander, type JobContext, type Logger, type Metrics, type Queues, type Redis, type RedisKeys } from '@transferline/shared';

/** Room for one tensor, held until released (with `pipe`, the release is queued there). */
export interface Room {
  release: (pipe?: ChainableCommander) => Promise<void>;
  /**
   * The room, still held: renewed when it was taken long ago (a slow decode), or asked for again,
   * waiting as admission does, when it lapsed meanwhile (else the bound would not hold).
   */
  keep: (ctx: JobContext) => Promise<Room>;
}

/** An image preprocess has downloaded, as the admission's first look sees it. */
export interface FirstLook {
  itemId: string;
  etag: string;
  sha256: string;
}

/**
 * The admission, over KEYS[1] (the space's reservations) and KEYS[2..6] (its embed queue's
 * waiting, paused, active, delayed and prioritized jobs), ARGV[1..3] (the bound, a reservation id,
 * its lifetime in ms): {1, n} reserved, n counting it; {0, n} no room.
 */
const ADMIT_LUA = `
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

/**
 * Backpressure: at most `bound` tensors wait for each embedding space's embed stage, across every
 * preprocess process. A tensor is counted by its embed job (waiting, active, delayed or
 * prioritized) or, between storing the pixels and adding that job, by a reservation in a sorted
 * set; one Lua script checks the count and reserves atomically, so the bound holds exactly,
 * however many processes and jobs in hand. Preprocess asks before it decodes, in the same round
 * trip as its first look at the image (`look`: its object's content remembered, and no room
 * needed when the space has its embedding already), so a reservation covers the decode too (the
 * bound counts images being decoded), and a job that finds no room polls with its downloaded
 * bytes but no pixels in memory (typically while embed catches up, or while the embed workers
 * are still loading their model); each poll looks again, so a twin's embedding ends the wait.
 * It is put back for later, without spending an attempt, when its space has no live embed worker and another space has some (a
 * space nobody serves cannot hold the preprocess slots that the others need), and when its
 * process stops. Reservations expire (a process that dies while holding one frees it within
 * RESERVATION_MS); a decode that outlasts a good part of that renews its room (`keep`), or asks
 * again if it lapsed.
 */
export class EmbedBacklogGate {
  private static readonly RESERVATION_MS = 60_000;
  private static readonly POLL_MS = 200;
  /** how often a held job checks that some embed worker of its space is still live */
  private static readonly LIVENESS_MS = 5_000;
  private static readonly SCRIPT = new RedisScript('tlAdmitToEmbedBacklog', ADMIT_LUA, 6);
  /** A reservation (ARGV[1]) given another ARGV[2] ms from now, if it is still there: 1, else 0. */
  private static readonly RENEW = new RedisScript(
    'tlRenewEmbedBacklogRoom',
    `
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
    return 1`,
    1,
  );
  /**
   * Preprocess's first look at an image, then the admission: remembers the object's content
   * (KEYS[7] field ARGV[4] = ARGV[5]) and answers {2, 0}, reserving nothing, when the space's
   * embedding index (KEYS[8]) has its hash (ARGV[6]).
   */
  private static readonly LOOK_THEN_ADMIT = new RedisScript(
    'tlLookThenAdmitToEmbedBacklog',
    `
    redis.call('HSET', KEYS[7], ARGV[4], ARGV[5])
    if redis.call('HEXISTS', KEYS[8], ARGV[6]) == 1 then return {2, 0} end${ADMIT_LUA}`,
    8,
  );

  private held = 0;
  private closed = false;

  constructor(
    private readonly redis: Redis,
    private readonly queues: Queues,
    private readonly keys: RedisKeys,
    private readonly bound: number,
    /** the spaces of the live embed workers, one entry per worker */
    private readonly liveSpaces: () => Promise<string[]>,
    private readonly metrics: Metrics,
    private readonly log: Logger,
  ) {
    // there from the start: a dashboard's "held" panel shows 0, not "no data", until the first hold
    metrics.queueJobs.set({ queue: 'preprocess', state: 'held' }, 0);
  }

  private keysOf(space: string): string[] {
    const q = this.queues.embed(space);
    return [this.keys.backpressure(space), ...['wait', 'paused', 'active', 'delayed', 'prioritized'].map((t) => q.toKey(t))];
  }

  /**
   * Room for one tensor of the space, waiting for it. With `look`, the first ask is the first look
   * at the image too, and answers 'embedded' (no room taken) when the space has its embedding.
   */
  async admit(space: string, ctx: JobContext): Promise<Room>;
  async admit(space: string, ctx: JobContext, look: FirstLook): Promise<Room | 'embedded'>;
  async admit(space: string, ctx: JobContext, look?: FirstLook): Promise<Room | 'embedded'> {
    const id = randomBytes(8).toString('hex');
    const keys = this.keysOf(space);
    const args = [this.bound, id, EmbedBacklogGate.RESERVATION_MS];
    let waitingSince = 0;
    let checked = 0;
    let admitted = false;
    try {
      for (;;) {
        // Put back without spending an attempt: a stop (Ctrl-C, a restart, a scale-down) is no fault of the job.
        if (this.closed) throw new DeferJob(1_000, 'worker stopping while waiting for room in the embed backlog; the job is put back');
        const [ok, n] = (await (look
          ? EmbedBacklogGate.LOOK_THEN_ADMIT.run(
              this.redis,
              [...keys, this.keys.objectHashes(), this.keys.embeddingIndex(space)],
              [...args, look.itemId, DatasetRepository.hashEntry(look.etag, look.sha256), look.sha256],
            )
          : EmbedBacklogGate.SCRIPT.run(this.redis, keys, args))) as [number, number];
        if (ok === 2) return 'embedded';
        if (ok === 1) {
          admitted = true;
          break;
        }
        const now = Date.now();
        if (!waitingSince) {
          waitingSince = now;
          if (this.held++ === 0) this.log.info({ backlog: n, bound: this.bound, space }, 'embed backlog at the bound: holding preprocess jobs until embed catches up');
          this.metrics.queueJobs.set({ queue: 'preprocess', state: 'held' }, this.held);
          ctx.log.debug({ backlog: n }, 'waiting for room in the embed backlog');
        }
        if (now - checked > EmbedBacklogGate.LIVENESS_MS) {
          checked = now;
          const live = await this.liveSpaces();
          if (!live.includes(space) && live.length > 0) throw new DeferJob(30_000, `the embed backlog of ${space} is full, no embed worker of that space is live, and other spaces need the slot`);
        }
        await new Promise((r) => setTimeout(r, EmbedBacklogGate.POLL_MS * (0.75 + Math.random() / 2)));
      }
    } finally {
      if (waitingSince) {
        // (only when a held job was let through: not when the worker stops with jobs held, nor
        // when they are put back for a missing worker or an outage: an operator's trial read
        // "resumed" between "stopping" and "stopped")
        if (--this.held === 0 && admitted) this.log.info('embed backlog below the bound again: preprocess resumed');
        this.metrics.queueJobs.set({ queue: 'preprocess', state: 'held' }, this.held);
      }
    }
    const taken = Date.now();
    const room: Room = {
      release: async (pipe) => {
        if (pipe) pipe.zrem(keys[0]!, id);
        else await this.redis.zrem(keys[0]!, id);
      },
      keep: async (keepCtx) => {
        if (Date.now() - taken < EmbedBacklogGate.RESERVATION_MS / 4) return room;
        if ((await EmbedBacklogGate.RENEW.run(this.redis, [keys[0]!], [id, EmbedBacklogGate.RESERVATION_MS])) === 1) return room;
        keepCtx.log.debug({ space }, 'room in the embed backlog lapsed during the decode: asking again');
        return this.admit(space, keepCtx);
      },
    };
    return room;
  }

  /**
   * Sets `tl_queue_jobs{queue="embed",state="backlog"}` to the tensors that wait for the space's
   * embed stage now, counted as admission counts them (a bound of 0 reserves nothing; the script
   * also drops reservations past their expiry, as every admission does). Read when
   * Prometheus scrapes: a count kept from the last admission stayed at its last value once
   * preprocess had nothing more to hand over.
   */
  async exportBacklog(space: string): Promise<void> {
    const [, n] = (await EmbedBacklogGate.SCRIPT.run(this.redis, this.keysOf(space), [0, 'none', 0])) as [number, number];
    this.metrics.queueJobs.set({ queue: 'embed', space, state: 'backlog' }, n);
  }

  /** Makes jobs waiting for room give up (on shutdown). */
  close(): void {
    this.closed = true;
  }
}
