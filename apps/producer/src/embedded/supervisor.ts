import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { livenessProbeTiming, STOP_DEADLINE_MS, UP_CHILD_ENV, type StopMessage } from '@transferline/shared';
import { reachableHost } from '../loopback-host.js';

const appsDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

/**
 * Node flags of the feature-worker roles, here and in every deployment file (docker-compose.yml,
 * the k8s manifests, the GPU image's CMD; `test/infra.test.ts` checks that they agree).
 *
 * A feature worker allocates far more in buffers (each image's download, its 147 KB of pixels,
 * a batch's pixel reads) than in JavaScript objects. V8 counts those buffers toward the limit
 * that starts a full collection, and with its default starting limit for a small heap (a worker's
 * is about 20 MB) it marks the whole heap far more often than its objects need. A 256 MB
 * starting old space lets the buffers, which die young, go with the cheap young collections.
 * Measured on 2 cores, one preprocess worker pinned to a core, 2,000 640×480 JPEGs: on Node 22
 * (what npm start, the tests and the images run) full collections 8 → 5 and 3.87 → 3.72 and
 * 3.67 → 3.35 ms of CPU per image in two A/B runs; on Node 20, 40 → 4 and 3.45 → 3.28 ms, large
 * photos 30.2 → 31.3 images/s, the embed worker at batch 1 138 → 140-145 images/s. Peak memory
 * (VmHWM) rose by 10-55 MB. Not allowed in NODE_OPTIONS, hence the command lines.
 */
export const FEATURE_WORKER_NODE_FLAGS = ['--initial-old-space-size=256'] as const;

/** The worker processes of the embedded stack: each its own process, as in a deployment. */
export const ROLES = {
  preprocess: { script: path.join(appsDir, 'feature-worker', 'dist', 'main.js'), execArgv: FEATURE_WORKER_NODE_FLAGS, args: ['preprocess'] },
  embed: { script: path.join(appsDir, 'feature-worker', 'dist', 'main.js'), execArgv: FEATURE_WORKER_NODE_FLAGS, args: ['embed'] },
  train: { script: path.join(appsDir, 'train-worker', 'dist', 'main.js'), execArgv: [], args: [] },
} as const;
export type RoleName = keyof typeof ROLES;

export interface ChildSpec {
  role: RoleName;
  /** replica number within the role, from 1 (names its log file) */
  replica: number;
  metricsPort: number;
  env: NodeJS.ProcessEnv;
}

/** One process to keep running. */
export interface ProcessSpec {
  /** `role#replica`, `s3`, `redis`: names it in events */
  name: string;
  logFile: string;
  /**
   * a Node script (run with this Node, with an IPC channel: it exits when we go away), or a
   * program; `session`: in a session of its own, out of reach of signals to `up`'s process group
   * (a server that must stop after the workers, as Redis does)
   */
  node?: { script: string; execArgv?: string[]; session?: boolean };
  program?: string;
  args: string[];
  /** read at each (re)start, so a restart can reuse what the first start found (a port) */
  env: () => NodeJS.ProcessEnv;
  onMessage?: (message: unknown) => void;
  onOutput?: (chunk: string) => void;
  /** called on every exit; return false to not restart (a process that never came up, say) */
  onExit?: (code: number | null, signal: NodeJS.Signals | null) => boolean | void;
  /**
   * killed and restarted when this URL, having answered 200 once, has not answered 200 for
   * `hangMs` (read at each probe: a port may be known only once the process listens)
   */
  liveness?: Liveness;
}

/**
 * How a supervised process is asked whether it is alive: its `url`, asked with an HTTP GET unless
 * `ask` asks it otherwise (a Redis's PING); an answer is a status (200: alive), none is undefined.
 */
export interface Liveness {
  url: () => string;
  hangMs: number;
  ask?: (url: string, timeoutMs: number) => Promise<number | undefined>;
}

/** An HTTP GET of the URL: its status, or undefined without an answer within the time. */
function askHttp(url: string, timeoutMs: number): Promise<number | undefined> {
  return fetch(url, { signal: AbortSignal.timeout(timeoutMs) }).then(
    (res) => (void res.body?.cancel(), res.status),
    () => undefined,
  );
}

/**
 * How long a process asked to stop has before it is killed: a worker's own deadline
 * (STOP_DEADLINE_MS) and a few seconds more, so a worker still putting back its jobs ends its stop
 * itself, and logs why, rather than being killed first.
 */
export const STOP_GRACE_MS = STOP_DEADLINE_MS + 5_000;

/** Linux's `setpriv --pdeathsig`, when there: a program (redis-server) gets SIGTERM when we die, even by SIGKILL. */
const setpriv = process.platform === 'linux' && spawnSync('setpriv', ['--help'], { encoding: 'utf8' }).stdout?.includes('--pdeathsig') ? 'setpriv' : undefined;

/** A process kept running: restarted with a growing delay when it exits, until `stop()`. */
export class SupervisedProcess {
  private child: ChildProcess | undefined;
  private stopping = false;
  private restarts = 0;
  /** this process's last exit was asked by `up` itself (an unhealthy or hung one), not by a signal of its own */
  private killedByUp = false;

  constructor(
    readonly spec: ProcessSpec,
    private readonly onEvent: (line: string) => void,
  ) {
    this.spawn();
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  kill(signal: NodeJS.Signals): boolean {
    return this.child?.kill(signal) ?? false;
  }

  private spawn(): void {
    const s = this.spec;
    const log = createWriteStream(s.logFile, { flags: 'a' });
    const env = s.env();
    // Ctrl-C in a terminal signals the whole foreground group, which would stop Redis at once,
    // under workers that still need it to finish or put back their jobs. The workers stay in this
    // group but leave SIGINT and SIGHUP to `up` (lifecycle.ts: stopSignals); the servers (Redis,
    // a program; the S3 server, `session`) get a session of their own. Every child still ends with
    // `up`, however `up` ends: Node children when their IPC channel closes, Redis by pdeathsig.
    const child = s.node
      ? spawn(process.execPath, [...(s.node.execArgv ?? []), s.node.script, ...s.args], { env: { ...env, [UP_CHILD_ENV]: '1' }, stdio: ['ignore', 'pipe', 'pipe', 'ipc'], detached: s.node.session === true })
      : setpriv
        ? spawn(setpriv, ['--pdeathsig', 'SIGTERM', '--', s.program!, ...s.args], { env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] })
        : spawn(s.program!, s.args, { env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    for (const stream of [child.stdout, child.stderr]) {
      stream?.pipe(log, { end: false });
      if (s.onOutput) stream?.on('data', (d: Buffer) => s.onOutput!(d.toString()));
    }
    if (s.onMessage) child.on('message', s.onMessage);
    // A spawn that fails (no such program) is reported through 'error' and 'exit'.
    child.on('error', (err) => s.onOutput?.(`${err.message}\n`));
    this.child = child;
    const startedAt = Date.now();
    const stopWatching = s.liveness ? this.watchLiveness(child, s.liveness) : () => undefined;
    child.once('exit', (code, signal) => {
      stopWatching();
      log.end();
      const again = s.onExit?.(code, signal) !== false;
      if (this.stopping || !again) return;
      const next = nextRestart(this.restarts, Date.now() - startedAt);
      this.restarts = next.restarts;
      const delay = next.delayMs;
      const exited = `${s.name} exited (${signal ?? code})`;
      // A clean exit (0) that up did not ask for is a stop asked by a signal of its own: when the
      // whole process group was sent SIGTERM (systemd, docker, a closed tmux pane), `up` is
      // stopping too, and a "restarting" said before it knew would be false. Said once it
      // restarts, if it does (with the delay it waited).
      const quiet = code === 0 && !this.killedByUp;
      this.killedByUp = false;
      if (!quiet) this.onEvent(`${exited}; restarting in ${(delay / 1000).toFixed(1)} s — see ${s.logFile}`);
      setTimeout(() => {
        if (this.stopping) return;
        this.spawn();
        this.onEvent(quiet ? `${exited}; restarted ${(delay / 1000).toFixed(1)} s later — see ${s.logFile}` : `${s.name} restarted`);
      }, delay).unref();
    });
  }

  /**
   * A process that stops answering its liveness URL (SIGSTOPped, its event loop blocked, wedged
   * in a native call) would otherwise hold its jobs' locks, or keep them renewed, for ever while
   * `up` shows nothing: it is killed, and the exit handler starts it again. One that answers, but
   * not 200, for as long (a worker whose S3 credentials were refused: it read them at start) is
   * stopped as `up` stops it, so it puts its jobs back, and started again. Probing starts once it
   * has answered 200 (a role that is still starting has deadlines of its own); time is measured
   * on the monotonic clock, and it takes two failed probes in a row, so neither a suspended
   * laptop nor one slow answer counts as a hang.
   */
  private watchLiveness(child: ChildProcess, liveness: Liveness): () => void {
    const { url, ask = askHttp } = liveness;
    const { periodMs, timeoutMs } = livenessProbeTiming(liveness.hangMs);
    let answeredAt: number | undefined;
    let failures = 0;
    let probing = false;
    const running = () => !this.stopping && child.exitCode === null && child.signalCode === null;
    const timer = setInterval(() => {
      if (probing || !running()) return;
      probing = true;
      void ask(url(), timeoutMs).then((status) => {
        probing = false;
        if (status === 200) {
          answeredAt = performance.now();
          failures = 0;
          return;
        }
        failures++;
        if (answeredAt === undefined || failures < 2 || !running()) return;
        const silentMs = performance.now() - answeredAt;
        if (silentMs < liveness.hangMs) return;
        const seconds = Math.floor(silentMs / 1000);
        clearInterval(timer);
        this.killedByUp = true;
        if (status === undefined) {
          this.onEvent(`${this.spec.name} has not answered ${url()} for ${seconds} s (stopped, or its event loop is blocked): killing it to start it again — see ${this.spec.logFile}`);
          child.kill('SIGKILL');
        } else {
          this.onEvent(`${this.spec.name} has answered ${url()} with ${status} (unhealthy) for ${seconds} s: stopping it to start it again — see ${this.spec.logFile}`);
          child.kill('SIGTERM');
          setTimeout(() => running() && child.kill('SIGKILL'), STOP_GRACE_MS).unref();
        }
      });
    }, periodMs);
    timer.unref();
    return () => clearInterval(timer);
  }

  /**
   * From now on an exit is not restarted (nor said to be): `up` is stopping. Called for every
   * process before any is stopped, so one that exits early (the whole process group got SIGTERM)
   * is not started again while the others stop first.
   */
  holdRestarts(): void {
    this.stopping = true;
  }

  /** Asks a process that is stopping to exit at once (StopMessage `now`, or a SIGTERM: its second). */
  stopNow(): void {
    const child = this.child;
    if (child && child.exitCode === null && child.signalCode === null) askToStop(child, 'now');
  }

  /** Asks it to stop (StopMessage, or SIGTERM), then SIGKILL after `timeoutMs`; resolves when it has exited. */
  async stop(timeoutMs = STOP_GRACE_MS): Promise<void> {
    this.stopping = true;
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
      child.once('exit', () => {
        clearTimeout(timer);
        resolve();
      });
      askToStop(child, true);
    });
  }
}

/**
 * A Node child is asked over IPC (StopMessage): one stopping already on a SIGTERM of its own (the
 * whole process group got one) is not sent a second signal, which would end it at once with its
 * jobs in hand. A program (Redis), or a child whose channel is gone, gets SIGTERM.
 */
function askToStop(child: ChildProcess, stop: StopMessage['stop']): void {
  if (child.connected) child.send({ stop } satisfies StopMessage, (err) => err && child.kill('SIGTERM'));
  else child.kill('SIGTERM');
}

/**
 * Starts and watches the worker processes; their logs go to `<logDir>/<role>.log`. A process that
 * dies is restarted (with a growing delay) until `stop()`, which sends SIGTERM and waits, so
 * jobs in hand are finished or released. Each worker has an IPC channel to this process and exits
 * when it closes, so no worker outlives `up`, however `up` ended.
 */
export class Supervisor {
  private readonly children = new Map<string, SupervisedProcess>();

  /**
   * `liveness`: each worker's /healthz is watched on `metricsHost` (a wildcard address is asked
   * on loopback); one that stops answering for `hangMs` is killed and started again (0: never).
   */
  constructor(
    private readonly logDir: string,
    private readonly onEvent: (line: string) => void,
    private readonly liveness: { metricsHost: string; hangMs: number } = { metricsHost: '127.0.0.1', hangMs: 0 },
  ) {}

  async start(specs: ChildSpec[]): Promise<void> {
    await mkdir(this.logDir, { recursive: true });
    for (const s of specs) {
      const { script, execArgv, args } = ROLES[s.role];
      const name = `${s.role}#${s.replica}`;
      const watched = this.liveness.hangMs > 0 && s.metricsPort > 0;
      this.children.set(
        name,
        new SupervisedProcess(
          {
            name,
            logFile: this.logFile(s.role, s.replica),
            node: { script, execArgv: [...execArgv] },
            args: [...args],
            // The SDK's notice that its 2027 releases need Node 22 would repeat in every worker log.
            // (the hang time it is watched with, which it records for commands waiting on it)
            env: () => ({ AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true', ...s.env, TL_METRICS_PORT: String(s.metricsPort), TL_SUPERVISOR_HANG_MS: String(watched ? this.liveness.hangMs : 0) }),
            liveness: watched ? { url: () => `http://${reachableHost(this.liveness.metricsHost)}:${s.metricsPort}/healthz`, hangMs: this.liveness.hangMs } : undefined,
          },
          this.onEvent,
        ),
      );
    }
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

  /** Every worker exits at once, its jobs in hand (a second Ctrl-C): see SupervisedProcess.stopNow. */
  stopNow(): void {
    for (const c of this.children.values()) c.stopNow();
  }

  /** No worker is restarted from now on (see SupervisedProcess.holdRestarts). */
  holdRestarts(): void {
    for (const c of this.children.values()) c.holdRestarts();
  }

  async stop(timeoutMs = STOP_GRACE_MS): Promise<void> {
    await Promise.all([...this.children.values()].map((c) => c.stop(timeoutMs)));
  }
}

/**
 * When a process that exited is started again: 0.5 s after it exits, doubling (up to 30 s) for
 * each exit within a minute of its start; one that ran longer starts the count again at its first
 * restart (`restarts`: how many quick exits in a row, counting this one).
 */
export function nextRestart(restarts: number, ranMs: number): { restarts: number; delayMs: number } {
  const n = ranMs > 60_000 ? 1 : restarts + 1;
  return { restarts: n, delayMs: Math.min(30_000, 500 * 2 ** (n - 1)) };
}

/** Who most likely holds a port the embedded stack wants: the same stack, up in another terminal. */
export const ANOTHER_UP = `by another "transferline up" perhaps (Ctrl-C in its terminal stops it; the CLI's commands work against it as it is)`;
