import { claimStorage, createQueues, isClassifyDataset, createServices, settledWithin, startS3Guard, startWorker, watchRedis, workersAlive, type Config, type Handler, type Logger, type RunningRole } from '@transferline/shared';
import { createMetrics, exportQueueDepths } from '@transferline/shared/service-runtime';
import { loadTfRuntime } from '@transferline/shared/tf';
import { CLASSIFY_FAILURE_REASONS, classifyImages } from './classify-images.job.js';
import { TRAIN_FAILURE_REASONS, trainHead } from './train-head.job.js';
import { runCounters } from './run-counters.js';
import { runGauges } from './run-gauges.js';

/** config → deps → the train worker: training runs and classification, one job of each at a time per process. */

export async function startTrainer(config: Config, log: Logger): Promise<RunningRole> {
  const metrics = createMetrics('train');
  const services = createServices(config, 'worker');
  const unwatchRedis = watchRedis(services.redis, config.redis.url, log, metrics);
  // it reads embeddings and writes runs under TL_BUCKET/TL_PREFIX: the deployment's, or none
  await claimStorage(services.redis, services.keys, { bucket: config.s3.bucket, prefix: config.s3.prefix }, config.redis).catch(async (err: unknown) => {
    await services.close();
    throw err;
  });
  // The head is small: TF.js on the native backend when one loads, else wasm (ONNX is for the embedder only).
  const b = config.embed.backend;
  const rt = await loadTfRuntime(b === 'onnx' ? 'auto' : b, log).catch((err: unknown) => {
    throw b === 'tensorflow' ? new Error(`${config.embed.backendVariable}=tensorflow does not load: ${(err as Error).message}`) : err;
  });
  const s3 = await startS3Guard(services.store, config.s3, log, metrics);
  const queues = createQueues(services.redis, config);
  // what keeps the images a starting run waits for from moving on, as the train command's wait says it
  const stageBlocked = async (stage: 'preprocess' | 'embed', space: string, o: { pausedForSeconds: number }): Promise<string | undefined> => {
    const queue = stage === 'preprocess' ? queues.preprocess : queues.embed(space);
    const of = stage === 'embed' ? ` of embedding space ${space}` : '';
    if (await queue.isPaused()) return `the ${stage} queue${of} is paused (resume it: the console's queue board)`;
    const workers = stage === 'preprocess' ? await queue.getWorkersCount() : await services.spaces.workersOf(space);
    if (workers > 0) {
      // (a pause of a few seconds, an outage just ending, is not a stage that cannot move them)
      const paused = await services.paused.allPaused(queue.name, workers, o.pausedForSeconds);
      return paused && `the ${stage} stage${of}: ${paused}`;
    }
    // (one loading its model, restarted or come up with the jobs queued, will move them)
    if (stage === 'embed' && (await services.spaces.startingWorkers(space)).length > 0) return undefined;
    return `no ${stage} worker${of} connected`;
  };
  const deps = { tf: rt.tf, backend: rt.backend, services, bucket: config.s3.bucket, metrics, s3, stageBlocked };
  const gauges = runGauges(metrics, config.trainGaugesLingerMs);
  const runs = runCounters(metrics, async () => (await services.datasets.list()).filter((d) => !isClassifyDataset(d)));
  metrics.setTrainRunsSource(() => settledWithin(2_000, runs.refresh()));
  const handler: Handler<'train'> = async (payload, ctx) => {
    const { dataset } = payload;
    const runEnded = runs.begin(dataset);
    const gaugesEnded = gauges.begin(dataset);
    let result;
    try {
      result = await trainHead(payload, deps, ctx);
    } finally {
      gaugesEnded();
      runEnded();
    }
    // (a run written already, returned again, was counted when it ran: a review saw one run counted twice)
    if (!result.replayed) runs.count(dataset, 'completed');
    ctx.log.info({ dataset, runId: payload.runId, validationAccuracy: result.validationAccuracy }, 'run finished');
    return result;
  };
  exportQueueDepths(metrics, async () => [queues.train, queues.classify]);
  // One job of each kind at a time per process: both hold a model and large arrays in memory.
  // Their locks last at least a minute (the catalog's floor: long synchronous TF.js stretches).
  const settings = { connection: services.redis, prefix: config.redis.prefix, concurrency: 1, log, metrics, locks: config, guards: [s3] };
  const worker = startWorker('train', handler, {
    ...settings,
    failureReasons: TRAIN_FAILURE_REASONS,
    // A run counts as failed once it has failed for good: not an attempt retried, nor one put back
    // during an outage; one stopped with train --cancel counts as cancelled (an alert on failed
    // runs must not fire for it).
    onFinalFailure: async (payload, f) => void (payload && runs.count(payload.dataset, f.reason === 'cancelled' ? 'cancelled' : 'failed')),
  });
  const classifyHandler: Handler<'classify'> = (payload, ctx) => classifyImages(payload, { tf: rt.tf, services, bucket: config.s3.bucket }, ctx);
  const classifier = startWorker('classify', classifyHandler, { ...settings, failureReasons: CLASSIFY_FAILURE_REASONS });
  // (as the other roles say it: an operator's trial found no such line for this one)
  log.info({ queues: ['train', 'classify'], concurrency: settings.concurrency }, 'worker started');
  return {
    metrics,
    redis: services.redis,
    healthy: () => workersAlive([worker, classifier], [s3]),
    stop: async () => {
      unwatchRedis();
      s3.close();
      await Promise.all([worker.close(), classifier.close()]);
      await queues.close();
      await services.close();
    },
  };
}
