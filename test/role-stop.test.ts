import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { UP_CHILD_ENV } from '../packages/shared/src/lifecycle.js';
import { repoRoot } from './support/stack.js';
import { guardLeaks } from './support/leak-guard.js';

guardLeaks();

/**
 * A worker process (runRole) whose role finishes starting just after it was told to stop, and
 * whose stop can then never finish (up was SIGKILLed: its Redis is going). Seen in CI as an
 * embed worker left running 30 s after `up` was killed while its workers started.
 */
const script = (shared: string) =>
  [
    `import { runRole } from ${JSON.stringify(shared)};`,
    `const until = (f) => new Promise((resolve) => { const t = setInterval(() => f() && (clearInterval(t), resolve()), 20); });`,
    `runRole('embed', async (config, log, starting) => {`,
    // the undo of a stop during start takes its time (a Redis that is going: at most 2 s), and
    // the role finishes starting meanwhile
    `  starting.onEarlyStop(() => until(() => globalThis.started));`,
    `  process.stdout.write('starting\\n');`,
    `  await until(() => process.env.STOP_BY === 'parent' ? !process.connected : globalThis.stopAsked);`,
    `  await new Promise((resolve) => setTimeout(resolve, 200));`,
    `  process.stdout.write('started\\n');`,
    `  globalThis.started = true;`,
    // its stop never finishes when up is gone: the jobs in hand cannot be put back without Redis
    `  const stop = process.env.STOP_BY === 'parent' ? () => new Promise(() => {}) : () => new Promise((resolve) => setTimeout(resolve, 300));`,
    `  return { metrics: { registry: undefined }, healthy: () => true, stop };`,
    `});`,
    `process.on(process.env.STOP_BY === 'pm2' ? 'SIGINT' : 'SIGTERM', () => (globalThis.stopAsked = true));`,
  ].join('\n');

const children: ChildProcess[] = [];
afterEach(() => {
  for (const c of children.splice(0)) c.kill('SIGKILL');
});

/**
 * `parent`: up goes away; `signal`: a SIGTERM of its own, under up; `pm2`: started with an IPC
 * channel by another supervisor (pm2's fork mode), which stops it with SIGINT.
 */
function startWorker(stopBy: 'parent' | 'signal' | 'pm2'): { child: ChildProcess; output: () => string; exited: Promise<{ code: number | null; afterMs: number }> } {
  const shared = path.join(repoRoot, 'packages', 'shared', 'dist', 'service-runtime.js');
  const child = spawn(process.execPath, ['--input-type=module', '-e', script(shared)], {
    env: { ...process.env, STOP_BY: stopBy, TL_METRICS_PORT: '0', TL_METRICS_HOST: '127.0.0.1', TL_LOG_LEVEL: 'info', TL_SUPERVISOR_HANG_MS: '0', ...(stopBy !== 'pm2' && { [UP_CHILD_ENV]: '1' }) },
    stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
  });
  children.push(child);
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  let stoppedAt = 0;
  const exited = new Promise<{ code: number | null; afterMs: number }>((resolve) =>
    child.once('exit', (code) => resolve({ code, afterMs: Date.now() - stoppedAt })),
  );
  return {
    child,
    output: () => out,
    exited: (async () => {
      await new Promise<void>((resolve) => {
        const t = setInterval(() => out.includes('starting') && (clearInterval(t), resolve()), 20);
      });
      stoppedAt = Date.now();
      if (stopBy === 'parent') child.disconnect();
      else child.kill(stopBy === 'pm2' ? 'SIGINT' : 'SIGTERM');
      return exited;
    })(),
  };
}

describe('a worker stopped while it starts, whose role finishes starting before it could exit', () => {
  it('exits within the deadline of a worker whose up is gone, not 30 s later', async () => {
    const w = startWorker('parent');
    const { afterMs } = await w.exited;
    expect(w.output()).toContain('started');
    // up gone: 5 s for the stop, as for a worker that had started (was 30 s, past the test's wait)
    expect(afterMs, w.output()).toBeLessThan(15_000);
    expect(w.output()).toMatch(/stopping took too long/);
  }, 60_000);

  it('on a signal, stops as any stop does: the role is stopped, and the process exits 0', async () => {
    const w = startWorker('signal');
    const { code } = await w.exited;
    expect(code, w.output()).toBe(0);
    expect(w.output()).toContain('started');
    expect(w.output()).toMatch(/"signal":"SIGTERM","msg":"stopping: finishing the jobs in hand"/);
    expect(w.output()).toMatch(/"msg":"stopped"/);
  }, 60_000);

  it("under another supervisor with an IPC channel (pm2's fork mode), SIGINT stops it: it is not left to up", async () => {
    const w = startWorker('pm2');
    const { code } = await w.exited;
    expect(code, w.output()).toBe(0);
    expect(w.output()).toMatch(/"signal":"SIGINT","msg":"stopping: finishing the jobs in hand"/);
    expect(w.output()).not.toContain('left to up');
  }, 60_000);
});

describe("a worker's command line", () => {
  const run = async (main: string, args: readonly string[]) => {
    // a Redis that does not answer: a worker that started would wait for it, not exit
    const child = spawn(process.execPath, [path.join(repoRoot, 'apps', main, 'dist', 'main.js'), ...args], {
      env: { ...process.env, REDIS_URL: 'redis://127.0.0.1:1', TL_METRICS_PORT: '0', TL_METRICS_HOST: '127.0.0.1' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    children.push(child);
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    const [code, killed] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) => child.once('close', (c, sig) => resolve([c, sig])));
    clearTimeout(timer);
    return { code, killed, stdout, stderr };
  };

  it('--help prints the usage and exits 0 without starting a worker; anything else is bad usage (exit 2)', async () => {
    const helps = [['train-worker', ['--help']], ['feature-worker', ['--help']], ['feature-worker', ['embed', '-h']], ['feature-worker', ['preprocess', '--help']]] as const;
    const bad = [
      ['train-worker', ['--port', '3'], 'unknown arguments: --port 3'],
      ['feature-worker', [], 'feature-worker needs a role: preprocess or embed'],
      ['feature-worker', ['bogus'], 'feature-worker has no role bogus: preprocess or embed'],
      ['feature-worker', ['embed', 'extra'], 'unknown argument: extra'],
    ] as const;
    // all at once: each is a Node start (about a second on two cores)
    const [helped, refused] = await Promise.all([Promise.all(helps.map(([main, args]) => run(main, args))), Promise.all(bad.map(([main, args]) => run(main, args)))]);
    helps.forEach(([main, args], i) => {
      const r = helped[i]!;
      expect({ main, args, code: r.code, killed: r.killed, stderr: r.stderr }).toEqual({ main, args, code: 0, killed: null, stderr: '' });
      expect(r.stdout).toMatch(/^usage: node apps\/feature-worker\/dist\/main\.js <preprocess\|embed>\n {7}node apps\/train-worker\/dist\/main\.js\n/);
      expect(r.stdout).toContain('TL_METRICS_PORT');
    });
    bad.forEach(([main, args, said], i) => {
      const r = refused[i]!;
      expect({ main, args, code: r.code, killed: r.killed, stdout: r.stdout }).toEqual({ main, args, code: 2, killed: null, stdout: '' });
      expect(r.stderr.split('\n')[0]).toBe(said);
    });
  }, 60_000);
});
