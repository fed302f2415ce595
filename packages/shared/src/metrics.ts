import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Queue } from 'bullmq';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { settledWithin } from './lifecycle.js';

/**
 * Every metric transferline exports, defined once. Labels are bounded sets only (queue, stage,
 * outcome, reason, backend, dataset, split), never keys, hashes or run ids.
 */
export function createMetrics(role: string) {
  const registry = new Registry();
  registry.setDefaultLabels({ role });
  collectDefaultMetrics({ register: registry, prefix: 'tl_' });
  const r = [registry];
  // Queue depths are read from BullMQ when Prometheus scrapes (see exportQueueDepths).
  let queueDepthSource: (() => Promise<void>) | undefined;
  // The train worker's run counters of every dataset, brought up to date as Prometheus scrapes.
  let trainRunsSource: (() => Promise<void>) | undefined;
  // This registry is served once the role has started (see startingMetrics for before).
  new Gauge({ name: READY, help: READY_HELP, registers: r }).set(1);
  return {
    setQueueDepthSource: (source: () => Promise<void>) => void (queueDepthSource = source),
    setTrainRunsSource: (source: () => Promise<void>) => void (trainRunsSource = source),
    registry,
    jobs: new Counter({
      name: 'tl_jobs_total',
      help: 'Job attempts by queue and outcome: completed, retried (an attempt failed, more remain), failed (for good), deferred (put back without spending an attempt); space: the embedding space of an embed queue',
      labelNames: ['queue', 'space', 'outcome'] as const,
      registers: r,
    }),
    dependencyUp: new Gauge({ name: 'tl_dependency_up', help: 'Whether a dependency (s3, redis) answers; 0 while this process waits out its outage', labelNames: ['dependency'] as const, registers: r }),
    jobDuration: new Histogram({
      name: 'tl_job_duration_seconds',
      help: 'Time from a worker taking a job to its end, waits in the worker included (an embed batch filling, backpressure, an outage), not the forward pass alone (space: the embedding space of an embed queue)',
      labelNames: ['queue', 'space'] as const,
      // (to an hour: a training run is one job, and a p95 read off a top bucket of 120 s said 120 for 10-minute runs)
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120, 300, 900, 3600],
      registers: r,
    }),
    failures: new Counter({ name: 'tl_failures_total', help: 'Permanent item failures, by stage and reason code', labelNames: ['stage', 'reason'] as const, registers: r }),
    decodeReruns: new Counter({
      name: 'tl_decode_reruns_total',
      help: 'Failed decodes that overlapped others, run again alone so the error recorded is their own (libvips keeps one error message per process): rerun-alone, or kept-first-error when that could not be done in time',
      labelNames: ['outcome'] as const,
      registers: r,
    }),
    images: new Counter({ name: 'tl_images_total', help: 'Images handled, by stage and outcome (cached = served from the embedding cache)', labelNames: ['stage', 'outcome'] as const, registers: r }),
    // on the embed role's /metrics only: a histogram without labels shows (empty) wherever it is registered
    embedBatch: new Histogram({ name: 'tl_embed_batch_size', help: 'Images per forward pass', buckets: [1, 2, 4, 8, 16, 32, 64, 128], registers: role === 'embed' ? r : [] }),
    forwardSeconds: new Histogram({ name: 'tl_embed_forward_seconds', help: 'Time of one forward pass', buckets: [0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32], registers: role === 'embed' ? r : [] }),
    embedStreams: new Gauge({ name: 'tl_embed_streams', help: 'Forward passes the embed worker runs at once (TL_EMBED_STREAMS), and the threads they run on (ONNX Runtime: TL_EMBED_THREADS; wasm: one each; tensorflow: 0)', labelNames: ['threads'] as const, registers: role === 'embed' ? r : [] }),
    modelInfo: new Gauge({ name: 'tl_model_info', help: 'The embedding model this process runs (value 1)', labelNames: ['backend', 'weights', 'embedder'] as const, registers: r }),
    queueJobs: new Gauge({
      name: 'tl_queue_jobs',
      help: "Jobs per queue and state, from BullMQ's getJobCounts (space: the embedding space of an embed queue); also preprocess held and embed backlog, from the backpressure gate",
      labelNames: ['queue', 'space', 'state'] as const,
      registers: r,
      async collect() {
        await queueDepthSource?.();
      },
    }),
    trainEpoch: new Gauge({ name: 'tl_train_epoch', help: 'Epoch of the run in progress (1-based; 0 before the first)', labelNames: ['dataset'] as const, registers: r }),
    trainLoss: new Gauge({ name: 'tl_train_loss', help: 'Loss at the end of the last epoch', labelNames: ['dataset', 'split'] as const, registers: r }),
    trainAccuracy: new Gauge({ name: 'tl_train_accuracy', help: 'Accuracy at the end of the last epoch', labelNames: ['dataset', 'split'] as const, registers: r }),
    trainLearningRate: new Gauge({ name: 'tl_train_learning_rate', help: 'Learning rate of the run in progress', labelNames: ['dataset'] as const, registers: r }),
    trainExamplesPerSecond: new Gauge({ name: 'tl_train_examples_per_second', help: 'Training examples per second in the last epoch', labelNames: ['dataset'] as const, registers: r }),
    trainBestValidationLoss: new Gauge({ name: 'tl_train_best_validation_loss', help: 'Lowest validation loss so far in the run in progress', labelNames: ['dataset'] as const, registers: r }),
    trainBestValidationAccuracy: new Gauge({
      name: 'tl_train_best_validation_accuracy',
      help: "Validation accuracy at the epoch of the lowest validation loss so far in the run in progress: the model the run saves (early stopping restores it), where tl_train_accuracy is the last epoch's",
      labelNames: ['dataset'] as const,
      registers: r,
    }),
    trainRuns: new Counter({
      name: 'tl_train_runs_total',
      help: 'Training runs by outcome',
      labelNames: ['dataset', 'outcome'] as const,
      registers: r,
      async collect() {
        await trainRunsSource?.();
      },
    }),
  };
}
export type Metrics = ReturnType<typeof createMetrics>;

const READY = 'tl_role_ready';
const READY_HELP = '1 once the role has started (its model loaded, taking jobs); 0 while it starts';

/**
 * What a worker's /metrics says while its role starts (an embed worker loads its model for
 * seconds, minutes on a GPU): `tl_role_ready 0` and its process's start time (what the
 * "no workers" alerts look for). Answering (rather than 503) keeps Prometheus's `up` for
 * processes that do not answer at all. Static values: nothing keeps collecting for a registry
 * that is served only until the role's own takes over.
 */
export function startingMetrics(role: string): Registry {
  const registry = new Registry();
  registry.setDefaultLabels({ role });
  new Gauge({ name: READY, help: READY_HELP, registers: [registry] }).set(0);
  new Gauge({ name: 'tl_process_start_time_seconds', help: 'Start time of the process since unix epoch in seconds.', registers: [registry] }).set(
    Math.round(Date.now() / 1000 - process.uptime()),
  );
  return registry;
}

/** `embed.<space>` → { queue: 'embed', space }; any other queue name → { queue } (no space label). */
export function queueLabels(queueName: string): { queue: string; space?: string } {
  const dot = queueName.indexOf('.');
  return dot < 0 ? { queue: queueName } : { queue: queueName.slice(0, dot), space: queueName.slice(dot + 1) };
}

/** The BullMQ job counts `tl_queue_jobs` reports, as getJobCounts names them. */
const COUNTED_STATES = ['waiting', 'prioritized', 'active', 'delayed', 'failed', 'completed'] as const;

/**
 * Exports `tl_queue_jobs{queue,space,state}` from BullMQ's own counts (getJobCounts) for the
 * queues this process serves, read when Prometheus scrapes, so queue depth needs no exporter
 * that knows BullMQ's key names. Each replica exports the same counts: aggregate with `max`.
 * A Redis that does not answer within `timeoutMs` (or an error) leaves this process exporting no
 * counts (the scrape still answers): its last ones, stale, would win the deployment's `max` over
 * the replicas that can read them (a review: a cut-off replica's 243 waiting jobs fired
 * TransferlineQueueStalled on an empty queue, and held KEDA's scale up).
 */
export function exportQueueDepths(
  metrics: Pick<Metrics, 'queueJobs' | 'setQueueDepthSource'>,
  queues: () => Promise<Pick<Queue, 'name' | 'getJobCounts'>[]>,
  o: { timeoutMs?: number; /** more of tl_queue_jobs, read on the same scrape once `queues` has answered */ also?: () => Promise<void> } = {},
): void {
  const timeoutMs = o.timeoutMs ?? 2_000;
  /** the series set from BullMQ's counts (not the gate's own `held`, which this process counts itself) */
  const set = new Map<string, { queue: string; space?: string; state: string }>();
  const collect = async () => {
    const list = await queues();
    await Promise.all([
      ...list.map(async (q) => {
        const counts = await q.getJobCounts(...COUNTED_STATES);
        const labels = queueLabels(q.name);
        for (const state of COUNTED_STATES) {
          metrics.queueJobs.set({ ...labels, state }, counts[state] ?? 0);
          set.set(`${q.name} ${state}`, { ...labels, state });
        }
      }),
      o.also?.(),
    ]);
  };
  metrics.setQueueDepthSource(async () => {
    let read = false;
    await settledWithin(timeoutMs, collect().then(() => (read = true)));
    if (read) return;
    for (const labels of set.values()) metrics.queueJobs.remove(labels);
    set.clear();
  });
}
/**
 * The metrics of `transferline serve`. `label` is a class of the served model (a bounded set:
 * the model's labels), `reason` a bounded code (overloaded, unauthorized, too-large, and the
 * preprocess stage's bad-input reasons).
 */
export function createServeMetrics() {
  const registry = new Registry();
  registry.setDefaultLabels({ role: 'serve' });
  collectDefaultMetrics({ register: registry, prefix: 'tl_' });
  const r = [registry];
  return {
    registry,
    requestDuration: new Histogram({
      name: 'tl_serve_request_seconds',
      help: 'Time to answer one HTTP request, by route and status code',
      labelNames: ['route', 'status'] as const,
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: r,
    }),
    batchSize: new Histogram({ name: 'tl_serve_batch_size', help: 'Images per forward pass', buckets: [1, 2, 4, 8, 16, 32, 64, 128], registers: r }),
    inFlight: new Gauge({ name: 'tl_serve_in_flight_images', help: 'Images admitted and not answered yet (queued or in a forward pass)', registers: r }),
    heldBytes: new Gauge({ name: 'tl_serve_held_bytes', help: 'Image bytes held (bodies arriving, images waiting for a forward pass); bounded by TL_SERVE_MAX_BYTES', registers: r }),
    results: new Counter({ name: 'tl_serve_results_total', help: 'Images classified, by predicted label', labelNames: ['label'] as const, registers: r }),
    rejected: new Counter({ name: 'tl_serve_rejected_total', help: 'Images or requests refused, by reason', labelNames: ['reason'] as const, registers: r }),
    modelInfo: new Gauge({ name: 'tl_serve_model_info', help: '1 for the model being served', labelNames: ['dataset', 'run'] as const, registers: r }),
  };
}
export type ServeMetrics = ReturnType<typeof createServeMetrics>;

/**
 * An HTTP server with `/metrics` (Prometheus text format) and `/healthz` (200 while `healthy()`
 * says so). `registry` may be a getter, for a server bound before its process has its metrics (a
 * worker binds its port before it takes any job): until it returns one, `/metrics` serves
 * `starting` (see startingMetrics), or answers 503 without it.
 */
export async function startMetricsServer(
  registry: Registry | (() => Registry | undefined),
  host: string,
  port: number,
  healthy: () => boolean | Promise<boolean> = () => true,
  starting?: Registry,
  /** `/readyz`: what keeps the process from working now (a dependency unreachable, say), or undefined when nothing does; without it, as `/healthz` */
  notReady?: () => Promise<string | undefined>,
): Promise<{ port: number; close: () => Promise<void> }> {
  const server = http.createServer((req, res) => {
    void (async () => {
      try {
        const current = (typeof registry === 'function' ? registry() : registry) ?? starting;
        if (req.url === '/metrics' && !current) {
          res.writeHead(503, { 'content-type': 'text/plain' });
          res.end('starting\n');
        } else if (req.url === '/metrics' && current) {
          const body = await current.metrics();
          res.writeHead(200, { 'content-type': current.contentType });
          res.end(body);
        } else if (req.url === '/healthz') {
          const ok = await healthy();
          res.writeHead(ok ? 200 : 503, { 'content-type': 'text/plain' });
          res.end(ok ? 'ok\n' : 'unhealthy\n');
        } else if (req.url === '/readyz') {
          const why = (await healthy()) ? await notReady?.() : 'starting, stopping or unhealthy';
          res.writeHead(why === undefined ? 200 : 503, { 'content-type': 'text/plain' });
          res.end(why === undefined ? 'ready\n' : `not ready: ${why}\n`);
        } else {
          res.writeHead(404, { 'content-type': 'text/plain' });
          res.end('not found: try /metrics, /healthz or /readyz\n');
        }
      } catch (err) {
        res.writeHead(500, { 'content-type': 'text/plain' });
        res.end(`${(err as Error).message}\n`);
      }
    })();
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) =>
      reject(err.code === 'EADDRINUSE' ? new Error(`metrics port ${port} on ${host} is in use: set TL_METRICS_PORT to another port (0 picks a free one)`) : err),
    );
    server.listen(port, host, () => resolve());
  });
  return {
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
