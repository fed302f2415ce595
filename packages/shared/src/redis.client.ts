import { Redis, type ChainableCommander, type RedisOptions } from 'ioredis';
import type { Logger } from './logger.js';
import type { Metrics } from './metrics.js';
import { connectionFailure, isConnectionCode } from './errors.js';
import { withDeadline } from './lifecycle.js';
import { redactUrl } from './redact.js';

export { Redis };
export type { ChainableCommander } from 'ioredis';

/**
 * A Redis connection. Long-running workers retry forever (BullMQ needs
 * `maxRetriesPerRequest: null` for its blocking connections); one-shot CLI commands fail fast
 * so the user hears about a missing server at once instead of a silent hang. Once a one-shot
 * connection has been up, it keeps reconnecting (a restarted Redis, say): a command that waits
 * decides itself how long an outage it rides out (see isRedisUnavailable).
 */
export function createRedis(url: string, mode: 'worker' | 'oneshot', options: RedisOptions = {}, onError?: (err: Error) => void): Redis {
  let wasReady = false;
  const redis = new Redis(url, {
    maxRetriesPerRequest: mode === 'worker' ? null : 1,
    enableOfflineQueue: true,
    lazyConnect: false,
    retryStrategy: mode === 'worker' ? (times) => Math.min(times * 200, 5_000) : (times) => (wasReady ? Math.min(times * 200, 2_000) : times > 2 ? null : 200),
    ...options,
  });
  redis.once('ready', () => (wasReady = true));
  // Connection errors are retried by the strategy above; without a listener ioredis would print
  // each one as an "Unhandled error event". Commands still reject with their own errors, which
  // say only that the retries ran out: the last connection error is kept to say why.
  redis.on('error', (err: Error) => {
    // (a server that answered in another protocol says the most: the reset that follows, less)
    if (!PROTOCOL_ERROR.test(lastConnectionError.get(redis)?.message ?? '')) lastConnectionError.set(redis, err);
    onError?.(err);
  });
  return redis;
}

const lastConnectionError = new WeakMap<Redis, Error>();

/** ioredis's words for a reply that is not Redis's protocol. */
const PROTOCOL_ERROR = /^Protocol error, got /;

/** Why a connection failed, in words: the socket's error code where it has one. */
function connectionProblem(err: Error): string {
  // ioredis's words for a server that answers, but not in Redis's protocol ("Protocol error, got
  // "H" as reply type byte. Please report this.")
  if (PROTOCOL_ERROR.test(err.message)) return 'something answers there, but not as Redis does (an HTTP server? check the port)';
  return connectionFailure(err)?.problem ?? err.message;
}

/**
 * Reports a worker's Redis outage in one line when it starts and one when it ends (and as
 * `tl_dependency_up{dependency="redis"}`), instead of a stack trace per reconnect attempt, and
 * again every `repeatMs` while it lasts: a worker whose REDIS_URL is wrong otherwise said so once,
 * then "worker started", and waited in silence (a user's trial). One that has not reached Redis
 * since it started says to check the setting. Work that needs Redis simply waits meanwhile:
 * commands queue until the connection is back. Returns what stops the reminders.
 */
export function watchRedis(redis: Redis, url: string, log: Logger, metrics?: Pick<Metrics, 'dependencyUp'>, o: { repeatMs?: number } = {}): () => void {
  const repeatMs = o.repeatMs ?? 60_000;
  // Asked once, when the connection first answers (commands wait for it).
  redisEvictionRisk(redis, url).then(
    (risk) => risk && log.warn({ dependency: 'redis' }, risk),
    () => {},
  );
  let down = false;
  let since = 0;
  let reached = redis.status === 'ready';
  let reminder: NodeJS.Timeout | undefined;
  const remind = () => {
    if (redis.status === 'end') return clearInterval(reminder); // closed for good
    const downSeconds = Math.round((Date.now() - since) / 1000);
    if (reached) log.warn({ dependency: 'redis', downSeconds }, `Redis at ${redactUrl(url)} is still unreachable, for ${downSeconds} s: waiting for it`);
    else log.warn({ dependency: 'redis', downSeconds }, `Redis at ${redactUrl(url)} not reached since this process started, ${Math.round(process.uptime())} s ago: is REDIS_URL (or TL_REDIS_PORT) the deployment's? Waiting for it`);
  };
  // (not reached yet: not up, until it is; a review: a black-holed host read as up for its connect timeout)
  metrics?.dependencyUp.set({ dependency: 'redis' }, reached ? 1 : 0);
  let stopped = false;
  redis.on('error', (err: Error) => {
    if (down || stopped) return;
    down = true;
    since = Date.now();
    metrics?.dependencyUp.set({ dependency: 'redis' }, 0);
    log.warn({ dependency: 'redis', err: err.message }, `Redis at ${redactUrl(url)} is unreachable: waiting for it (work resumes when it is back)`);
    reminder = setInterval(remind, repeatMs);
    reminder.unref();
  });
  redis.on('ready', () => {
    reached = true;
    metrics?.dependencyUp.set({ dependency: 'redis' }, 1);
    if (!down) return;
    down = false;
    clearInterval(reminder);
    metrics?.dependencyUp.set({ dependency: 'redis' }, 1);
    log.info({ dependency: 'redis', downSeconds: Math.round((Date.now() - since) / 1000) }, 'Redis is back');
  });
  // (the reminder does not hold the process open; a client closed while it reconnects stays
  // 'reconnecting' in ioredis, so whoever closes one early stops the reminders with this)
  return () => {
    stopped = true;
    clearInterval(reminder);
  };
}

/**
 * Why this Redis may delete our keys by itself (the whole warning, naming it), or undefined.
 * With a memory cap (`maxmemory`) and any policy but `noeviction`, Redis deletes keys to make
 * room once the cap is reached: under a `volatile-*` policy only keys with a TTL (pixels waiting
 * for embed, job locks), under `allkeys-*` any (queued jobs, dataset records too). Without a cap
 * it never evicts, whatever the policy. (BullMQ's own warning is one plain line on stderr, at
 * every connection, cap or not.)
 */
export async function redisEvictionRisk(redis: Redis, url: string): Promise<string | undefined> {
  const info = await redis.info('memory');
  const field = (name: string) => new RegExp(`^${name}:(.*)$`, 'm').exec(info)?.[1]?.trim();
  const policy = field('maxmemory_policy');
  if (!policy || policy === 'noeviction' || !(Number(field('maxmemory')) > 0)) return undefined;
  const what = policy.startsWith('volatile')
    ? 'pixels waiting for embed and job locks can vanish under load, leaving images to fail or jobs to run twice'
    : 'queued jobs, pixels waiting for embed and dataset records can vanish under load, leaving images orphaned or jobs lost';
  return (
    `Redis at ${redactUrl(url)} deletes keys to make room once it holds ${field('maxmemory_human') ?? field('maxmemory')} (maxmemory-policy ${policy}): ${what}. ` +
    'Set maxmemory-policy noeviction (BullMQ requires it; preprocess bounds what waits for embed: TL_MAX_PENDING_TENSORS)'
  );
}

/** Whether an error means Redis could not be reached (as opposed to an error of the command). */
export function isRedisUnavailable(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  if (err.name === 'MaxRetriesPerRequestError') return true;
  // the error's own code only: a cause inside another client's error (S3's) is not Redis's
  const code = (err as NodeJS.ErrnoException).code;
  if (isConnectionCode(code)) return true;
  return /Connection is closed|Stream isn't writeable|LOADING|enableOfflineQueue/.test(err.message);
}

/** Redis did not answer: `problem` says how (connection refused, no such host, timed out…). */
export class RedisUnreachableError extends Error {
  override readonly name = 'RedisUnreachableError';
  constructor(
    readonly where: string,
    readonly problem: string,
  ) {
    super(`cannot reach Redis at ${where}: ${problem}. Is it running? (set REDIS_URL or TL_REDIS_PORT, or run "transferline up")`);
  }
}

/** Waits for a connection or throws a clear error (for one-shot commands). */
export async function pingRedis(redis: Redis, url: string, deadlineMs = PING_DEADLINE_MS): Promise<void> {
  // A server that took the connection and answers nothing (SIGSTOPped, wedged) would hold the
  // command for ever, silent: a user's trial waited out its own 90 s timeout on status.
  const mute = () => {
    const cause = lastConnectionError.get(redis);
    const how =
      redis.status === 'ready' || redis.status === 'connect'
        ? `it took the connection but did not answer within ${deadlineMs / 1000} s (stopped, wedged, or busy with a long command?)`
        : `no connection within ${deadlineMs / 1000} s${cause ? ` (${connectionProblem(cause)})` : ''}`;
    return new RedisUnreachableError(redactUrl(url), how);
  };
  try {
    await withDeadline(redis.ping(), deadlineMs, mute);
  } catch (err) {
    if (err instanceof RedisUnreachableError) throw err;
    const where = redactUrl(url);
    // Reached, and refused: a password, a TLS setting, a server still loading its data.
    if (!isRedisUnavailable(err)) throw new Error(`Redis at ${where} refused the connection: ${(err as Error).message} (check REDIS_URL)`);
    const cause = lastConnectionError.get(redis);
    throw new RedisUnreachableError(where, cause ? connectionProblem(cause) : (err as Error).message);
  }
}

/** How long a command waits for Redis to answer its first PING (pingRedis). */
export const PING_DEADLINE_MS = 10_000;

/** Runs a pipeline and throws the first command error (ioredis reports them per command). */
export async function execPipeline(pipe: ReturnType<Redis['pipeline']>): Promise<unknown[]> {
  const res = (await pipe.exec()) ?? [];
  for (const [err] of res) if (err) throw err;
  return res.map(([, v]) => v);
}

type ScriptArg = string | number | Buffer;
type Callable = Record<string, ((...args: ScriptArg[]) => unknown) | undefined>;

/**
 * A Lua script run by its SHA (EVALSHA), through ioredis's `defineCommand`: the script's text
 * goes to each connection once (ioredis loads it on first use, and again after NOSCRIPT), not
 * with every call as EVAL sends it. Per-image scripts are worth it: a 640×480 JPEG's preprocess
 * ran two EVALs of 1-2 KB each.
 */
export class RedisScript {
  private static readonly defined = new WeakMap<Redis, Set<string>>();
  /** one text per name: a second script under a taken name would silently run the first */
  private static readonly names = new Map<string, string>();

  constructor(
    /** the command's name on the connection: unique, and no command ioredis has */
    private readonly name: string,
    private readonly lua: string,
    private readonly numberOfKeys: number,
  ) {
    const taken = RedisScript.names.get(name);
    if ((taken !== undefined && taken !== lua) || name in Redis.prototype) throw new Error(`Redis script name ${name} is taken`);
    RedisScript.names.set(name, lua);
  }

  /** Makes the script a command of this connection (idempotent); pipelines made after it carry it. */
  define(redis: Redis): void {
    let names = RedisScript.defined.get(redis);
    if (!names) RedisScript.defined.set(redis, (names = new Set()));
    if (names.has(this.name)) return;
    redis.defineCommand(this.name, { lua: this.lua, numberOfKeys: this.numberOfKeys });
    names.add(this.name);
  }

  run(redis: Redis, keys: ScriptArg[], args: ScriptArg[]): Promise<unknown> {
    this.check(keys);
    this.define(redis);
    return (redis as unknown as Callable)[this.name]!.call(redis, ...keys, ...args) as Promise<unknown>;
  }

  /**
   * Queues the script in a pipeline: by SHA when the pipeline's connection has it defined (ioredis
   * loads it again after NOSCRIPT), else by EVAL. In a MULTI always by EVAL: there a NOSCRIPT
   * (the server lost its scripts) only shows in EXEC's reply, too late for ioredis to load it.
   */
  queue(pipe: ChainableCommander, keys: ScriptArg[], args: ScriptArg[]): void {
    this.check(keys);
    // ioredis counts a pipeline's open MULTIs in a private field (a test pins it); were it ever
    // gone, every pipeline is taken for a transaction: EVAL is right everywhere, EVALSHA is not.
    const open = (pipe as unknown as { _transactions?: unknown })._transactions;
    const transaction = typeof open !== 'number' || open > 0;
    const command = transaction ? undefined : (pipe as unknown as Callable)[this.name];
    if (command) command.call(pipe, ...keys, ...args);
    else pipe.eval(this.lua, this.numberOfKeys, ...keys, ...args);
  }

  private check(keys: ScriptArg[]): void {
    if (keys.length !== this.numberOfKeys) throw new Error(`Redis script ${this.name} takes ${this.numberOfKeys} keys, was given ${keys.length}`);
  }
}

/** A string matched literally in a SCAN pattern. */
export const globLiteral = (s: string): string => s.replace(/[*?[\]\\]/g, '\\$&');

/** The Redis keys matching `pattern` (SCAN, never KEYS: a large Redis is not blocked). */
export async function scanKeys(redis: Redis, pattern: string): Promise<string[]> {
  const found: string[] = [];
  let cursor = '0';
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
    cursor = next;
    found.push(...keys);
  } while (cursor !== '0');
  return found;
}

/**
 * How far Redis's clock is ahead of this machine's (ms; negative behind), read once: for times a
 * process stamps that another reads on Redis's clock (`redis.time()`), as status reads a run's
 * progress. 0 when Redis does not answer within `deadlineMs` (this machine's clock, as before).
 */
export async function redisClockOffset(redis: { time(): Promise<(number | string)[]> }, deadlineMs = 2_000): Promise<number> {
  const asked = Date.now();
  try {
    const [s = NaN, us = 0] = await withDeadline(redis.time(), deadlineMs);
    const answered = Date.now();
    // (Redis read it about halfway through the round trip)
    const offset = Number(s) * 1000 + Math.floor(Number(us) / 1000) - Math.round((asked + answered) / 2);
    return Number.isFinite(offset) ? offset : 0;
  } catch {
    return 0;
  }
}
