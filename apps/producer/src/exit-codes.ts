/**
 * Exit codes of the CLI (documented in the README): scripts can tell "some images failed" from
 * "nothing can move the rest" from a plain error.
 */
export const EXIT = {
  ok: 0,
  /** an error: bad input, a server that cannot be reached, a run that failed */
  error: 1,
  /** bad usage (unknown option, missing argument) */
  usage: 2,
  /** finished, but some images failed for good (see `transferline failures`) */
  failedItems: 3,
  /** gave up waiting: no worker that could move the remaining work is connected, or its jobs are gone */
  stalled: 4,
  /** the dataset vanished from Redis while waiting (its data was lost or flushed) */
  vanished: 5,
  /** interrupted by Ctrl-C (the work goes on in the workers) */
  interrupted: 130,
  /** the reader of its output went away (`| head`): 128 + SIGPIPE, as a shell reports a tool it killed */
  brokenPipe: 141,
} as const;

/** Ends the command with an exit code and a message for the user. */
export class CliExit extends Error {
  override readonly name = 'CliExit';
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(message);
  }
}

let brokenPipeHandler = (): void => process.exit(EXIT.brokenPipe);

/**
 * What the CLI does when the reader of its output goes away: exit at once with `brokenPipe`, or,
 * for a command that must first stop what it started (`up`: its workers and servers), what it
 * registers here.
 */
export function onBrokenPipe(handler: () => void): void {
  brokenPipeHandler = handler;
}

export function brokenPipe(): void {
  brokenPipeHandler();
}
