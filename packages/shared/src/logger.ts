import { pino, type Logger } from 'pino';

export type { Logger };

/**
 * Structured JSON logs on stderr (stdout stays free for CLI output). One logger per process,
 * a child per job: `logger.child({ jobId })`. Never log payload contents or credentials.
 */
export function createLogger(name: string, level: string): Logger {
  return pino({ name, level, base: { role: name } }, pino.destination(2));
}
