import os from 'node:os';
import path from 'node:path';
import { z } from 'zod';
import { redactIfSecret, redactUrl } from './redact.js';

const bool = z
  .enum(['true', 'false', '1', '0', 'yes', 'no'])
  .transform((v) => v === 'true' || v === '1' || v === 'yes');

const port = z.coerce.number().int().min(0).max(65535);

/** Keras's ImageNet weights for EfficientNetB0(include_top=False): where they are published and their MD5. */
export const OFFICIAL_WEIGHTS = {
  url: 'https://storage.googleapis.com/keras-applications/efficientnetb0_notop.h5',
  md5: '50bc09e76180e00e4465e1a485ddc09d',
  fileName: 'efficientnetb0_notop.h5',
} as const;

function hexColour(hex: string): { r: number; g: number; b: number } {
  const n = Number.parseInt(hex.slice(1), 16);
  return { r: (n >> 16) & 255, g: (n >> 8) & 255, b: n & 255 };
}

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
    TL_BUCKET: z
      .string()
      .regex(/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/, 'must be a valid S3 bucket name')
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
    TL_SERVE_MAX_QUEUE: z.coerce.number().int().min(1).default(256),
    TL_SERVE_MAX_BYTES: z.coerce.number().int().min(1).default(256 * 1024 * 1024),
    TL_SERVE_BATCH_SIZE: z.coerce.number().int().min(1).max(256).default(32),
    TL_SERVE_BATCH_WAIT_MS: z.coerce.number().int().min(0).max(1000).default(5),
    TL_JOB_LOCK_MS: z.coerce.number().int().min(1_000).default(8_000),
    TL_TRAIN_JOB_LOCK_MS: z.coerce.number().int().min(5_000).optional(),
    TL_UP_HANG_SECONDS: z.coerce
      .number()
      .int()
      .refine((v) => v === 0 || v >= 3, '0 (never) or at least 3')
      .default(60),
    TL_LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
    // Each image waits on S3 and Redis as well as decoding: with 4 in flight per core those waits
    // overlap the decodes. Measured on 2 cores, one process, 640×480 JPEGs (img/s by images in
    // flight): 2: 210, 4: 237, 8: 294-320, 16: 340; on the wallpaper photos, 2: 89, 8: 110.
    // At most 64: each waiting image is held whole in memory (up to TL_MAX_OBJECT_BYTES).
    TL_PREPROCESS_CONCURRENCY: z.coerce.number().int().min(1).max(256).default(Math.min(64, 4 * Math.max(1, os.availableParallelism()))),
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
      .default('#ffffff'),
    TL_MAX_PENDING_TENSORS: z.coerce.number().int().min(1).default(2048),
    TL_SHARP_CONCURRENCY: z.coerce.number().int().min(0).max(256).default(0),
    TL_BACKEND: z.enum(['auto', 'tensorflow', 'onnx', 'wasm', 'cpu']).optional(),
    /** the old name of TL_BACKEND, still read when TL_BACKEND is unset */
    TL_TF_BACKEND: z.enum(['auto', 'tensorflow', 'onnx', 'wasm', 'cpu']).optional(),
    TL_EMBED_THREADS: z.coerce.number().int().min(1).max(256).optional(),
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
      /** requests admitted at once (queued or in a batch); past it, 503 with Retry-After */
      maxQueue: env.TL_SERVE_MAX_QUEUE,
      /** image bytes held at once (bodies arriving, images waiting for a forward pass); past it, 503 with Retry-After */
      maxBytes: env.TL_SERVE_MAX_BYTES,
      batchSize: env.TL_SERVE_BATCH_SIZE,
      batchWaitMs: env.TL_SERVE_BATCH_WAIT_MS,
    },
    logLevel: env.TL_LOG_LEVEL,
    /**
     * `up`: a worker whose /healthz has not answered for this long (stopped, its event loop
     * blocked) is killed and started again, as the Kubernetes liveness probes do; 0 = never
     */
    upHangSeconds: env.TL_UP_HANG_SECONDS,
    /** how long a worker holds a job without renewing its lock before others treat it as crashed */
    jobLockMs: env.TL_JOB_LOCK_MS,
    /**
     * the same for train and classify jobs, whose worker holds the CPU for long stretches (unset:
     * a minute, or TL_JOB_LOCK_MS if that is raised above it, as before this setting)
     */
    trainJobLockMs: env.TL_TRAIN_JOB_LOCK_MS ?? Math.max(env.TL_JOB_LOCK_MS, 60_000),
    preprocess: {
      concurrency: env.TL_PREPROCESS_CONCURRENCY,
      resize: env.TL_RESIZE,
      background: hexColour(env.TL_ALPHA_BACKGROUND),
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
      /** ONNX Runtime intra-op threads per embed process; default cores ÷ embed processes on this machine */
      threads: env.TL_EMBED_THREADS,
      weights: env.TL_MODEL_WEIGHTS,
      weightsSource: env.TL_MODEL_WEIGHTS_SOURCE,
      weightsMd5: env.TL_MODEL_WEIGHTS_MD5,
      cacheDir: path.resolve(env.TL_MODEL_CACHE_DIR ?? path.join(env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache'), 'transferline')),
      seed: env.TL_MODEL_SEED,
    },
  }));

export type Config = z.output<typeof ConfigSchema>;

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
      return `  ${name}: ${i.message}${shown}`;
    });
    throw new ConfigError(`invalid configuration:\n${lines.join('\n')}`);
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
 * The settings a command run in another shell needs to reach the same stack: its Redis and queue
 * prefix, its S3 server, bucket and prefix, and the model weights (serve and export read them).
 */
const STACK_VARIABLES = [
  'REDIS_URL',
  'TL_REDIS_PORT',
  'TL_QUEUE_PREFIX',
  'S3_ENDPOINT',
  'TL_S3_PORT',
  'S3_REGION',
  'S3_ACCESS_KEY_ID',
  'S3_SECRET_ACCESS_KEY',
  'S3_FORCE_PATH_STYLE',
  'TL_BUCKET',
  'TL_PREFIX',
  'TL_MODEL_CACHE_DIR',
  'TL_MODEL_WEIGHTS_SOURCE',
  'TL_MODEL_WEIGHTS_MD5',
] as const satisfies readonly (keyof z.input<typeof EnvSchema>)[];

/**
 * Of the settings another shell needs to reach this stack (STACK_VARIABLES), those set to other
 * than their defaults: what `up` tells its user to repeat there. Paths are made absolute (the
 * other shell may be elsewhere); a secret (the S3 secret key, a Redis URL with a password) is
 * named, not shown.
 */
export function stackSettings(env: NodeJS.ProcessEnv = process.env): { name: string; value?: string }[] {
  const relevant = relevantEnv(env);
  const defaults: Record<string, unknown> = EnvSchema.parse({});
  return STACK_VARIABLES.flatMap((name): { name: string; value?: string }[] => {
    const value = relevant[name];
    if (value === undefined || value === String(defaults[name])) return [];
    if (name === 'S3_SECRET_ACCESS_KEY' || (name === 'REDIS_URL' && redactUrl(value) !== value)) return [{ name }];
    const shown = name === 'TL_MODEL_CACHE_DIR' || (name === 'TL_MODEL_WEIGHTS_SOURCE' && !/^[a-z0-9]+:/.test(value)) ? path.resolve(value) : value;
    return [{ name, value: shown }];
  });
}
