import {
  ConfigError,
  ownedElsewhereWords,
  recordedStorage,
  storageOwners,
  type Services,
  DatasetRepository,
  DEFAULT_ALPHA_BACKGROUND,
  spaceBackground,
  withDeadline,
  startS3Guard,
  PREPROCESS_FAILURE_REASONS,
  createQueues,
  createServices,
  startWorker,
  workersAlive,
  watchRedis,
  type Config,
  type Handler,
  type Logger,
  type RunningRole,
} from '@transferline/shared';
import { createMetrics, exportQueueDepths } from '@transferline/shared/service-runtime';
import { EmbedBacklogGate } from './embed-backlog.gate.js';
import { configureSharp, preprocessImageOptions, vipsErrors } from './image.ops.js';
import { preprocessImage, type PreprocessDeps } from './preprocess-image.job.js';
import { createPreprocessStore } from './preprocess.store.js';

/**
 * Why this worker must not work here, if it must not: its TL_QUEUE_PREFIX has no deployment (no
 * record, no live embed worker) while another prefix's deployment recorded its TL_BUCKET and
 * TL_PREFIX (a mistyped TL_QUEUE_PREFIX: an operator's trial saw the worker start and sit idle on
 * a prefix no one queues to; an embed or train worker so set is refused at its start). Asked once
 * the worker has started, as soon as Redis answers: asked before, a worker started while Redis was
 * down waited there instead of starting and waiting out the outage. Undefined when it may work, or
 * when Redis went before it could tell (the worker stops meanwhile).
 */
async function mistypedPrefix(services: Services, config: Config): Promise<Error | undefined> {
  try {
    if ((await recordedStorage(services.redis, services.keys).catch(() => null)) !== undefined) return undefined;
    if ((await services.spaces.liveWorkers()).length > 0) return undefined;
    const own = { bucket: config.s3.bucket, prefix: config.s3.prefix };
    const owners = await storageOwners(services.redis, config.redis.prefix, own);
    return owners.length ? new ConfigError(ownedElsewhereWords(owners, own, config.redis, 'this worker')) : undefined;
  } catch {
    return undefined;
  }
}

/** config → deps → the preprocess worker (CPU: download, hash, decode, resize), serving every embedding space. */
export async function startPreprocessRole(config: Config, log: Logger): Promise<RunningRole> {
  const metrics = createMetrics('preprocess');
  const services = createServices(config, 'worker');
  const unwatchRedis = watchRedis(services.redis, config.redis.url, log, metrics);
  const queues = createQueues(services.redis, config);
  const sharpSettings = configureSharp({ concurrency: config.preprocess.sharpConcurrency });
  const gate = new EmbedBacklogGate(services.redis, queues, services.keys, config.preprocess.maxPendingTensors, async () => (await services.spaces.liveWorkers()).map((w) => w.space), metrics, log);
  // Its own queue, and the embed queues it feeds (so embed can be scaled on them even at zero),
  // and the train and classify queues (so their backlog is seen while no train worker runs: an
  // operator's trial found no series of it then, and no alert could see runs waiting).
  // The spaces listed once per scrape: their queues' counts, and each one's backlog as the gate counts it.
  let spaces: string[] = [];
  exportQueueDepths(
    metrics,
    async () => {
      spaces = (await services.spaces.list()).map((s) => s.space.id);
      return [queues.preprocess, ...spaces.map((space) => queues.embed(space)), queues.train, queues.classify];
    },
    { also: async () => void (await Promise.all(spaces.map((space) => gate.exportBacklog(space)))) },
  );
  const s3 = await startS3Guard(services.store, config.s3, log, metrics);
  // (it was each preprocess worker's until spaces named it: one set here alone now changes
  // nothing. Said when the spaces published run none of it: the compose file gives every role
  // the same environment, embed workers included, and a review heard it said on every start.)
  const own = config.preprocess.background;
  if (own !== DEFAULT_ALPHA_BACKGROUND) {
    const published = await withDeadline(services.spaces.list(), 2_000).catch(() => []);
    if (published.length > 0 && !published.some((s) => spaceBackground(s.space) === own)) {
      log.warn({ TL_ALPHA_BACKGROUND: own }, "TL_ALPHA_BACKGROUND is not this worker's: each job's embedding space names the background its images are flattened onto (the TL_ALPHA_BACKGROUND of the space's embed workers)");
    }
  }
  const deps: PreprocessDeps = {
    objects: services.store,
    store: createPreprocessStore(services, queues, gate),
    image: preprocessImageOptions(config.preprocess),
    maxObjectBytes: config.preprocess.maxObjectBytes,
  };
  for (const outcome of ['cached', 'queued', 'failed', 'retried']) metrics.images.inc({ stage: 'preprocess', outcome }, 0);
  for (const outcome of ['rerun-alone', 'kept-first-error'] as const) metrics.decodeReruns.inc({ outcome }, 0);
  vipsErrors.onOutcome = (outcome) => metrics.decodeReruns.inc({ outcome });
  // failed and retried as the worker decides them: an attempt put back (backpressure, an outage)
  // is neither, and a last attempt's error is a failure
  const handler: Handler<'preprocess'> = async (payload, ctx) => {
    const outcome = await preprocessImage(payload, deps, ctx);
    metrics.images.inc({ stage: 'preprocess', outcome });
    return outcome;
  };
  const worker = startWorker('preprocess', handler, {
    connection: services.redis,
    prefix: config.redis.prefix,
    log,
    metrics,
    concurrency: config.preprocess.concurrency,
    locks: config,
    guards: [s3],
    failureReasons: PREPROCESS_FAILURE_REASONS,
    onRetry: () => metrics.images.inc({ stage: 'preprocess', outcome: 'retried' }),
    // Whatever ended the job (bad input, attempts spent, a crash too many), the item says so.
    onFinalFailure: async (payload, f) => {
      metrics.images.inc({ stage: 'preprocess', outcome: 'failed' });
      if (!payload) return;
      await services.datasets.putItem(payload.dataset, DatasetRepository.itemId(payload.bucket, payload.key), {
        label: payload.label,
        etag: payload.etag,
        space: payload.embedderId,
        state: 'failed',
        stage: 'preprocess',
        reason: f.reason,
        detail: f.message,
        attempts: f.attempts,
        failedAt: new Date().toISOString(),
      }, 'worker');
    },
  });
  log.info(
    {
      concurrency: config.preprocess.concurrency,
      sharpConcurrency: sharpSettings.concurrency,
      maxPendingTensors: config.preprocess.maxPendingTensors,
    },
    'worker started',
  );
  return {
    metrics,
    redis: services.redis,
    refused: mistypedPrefix(services, config),
    healthy: () => workersAlive([worker], [s3]),
    stop: async () => {
      unwatchRedis();
      // Jobs held by backpressure are put back first (no attempt spent), so close() can finish.
      gate.close();
      s3.close();
      await worker.close();
      await queues.close();
      await services.close();
    },
  };
}
