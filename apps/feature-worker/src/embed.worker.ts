import {
  claimStorage,
  createServices,
  createQueues,
  EMBED_STREAMS_NAMED,
  EMBED_THREADS_NAMED,
  forwardParallelism,
  threadsOverCores,
  EMBED_FAILURE_REASONS,
  startS3Guard,
  jobIds,
  resolveWeights,
  settledWithin,
  withDeadline,
  spaceFromConfig,
  startWorker,
  workersAlive,
  spaceSettings,
  OFFICIAL_WEIGHTS,
  WeightsUnavailableError,
  watchRedis,
  type Config,
  type Handler,
  type Logger,
  type RunningRole,
  type StartingRole,
  type EmbeddingSpace,
  type Services,
  type WeightsFile,
} from '@transferline/shared';
import { createMetrics, exportQueueDepths } from '@transferline/shared/service-runtime';
import os from 'node:os';
import { EMBED_OUTCOMES, EmbedStage } from './embed-images.job.js';
import { startEmbedRuntime } from './embed-runtime.js';

/** Longest a computed embedding waits for its shard: under steady load shards fill much sooner. */
const SHARD_MAX_DELAY_MS = 1_000;

/**
 * config → deps → the embed worker: the model, dynamic batching, the durable cache. This is the
 * one process that derives an embedding space from its own configuration: it runs that space,
 * publishes it in Redis with a heartbeat, and takes jobs from that space's queue only.
 */
/**
 * A worker on the default weights that cannot get them while the deployment's live embed workers
 * run another space (a user's trial: one started by hand without the banner's
 * TL_MODEL_WEIGHTS=random led with the download): the settings that would join them, said first.
 */
async function joinInstead(services: Services, space: EmbeddingSpace): Promise<string | undefined> {
  // (a Redis that does not answer within 2 s: the weights' own reason alone, not a wait)
  const live = (await withDeadline(services.spaces.list(), 2_000).catch(() => [])).filter((s) => s.space.id !== space.id && s.workers.length > 0);
  if (live.length === 0) return undefined;
  const settings = (s: EmbeddingSpace) => spaceSettings(s).map((v) => `${v.name}=${v.value}`).join(' ') || 'the default settings';
  const theirs = live.map((s) => `${s.space.id} (${settings(s.space)})`).join(', and ');
  return `this deployment's live embed workers run ${theirs}, and this one was started for ${space.id}: start it with their settings to join them (up's banner prints them)`;
}

export async function startEmbedRole(config: Config, log: Logger, starting?: StartingRole): Promise<RunningRole> {
  // One ONNX Runtime process per machine uses every core; `up` divides them among its replicas,
  // and a worker started by hand beside others divides them by the embed workers beating from
  // this machine, itself included (those started before keep theirs). Checked with every core
  // first: a setting that cannot work is said before Redis is asked.
  const cores = Math.max(1, os.availableParallelism());
  const named = { ...EMBED_STREAMS_NAMED, of: 'this embed process has' };
  forwardParallelism(config.embed, { threads: cores, from: 'TL_EMBED_THREADS, by default the cores' }, named);
  const metrics = createMetrics('embed');
  const services = createServices(config, 'worker');
  // (a Redis that does not answer within 2 s: none known, every core; a process of this machine
  // that is gone, whose beat has not yet lapsed, as a crashed worker's restarted at once: not one)
  const others = config.embed.threads === undefined ? (await withDeadline(services.spaces.workersOn(os.hostname()), 2_000).catch(() => [])).filter((w) => w.pid !== process.pid && processAlive(w.pid)).length : 0;
  const { threads, streams } = forwardParallelism(
    config.embed,
    { threads: Math.max(config.embed.streams ?? 1, Math.floor(cores / (others + 1))), from: `TL_EMBED_THREADS, by default the cores${others ? ' ÷ the embed processes on this machine' : ''}` },
    named,
  );
  if (others) {
    log.info({ others, threads, cores, host: os.hostname() }, `${others} other embed worker${others > 1 ? 's' : ''} beat${others > 1 ? '' : 's'} from this machine (${os.hostname()}): this one takes ${threads} of its ${cores} cores (TL_EMBED_THREADS sets it; those started before keep theirs)`);
  }
  const unwatchRedis = watchRedis(services.redis, config.redis.url, log, metrics);
  const space = spaceFromConfig(config);
  // Beating as starting from now (the model may take minutes to load): a command waiting on this
  // space sees a worker on its way, not that none is live. Live once the jobs can be taken.
  const storage = { bucket: config.s3.bucket, prefix: config.s3.prefix };
  // before it says it is starting: a worker that would file embeddings where no one looks never joins
  await claimStorage(services.redis, services.keys, storage, config.redis).catch(async (err: unknown) => {
    await services.close();
    throw err;
  });
  const heartbeat = services.spaces.announceStarting(space, (err) => log.debug({ err }, 'heartbeat not written'), storage);
  // stopped while it loads (Ctrl-C): gone at once for whoever waits on the space, not "loading" until its beat goes silent
  starting?.onEarlyStop(() => heartbeat.stop());
  try {
    let weightsFile: WeightsFile | undefined;
    if (space.weights === 'imagenet') {
      let lastLog = 0;
      weightsFile = await resolveWeights(config.embed, {
        store: services.store,
        onProgress: (received, total) => {
          if (Date.now() - lastLog < 2_000) return;
          lastLog = Date.now();
          log.info({ received, total }, 'downloading EfficientNet-B0 weights');
        },
      }).catch(async (err: unknown) => {
        // (only for the default weights: a worker given weights of its own means its own space)
        const join = err instanceof WeightsUnavailableError && config.embed.weightsMd5 === OFFICIAL_WEIGHTS.md5 ? await joinInstead(services, space) : undefined;
        throw join ? new WeightsUnavailableError(`${join}. To run ${space.id} beside them: ${(err as Error).message}`) : err;
      });
      log.info({ path: weightsFile.path, md5: weightsFile.md5, downloaded: weightsFile.downloaded }, config.embed.weightsMd5 === OFFICIAL_WEIGHTS.md5 ? 'ImageNet weights verified' : 'weights verified (their MD5 is TL_MODEL_WEIGHTS_MD5)');
    }
    const rt = await startEmbedRuntime(
      {
        preference: config.embed.backend,
        preferenceVariable: config.embed.backendVariable,
        ...(weightsFile && { weights: weightsFile.bytes }),
        weightsKey: weightsFile ? weightsFile.md5 : `random-seed${config.embed.seed}`,
        seed: config.embed.seed,
        inputSize: space.inputSize,
        threads,
        streams,
        cacheDir: config.embed.cacheDir,
        warmupBatch: config.embed.batchSize,
        // The embed thread reads the pixels itself: they never enter this isolate.
        pixelSource: { redisUrl: config.redis.url, redisPrefix: config.redis.prefix },
      },
      log,
    );
    const embedder = rt.embedder;
    // (ONNX Runtime's threads only: wasm streams are single-threaded, libtensorflow has its own)
    const over = rt.backend === 'onnx' && threadsOverCores(config.embed.threads, os.availableParallelism(), EMBED_THREADS_NAMED);
    if (over) log.warn(over);
    // a wasm (or cpu) stream is single-threaded, whatever TL_EMBED_THREADS says
    const used = rt.backend === 'onnx' ? threads : rt.streams.length;
    log.info(
      { backend: rt.backend, provider: rt.provider, ...(rt.backend !== 'tensorflow' && { threads: used, streams: rt.streams }), ...(rt.onnx && { onnx: rt.onnx }), ...(rt.skipped.length && { skipped: rt.skipped }) },
      `embedding on ${rt.backend} (${rt.provider})${rt.backend === 'tensorflow' ? '' : `: ${rt.streams.length} forward pass${rt.streams.length > 1 ? 'es' : ''} at once on ${used} thread${used > 1 ? 's' : ''}`}`,
    );
    if (rt.onnx?.warning) log.warn({ path: rt.onnx.path }, rt.onnx.warning);
    // (auto landing on wasm with ONNX Runtime refused: about 10× slower, and fixable)
    const onnxSkipped = rt.backend === 'wasm' && rt.skipped.find((s) => s.startsWith('onnx:'));
    if (rt.backend === 'cpu') log.warn({ backend: 'cpu' }, `embedding on TF.js's plain JavaScript backend (${config.embed.backendVariable}=cpu), which is for tests: many times slower than onnx or wasm, with the same embeddings; leave ${config.embed.backendVariable} unset for the fastest that loads`);
    if (onnxSkipped) log.warn({ skipped: rt.skipped }, `ONNX Runtime did not load, so this worker embeds on TF.js wasm, about 10× slower: ${onnxSkipped.slice('onnx: '.length)}`);
    metrics.embedStreams.set({ threads: String(rt.backend === 'tensorflow' ? 0 : used) }, rt.streams.length);
    metrics.modelInfo.set({ backend: rt.backend, weights: space.weights, embedder: space.id }, 1);
    if (config.embed.streams !== undefined && rt.streams.length !== config.embed.streams) {
      log.warn({ streams: config.embed.streams, backend: rt.backend }, `TL_EMBED_STREAMS is not used on the ${rt.backend} backend: it runs one forward pass at a time, on its own threads`);
    }
    if (space.weights === 'random') {
      log.warn({ embedderId: space.id }, 'embedding with deterministic RANDOM weights (seeded), not ImageNet: features are only good for easy tasks');
    }
    const stage = new EmbedStage(
      { services, embedder, embedderId: space.id, metrics, log },
      { batchSize: config.embed.batchSize, batchWaitMs: config.embed.batchWaitMs, shardRows: config.embed.shardRows, shardMaxDelayMs: SHARD_MAX_DELAY_MS },
    );
    for (const outcome of EMBED_OUTCOMES) metrics.images.inc({ stage: 'embed', outcome }, 0);
    const handler: Handler<'embed'> = (payload) => stage.embed(payload);
    const queues = createQueues(services.redis, config);
    const s3 = await startS3Guard(services.store, config.s3, log, metrics);
    const worker = startWorker('embed', handler, {
      connection: services.redis,
      prefix: config.redis.prefix,
      space: space.id,
      log,
      metrics,
      concurrency: EmbedStage.concurrency(config.embed, rt.streams.length),
      locks: config,
      guards: [s3],
      failureReasons: EMBED_FAILURE_REASONS,
      // Whatever ended the job (bad pixels, attempts spent, a crash too many), it is a failed image.
      onFinalFailure: async (payload, f) => {
        metrics.images.inc({ stage: 'embed', outcome: 'failed' });
        if (!payload) return;
        await services.datasets.recordEmbedFailure(payload.embedderId, payload.sha256, { reason: f.reason, detail: f.message, attempts: f.attempts, failedAt: new Date().toISOString() });
        // Its pixels serve no one now (not a job of another space that landed here: that space may still need them).
        if (payload.embedderId === space.id) await services.tensors.deleteOfFailedJob(space.id, payload.sha256, queues.embed(space.id).toKey('failed'), jobIds.embed(payload));
      },
    });
    exportQueueDepths(metrics, async () => [queues.embed(space.id)]);
    await heartbeat.ready(rt.backend, rt.backend === 'tensorflow' ? undefined : used);
    log.info({ embedderId: space.id, backend: rt.backend, batchSize: config.embed.batchSize, workerId: heartbeat.workerId }, 'worker started');
    return {
      metrics,
      redis: services.redis,
      healthy: () => workersAlive([worker], [s3]),
      stop: async () => {
        unwatchRedis();
        await heartbeat.stop().catch(() => {});
        s3.close();
        await worker.close();
        await stage.drain();
        await embedder.dispose();
        await queues.close();
        await services.close();
      },
    };
  } catch (err) {
    // not a worker on its way any more: said at once, with why, to whoever waits on the space
    // (a Redis that is down is not waited for: the beat then goes stale)
    const why = String((err as Error | undefined)?.message ?? err).split('\n')[0]!.slice(0, 500);
    await settledWithin(2_000, heartbeat.failed(why));
    throw err;
  }
}

/** Whether a process of this machine runs under `pid` (one of another user's counts). */
function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
