import { pino, type Logger } from 'pino';

export type { Logger };

/**
 * Structured JSON logs on stderr (stdout stays free for CLI output). One logger per process,
 * a child per job: `logger.child({ jobId })`. Errors go under `err` as Error objects, so their
 * type, message and stack are kept. Never log payload contents or credentials.
 *
 * Written synchronously: a line is out before the next statement runs, so nothing is left to
 * flush at exit. With async writes pino flushes on exit, and when stderr is a pipe whose reader
 * is gone (`up` killed), sonic-boom 4's flushSync retries the EPIPE for ever: the worker never
 * exits. Logs are a few lines per batch, not per image, so the syscalls cost nothing measurable.
 */
export function createLogger(name: string, level: string): Logger {
  return pino({ name, level, base: { role: name, pid: process.pid }, serializers: { err: pino.stdSerializers.err } }, pino.destination({ dest: 2, sync: true }));
}
