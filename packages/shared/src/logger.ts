import { pino, type Logger } from 'pino';

export type { Logger };

/**
 * Structured JSON logs on stderr (stdout stays free for CLI output). One logger per process,
 * a child per job: `logger.child({ jobId })`. Errors go under `err` as Error objects, so their
 * type, message and stack are kept. Never log payload contents or credentials.
 */
export function createLogger(name: string, level: string): Logger {
  return pino({ name, level, base: { role: name }, serializers: { err: pino.stdSerializers.err } }, pino.destination(2));
}
