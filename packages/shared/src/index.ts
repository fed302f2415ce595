export * from './bucket-layout.js';
export * from './config.js';
export * from './content-hash.js';
export * from './dataset-status.js';
export * from './dataset.repository.js';
export * from './dependency.guard.js';
export * from './paused-workers.js';
export * from './supervised-workers.js';
export * from './documents.js';
export * from './embedding-cache.js';
export * from './embedding-space.js';
export * from './errors.js';
export * from './failure-reasons.js';
export * from './jobs.catalog.js';
export * from './keys.js';
export * from './labels.js';
export * from './decision.js';
export * from './lifecycle.js';
export * from './npy.format.js';
export * from './queues.js';
export * from './random.js';
export * from './redact.js';
export * from './redis.client.js';
export * from './s3.client.js';
export * from './services.js';
export * from './tensor.store.js';
export * from './weights.source.js';
// What only a long-running process needs (its logger, metrics and their server, the worker
// bootstrap: pino and prom-client, some 120 modules) is in ./service-runtime, so that a CLI
// command starts without loading it; their types are here, as they cost nothing at run time.
export type { Logger } from './logger.js';
export type { Metrics, ServeMetrics } from './metrics.js';
export type { ProcessRole, RunningRole, StartingRole, WorkerRole } from './role.bootstrap.js';
