import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { freePort } from './redis.server.js';
import { childPorts, DEFAULT_REPLICAS, startStack, type Replicas, type Stack } from './stack.js';

export interface TempStack extends Stack {
  dataDir: string;
  events: string[];
  /** metrics port of each worker process, as `role#replica` → port */
  workerPorts: Record<string, number>;
  /** Stops everything and removes the data folder. */
  destroy: () => Promise<void>;
}

/**
 * A throw-away stack for tests and benchmarks: redis-server on a free port, the S3 server on
 * port 0, worker processes on free metrics ports, a random queue prefix and bucket, all data in
 * a temporary folder.
 */
export async function startTempStack(extraEnv: NodeJS.ProcessEnv = {}, replicas: Partial<Replicas> = {}): Promise<TempStack> {
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'tl-'));
  const id = randomBytes(4).toString('hex');
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH,
    HOME: process.env.HOME,
    TL_DATA_DIR: dataDir,
    TL_REDIS_PORT: String(await freePort()),
    TL_S3_PORT: '0',
    TL_QUEUE_PREFIX: `t${id}`,
    TL_BUCKET: `tl-${id}`,
    TL_LOG_LEVEL: 'info',
    // Not watched for hangs unless asked (up-liveness, up-hang-wait): a test that stops a worker
    // means it to stay stopped, and a wait would otherwise wait for the restart up makes.
    TL_UP_HANG_SECONDS: '0',
    ...extraEnv,
  };
  const ports = { producer: await freePort(), preprocess: 0, embed: 0, train: 0 };
  const r = { ...DEFAULT_REPLICAS, ...replicas };
  // every worker on port 0: the stack gives each a free port, as it does for up --metrics-port 0
  const events: string[] = [];
  const stack = await startStack(env, ports, (line) => events.push(line), childPorts(ports, r));
  const { children } = stack;
  const first = (role: string) => children.find((c) => c.role === role)?.metricsPort ?? 0;
  return {
    ...stack,
    // each role's port is its first replica's
    ports: { ...stack.ports, preprocess: first('preprocess'), embed: first('embed'), train: first('train') },
    dataDir,
    events,
    workerPorts: Object.fromEntries(children.map((c) => [`${c.role}#${c.replica}`, c.metricsPort])),
    destroy: async () => {
      await stack.stop();
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}
