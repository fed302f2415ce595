import {
  createMetrics,
  createQueues,
  createServices,
  embedderIdFromConfig,
  startWorker,
  type Config,
  type Handler,
  type Logger,
} from '@transferline/shared';
import { preprocessImage } from './preprocess-image.job.js';
import type { RunningRole } from './role.js';

/** config → deps → the preprocess worker (CPU: download, hash, decode, resize). */
export async function startPreprocessRole(config: Config, log: Logger): Promise<RunningRole> {
  const metrics = createMetrics('preprocess');
  const services = createServices(config, 'worker');
  const queues = createQueues(services.redis, config.redis.prefix);
  const embedderId = embedderIdFromConfig(config);
  const deps = {
    services,
    embedQueue: queues.embed,
    image: { size: 224, maxInputPixels: config.preprocess.maxInputPixels, background: config.preprocess.background },
    maxObjectBytes: config.preprocess.maxObjectBytes,
  };
  const handler: Handler<'preprocess'> = async (payload, ctx) => {
    const outcome = await preprocessImage(payload, deps, ctx).catch((err: unknown) => {
      metrics.images.inc({ stage: 'preprocess', outcome: 'failed' });
      throw err;
    });
    metrics.images.inc({ stage: 'preprocess', outcome });
    return outcome;
  };
  const worker = startWorker('preprocess', handler, {
    connection: services.redis,
    prefix: config.redis.prefix,
    log,
    metrics,
    concurrency: config.preprocess.concurrency,
    lockDuration: config.jobLockMs,
  });
  log.info({ role: 'preprocess', embedderId, concurrency: config.preprocess.concurrency }, 'worker started');
  let closing = false;
  return {
    metrics,
    healthy: () => !closing && worker.isRunning(),
    stop: async () => {
      closing = true;
      await worker.close();
      await Promise.all(Object.values(queues).map((q) => q.close()));
      await services.close();
    },
  };
}
