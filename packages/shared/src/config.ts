import os from 'node:os';
import path from 'node:path';
import { z } from 'zod';
import { isBucketName } from './labels.js';
import { redactIfSecret, redactUrl } from './redact.js';

const bool = z
  .string()
  .transform((v) => v.toLowerCase())
  .pipe(z.enum(['true', 'false', '1', '0', 'yes', 'no']))
  .transform((v) => v === 'true' || v === '1' || v === 'yes');

const port = z.coerce.number().int().min(0).max(65535);

/** Keras's ImageNet weights for EfficientNetB0(include_top=False): where they are published and their MD5. */
export const OFFICIAL_WEIGHTS = {
  url: 'https://storage.googleapis.com/keras-applications/efficientnetb0_notop.h5',
  md5: '50bc09e76180e00e4465e1a485ddc09d',
  fileName: 'efficientnetb0_notop.h5',
} as const;

/** What transparent pixels are flattened onto unless TL_ALPHA_BACKGROUND says otherwise (and in a space recorded before spaces named theirs). */
export const DEFAULT_ALPHA_BACKGROUND = '#ffffff';

/**
 * Images a preprocess process works on at once, by default: each waits on S3 and Redis as well as
 * decoding, and enough in flight keep the decoding core busy through those waits. 8 per core, at
 * least 16, at most 64 (each waiting image is held whole in memory, up to TL_MAX_OBJECT_BYTES).
 * Measured (img/s by images in flight): one process pinned to one core, 640×480 JPEGs: 4: 155-175,
 * 8: 163-192, 16: 172-197; the wallpaper photos: 4: 16.8, 8: 18.0, 16: 19.2. One process on 2
 * cores, 640×480: 2: 210, 4: 237, 8: 294-320, 16: 340.
 */
export function defaultPreprocessConcurrency(cores: number): number {
  return Math.min(64, Math.max(16, 8 * Math.max(1, cores)));
}

/**
 * The ONNX Runtime threads of a process that runs the model (an embed worker, serve) and the
 * forward passes it runs at once (its streams), as set or by default: `fallback.threads` when the
 * threads are not set (the cores; `up` shares them among its embed processes), one stream per
 * thread up to 4. Several single-threaded passes use the cores better than one pass spread over
 * them: on 2 cores, 2 streams × 1 thread ran 2.2× the images/s of 1 × 2 at batch 1, 1.15× at 8.
 * Streams mean nothing on the tensorflow backend (one pass, libtensorflow's own threads).
 *
 * @throws ConfigError if there are more streams than threads, in the words of `named`: the
 *   streams' setting, the threads' setting, whose threads they are (`of`), where the threads
 *   came from when they were not set (`from`), and another way out (`orElse`).
 */
export function forwardParallelism(
  set: { threads?: number | undefined; streams?: number | undefined; backend?: string },
  fallback: { threads: number; from: string },
  named: { streams: (n: number) => string; threads: string; of: string; orElse?: string },
): { threads: number; streams: number } {
  const threads = set.threads ?? fallback.threads;
  const streams = set.streams ?? Math.min(threads, 4);
  if (streams < 1) throw new ConfigError(`${named.streams(streams)}: at least 1 forward pass at a time`);
  if (set.backend !== 'tensorflow' && streams > threads) {
    throw new ConfigError(
      `${named.streams(streams)} is more than the ${threads} thread${threads > 1 ? 's' : ''} ${named.of} ` +
        `(${set.threads === undefined ? fallback.from : named.threads}): each stream needs a thread of its own; ` +
        `set ${named.streams(threads)}${threads > 1 ? ' or fewer' : ''}, or leave it unset${named.orElse ? `, ${named.orElse}` : ''}`,
    );
  }
  return { threads, streams };
}

/**
 * A warning when the ONNX Runtime threads set for the processes that run the model on this machine
 * (`processes` of `threads` each) outnumber its `cores`: the threads take turns on the cores, and
 * each pass runs slower than on fewer threads. Undefined when they fit, or were not set.
 */
export function threadsOverCores(set: number | undefined, cores: number, named: (n: number) => string, processes = 1): string | undefined {
  if (set === undefined || set * processes <= cores) return undefined;
  const what = `${named(set)}${processes > 1 ? ` for each of ${processes} embed processes` : ''} is more than the ${cores} core${cores > 1 ? 's' : ''} of this machine: the threads take turns on them`;
  // more processes than cores: one thread each is still too many
  if (processes > cores) return `${what}; start ${cores} embed process${cores > 1 ? 'es' : ''} or fewer here (--embed-workers)`;
  const fit = Math.floor(cores / processes);
  return `${what}, and each forward pass runs slower than on ${fit}; set ${named(fit)}${fit > 1 ? ' or fewer' : ''}, or leave it unset`;
}

/** The words of forwardParallelism for an embed process's settings. */
export const EMBED_STREAMS_NAMED = { streams: (n: number) => `TL_EMBED_STREAMS=${n}`, threads: 'TL_EMBED_THREADS' } as const;
/** An embed process's threads setting, as threadsOverCores words it. */
export const EMBED_THREADS_NAMED = (n: number) => `TL_EMBED_THREADS=${n}`;

/** Every environment variable transferline reads, with a default that works on one machine. */
const EnvSchema = z.object({
    TL_DATA_DIR: z.string().min(1).default('./data'),
    REDIS_URL: z
      .string()
      .regex(/^rediss?:\/\//, 'must start with redis:// or rediss://')
      .optional(),
    TL_REDIS_PORT: port.default(6390),
    TL_QUEUE_PREFIX: z
      .string()
      .regex(/^[A-Za-z0-9_-]+$/, 'letters, digits, _ and - only')
      .default('tl'),
    S3_ENDPOINT: z.string().url().optional(),
    TL_S3_PORT: port.default(9000),
    S3_REGION: z.string().min(1).default('us-east-1'),
    S3_ACCESS_KEY_ID: z.string().min(1).default('S3RVER'),
    S3_SECRET_ACCESS_KEY: z.string().min(1).regex(/^\S+$/, 'no spaces or control characters (a stray quote or newline from a .env file?)').default('S3RVER'),
    S3_FORCE_PATH_STYLE: bool.default(true),
    TL_S3_IDLE_TIMEOUT_MS: z.coerce.number().int().min(500).default(30_000),
    TL_BUCKET: z
      .string()
      .refine(isBucketName, 'must be a valid S3 bucket name')
      .default('transferline'),
    TL_PREFIX: z
      .string()
      .regex(/^([^/].*\/)?$/, 'must be empty or end with / and not start with /')
      .default(''),
    TL_METRICS_HOST: z.string().default('127.0.0.1'),
    TL_CONSOLE_HOST: z.string().min(1).default('127.0.0.1'),
    TL_CONSOLE_PORT: port.default(9470),
    TL_CONSOLE_USER: z.string().min(1).default('admin'),
    TL_CONSOLE_PASSWORD: z.string().min(1).optional(),
    TL_METRICS_PORT: port.optional(),
    TL_SERVE_HOST: z.string().min(1).default('127.0.0.1'),
    TL_SERVE_PORT: port.default(9480),
    TL_SERVE_API_KEY: z.string().min(16, 'at least 16 characters').optional(),
    TL_SERVE_ALLOWED_HOSTS: z.string().default(''),
    TL_SERVE_MAX_QUEUE: z.coerce.number().int().min(1).default(256),
    TL_SERVE_MAX_BYTES: z.coerce.number().int().min(1).default(256 * 1024 * 1024),
    TL_SERVE_BATCH_SIZE: z.coerce.number().int().min(1).max(256).default(32),
    TL_SERVE_BATCH_WAIT_MS: z.coerce.number().int().min(0).max(1000).default(5),
    TL_SERVE_THREADS: z.coerce.number().int().min(1).optional(),
    TL_SERVE_STREAMS: z.coerce.number().int().min(1).optional(),
    TL_JOB_LOCK_MS: z.coerce.number().int().min(1_000).default(8_000),
    TL_TRAIN_JOB_LOCK_MS: z.coerce.number().int().min(5_000).optional(),
    TL_TRAIN_GAUGES_LINGER_SECONDS: z.coerce.number().min(0).max(86_400).default(60),
    TL_RETRY_BACKOFF_SCALE: z.coerce.number().min(0.01).max(100).default(1),
    TL_UP_HANG_SECONDS: z.coerce
      .number()
      .int()
      .refine((v) => v === 0 || v >= 3, '0 (never) or at least 3')
      .default(60),
    TL_SUPERVISOR_HANG_MS: z.coerce.number().int().min(0).default(0),
    TL_LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
    TL_PREPROCESS_CONCURRENCY: z.coerce.number().int().min(1).max(256).default(defaultPreprocessConcurrency(os.availableParallelism())),
    TL_MAX_OBJECT_BYTES: z.coerce.number().int().min(1).default(64 * 1024 * 1024),
    TL_MAX_INPUT_PIXELS: z.coerce.number().int().min(1).default(100_000_000),
    TL_TENSOR_TTL_SECONDS: z.coerce.number().int().min(60).default(7 * 24 * 3600),
    TL_EMBED_BATCH_SIZE: z.coerce.number().int().min(1).max(512).default(8),
    TL_EMBED_BATCH_WAIT_MS: z.coerce.number().int().min(0).max(60_000).default(100),
    // Each shard costs two PUTs and two Redis commands whatever its size: at batch 8 that was a
    // seventh of the S3 server's and the worker's time beside the forward pass.
    TL_EMBED_SHARD_ROWS: z.coerce.number().int().min(1).max(4096).default(64),
    TL_RESIZE: z.enum(['squash', 'crop']).default('squash'),
    TL_ALPHA_BACKGROUND: z
      .string()
      .regex(/^#[0-9a-fA-F]{6}$/, 'a colour as #rrggbb')
      .default(DEFAULT_ALPHA_BACKGROUND),
    TL_MAX_PENDING_TENSORS: z.coerce.number().int().min(1).default(2048),
    TL_SHARP_CONCURRENCY: z.coerce.number().int().min(0).max(256).default(0),
    TL_BACKEND: z.enum(['auto', 'tensorflow', 'onnx', 'wasm', 'cpu']).optional(),
    /** the old name of TL_BACKEND, still read when TL_BACKEND is unset */
    TL_TF_BACKEND: z.enum(['auto', 'tensorflow', 'onnx', 'wasm', 'cpu']).optional(),
    TL_EMBED_THREADS: z.coerce.number().int().min(1).max(256).optional(),
    TL_EMBED_STREAMS: z.coerce.number().int().min(1).max(64).optional(),
    TL_MODEL_WEIGHTS: z.enum(['imagenet', 'random']).default('imagenet'),
    TL_MODEL_WEIGHTS_SOURCE: z
      .string()
      .regex(/^(https:\/\/|http:\/\/|s3:\/\/|\/|\.|file:)/, 'an https:// URL, an s3:// URL or a file path')
      .default(OFFICIAL_WEIGHTS.url),
    TL_MODEL_WEIGHTS_MD5: z
      .string()
      .regex(/^[0-9a-f]{32}$/, 'an MD5 in lowercase hex')
      .default(OFFICIAL_WEIGHTS.md5),
    TL_MODEL_CACHE_DIR: z.string().min(1).optional(),
    XDG_CACHE_HOME: z.string().min(1).optional(),
    TL_MODEL_SEED: z.coerce.number().int().min(0).default(42),
  });

/** The environment parsed into the configuration every process shares. */
export const ConfigSchema = EnvSchema.transform((env) => ({
    dataDir: path.resolve(env.TL_DATA_DIR),
    redis: {
      url: env.REDIS_URL ?? `redis://127.0.0.1:${env.TL_REDIS_PORT}`,
      /** false when REDIS_URL names an external server; `up` then starts none */
      embedded: env.REDIS_URL === undefined,
      embeddedPort: env.TL_REDIS_PORT,
      prefix: env.TL_QUEUE_PREFIX,
    },
    s3: {
      endpoint: env.S3_ENDPOINT ?? `http://127.0.0.1:${env.TL_S3_PORT}`,
      embedded: env.S3_ENDPOINT === undefined,
      embeddedPort: env.TL_S3_PORT,
      region: env.S3_REGION,
      accessKeyId: env.S3_ACCESS_KEY_ID,
      secretAccessKey: env.S3_SECRET_ACCESS_KEY,
      forcePathStyle: env.S3_FORCE_PATH_STYLE,
      /** how long a request to S3 may go without a byte (or a connection take) before it is given up and retried */
      idleTimeoutMs: env.TL_S3_IDLE_TIMEOUT_MS,
      bucket: env.TL_BUCKET,
      prefix: env.TL_PREFIX,
    },
    metrics: { host: env.TL_METRICS_HOST, port: env.TL_METRICS_PORT },
    /** the web console (queues, datasets, models): read-only unless a password is set and given */
    console: { host: env.TL_CONSOLE_HOST, port: env.TL_CONSOLE_PORT, user: env.TL_CONSOLE_USER, password: env.TL_CONSOLE_PASSWORD },
    /** `transferline serve`: the HTTP classifier */
    serve: {
      host: env.TL_SERVE_HOST,
      port: env.TL_SERVE_PORT,
      apiKey: env.TL_SERVE_API_KEY,
      /** host names besides loopback's that a serve bound to loopback answers (a proxy in front that passes its own Host) */
      allowedHosts: env.TL_SERVE_ALLOWED_HOSTS.split(',').map((h) => h.trim().toLowerCase()).filter(Boolean),
      /** requests admitted at once (queued or in a batch); past it, 503 with Retry-After */
      maxQueue: env.TL_SERVE_MAX_QUEUE,
      /** image bytes held at once (bodies arriving, images waiting for a forward pass); past it, 503 with Retry-After */
      maxBytes: env.TL_SERVE_MAX_BYTES,
      batchSize: env.TL_SERVE_BATCH_SIZE,
      batchWaitMs: env.TL_SERVE_BATCH_WAIT_MS,
      /** ONNX Runtime threads and forward passes at once, when --threads and --streams are not given (a container's CPU limit is not seen as cores) */
      threads: env.TL_SERVE_THREADS,
      streams: env.TL_SERVE_STREAMS,
    },
    logLevel: env.TL_LOG_LEVEL,
    /**
     * `up`: a worker whose /healthz has not answered for this long (stopped, its event loop
     * blocked) is killed and started again, as the Kubernetes liveness probes do; 0 = never
     */
    upHangSeconds: env.TL_UP_HANG_SECONDS,
    /**
     * Set by `up` for the workers it starts (not by hand): the hang time after which it restarts
     * one (0: none watches this process). Such a worker records it in Redis, so a command waiting
     * on a hung worker gives `up` that time before it gives up.
     */
    supervisorHangMs: env.TL_SUPERVISOR_HANG_MS,
    /** how long a worker holds a job without renewing its lock before others treat it as crashed */
    jobLockMs: env.TL_JOB_LOCK_MS,
    /**
     * the same for train and classify jobs, whose worker holds the CPU for long stretches (unset:
     * a minute, or TL_JOB_LOCK_MS if that is raised above it, as before this setting)
     */
    trainJobLockMs: env.TL_TRAIN_JOB_LOCK_MS ?? Math.max(env.TL_JOB_LOCK_MS, 60_000),
    /**
     * how long a finished run's per-run gauges (tl_train_epoch, tl_train_loss…) keep its last
     * values before their series go, so that a dashboard does not show a finished run as the one
     * in progress; long enough for a scrape or two to see them
     */
    trainGaugesLingerMs: env.TL_TRAIN_GAUGES_LINGER_SECONDS * 1000,
    /** multiplies every job's retry delays (jobs.catalog.ts: JOBS' backoffMs), stored on each job as it is enqueued */
    retryBackoffScale: env.TL_RETRY_BACKOFF_SCALE,
    preprocess: {
      concurrency: env.TL_PREPROCESS_CONCURRENCY,
      resize: env.TL_RESIZE,
      /** `#rrggbb`, lowercase: the embed worker's is its embedding space's (spaceFromConfig), which every process reads from there */
      background: env.TL_ALPHA_BACKGROUND.toLowerCase(),
      maxPendingTensors: env.TL_MAX_PENDING_TENSORS,
      /** libvips threads per sharp call; 0 = sharp's default */
      sharpConcurrency: env.TL_SHARP_CONCURRENCY,
      maxObjectBytes: env.TL_MAX_OBJECT_BYTES,
      maxInputPixels: env.TL_MAX_INPUT_PIXELS,
      tensorTtlSeconds: env.TL_TENSOR_TTL_SECONDS,
    },
    embed: {
      batchSize: env.TL_EMBED_BATCH_SIZE,
      batchWaitMs: env.TL_EMBED_BATCH_WAIT_MS,
      /** most embeddings per shard written (at least one batch): several batches share a write */
      shardRows: env.TL_EMBED_SHARD_ROWS,
      /** auto: tfjs-node-gpu (CUDA) → ONNX Runtime (CPU) → TF.js wasm */
      backend: env.TL_BACKEND ?? env.TL_TF_BACKEND ?? 'auto',
      /** the variable that set `backend`, as errors name it: TL_BACKEND, or TL_TF_BACKEND, its old name */
      backendVariable: env.TL_BACKEND === undefined && env.TL_TF_BACKEND !== undefined ? ('TL_TF_BACKEND' as const) : ('TL_BACKEND' as const),
      /** ONNX Runtime intra-op threads per embed process; default cores ÷ embed processes on this machine */
      threads: env.TL_EMBED_THREADS,
      /**
       * Forward passes one embed process runs at once, each on its own ONNX Runtime session and
       * thread, sharing `threads` among them; default min(threads, 4): one thread each
       */
      streams: env.TL_EMBED_STREAMS,
      weights: env.TL_MODEL_WEIGHTS,
      weightsSource: env.TL_MODEL_WEIGHTS_SOURCE,
      weightsMd5: env.TL_MODEL_WEIGHTS_MD5,
      cacheDir: path.resolve(env.TL_MODEL_CACHE_DIR ?? path.join(env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache'), 'transferline')),
      seed: env.TL_MODEL_SEED,
    },
  }));

export type Config = z.output<typeof ConfigSchema>;

/** A range a value is out of, in words ("at most 10000"), rather than the schema's message; for settings and options alike. */
export function rangeWords(issue: { code: string; maximum?: unknown; minimum?: unknown; inclusive?: boolean; origin?: string }): string | undefined {
  // a string's bounds are on its length
  const unit = issue.origin === 'string' ? ' characters' : '';
  if (issue.code === 'too_big') return issue.inclusive === false ? `below ${String(issue.maximum)}${unit}` : `at most ${String(issue.maximum)}${unit}`;
  if (issue.code === 'too_small') return issue.inclusive === false ? `above ${String(issue.minimum)}${unit}` : `at least ${String(issue.minimum)}${unit}`;
  return undefined;
}

/** Thrown when the environment does not parse; the message names every bad variable. */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}

/**
 * Parses the environment once, at process start. Unknown variables are ignored; a bad value
 * throws a ConfigError whose message names the variable and what it must be.
 */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const relevant = relevantEnv(env);
  const parsed = ConfigSchema.safeParse(relevant);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => {
      const name = String(i.path[0] ?? '(environment)');
      const value = relevant[name];
      const shown = value === undefined ? '' : ` (got ${JSON.stringify(redactIfSecret(name, value))})`;
      return `  ${name}: ${rangeWords(i) ?? i.message}${shown}`;
    });
    throw new ConfigError(`invalid configuration:\n${lines.join('\n')}`);
  }
  const { TL_BACKEND: backend, TL_TF_BACKEND: old } = relevant;
  if (backend !== undefined && old !== undefined && backend !== old) {
    throw new ConfigError(`invalid configuration:\n  TL_BACKEND=${backend} and TL_TF_BACKEND=${old} disagree: TL_TF_BACKEND is TL_BACKEND's old name; unset it`);
  }
  return parsed.data;
}

/** The variables of the environment transferline reads (an empty one counts as unset). */
function relevantEnv(env: NodeJS.ProcessEnv): Record<string, string> {
  return Object.fromEntries(
    Object.entries(env).filter((e): e is [string, string] => e[1] !== undefined && e[1] !== '' && (e[0].startsWith('TL_') || e[0].startsWith('S3_') || e[0] === 'REDIS_URL' || e[0] === 'XDG_CACHE_HOME')),
  );
}

/**
 * For each variable: whether a command run in another shell needs it to work with the same stack
 * (`stack`: its Redis and queue prefix, S3 server, bucket and prefix, lock timings, the image
 * limits serve applies, the model weights serve and export read), or it belongs to
 * the process it is given to (`process`: its own ports, logs, the workers' tuning, what the space
 * published in Redis already says). Every variable is one or the other: a new one must be placed.
 */
const REACH: Record<keyof z.input<typeof EnvSchema>, 'stack' | 'process'> = {
  TL_DATA_DIR: 'process',
  REDIS_URL: 'stack',
  TL_REDIS_PORT: 'stack',
  TL_QUEUE_PREFIX: 'stack',
  S3_ENDPOINT: 'stack',
  TL_S3_PORT: 'stack',
  S3_REGION: 'stack',
  S3_ACCESS_KEY_ID: 'stack',
  S3_SECRET_ACCESS_KEY: 'stack',
  S3_FORCE_PATH_STYLE: 'stack',
  TL_S3_IDLE_TIMEOUT_MS: 'process',
  TL_BUCKET: 'stack',
  TL_PREFIX: 'stack',
  TL_METRICS_HOST: 'process',
  TL_CONSOLE_HOST: 'process',
  TL_CONSOLE_PORT: 'process',
  TL_CONSOLE_USER: 'process',
  TL_CONSOLE_PASSWORD: 'process',
  TL_METRICS_PORT: 'process',
  TL_SERVE_HOST: 'process',
  TL_SERVE_PORT: 'process',
  TL_SERVE_API_KEY: 'process',
  TL_SERVE_ALLOWED_HOSTS: 'process',
  TL_SERVE_MAX_QUEUE: 'process',
  TL_SERVE_MAX_BYTES: 'process',
  TL_SERVE_BATCH_SIZE: 'process',
  TL_SERVE_BATCH_WAIT_MS: 'process',
  TL_SERVE_THREADS: 'process',
  TL_SERVE_STREAMS: 'process',
  TL_JOB_LOCK_MS: 'stack',
  TL_TRAIN_JOB_LOCK_MS: 'stack',
  TL_TRAIN_GAUGES_LINGER_SECONDS: 'process',
  TL_RETRY_BACKOFF_SCALE: 'stack',
  TL_UP_HANG_SECONDS: 'process',
  TL_SUPERVISOR_HANG_MS: 'process',
  TL_LOG_LEVEL: 'process',
  TL_PREPROCESS_CONCURRENCY: 'process',
  TL_MAX_OBJECT_BYTES: 'stack',
  TL_MAX_INPUT_PIXELS: 'stack',
  TL_TENSOR_TTL_SECONDS: 'process',
  TL_EMBED_BATCH_SIZE: 'process',
  TL_EMBED_BATCH_WAIT_MS: 'process',
  TL_EMBED_SHARD_ROWS: 'process',
  TL_RESIZE: 'process',
  TL_ALPHA_BACKGROUND: 'process',
  TL_MAX_PENDING_TENSORS: 'process',
  TL_SHARP_CONCURRENCY: 'process',
  TL_BACKEND: 'process',
  TL_TF_BACKEND: 'process',
  TL_EMBED_THREADS: 'process',
  TL_EMBED_STREAMS: 'process',
  TL_MODEL_WEIGHTS: 'process',
  TL_MODEL_WEIGHTS_SOURCE: 'stack',
  TL_MODEL_WEIGHTS_MD5: 'stack',
  TL_MODEL_CACHE_DIR: 'stack',
  XDG_CACHE_HOME: 'stack',
  TL_MODEL_SEED: 'process',
};

/**
 * The settings an embed worker must be given to serve this embedding space, of those that are not
 * their defaults (TL_MODEL_WEIGHTS, TL_RESIZE, TL_ALPHA_BACKGROUND, TL_MODEL_SEED): what a worker started by hand for a
 * stack needs besides stackSettings (the CLI reads the space from Redis and needs none of them).
 */
export function spaceSettings(space: { weights: 'imagenet' | 'random'; seed?: number; resize: 'squash' | 'crop'; background?: string }): { name: string; value: string }[] {
  const d = EnvSchema.parse({});
  return [
    space.weights !== d.TL_MODEL_WEIGHTS && { name: 'TL_MODEL_WEIGHTS', value: space.weights },
    space.resize !== d.TL_RESIZE && { name: 'TL_RESIZE', value: space.resize },
    // (a space without one flattens onto the default: spaceBackground)
    space.background !== undefined && space.background !== d.TL_ALPHA_BACKGROUND && { name: 'TL_ALPHA_BACKGROUND', value: space.background },
    // (a space has a seed only when its weights are random: spaceFromConfig)
    space.seed !== undefined && space.seed !== d.TL_MODEL_SEED && { name: 'TL_MODEL_SEED', value: String(space.seed) },
  ].filter((s): s is { name: string; value: string } => Boolean(s));
}

/** Variables whose value is a file path: made absolute, since the other shell may be elsewhere. */
const PATHS = new Set(['TL_MODEL_CACHE_DIR', 'XDG_CACHE_HOME']);

/**
 * Of the settings another shell needs to reach this stack (REACH), those set to other than their
 * defaults: what `up` tells its user to repeat there. Paths are made absolute; a secret (a key,
 * a password, or a URL that carries one) is named, not shown.
 */
export function stackSettings(env: NodeJS.ProcessEnv = process.env): { name: string; value?: string }[] {
  const relevant = relevantEnv(env);
  const defaults: Record<string, unknown> = EnvSchema.parse({});
  return Object.entries(REACH).flatMap(([name, reach]): { name: string; value?: string }[] => {
    const value = relevant[name];
    if (reach !== 'stack' || value === undefined || value === String(defaults[name])) return [];
    if (redactIfSecret(name, value) !== value) return [{ name }];
    const local = PATHS.has(name) || (name === 'TL_MODEL_WEIGHTS_SOURCE' && !/^[a-z0-9]+:/.test(value));
    return [{ name, value: local ? path.resolve(value) : value }];
  });
}

/**
 * The deployment a process is connected to, as it says it (the workers' first log line, `status`'s
 * first line): Redis and its queue prefix, S3, and where the embeddings and models go; passwords
 * in the URLs hidden.
 */
export function deploymentOf(config: Pick<Config, 'redis' | 's3'>): { redis: string; queuePrefix: string; s3: string; storage: string; words: string } {
  const d = { redis: redactUrl(config.redis.url), queuePrefix: config.redis.prefix, s3: redactUrl(config.s3.endpoint), storage: `s3://${config.s3.bucket}/${config.s3.prefix}` };
  return { ...d, words: `Redis ${d.redis} (TL_QUEUE_PREFIX=${d.queuePrefix}), S3 ${d.s3}, embeddings and models in ${d.storage}` };
}
