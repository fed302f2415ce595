import { existsSync } from 'node:fs';
import { mkdir, rmdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import {
  ObjectStore,
  SpaceRegistry,
  claimStorage,
  createQueues,
  createRedis,
  EMBED_STREAMS_NAMED,
  forwardParallelism,
  threadsOverCores,
  EMBED_THREADS_NAMED,
  loadConfig,
  pingRedis,
  RedisUnreachableError,
  redisKeys,
  spaceFromConfig,
  type Config,
  type EmbeddingSpace,
} from '@transferline/shared';
import {
  METRICS_PORTS,
  createMetrics,
  exportQueueDepths,
  startMetricsServer,
} from '@transferline/shared/service-runtime';
import { freePort, isPortFree, reservePorts, startEmbeddedRedis } from './redis.server.js';
import { startEmbeddedS3 } from './s3.server.js';
import { lockDataDir } from './data-dir.lock.js';
import { ANOTHER_UP, Supervisor, type RoleName, type SupervisedProcess } from './supervisor.js';

export interface StackPorts {
  producer: number;
  preprocess: number;
  embed: number;
  train: number;
}
export const DEFAULT_PORTS: StackPorts = { ...METRICS_PORTS };

/** up's --metrics-port P: P for up's own metrics, P+1 to P+3 for the workers; 0 is any free port for each. */
export function portsFrom(base: number): StackPorts {
  const at = (offset: number) => (base === 0 ? 0 : base + offset);
  return { producer: at(0), preprocess: at(1), embed: at(2), train: at(3) };
}

/** Why --metrics-port P does not fit with these replicas (a port past 65535), or undefined. */
export function metricsPortsOverflow(base: number, replicas: Partial<Replicas>): string | undefined {
  const last = Math.max(base, ...childPorts(portsFrom(base), { ...DEFAULT_REPLICAS, ...replicas }).map((c) => c.metricsPort));
  return last > 65_535 ? `--metrics-port ${base} leaves no room: the stack uses P to P+3, and +10 for each further replica of a role (up to ${last} here, past 65535)` : undefined;
}

/** How many processes of each worker role to run. */
export type Replicas = Record<RoleName, number>;
export const DEFAULT_REPLICAS: Replicas = { preprocess: 1, embed: 1, train: 1 };

/**
 * Metrics ports for the worker processes: the role's port for the first replica, +10 for each
 * further one (9465, 9475, … for preprocess), or any free port when the role's port is 0.
 */
export function childPorts(ports: StackPorts, replicas: Replicas): { role: RoleName; replica: number; metricsPort: number }[] {
  return (Object.keys(replicas) as RoleName[]).flatMap((role) =>
    Array.from({ length: replicas[role] }, (_, i) => ({ role, replica: i + 1, metricsPort: ports[role] === 0 ? 0 : ports[role] + 10 * i })),
  );
}

/**
 * Refuses, before anything starts, a metrics port that something holds: under `up` the ports
 * come from --metrics-port (the workers' own TL_METRICS_PORT is set from it), and a worker
 * whose port is taken would fail at each restart. So is one that is also the port of another
 * process of the stack (`servers`: the embedded Redis's or S3 server's, not listening yet): the
 * one that starts later would fail at each restart too.
 */
async function checkMetricsPorts(host: string, wanted: { name: string; port: number }[], servers: { name: string; port: number; setting: string }[]): Promise<void> {
  for (const { name, port } of wanted) {
    if (port === 0) continue;
    const server = servers.find((sv) => sv.port === port);
    if (server) throw new Error(`metrics port ${port} (${name}) is also the port of the embedded ${server.name} (${server.setting}): choose other ports with --metrics-port P (the stack uses P to P+3, and +10 for each further replica of a role), or set ${server.setting} to another`);
    if (!(await isPortFree(port, host))) {
      throw new Error(`metrics port ${port} (${name}) on ${host} is in use, ${ANOTHER_UP}; else choose other ports with --metrics-port P (the stack uses P to P+3, and +10 for each further replica of a role)`);
    }
  }
}

export interface Stack {
  /** The configuration every process of the stack runs with (endpoints filled in). */
  config: Config;
  /** Environment for clients of this stack (the CLI, tests, awscli). */
  env: NodeJS.ProcessEnv;
  ports: StackPorts;
  /** the worker processes, each with the metrics port it serves on (a free one where 0 was asked) */
  children: { role: RoleName; replica: number; metricsPort: number }[];
  /** the embedding space the stack's embed workers run (published in Redis at start) */
  space: EmbeddingSpace;
  supervisor: Supervisor;
  /** the embedded servers' processes, where the stack runs them (tests kill them to play a crash) */
  servers: { redis?: SupervisedProcess; s3?: SupervisedProcess };
  /** No process of the stack is restarted from now on: the first thing a stop does (`stop` does it too). */
  holdRestarts: () => void;
  stop: () => Promise<void>;
  /**
   * A stop that cannot wait for the jobs in hand (a second Ctrl-C): the workers exit at once, and
   * the embedded servers are told to stop and waited for (killed after SERVERS_NOW_MS), so that
   * the data directory is let go only once no Redis or S3 server of this stack still writes to it.
   */
  stopNow: () => Promise<void>;
}

/** How long a stop that cannot wait gives Redis and the S3 server to close their files before they are killed. */
export const SERVERS_NOW_MS = 5_000;

/**
 * The embedded stack on one machine: an S3-compatible server on `<data>/s3` (unless S3_ENDPOINT
 * is set), Redis on `<data>/redis` (unless REDIS_URL is set), one process per worker role, and
 * this process's own /metrics with the queue depths.
 */
export async function startStack(
  baseEnv: NodeJS.ProcessEnv,
  ports: StackPorts,
  onEvent: (line: string) => void,
  wanted: { role: RoleName; replica: number; metricsPort: number }[] = childPorts(ports, DEFAULT_REPLICAS),
): Promise<Stack> {
  const initial = loadConfig(baseEnv);
  // the ports given, kept from the draws below (and Redis's on TL_REDIS_PORT=0)
  reservePorts([ports.producer, ...wanted.map((c) => c.metricsPort), ...(initial.redis.embedded ? [initial.redis.embeddedPort] : []), ...(initial.s3.embedded ? [initial.s3.embeddedPort] : [])]);
  // A worker asked for on port 0 (--metrics-port 0) is given a free port now, rather than binding
  // any port itself: so that its port is known, listed in the banner, and its /healthz watched.
  const children = await Promise.all(wanted.map(async (c) => (c.metricsPort === 0 ? { ...c, metricsPort: await freePort() } : c)));
  const stops: (() => Promise<void>)[] = [];
  // every supervised process, told at once that none is restarted from now on (the servers stop
  // last, after the workers: one that exits meanwhile, on a SIGTERM of its own, stays stopped)
  const holds: (() => void)[] = [];
  const holdRestarts = () => {
    for (const hold of holds) hold();
  };
  const stopAll = async () => {
    holdRestarts();
    for (const s of stops.reverse()) await s().catch((err: unknown) => onEvent(`error while stopping: ${(err as Error).message}`));
  };
  const servers: Stack['servers'] = {};
  // the folders this start makes in the data directory: a refused start takes back those left empty
  const made: string[] = [];
  try {
    // the data directory and the parents the lock makes for it, outermost first: a start refused
    // for its ports leaves none of them behind (a review)
    const missing: string[] = [];
    for (let dir = initial.dataDir; !existsSync(dir) && path.dirname(dir) !== dir; dir = path.dirname(dir)) missing.unshift(dir);
    made.push(...missing);
    // First: the same up again (same data directory, same ports) is named as such, not by a port it holds (a user's trial)
    const lock = await lockDataDir(initial.dataDir, {
      ports: `metrics port ${ports.producer}${initial.redis.embedded ? `, Redis port ${initial.redis.embeddedPort}` : ''}${initial.s3.embedded ? `, S3 port ${initial.s3.embeddedPort}` : ''}`,
      shares: [initial.redis.embedded && "one Redis's files", initial.s3.embedded && "one S3 server's directory", 'the worker logs'].filter(Boolean).join(', '),
    });
    stops.push(() => lock.release());
    const serverPorts = [
      ...(initial.redis.embedded ? [{ name: 'Redis', port: initial.redis.embeddedPort, setting: 'TL_REDIS_PORT' }] : []),
      ...(initial.s3.embedded ? [{ name: 'S3 server', port: initial.s3.embeddedPort, setting: 'TL_S3_PORT' }] : []),
    ].filter((sv) => sv.port !== 0);
    await checkMetricsPorts(initial.metrics.host, [{ name: 'producer', port: ports.producer }, ...children.map((c) => ({ name: `${c.role}${c.replica > 1 ? ` #${c.replica}` : ''}`, port: c.metricsPort }))], serverPorts);
    const env: NodeJS.ProcessEnv = { ...baseEnv };
    // ONNX Runtime threads: the machine's cores shared among the embed processes started here.
    const embedProcesses = children.filter((c) => c.role === 'embed').length;
    if (embedProcesses > 0) {
      const cores = os.availableParallelism();
      const { threads } = forwardParallelism(
        initial.embed,
        {
          threads: Math.max(1, Math.floor(cores / embedProcesses)),
          from: embedProcesses > 1 ? `the ${cores} core${cores > 1 ? 's' : ''} shared among ${embedProcesses} embed processes` : `the ${cores} core${cores > 1 ? 's' : ''}`,
        },
        { ...EMBED_STREAMS_NAMED, of: 'each embed process has', ...(embedProcesses > 1 && initial.embed.threads === undefined && { orElse: 'or start fewer --embed-workers' }) },
      );
      // (ONNX Runtime's threads: wasm streams are single-threaded, libtensorflow has its own)
      const over = (initial.embed.backend === 'onnx' || initial.embed.backend === 'auto') && threadsOverCores(initial.embed.threads, cores, EMBED_THREADS_NAMED, embedProcesses);
      if (over) onEvent(`warning: ${over}`);
      env.TL_EMBED_THREADS ??= String(threads);
    }
    const logDir = path.join(initial.dataDir, 'logs');
    if (await mkdir(logDir, { recursive: true })) made.push(logDir);
    const redisDir = path.join(initial.dataDir, 'redis');
    const s3Dir = path.join(initial.dataDir, 's3');
    if (initial.redis.embedded && !existsSync(redisDir)) made.push(redisDir);
    if (initial.s3.embedded && !existsSync(s3Dir)) made.push(s3Dir);
    if (initial.redis.embedded) {
      const redis = await startEmbeddedRedis({
        directory: redisDir,
        port: initial.redis.embeddedPort,
        logFile: path.join(logDir, 'redis.log'),
        onEvent,
        // as the workers are (TL_UP_HANG_SECONDS): a stopped or wedged Redis holds every worker and command
        hangMs: initial.upHangSeconds * 1000,
      });
      stops.push(redis.stop);
      holds.push(() => redis.process.holdRestarts());
      servers.redis = redis.process;
      env.REDIS_URL = redis.url;
    }
    if (initial.s3.embedded) {
      const s3 = await startEmbeddedS3({
        directory: s3Dir,
        port: initial.s3.embeddedPort,
        credentials: { accessKeyId: initial.s3.accessKeyId, secretAccessKey: initial.s3.secretAccessKey },
        logFile: path.join(logDir, 's3.log'),
        onEvent,
        // as the workers are (TL_UP_HANG_SECONDS): a stopped or wedged S3 holds every worker up
        hangMs: initial.upHangSeconds * 1000,
      });
      stops.push(s3.stop);
      holds.push(() => s3.process.holdRestarts());
      servers.s3 = s3.process;
      env.S3_ENDPOINT = s3.endpoint;
      env.S3_ACCESS_KEY_ID = s3.accessKeyId;
      env.S3_SECRET_ACCESS_KEY = s3.secretAccessKey;
    }
    const config = loadConfig(env);
    // Servers named by REDIS_URL / S3_ENDPOINT (exported for a second terminal, say) are used
    // as they are, and none is started: one that does not answer is named, with the way out.
    const external = (variable: string, what: string, where: string, problem: string) =>
      new Error(`${variable} is set (${where}), so up uses that ${what} and starts none; ${problem}: unset REDIS_URL and S3_ENDPOINT to run the stack's own, or start that server`);
    if (!config.redis.embedded) {
      const probe = createRedis(config.redis.url, 'oneshot');
      try {
        await pingRedis(probe, config.redis.url);
      } catch (err) {
        if (!(err instanceof RedisUnreachableError)) throw err;
        throw external('REDIS_URL', 'Redis', err.where, `it does not answer (${err.problem})`);
      } finally {
        probe.disconnect();
      }
    }
    const redis = createRedis(config.redis.url, 'worker');
    // The stack's embedding space is cluster state from the start: a CLI can resolve it before
    // the embed workers have loaded their model (they publish it too, with their heartbeats).
    const space = spaceFromConfig(config);
    const keys = redisKeys(config.redis.prefix);
    // A data directory's Redis keeps the storage its deployment recorded: an up with another
    // TL_BUCKET/TL_PREFIX is refused here, not by each of its workers in turn, restarted for ever.
    // (before the bucket is made: a mistyped TL_BUCKET refused here leaves no bucket behind)
    await claimStorage(redis, keys, { bucket: config.s3.bucket, prefix: config.s3.prefix }, config.redis, 'this up').catch(async (err: unknown) => {
      redis.disconnect();
      throw err;
    });
    const store = new ObjectStore(config.s3);
    try {
      await store.ensureBucket(config.s3.bucket);
    } catch (err) {
      redis.disconnect();
      if (config.s3.embedded) throw err;
      // an HTTP answer (403: other credentials, say) is not silence
      const answered = (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode !== undefined;
      throw external('S3_ENDPOINT', 'S3 server', config.s3.endpoint, `${answered ? 'it answers with an error' : 'it does not answer'} (${(err as Error).message})`);
    } finally {
      store.close();
    }
    const spaces = new SpaceRegistry(redis, keys);
    await spaces.publish(space);

    const supervisor = new Supervisor(logDir, onEvent, { metricsHost: config.metrics.host, hangMs: config.upHangSeconds * 1000 });
    stops.push(() => supervisor.stop());
    holds.push(() => supervisor.holdRestarts());
    await supervisor.start(children.map((c) => ({ ...c, env })));

    // The producer's own metrics: every queue of the deployment, read from BullMQ on each scrape.
    const metrics = createMetrics('producer');
    const queues = createQueues(redis, config);
    exportQueueDepths(metrics, async () => [queues.preprocess, ...(await spaces.list()).map((s) => queues.embed(s.space.id)), queues.train, queues.classify]);
    const server = await startMetricsServer(metrics.registry, config.metrics.host, ports.producer);
    stops.push(async () => {
      await server.close();
      await queues.close();
      await redis.quit().catch(() => redis.disconnect());
    });
    const stopNow = async () => {
      holdRestarts();
      supervisor.stopNow();
      await Promise.all([servers.redis, servers.s3].map((s) => s?.stop(SERVERS_NOW_MS)));
    };
    return { config, env, ports: { ...ports, producer: server.port }, children, space, supervisor, servers, holdRestarts, stop: stopAll, stopNow };
  } catch (err) {
    await stopAll();
    // (rmdir takes only an empty folder: a log that says why, or a server's files, stay)
    for (const dir of made.reverse()) await rmdir(dir).catch(() => {});
    throw err;
  }
}
