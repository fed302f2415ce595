import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const appsDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

/** The worker processes of the embedded stack: each its own process, as in a deployment. */
export const ROLES = {
  preprocess: { script: path.join(appsDir, 'feature-worker', 'dist', 'main.js'), args: ['preprocess'] },
  embed: { script: path.join(appsDir, 'feature-worker', 'dist', 'main.js'), args: ['embed'] },
  train: { script: path.join(appsDir, 'train-worker', 'dist', 'main.js'), args: [] },
} as const;
export type RoleName = keyof typeof ROLES;

export interface ChildSpec {
  role: RoleName;
  /** replica number within the role, from 1 (names its log file) */
  replica: number;
  metricsPort: number;
  env: NodeJS.ProcessEnv;
}

/**
 * Starts and watches the worker processes; their logs go to `<logDir>/<role>.log`. A process that
 * dies is restarted (with a growing delay) until `stop()`, which sends SIGTERM and waits, so
 * jobs in hand are finished or released.
 */
export class Supervisor {
  private readonly children = new Map<string, ChildProcess>();
  private stopping = false;

  constructor(
    private readonly logDir: string,
    private readonly onEvent: (line: string) => void,
  ) {}

  async start(specs: ChildSpec[]): Promise<void> {
    await mkdir(this.logDir, { recursive: true });
    for (const s of specs) this.spawn(s, 0);
  }

  logFile(role: RoleName, replica = 1): string {
    return path.join(this.logDir, replica === 1 ? `${role}.log` : `${role}-${replica}.log`);
  }


  /** Process ids of the running worker processes, as `role#replica` → pid (benchmarks read their /proc). */
  pids(): Record<string, number> {
    return Object.fromEntries([...this.children].flatMap(([name, c]) => (c.pid ? [[name, c.pid]] : [])));
  }

  /** Sends a signal to one worker process (tests use SIGKILL to play a crash); false if it is not running. */
  signal(role: RoleName, replica: number, signal: NodeJS.Signals): boolean {
    return this.children.get(`${role}#${replica}`)?.kill(signal) ?? false;
  }

  private spawn(spec: ChildSpec, restarts: number): void {
    const { script, args } = ROLES[spec.role];
    const name = `${spec.role}#${spec.replica}`;
    const logFile = this.logFile(spec.role, spec.replica);
    const log = createWriteStream(logFile, { flags: 'a' });
    const child = spawn(process.execPath, [script, ...args], {
      // The SDK's notice that its 2027 releases need Node 22 would repeat in every worker log.
      env: { AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true', ...spec.env, TL_METRICS_PORT: String(spec.metricsPort) },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child.stdout?.pipe(log, { end: false });
    child.stderr?.pipe(log, { end: false });
    this.children.set(name, child);
    const startedAt = Date.now();
    child.once('exit', (code, signal) => {
      log.end();
      this.children.delete(name);
      if (this.stopping) return;
      const n = Date.now() - startedAt > 60_000 ? 0 : restarts + 1;
      const delay = Math.min(30_000, 500 * 2 ** n);
      this.onEvent(`${name} exited (${signal ?? code}); restarting in ${(delay / 1000).toFixed(1)} s — see ${logFile}`);
      setTimeout(() => !this.stopping && this.spawn(spec, n), delay).unref();
    });
  }

  async stop(timeoutMs = 30_000): Promise<void> {
    this.stopping = true;
    await Promise.all(
      [...this.children.values()].map(
        (child) =>
          new Promise<void>((resolve) => {
            if (child.exitCode !== null || child.signalCode !== null) return resolve();
            const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
            child.once('exit', () => {
              clearTimeout(timer);
              resolve();
            });
            child.kill('SIGTERM');
          }),
      ),
    );
  }
}
