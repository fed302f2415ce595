import { closeQueues, createQueues, createServices, type Config } from '@transferline/shared';
import { createLogger } from '@transferline/shared/service-runtime';
import type { CliContext } from '../cli-context.js';
import { startConsole, type ConsoleHandle } from '../console/console.server.js';
import { BOARD_PATHS } from '../console/queue-boards.js';

export interface ConsoleCommandOptions {
  /** override TL_CONSOLE_HOST */
  host?: string;
  /** override TL_CONSOLE_PORT (0 = any free port) */
  port?: number;
}

/** The lines that tell a user where the console is and what they can do there (no credentials). */
export function consoleBanner(c: Pick<ConsoleHandle, 'url' | 'actionsEnabled'>, user: string): string[] {
  const at = (p: string) => new URL(`${p}/`, c.url).href;
  return [
    `console          ${c.url}   (datasets, models, queues)`,
    `  queues         ${at(BOARD_PATHS.readOnly)}   (read-only)`,
    c.actionsEnabled
      ? `  queue actions  ${at(BOARD_PATHS.admin)}   (sign in as ${user} with TL_CONSOLE_PASSWORD: pause, resume, retry, clean)`
      : '  queue actions  disabled: set TL_CONSOLE_PASSWORD (and TL_CONSOLE_USER, default admin) to enable them',
  ];
}

/**
 * `transferline console`: the web console against the deployment of the environment (REDIS_URL,
 * S3_ENDPOINT), until Ctrl-C (or SIGTERM). It serves for hours, so it opens its own clients in
 * worker mode, which wait for a Redis that restarts instead of failing for good as a one-shot
 * command's do; pages say so when Redis or S3 do not answer in time. Everything is closed
 * before it returns, so the process exits.
 */
export async function consoleCommand(ctx: CliContext, o: ConsoleCommandOptions = {}): Promise<void> {
  const config: Config = { ...ctx.config, console: { ...ctx.config.console, ...(o.host !== undefined && { host: o.host }), ...(o.port !== undefined && { port: o.port }) } };
  const log = createLogger('console', config.logLevel);
  const services = createServices(config, 'worker');
  const queues = createQueues(services.redis, config);
  const stop = new AbortController();
  const onStop = () => stop.abort();
  ctx.signal?.addEventListener('abort', onStop, { once: true });
  if (ctx.signal?.aborted) stop.abort();
  process.once('SIGTERM', onStop);
  // without the CLI's Ctrl-C signal (called from elsewhere), Ctrl-C is ours to handle
  if (!ctx.signal) process.once('SIGINT', onStop);
  let handle: ConsoleHandle | undefined;
  try {
    handle = await startConsole({ services, queues, config, log });
    for (const line of consoleBanner(handle, config.console.user)) ctx.out.write(`${line}\n`);
    ctx.out.write('Ctrl-C stops it.\n');
    await new Promise<void>((resolve) => {
      if (stop.signal.aborted) return resolve();
      stop.signal.addEventListener('abort', () => resolve(), { once: true });
    });
    ctx.out.write('\nstopping the console…\n');
  } finally {
    process.off('SIGTERM', onStop);
    process.off('SIGINT', onStop);
    ctx.signal?.removeEventListener('abort', onStop);
    await handle?.close();
    await closeQueues(queues);
    await services.close();
  }
}
