import { spawn } from 'node:child_process';
import { appendFileSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll } from 'vitest';
import { openCliContext, type CliContext } from '../../apps/producer/src/cli-context.js';
import { startTempStack, type TempStack } from '../../apps/producer/src/embedded/temp-stack.js';
import { isPortFree } from '../../apps/producer/src/embedded/redis.server.js';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
/** The installed `transferline` command (it runs the built dist/cli.js), as a user runs it. */
export const cliPath = path.join(repoRoot, 'apps', 'producer', 'bin', 'transferline.js');

export type TestStack = TempStack;
/** The real embedded stack for one test file: see startTempStack. */
export const startTestStack = startTempStack;

/** Replicas for a stack of Redis and S3 alone: the test plays the workers itself. */
export const NO_WORKERS = { preprocess: 0, embed: 0, train: 0 } as const;

/**
 * A stack for the test file that calls it, started before its tests and destroyed after them,
 * with a CLI context on it (its output discarded). Read `stack` and `ctx` inside the tests.
 */
export function stackForFile(env: NodeJS.ProcessEnv = {}, replicas: Parameters<typeof startTempStack>[1] = {}): { readonly stack: TestStack; readonly ctx: CliContext } {
  let stack: TestStack | undefined;
  let ctx: CliContext | undefined;
  beforeAll(async () => {
    stack = await startTestStack(env, replicas);
    ctx = await openCliContext(stack.config, { write: () => true } as unknown as NodeJS.WritableStream);
  }, 120_000);
  afterAll(async () => {
    await ctx?.close();
    await stack?.destroy();
  });
  const started = <T>(v: T | undefined): T => {
    if (v === undefined) throw new Error('the stack is read before it started (outside a test?)');
    return v;
  };
  return {
    get stack() {
      return started(stack);
    },
    get ctx() {
      return started(ctx);
    },
  };
}

export interface CliRun {
  code: number | null;
  stdout: string;
  stderr: string;
  /** true when the command had not exited by the deadline and was killed */
  timedOut: boolean;
  seconds: number;
}

/**
 * Runs the `transferline` CLI (built) as a user would, against a stack. A command that has not
 * exited by `deadlineMs` is killed and reported as timed out: a command that never exits is a bug.
 * `merged`: stderr goes into stdout's pipe, as on a terminal, so the order of lines across the
 * two is kept (stderr is then empty). `onOutput` hears each chunk of either as it comes.
 */
export function runCli(args: string[], env: NodeJS.ProcessEnv, deadlineMs = 120_000, o: { merged?: boolean; onOutput?: (chunk: string) => void; /** its standard input (else none) */ input?: string } = {}): Promise<CliRun> {
  const started = Date.now();
  return new Promise((resolve) => {
    const [cmd, argv] = o.merged ? ['sh', ['-c', 'exec "$0" "$@" 2>&1', process.execPath, cliPath, ...args]] : [process.execPath, [cliPath, ...args]];
    const child = spawn(cmd, argv, { env: { AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true', ...env }, stdio: [o.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
    if (o.input !== undefined) child.stdin!.end(o.input);
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, deadlineMs);
    child.stdout!.on('data', (d: Buffer) => {
      stdout += d.toString();
      o.onOutput?.(d.toString());
    });
    child.stderr!.on('data', (d: Buffer) => {
      stderr += d.toString();
      o.onOutput?.(d.toString());
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      const seconds = (Date.now() - started) / 1000;
      // TL_TEST_TRANSCRIPT=file keeps what each command printed, for reports on a test run.
      const transcript = process.env.TL_TEST_TRANSCRIPT;
      if (transcript) appendFileSync(transcript, `$ transferline ${args.join(' ')}\n${stdout}${stderr}[exit ${timedOut ? 'killed at the deadline' : code}, ${seconds.toFixed(1)} s]\n\n`);
      resolve({ code, stdout, stderr, timedOut, seconds });
    });
  });
}

/**
 * One scrape of a /metrics endpoint, parsed into `name{labels}` → value. A worker that is still
 * starting (connection refused, or 503 before it has its metrics) is asked again for up to `waitMs`.
 */
export async function scrape(port: number, waitMs = 20_000): Promise<Map<string, number>> {
  const deadline = Date.now() + waitMs;
  let text: string;
  for (;;) {
    try {
      const res = await fetch(`http://127.0.0.1:${port}/metrics`);
      text = await res.text();
      if (!res.ok) throw new Error(`/metrics on port ${port}: HTTP ${res.status} ${text.trim()}`);
      // a worker whose role is still starting (its port is bound before it has its metrics)
      if (/^tl_role_ready(\{[^}]*\})? 0$/m.test(text)) throw new Error(`/metrics on port ${port}: the role is still starting`);
      break;
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 200));
    }
  }
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

/**
 * Every live process whose environment has `name=value` (a stack's TL_DATA_DIR, say): what a
 * stack left running, however it was started (a child spawned after a list was taken included).
 * Zombies (exited, not reaped yet) hold nothing and are not listed.
 */
export function processesWithEnv(name: string, value: string): { pid: number; cmd: string }[] {
  const out: { pid: number; cmd: string }[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d) || Number(d) === process.pid) continue;
    try {
      if (!isRunning(Number(d))) continue;
      if (!readFileSync(`/proc/${d}/environ`, 'utf8').split('\0').includes(`${name}=${value}`)) continue;
      out.push({ pid: Number(d), cmd: readFileSync(`/proc/${d}/cmdline`, 'utf8').replace(/\0/g, ' ').trim() });
    } catch {
      // gone meanwhile, or not ours to read
    }
  }
  return out;
}

/** The process's state letter from /proc (R, S, D, Z…), or undefined once it is gone. */
export function processState(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0];
  } catch {
    return undefined;
  }
}

/** Running: a zombie (exited, waiting for its new parent to reap it) holds no port and no file. */
export function isRunning(pid: number): boolean {
  const state = processState(pid);
  return state !== undefined && state !== 'Z' && state !== 'X';
}

/**
 * Polls until `cond` holds, or throws after `seconds` naming `what`. A condition that cannot be
 * read (Redis restarting, a server still starting) counts as not met yet.
 */
export async function until(what: string, cond: () => Promise<boolean> | boolean, seconds: number, everyMs = 100, explain?: () => Promise<string> | string): Promise<void> {
  const deadline = Date.now() + seconds * 1000;
  while (!(await Promise.resolve().then(cond).catch(() => false))) {
    if (Date.now() > deadline) {
      const why = explain ? await Promise.resolve().then(explain).catch((err: unknown) => `(no account: ${(err as Error).message})`) : '';
      throw new Error(`gave up after ${seconds} s waiting for ${what}${why ? `\n${why}` : ''}`);
    }
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/**
 * `n` consecutive free ports on loopback, for `up --metrics-port P` (P, P+1, P+2, P+3). Taken below
 * Linux's ephemeral range (32768 and up), where port-0 listeners and outgoing connections of the
 * other tests get their ports, so the run stays free until `up` binds it.
 */
export async function freeRun(n: number): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const start = 20_000 + Math.floor(Math.random() * (32_000 - 20_000));
    let ok = true;
    for (let i = 0; i < n && ok; i++) ok = await isPortFree(start + i);
    if (ok) return start;
  }
  throw new Error(`no run of ${n} free ports between 20000 and 32000`);
}

/**
 * What a stack's processes said, for the message of a wait that failed: `up`'s events and the
 * last `lines` lines of each log in its data directory whose name matches `only`.
 */
export function stackReport(stack: TestStack, only = /./, lines = 25): string {
  const logs = path.join(stack.dataDir, 'logs');
  const out = [`up's events:`, ...stack.events.map((e) => `  ${e}`)];
  for (const name of readdirSync(logs).filter((n) => only.test(n)).sort()) {
    const text = readFileSync(path.join(logs, name), 'utf8').trimEnd().split('\n');
    out.push(`${name} (last ${Math.min(lines, text.length)} of ${text.length} lines):`, ...text.slice(-lines).map((l) => `  ${l}`));
  }
  return out.join('\n');
}

/** A worker's /healthz on `port` in words: its status and body, or why there was none. */
export const healthzSays = (port: number): Promise<string> =>
  fetch(`http://127.0.0.1:${port}/healthz`, { signal: AbortSignal.timeout(1_000) }).then(
    async (res) => `:${port} ${res.status} ${(await res.text()).trim()}`,
    (err: unknown) => `:${port} no answer (${(err as Error).message})`,
  );

/** Whether a worker's /healthz on `port` answers 200 within a second. */
export const healthz = (port: number): Promise<boolean> =>
  fetch(`http://127.0.0.1:${port}/healthz`, { signal: AbortSignal.timeout(1_000) }).then(
    (res) => res.ok,
    () => false,
  );
