import type { Redis } from 'ioredis';
import { deploymentOf, loadConfig, type Config } from './config.js';
import { isStopMessage, leftToUp, runUntilSignal, settledWithin, stopAsks, stopSignals, supervisedByUp, type StopAsked } from './lifecycle.js';
import { redisKeys } from './keys.js';
import { createLogger, type Logger } from './logger.js';
import { startMetricsServer, startingMetrics, type Metrics } from './metrics.js';
import { SupervisedWorkers } from './supervised-workers.js';

/** Every process role, and the metrics port each serves by default (one home for these numbers). */
export const METRICS_PORTS = { producer: 9464, preprocess: 9465, embed: 9466, train: 9467 } as const;
export type ProcessRole = keyof typeof METRICS_PORTS;
export type WorkerRole = Exclude<ProcessRole, 'producer'>;

/** A started worker role: its metrics, its health, and a clean stop. */
export interface RunningRole {
  metrics: Metrics;
  healthy: () => boolean;
  stop: () => Promise<void>;
  /** the role's Redis connection: a stop while it is down has nothing it can finish */
  redis?: Redis;
  /**
   * A check made once the role has started (one that reads Redis cannot hold the start: a worker
   * started while Redis is down starts, and waits out the outage): an Error settles it when the
   * worker must not work here, and the process stops as on SIGTERM, saying why, and exits 1.
   */
  refused?: Promise<Error | undefined>;
}

/** What a role may ask of its process while it starts. */
export interface StartingRole {
  /**
   * Something to undo if the process is stopped before the role has started (Ctrl-C while the
   * model loads): the embed worker's "loading" heartbeat, which a waiting command would
   * otherwise take for a worker on its way until it goes silent. Given at most 2 s in all.
   */
  onEarlyStop: (undo: () => Promise<unknown>) => void;
}

/**
 * What a worker's command line says to a user who asks (`--help`), since it takes no options: each
 * setting comes from the environment, as `up`'s banner exports them.
 */
export function workerUsage(): string {
  const port = (r: WorkerRole) => `${r} ${METRICS_PORTS[r]}`;
  return [
    'usage: node apps/feature-worker/dist/main.js <preprocess|embed>',
    '       node apps/train-worker/dist/main.js',
    '',
    'One transferline worker of one role, in the foreground until SIGTERM or SIGINT, which it',
    'answers by finishing or putting back the jobs in hand. `transferline up` starts one of each',
    'for you; start more beside it to scale out. A worker takes no options: its settings come',
    "from the environment, as up's banner exports them (REDIS_URL or TL_REDIS_PORT,",
    'TL_QUEUE_PREFIX, S3_ENDPOINT or TL_S3_PORT, S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY, TL_BUCKET,',
    `TL_PREFIX: embed and train workers refuse to start with a TL_BUCKET or TL_PREFIX other than`,
    `the one their deployment recorded), and TL_METRICS_PORT for its /metrics and /healthz (by`,
    `default ${(['preprocess', 'embed', 'train'] as const).map(port).join(', ')}: one worker of each per machine).`,
    'An embed worker needs the settings of its embedding space too (TL_MODEL_WEIGHTS, TL_RESIZE,',
    'TL_ALPHA_BACKGROUND, TL_MODEL_SEED) when they are not the defaults. README: "A worker more".',
  ].join('\n');
}

/**
 * The arguments after a worker's role: none, or `--help` (its usage, exit 0); anything else is
 * bad usage (exit 2). Neither starts a worker: `main.js --help` used to, joining the queues of
 * whatever stack ran on the default ports (a user's trial).
 */
export function checkWorkerArgs(args: string[], usageError?: string): void {
  if (usageError === undefined && args.length === 0) return;
  if (args.includes('--help') || args.includes('-h')) {
    process.stdout.write(`${workerUsage()}\n`);
    process.exit(0);
  }
  process.stderr.write(`${usageError ?? `unknown argument${args.length > 1 ? 's' : ''}: ${args.join(' ')}`}\n${workerUsage()}\n`);
  process.exit(2);
}

/** Longest the undo of a stop during start may take before the process exits anyway (a Redis that is down). */
const EARLY_UNDO_MS = 2_000;

/**
 * The life of a worker process, the same for every role: config parsed once → logger → the
 * role's deps and workers → /metrics and /healthz → on SIGINT/SIGTERM stop taking work, finish
 * or release what is in hand, exit 0. A failure to start prints one line and exits 1.
 */
export function runRole(role: WorkerRole, start: (config: Config, log: Logger, starting: StartingRole) => Promise<RunningRole>): void {
  // While the role starts (loading a model takes seconds) a signal, or the parent going away,
  // ends the process at once: nothing is in hand yet, and a missed 'disconnect' would leave an
  // orphan that outlives `up`. What the role asked to undo is undone first (bounded); a second
  // signal does not wait for it.
  const undo: (() => Promise<unknown>)[] = [];
  let leaving: StopAsked | undefined;
  let started = false;
  const ask = stopAsks();
  const early = (why: StopAsked) => {
    const verdict = ask(why);
    if (verdict === 'again') return;
    if (verdict === 'exit') process.exit(130);
    leaving = why;
    // (a role that finished starting meanwhile is stopped as any stop would, below)
    void settledWithin(EARLY_UNDO_MS, Promise.allSettled(undo.map((f) => f()))).then(() => started || process.exit(0));
  };
  const onOrphaned = () => early('orphaned');
  // `up`'s stop (a message, not a signal): one stopping already is not stopped twice
  const onStopMessage = (m: unknown) => {
    if (!isStopMessage(m)) return;
    if (m.stop === 'now') process.exit(130);
    early('up');
  };
  // (under up, the terminal's Ctrl-C is up's to handle: see stopSignals; said in the log, once it is there)
  let logger: Logger | undefined;
  const signals = stopSignals((signal) => logger?.info(leftToUp(signal)));
  for (const signal of signals) process.on(signal, early);
  if (supervisedByUp()) {
    process.on('message', onStopMessage);
    process.once('disconnect', onOrphaned);
    // gone while this process loaded its modules: the event was emitted before anyone listened
    if (!process.connected) onOrphaned();
  }
  const main = async () => {
    const config = loadConfig(process.env);
    const log = createLogger(role, config.logLevel);
    logger = log;
    // The port first: a port in use ends the process before it has taken any job (after, it
    // would leave them to be found stalled). /healthz says 503 until the role has started, and
    // /metrics `tl_role_ready 0`.
    let running: RunningRole | undefined;
    // (unhealthy from the moment it stops: a probe does not take a worker on its way out for one at work)
    let stopping = false;
    const healthy = () => !stopping && (running?.healthy() ?? false);
    // Ready once started and while every dependency answers: a worker whose REDIS_URL is wrong
    // stays healthy (an outage must not restart every worker) but never ready (an operator's trial)
    const notReady = async () => {
      const down = (await running?.metrics.dependencyUp.get())?.values.filter((v) => v.value !== 1).map((v) => String(v.labels.dependency)) ?? [];
      return down.length ? `${down.sort().join(' and ')} unreachable (tl_dependency_up 0; the log says which address)` : undefined;
    };
    const server = await startMetricsServer(() => running?.metrics.registry, config.metrics.host, config.metrics.port ?? METRICS_PORTS[role], healthy, startingMetrics(role), notReady);
    log.info({ metricsPort: server.port }, `serving /metrics, /healthz and /readyz on ${config.metrics.host}:${server.port}`);
    // what it is connected to, said first (an operator's trial: a worker of another deployment's
    // settings looked like any other in its log)
    const { words, ...deployment } = deploymentOf(config);
    log.info(deployment, `deployment: ${words}`);
    try {
      running = await start(config, log, { onEarlyStop: (f) => void undo.push(f) });
    } catch (err) {
      await server.close();
      throw err;
    }
    started = true;
    for (const signal of signals) process.off(signal, early);
    process.off('disconnect', onOrphaned);
    process.off('message', onStopMessage);
    const ready = running;
    // watched by `up`: said in Redis, so a command waiting on this worker while it hangs gives
    // `up` the time to restart it
    const unmark = config.supervisorHangMs > 0 && ready.redis && !leaving ? new SupervisedWorkers(ready.redis, redisKeys(config.redis.prefix)).mark(config.supervisorHangMs, (err) => log.debug({ err }, 'supervision not recorded')) : undefined;
    // (`leaving`: stopped while it started, and it finished starting before it could exit; its
    // workers may hold jobs already, put back as any stop puts them back, within the same deadline)
    if (leaving) log.info('stopped while starting: stopping');
    const refuse = runUntilSignal(log, async () => {
      stopping = true;
      // Without Redis no job in hand can be completed or put back: waiting out the stop
      // deadline would only delay the exit. Their locks expire and they run again elsewhere.
      if (ready.redis && ready.redis.status !== 'ready') {
        log.warn({ redis: ready.redis.status }, 'Redis is unreachable: nothing in hand can finish, exiting now; jobs in hand run again elsewhere');
        return;
      }
      await unmark?.();
      await ready.stop();
      await server.close();
    }, leaving);
    void ready.refused?.then((err) => {
      if (!err) return;
      process.stderr.write(`${role} worker: ${err.message}\n`);
      refuse(err);
    });
  };
  main().catch((err: unknown) => {
    process.stderr.write(`${role} worker: ${(err as Error).message}\n`);
    process.exit(1);
  });
}
