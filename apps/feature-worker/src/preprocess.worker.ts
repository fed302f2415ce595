import {
  PermanentError,
  closeQueues,
  createMetrics,
  createQueues,
  createServices,
  embedderIdFromConfig,
  enqueue,
  jobIds,
  startWorker,
  type Config,
  type Handler,
  type EmbedJob,
  type Logger,
} from '@transferline/shared';
import { EmbedBacklogGate } from './embed-backlog.gate.js';
import { configureSharp } from './image.ops.js';
import { preprocessImage, type PreprocessDeps } from './preprocess-image.job.js';
import type { RunningRole } from './role.js';

/** config → deps → the preprocess worker (CPU: download, hash, decode, resize). */
export async function startPreprocessRole(config: Config, log: Logger): Promise<RunningRole> {
  const metrics = createMetrics('preprocess');
  const services = createServices(config, 'worker');
  const queues = createQueues(services.redis, config.redis.prefix);
  const embedderId = embedderIdFromConfig(config);
  const sharpSettings = configureSharp({ concurrency: config.preprocess.sharpConcurrency });
  const gate = new EmbedBacklogGate(services.redis, queues.embed, `${config.redis.prefix}:backpressure:embed`, config.preprocess.maxPendingTensors, metrics, log);
  const deps: PreprocessDeps = {
    services,
    enqueueEmbed: async (job: EmbedJob) => {
      // An embed job that failed for good keeps its id; new pixels for the same image must get
      // a new chance, not be deduplicated against the failure. (One ZSCORE on the hot path; the
      // job is only loaded in the rare case it failed.)
      const id = jobIds.embed(job);
      if ((await services.redis.zscore(queues.embed.toKey('failed'), id)) !== null) {
        await (await queues.embed.getJob(id))?.remove();
        await services.redis.hdel(services.keys.embeddingFailures(job.embedderId), job.sha256);
      }
      await enqueue(queues.embed, 'embed', [{ id, payload: job }]);
    },
    gate,
    image: { size: 224, maxInputPixels: config.preprocess.maxInputPixels, background: config.preprocess.background, resize: config.preprocess.resize },
    maxObjectBytes: config.preprocess.maxObjectBytes,
  };
  const handler: Handler<'preprocess'> = async (payload, ctx) => {
    const outcome = await preprocessImage(payload, deps, ctx).catch((err: unknown) => {
      metrics.images.inc({ stage: 'preprocess', outcome: err instanceof PermanentError ? 'failed' : 'retried' });
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
  log.info(
    {
      role: 'preprocess',
      embedderId,
      concurrency: config.preprocess.concurrency,
      sharpConcurrency: sharpSettings.concurrency,
      resize: config.preprocess.resize,
      maxPendingTensors: config.preprocess.maxPendingTensors,
    },
    'worker started',
  );
  let closing = false;
  return {
    metrics,
    healthy: () => !closing && worker.isRunning(),
    stop: async () => {
      closing = true;
      // Jobs held by backpressure give up first (they are retried later), so close() can finish.
      gate.close();
      await worker.close();
      await closeQueues(queues);
      await services.close();
    },
  };
}

