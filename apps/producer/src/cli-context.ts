import { closeQueues, createQueues, createServices, pingRedis, type Config, type EmbeddingSpace, type Queues, type Services } from '@transferline/shared';

/** What every one-shot command uses: clients built once from config, closed once. */
export interface CliContext {
  config: Config;
  services: Services;
  queues: Queues;
  out: NodeJS.WritableStream;
  /** Ctrl-C: long waits end promptly when it fires */
  signal?: AbortSignal;
  close: () => Promise<void>;
}

export async function openCliContext(config: Config, out: NodeJS.WritableStream = process.stdout, signal?: AbortSignal): Promise<CliContext> {
  const services = createServices(config, 'oneshot');
  try {
    await pingRedis(services.redis, config.redis.url);
  } catch (err) {
    await services.close();
    throw err;
  }
  const queues = createQueues(services.redis, config);
  return {
    config,
    services,
    queues,
    out,
    ...(signal && { signal }),
    close: async () => {
      await closeQueues(queues);
      await services.close();
    },
  };
}

/**
 * The embedding space a command works in, read from the cluster (never from this process's
 * environment): `--embedder ID` when given, else the one the embed workers run. Says which in
 * one line.
 */
export async function chooseSpace(ctx: CliContext, requested?: string, reason?: string): Promise<EmbeddingSpace> {
  const r = await ctx.services.spaces.resolve(requested, reason);
  ctx.out.write(`${r.message}\n`);
  return r.space;
}
