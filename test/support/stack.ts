import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort } from '../../apps/producer/src/embedded/redis.server.js';
import { startStack, type Stack } from '../../apps/producer/src/embedded/stack.js';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const cliPath = path.join(repoRoot, 'apps', 'producer', 'dist', 'cli.js');

export interface TestStack extends Stack {
  dataDir: string;
  events: string[];
  /** Stops everything and removes the data folder. */
  destroy: () => Promise<void>;
}

/**
 * The real embedded stack for one test file: redis-server on a free port, s3rver on port 0,
 * the three worker processes (built dist/) on free metrics ports, a random queue prefix and
 * bucket, all data in a temporary folder.
 */
export async function startTestStack(extraEnv: NodeJS.ProcessEnv = {}): Promise<TestStack> {
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'tl-test-'));
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
    ...extraEnv,
  };
  const ports = { producer: await freePort(), preprocess: await freePort(), embed: await freePort(), train: await freePort() };
  const events: string[] = [];
  const stack = await startStack(env, ports, (line) => events.push(line));
  return {
    ...stack,
    dataDir,
    events,
    destroy: async () => {
      await stack.stop();
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}

/** Runs the `transferline` CLI (built) as a user would, against a stack. */
export function runCli(args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [cliPath, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** One scrape of a /metrics endpoint, parsed into `name{labels}` → value. */
export async function scrape(port: number): Promise<Map<string, number>> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    const series = line.slice(0, i);
    const brace = series.indexOf('{');
    const name = brace < 0 ? series : series.slice(0, brace);
    const labels = brace < 0 ? [] : (series.slice(brace + 1, -1).match(/[a-z_]+="(?:[^"\\]|\\.)*"/g) ?? []).filter((l) => !l.startsWith('role='));
    out.set(labels.length ? `${name}{${labels.join(',')}}` : name, Number(line.slice(i + 1)));
  }
  return out;
}
