import { randomBytes } from 'node:crypto';
import os from 'node:os';
import { setTimeout as delay } from 'node:timers/promises';
import type { Logger } from './logger.js';

/**
 * This process as other processes see it: `host:pid:random` (the random part tells apart two
 * containers whose processes are both pid 1 on hosts of one name). One name for every record a
 * worker leaves in Redis: its BullMQ workers' blocking connections (`CLIENT LIST`), the job it holds (BullMQ's
 * `processedBy`), its embed heartbeat, its pause entry; so the CLI can tell which worker holds a
 * job and whether it is still connected.
 */
export const PROCESS_NAME = `${os.hostname()}:${process.pid}:${randomBytes(3).toString('hex')}`;

/** The host and pid a PROCESS_NAME (a job's holder, a worker connection's name) was made from. */
export function processOfName(name: string): { host: string; pid: number } {
  const [host = '', pid = ''] = name.split(':');
  return { host, pid: Number(pid) };
}

/**
 * Longest a stop may take (jobs in hand, a Redis that is gone) before the process exits anyway.
 * Whatever stops a worker gives it longer than this (`up`, the compose file, the manifests), so
 * the worker ends its own stop and says why.
 */
export const STOP_DEADLINE_MS = 45_000;
/** The same when the parent (`up`) is gone: its Redis and S3 are going too, so a clean stop rarely can finish. */
const ORPHAN_STOP_DEADLINE_MS = 5_000;

/**
 * Set to `1` by `up` in the environment of each Node process it starts (with an IPC channel): a
 * process under another IPC parent (pm2's fork mode, which stops it with SIGINT) is not `up`'s.
 */
export const UP_CHILD_ENV = 'TL_UP_CHILD';

/**
 * Whether this process is supervised by `up` (started with an IPC channel, and UP_CHILD_ENV). Such a process shares
 * `up`'s process group, so a terminal's Ctrl-C reaches it too; it leaves SIGINT (and SIGHUP) to
 * `up`, which stops its children in order (workers first, with a StopMessage; Redis and S3 last)
 * and passes a second Ctrl-C on (StopMessage `now`). (A group of its own would take a session of its own, and
 * with the kernel's autogroup scheduling each session is weighed as one: the embed worker's
 * threads would then share one process's CPU weight against Redis's and the S3 server's.)
 */
export function supervisedByUp(): boolean {
  return typeof process.send === 'function' && process.env[UP_CHILD_ENV] === '1';
}

/**
 * The signals that stop this process: SIGTERM, and SIGINT unless `up` supervises it. Under `up`,
 * SIGINT and SIGHUP are left to `up` (listeners keep them from ending the process), from this
 * first call on, and `onLeftToUp` is told each time: a terminal's Ctrl-C, and its closing (SIGHUP
 * to the whole job), reach every process of `up`'s group, and `up` stops its workers in order on
 * both; a SIGINT sent to this worker alone (`kill -INT`) did nothing, and said nothing.
 */
export function stopSignals(onLeftToUp?: (signal: 'SIGINT' | 'SIGHUP') => void): NodeJS.Signals[] {
  if (!supervisedByUp()) return ['SIGINT', 'SIGTERM'];
  for (const signal of ['SIGINT', 'SIGHUP'] as const) if (process.listenerCount(signal) === 0) process.on(signal, () => onLeftToUp?.(signal));
  return ['SIGTERM'];
}

/** What a worker under `up` says of a SIGINT or SIGHUP it leaves to `up`. */
export const leftToUp = (signal: 'SIGINT' | 'SIGHUP') =>
  `${signal} left to up, which stops its workers in order on a terminal's Ctrl-C or its closing: to stop this worker alone, send it SIGTERM (up then starts it again)`;

/**
 * How `up` stops a process it started with an IPC channel: a message, not a SIGTERM, so that one
 * stopping already on a signal of its own (the whole process group got SIGTERM from systemd) is
 * not sent a second signal, which ends it at once with its jobs in hand. A second Ctrl-C is passed
 * on as `now`: exit at once, as a second signal does.
 */
export interface StopMessage {
  /** `now`: exit at once (a second Ctrl-C), as a second signal does */
  stop: true | 'now';
}

/** Whether an IPC message from `up` asks this process to stop (see StopMessage). */
export function isStopMessage(m: unknown): m is StopMessage {
  const stop = typeof m === 'object' && m !== null ? (m as Partial<StopMessage>).stop : undefined;
  return stop === true || stop === 'now';
}

/**
 * The one rule for a process asked to stop more than once, as `runUntilSignal` and a role that is
 * still starting both apply it: the first ask stops it (`stop`); `up`'s message (StopMessage) and
 * a signal are one stop, in either order (a SIGTERM to the whole process group, and `up`'s stop of
 * its workers), so they are counted apart (`again`); a second signal, or `up` gone while it stops,
 * ends it at once (`exit`).
 */
export function stopAsks(): (why: StopAsked) => 'stop' | 'again' | 'exit' {
  let asked = false;
  let signals = 0;
  return (why) => {
    if (why !== 'up' && why !== 'orphaned') signals++;
    if (!asked) {
      asked = true;
      return 'stop';
    }
    if (why === 'orphaned') return 'exit';
    return why === 'up' || signals < 2 ? 'again' : 'exit';
  };
}

/** How a stop is logged: the signal, `up`'s message, or `up` gone. */
const stopCause = (why: StopAsked) => (why === 'up' ? { askedBy: 'up' } : why === 'orphaned' ? { parent: 'gone' } : { signal: why });

/**
 * On SIGINT/SIGTERM (see stopSignals), or `up`'s StopMessage: stop taking work, finish or release
 * what is in hand (`stop`), exit 0. A second signal exits at once, for the impatient (stopAsks),
 * and so does a stop that outlasts STOP_DEADLINE_MS (its jobs are found stalled and run again
 * elsewhere). A process started with an IPC channel (by `up`) does the same when its parent goes
 * away, or is already gone, within ORPHAN_STOP_DEADLINE_MS. Returns the same stop, ending in exit
 * 1, for a process that finds once started that it must not work here (RunningRole.refused).
 */
export function runUntilSignal(log: Logger, stop: () => Promise<void>, askedWhileStarting?: StopAsked): (refusal: Error) => void {
  const ask = stopAsks();
  // (a refusal found once started: the same stop, ending in exit 1)
  let exitCode = 0;
  const onStop = (why: StopAsked | 'refused') => {
    const verdict = ask(why === 'refused' ? 'up' : why);
    if (verdict === 'again') return;
    if (verdict === 'exit' && why !== 'refused') {
      log.warn(stopCause(why), why === 'orphaned' ? 'up went away while this process stopped: exiting now' : 'second signal: exiting now');
      process.exit(130);
    }
    // (an orphan's deadline is short: its Redis and S3 are going)
    const deadlineMs = why === 'orphaned' ? ORPHAN_STOP_DEADLINE_MS : STOP_DEADLINE_MS;
    setTimeout(() => {
      log.warn({ deadlineMs }, 'stopping took too long: exiting; jobs in hand run again elsewhere');
      process.exit(1);
    }, deadlineMs).unref();
    if (why !== 'refused') log.info(stopCause(why), 'stopping: finishing the jobs in hand');
    stop().then(
      () => {
        log.info('stopped');
        process.exit(exitCode);
      },
      (err: unknown) => {
        log.error({ err }, 'error while stopping');
        process.exit(1);
      },
    );
  };
  for (const signal of stopSignals()) process.on(signal, () => onStop(signal));
  if (supervisedByUp()) {
    // `up`'s stop; `now` (a second Ctrl-C) exits at once
    process.on('message', (m: unknown) => {
      if (!isStopMessage(m)) return;
      if (m.stop !== 'now') return onStop('up');
      log.warn({ askedBy: 'up' }, 'asked to exit now (a second Ctrl-C): exiting; jobs in hand run again elsewhere');
      process.exit(130);
    });
    // Started by `up` with an IPC channel: when `up` is gone (even SIGKILLed), so are we.
    process.on('disconnect', () => onStop('orphaned'));
  }
  // a stop asked while the role started, which finished starting before it could exit: the same
  // stop, with the same deadline
  if (supervisedByUp() && !process.connected) onStop('orphaned');
  else if (askedWhileStarting) onStop(askedWhileStarting);
  return (refusal) => {
    exitCode = 1;
    log.error({ err: refusal.message }, 'refused: stopping');
    onStop('refused');
  };
}

/** What stopped a process before it was ready to stop as runUntilSignal does: a signal, or its parent (`up`) going away. */
export type StopAsked = NodeJS.Signals | 'up' | 'orphaned';

/**
 * Waits `ms`, or less if `signal` aborts first (watch loops that Ctrl-C must end promptly). Node's
 * promise timer takes its listener off the signal when the time is up: a wait polls with the
 * command's one signal, and listeners left on it piled up one a look (Node's
 * MaxListenersExceededWarning on stderr after 11 looks of an ingest's wait; a `--watch` left
 * running for days kept them all). An abort ends it as the time would (its AbortError is no news).
 */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return delay(ms, undefined, { signal }).catch(() => undefined);
}

/** How late a deadline's timer may fire before it waits a turn of the event loop (deadlineTimer). */
const LATE_TIMER_MS = 1_000;

/**
 * setTimeout for a deadline on an answer: a timer that fires more than a second late (the event
 * loop was blocked: a long synchronous stretch) calls `fn` only after one more turn of the loop
 * (setImmediate), so that an answer that came meanwhile, waiting in its socket, is read first and
 * not called missing. A caller that clears the timer must still ignore a late `fn`.
 */
export function deadlineTimer(ms: number, fn: () => void): NodeJS.Timeout {
  const due = performance.now() + ms;
  return setTimeout(() => {
    if (performance.now() - due > LATE_TIMER_MS) setImmediate(fn);
    else fn();
  }, ms);
}

/**
 * `work`'s outcome, or after `ms` without one, `late()`'s error (by default "no answer within ms"):
 * a request to a server that may take the connection and answer nothing. The timer is cleared
 * when `work` settles first.
 */
export function withDeadline<T>(work: Promise<T>, ms: number, late: () => Error = () => new Error(`no answer within ${ms} ms`)): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const t = deadlineTimer(ms, () => reject(late()));
    work.then(
      (v) => (clearTimeout(t), resolve(v)),
      (e: unknown) => (clearTimeout(t), reject(e as Error)),
    );
  });
}

/**
 * Waits for `work` to settle, but at most `ms` (its error, or its lateness, ignored): a write
 * worth making on the way out that a Redis or S3 that is down must not hold up. The timer does
 * not keep the process alive.
 */
export async function settledWithin(ms: number, work: Promise<unknown>): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<void>((resolve) => (timer = setTimeout(resolve, ms)).unref());
  await Promise.race([work.then(() => undefined, () => undefined), late]);
  clearTimeout(timer);
}
