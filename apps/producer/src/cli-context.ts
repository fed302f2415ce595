import { closeQueues, createQueues, createServices, DEFAULT_IDLE_TIMEOUT_MS, pingRedis, redactUrl, S3_ATTEMPTS, slowRequestAfterMs, type Config, type EmbeddingSpace, type ObjectStore, type Queues, type Services } from '@transferline/shared';

/** What every one-shot command uses: clients built once from config, closed once. */
export interface CliContext {
  config: Config;
  services: Services;
  queues: Queues;
  out: NodeJS.WritableStream;
  /** Ctrl-C: long waits end promptly when it fires */
  signal?: AbortSignal;
  close: () => Promise<void>;
}

export async function openCliContext(config: Config, out: NodeJS.WritableStream = process.stdout, signal?: AbortSignal): Promise<CliContext> {
  const services = createServices(config, 'oneshot');
  sayWhenS3IsSlow(services.store, config.s3);
  try {
    await pingRedis(services.redis, config.redis.url);
  } catch (err) {
    // (dropped, not closed: QUIT would wait on a Redis that does not answer)
    services.redis.disconnect();
    await services.close();
    throw err;
  }
  // (read-mostly: a command with a mistaken TL_QUEUE_PREFIX must not leave BullMQ's meta keys under it)
  const queues = createQueues(services.redis, config, { writesMeta: false });
  return {
    config,
    services,
    queues,
    out,
    ...(signal && { signal }),
    close: async () => {
      await closeQueues(queues);
      await services.close();
    },
  };
}

/**
 * A wedged S3 (it takes connections, answers nothing) holds a request for its attempts, each
 * given the idle timeout: said on stderr once the request is slow (slowRequestAfterMs; again
 * after an answer, for a command that runs on: --watch).
 */
export function sayWhenS3IsSlow(store: ObjectStore, s3: Config['s3']): void {
  const idleMs = s3.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS;
  store.onSlowRequest(slowRequestAfterMs(idleMs), () =>
    process.stderr.write(`waiting for S3 at ${redactUrl(s3.endpoint)}: no answer yet (a request is tried ${S3_ATTEMPTS} times, each given ${idleMs / 1000} s without a byte: TL_S3_IDLE_TIMEOUT_MS; Ctrl-C stops)\n`),
  );
}

/**
 * The embedding space a command works in, read from the cluster (never from this process's
 * environment): `--embedder ID` when given, else the one the embed workers run. Says which in
 * one line.
 */
export async function chooseSpace(ctx: CliContext, requested?: string, reason?: string): Promise<EmbeddingSpace> {
  const r = await ctx.services.spaces.resolve(requested, reason);
  ctx.out.write(`${r.message}\n`);
  return r.space;
}
