import {
  createMetrics,
  createServices,
  embedderIdFromConfig,
  startWorker,
  type Config,
  type EmbedJob,
  type Handler,
  type Logger,
  resolveWeights,
  type WeightsFile,
} from '@transferline/shared';
import { loadTfRuntime } from '@transferline/shared/tf';
import { embedBatch, type EmbedOutcome } from './embed-images.job.js';
import { createEfficientNetEmbedder } from './embedder.js';
import { MicroBatcher } from './micro-batcher.js';
import type { RunningRole } from './role.js';

/** config → deps → the embed worker (the model, dynamic batching, the durable cache). */
export async function startEmbedRole(config: Config, log: Logger): Promise<RunningRole> {
  const metrics = createMetrics('embed');
  const services = createServices(config, 'worker');
  const embedderId = embedderIdFromConfig(config);
  const rt = await loadTfRuntime(config.embed.backend, log);
  const weights = config.embed.weights;
  let weightsFile: WeightsFile | undefined;
  if (weights === 'imagenet') {
    let lastLog = 0;
    weightsFile = await resolveWeights(config.embed, {
      store: services.store,
      onProgress: (received, total) => {
        if (Date.now() - lastLog < 2_000) return;
        lastLog = Date.now();
        log.info({ received, total }, 'downloading EfficientNet-B0 weights');
      },
    });
    log.info({ path: weightsFile.path, md5: weightsFile.md5, downloaded: weightsFile.downloaded }, 'ImageNet weights verified');
  }
  const embedder = await createEfficientNetEmbedder(rt, { seed: config.embed.seed, ...(weightsFile && { weights: weightsFile.bytes }) });
  metrics.modelInfo.set({ backend: rt.backend, weights, embedder: embedderId }, 1);
  if (weights === 'random') {
    log.warn({ embedderId }, 'embedding with deterministic RANDOM weights (seeded), not ImageNet: features are only good for easy tasks');
  }
  const batcher = new MicroBatcher<EmbedJob, EmbedOutcome>(
    (jobs) => embedBatch(jobs, { services, embedder, embedderId, metrics }),
    config.embed.batchSize,
    config.embed.batchWaitMs,
    2, // one batch's durable write overlaps the next one's forward pass
  );
  const handler: Handler<'embed'> = (payload) => batcher.submit(payload);
  // Concurrency 3×B: one batch computing, one being written, the next one being collected.
  const worker = startWorker('embed', handler, {
    connection: services.redis,
    prefix: config.redis.prefix,
    log,
    metrics,
    concurrency: 3 * config.embed.batchSize,
    lockDuration: config.jobLockMs,
  });
  log.info({ role: 'embed', embedderId, backend: rt.backend, batchSize: config.embed.batchSize }, 'worker started');
  let closing = false;
  return {
    metrics,
    healthy: () => !closing && worker.isRunning(),
    stop: async () => {
      closing = true;
      await worker.close();
      await batcher.drain();
      embedder.dispose();
      await services.close();
    },
  };
}
