import {
  closeQueues,
  createQueues,
  createServices,
  embedderIdFromConfig,
  pingRedis,
  type Config,
  type Queues,
  type Services,
} from '@transferline/shared';

/** What every one-shot command uses: clients built once from config, closed once. */
export interface CliContext {
  config: Config;
  services: Services;
  queues: Queues;
  embedderId: string;
  out: NodeJS.WritableStream;
  close: () => Promise<void>;
}

export async function openCliContext(config: Config, out: NodeJS.WritableStream = process.stdout): Promise<CliContext> {
  const services = createServices(config, 'oneshot');
  try {
    await pingRedis(services.redis, config.redis.url);
  } catch (err) {
    await services.close();
    throw err;
  }
  const queues = createQueues(services.redis, config.redis.prefix);
  return {
    config,
    services,
    queues,
    embedderId: embedderIdFromConfig(config),
    out,
    close: async () => {
      await closeQueues(queues);
      await services.close();
    },
  };
}
