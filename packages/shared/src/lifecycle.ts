import type { Logger } from './logger.js';

/**
 * On SIGINT/SIGTERM: stop taking work, finish or release what is in hand (`stop`), exit 0.
 * A second signal exits at once, for the impatient. A process started with an IPC channel (by
 * `up`) does the same when its parent goes away.
 */
export function runUntilSignal(log: Logger, stop: () => Promise<void>): void {
  let stopping = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) {
      log.warn({ signal }, 'second signal: exiting now');
      process.exit(130);
    }
    stopping = true;
    log.info({ signal }, 'stopping: finishing the jobs in hand');
    stop().then(
      () => {
        log.info('stopped');
        process.exit(0);
      },
      (err: unknown) => {
        log.error({ err }, 'error while stopping');
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  // Started by `up` with an IPC channel: when `up` is gone (even SIGKILLed), so are we.
  if (process.send) process.on('disconnect', () => onSignal('SIGTERM'));
}

/** Waits `ms`, or less if `signal` aborts first (watch loops that Ctrl-C must end promptly). */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const t = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => (clearTimeout(t), resolve()), { once: true });
  });
}
