import {
  JOBS,
  createMetrics,
  createQueues,
  createServices,
  embedderIdFromConfig,
  startWorker,
  type Config,
  type Logger,
  type Handler,
} from '@transferline/shared';
import { loadTfRuntime } from '@transferline/shared/tf';
import type { Worker } from 'bullmq';
import { embedBatch, type EmbedOutcome } from './embed-images.job.js';
import { createEfficientNetEmbedder } from './embedder.js';
import { MicroBatcher } from './micro-batcher.js';
import { preprocessImage } from './preprocess-image.job.js';

export type Role = 'preprocess' | 'embed';

export interface RunningRole {
  metrics: ReturnType<typeof createMetrics>;
  healthy: () => boolean;
  stop: () => Promise<void>;
}

/** Wires one role of the feature worker: config → deps → a BullMQ worker. */
export async function startRole(role: Role, config: Config, log: Logger): Promise<RunningRole> {
  const metrics = createMetrics(role);
  const services = createServices(config, 'worker');
  const queues = createQueues(services.redis, config.redis.prefix);
  const embedderId = embedderIdFromConfig(config);
  const common = { connection: services.redis, prefix: config.redis.prefix, log, metrics };
  let worker: Worker;
  let onStop: () => Promise<void> = async () => {};

  if (role === 'preprocess') {
    const deps = {
      services,
      embedQueue: queues.embed,
      image: { size: 224, maxInputPixels: config.preprocess.maxInputPixels, background: { r: 255, g: 255, b: 255 } },
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
    worker = startWorker('preprocess', handler, { ...common, concurrency: config.preprocess.concurrency });
  } else {
    const rt = await loadTfRuntime(config.embed.backend, log);
    const embedder = createEfficientNetEmbedder(rt, { seed: config.embed.seed });
    const weights = config.embed.weights === 'random' ? 'random' : 'imagenet';
    metrics.modelInfo.set({ backend: rt.backend, weights, embedder: embedderId }, 1);
    if (weights === 'random') {
      log.warn({ embedderId }, 'embedding with deterministic RANDOM weights (seeded), not ImageNet: features are only good for easy tasks');
    }
    const batcher = new MicroBatcher<Parameters<typeof embedBatch>[0][number], EmbedOutcome>(
      (jobs) => embedBatch(jobs, { services, embedder, embedderId, metrics }),
      config.embed.batchSize,
      config.embed.batchWaitMs,
    );
    const handler: Handler<'embed'> = (payload) => batcher.submit(payload);
    // Concurrency 2×B: while one batch runs, the next one is already being collected.
    worker = startWorker('embed', handler, { ...common, concurrency: 2 * config.embed.batchSize, lockDuration: 120_000 });
    onStop = async () => {
      await batcher.drain();
      embedder.dispose();
    };
  }
  log.info({ role, queue: JOBS[role].queue, embedderId }, 'worker started');

  let closing = false;
  return {
    metrics,
    healthy: () => !closing && worker.isRunning(),
    stop: async () => {
      closing = true;
      await worker.close();
      await onStop();
      await Promise.all(Object.values(queues).map((q) => q.close()));
      await services.close();
    },
  };
}
