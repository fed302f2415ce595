import { timingSafeEqual } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import busboy from 'busboy';
import express, { type NextFunction, type Request, type Response } from 'express';
import { ONNX_PROBABILITIES_NAME, type ClassifierMetadata } from '@transferline/feature-worker/classifier.export';
import { startOnnxThread } from '@transferline/feature-worker/embed-runtime';
import type { Embedder } from '@transferline/feature-worker/embedder';
import { configureSharp, prepareImage, spaceImageOptions, withoutLeadingBytes, type PrepareOptions } from '@transferline/feature-worker/image.ops';
import { MicroBatcher } from '@transferline/feature-worker/micro-batcher';
import { BucketNotFoundError, decideLabel, forwardParallelism, IMAGE_FAILURE_REASONS, threadsOverCores, ObjectNotFoundError, ObjectRefusedError, ObjectTooLargeError, parseS3ObjectUrl, PermanentError, pingRedis, RedisUnreachableError, S3UnreachableError, type Logger, type ServeMetrics } from '@transferline/shared';
import { createServeMetrics } from '@transferline/shared/service-runtime';
import type { CliContext } from '../cli-context.js';
import { loadClassifierModel, type ClassifierModel } from '../classifier-model.js';
import { ModelNotFoundError } from '../commands/classify.command.js';
import { hostHeaderIsLoopback, hostHeaderName, isLoopbackHost, sameOriginWrite } from '../loopback-host.js';
import { BudgetWaitError, ByteBudget, HeldBody, type ByteHold } from './byte-budget.js';

/** The run a model serves, as answers name it. */
type ModelRef = { dataset: string; runId: string };

/**
 * What one image gets back; `model` when another model than the request's classified it (the
 * request's was stopped while the request lasted: RETIRE_DEADLINE_MS after a swap).
 */
export type Classification = ({ label: string; probabilities: Record<string, number>; threshold?: { label: string; at: number } } | { error: { reason: string; message: string } }) & { model?: ModelRef };

/** The routes with a label of their own on the request-duration metric; everything else is `other`. */
/** The routes served, with the methods each answers (HEAD with GET). */
const ROUTE_METHODS: Record<string, readonly string[]> = {
  '/v1/classify': ['POST'],
  '/v1/models': ['GET', 'HEAD'],
  '/v1/models/reload': ['POST'],
  '/healthz': ['GET', 'HEAD'],
  '/metrics': ['GET', 'HEAD'],
};
const ROUTES = new Set(Object.keys(ROUTE_METHODS));

/** `fn` that runs on its first call only. */
function once(fn: () => void): () => void {
  let done = false;
  return () => {
    if (done) return;
    done = true;
    fn();
  };
}

/** Longest an s3:// key's read waits for room in TL_SERVE_MAX_BYTES before it is answered "overloaded". */
const KEY_ROOM_DEADLINE_MS = 30_000;
/** The window over which a request body's progress is judged. */
const BODY_IDLE_MS = 30_000;
/**
 * Least a body must send in each BODY_IDLE_MS while it arrives (a 2G link sends far more): one
 * that stalls, or trickles a byte now and then, would otherwise hold the room of its declared
 * length until Node's own 5-minute request timeout, and a few such clients the whole byte budget.
 */
const BODY_MIN_BYTES_PER_WINDOW = 16 * 1024;

/**
 * Ends `req` when its body sends less than BODY_MIN_BYTES_PER_WINDOW (or nothing) in a window of
 * `ms`, or, with a declared length, less than half the pace that would end it within `timeoutMs`
 * (the room it holds is given back as for any client that leaves), answered by `answer` first
 * when nothing has been yet. Counts the body's chunks as they are read: to be called once the
 * body's reader is attached (a 'data' listener before it would set the body flowing, and lose it
 * the chunks that came first).
 */
function endStalledBody(req: Request, res: Response, ms: number, timeoutMs: number, answer: (message: string) => void): void {
  const at = Date.now();
  let total = 0;
  let read = 0;
  req.on('data', (c: Buffer) => (total += c.length));
  // A body of declared length must keep, over its whole upload so far, half the pace that ends it
  // within the server's request timeout (Node cuts it there anyway): a client trickling 17 KB a
  // window held the room of a declared 64 MiB for minutes (a review). Over the whole upload, not
  // each window: a slow first window (TCP's slow start) is made up later.
  const declared = Number(req.get('content-length') ?? NaN);
  const window = setInterval(() => {
    const sent = total - read;
    read = total;
    const elapsed = Date.now() - at;
    const slow = Number.isFinite(declared) && total < (declared * elapsed) / timeoutMs / 2;
    if (sent >= BODY_MIN_BYTES_PER_WINDOW && !slow) return;
    const why =
      sent >= BODY_MIN_BYTES_PER_WINDOW
        ? `${total} of its ${declared} bytes in ${Math.round(elapsed / 1000)} s, under half the pace that sends them within ${timeoutMs / 1000} s (the request timeout)`
        : sent
          ? `${sent} bytes in ${ms / 1000} s, under the ${BODY_MIN_BYTES_PER_WINDOW} a body must send in that time`
          : `nothing for ${ms / 1000} s`;
    const err = new Error(`the client sent ${why}`);
    if (res.headersSent) return void req.destroy(err);
    // told why (408), then the connection ended: what the body held is given back as for a client gone
    res.once('finish', () => req.destroy(err));
    res.set('Connection', 'close');
    answer(`the request's body stalled: ${err.message}, so the request was ended`);
  }, ms).unref();
  const done = () => clearInterval(window);
  req.once('end', done);
  req.once('close', done);
}

/** Longest a retired model waits for the requests that still hold it. */
const RETIRE_DEADLINE_MS = 30_000;

/** How long a reload waits for Redis to answer before it fails (the model loaded is kept). */
const RELOAD_REDIS_DEADLINE_MS = 3_000;

/** A model being served: its ONNX Runtime thread and batcher, and the requests that hold it. */
class ServedModel {
  private holders = 0;
  private released: (() => void) | undefined;

  private constructor(
    readonly meta: ClassifierMetadata,
    /** how its images are prepared: as its embedding space's were (not as this shell's environment says) */
    readonly image: Pick<PrepareOptions, 'size' | 'resize' | 'background'>,
    private readonly runtime: Embedder,
    readonly batcher: MicroBatcher<Uint8Array, Float32Array>,
  ) {}

  static async start(model: ClassifierModel, o: { threads: number; streams: number; batchSize: number; batchWaitMs: number; metrics: ServeMetrics }, log: Logger): Promise<ServedModel> {
    const k = model.meta.labels.length;
    const runtime = await startOnnxThread({ bytes: model.bytes, output: { name: ONNX_PROBABILITIES_NAME, dim: k }, inputSize: model.meta.inputSize, threads: o.threads, streams: o.streams, warmupBatch: Math.min(o.batchSize, 8) }, log);
    const batcher = new MicroBatcher<Uint8Array, Float32Array>(
      async (images) => {
        o.metrics.batchSize.observe(images.length);
        const p = await runtime.embedBatch(images);
        return images.map((_, i) => p.slice(i * k, (i + 1) * k));
      },
      o.batchSize,
      o.batchWaitMs,
      // a batch running on each stream, and one more formed and handed over meanwhile
      o.streams + 1,
    );
    return new ServedModel(model.meta, { ...spaceImageOptions(model.space), size: model.space.inputSize }, runtime, batcher);
  }

  /** Keeps this model loaded until the returned function is called (once; later calls do nothing). */
  hold(): () => void {
    this.holders++;
    return once(() => {
      this.holders--;
      if (this.holders === 0) this.released?.();
    });
  }

  /** Whether its thread is stopped (or stopping): a request that still holds it is classified on the model served now. */
  gone = false;

  /**
   * Waits for the requests that hold this model (at most RETIRE_DEADLINE_MS: a client that never
   * finishes its upload must not keep an old model in memory for ever), then stops its thread.
   */
  async retire(deadlineMs = RETIRE_DEADLINE_MS): Promise<void> {
    if (this.holders > 0) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([new Promise<void>((resolve) => (this.released = resolve)), new Promise<void>((resolve) => (timer = setTimeout(resolve, deadlineMs)))]);
      clearTimeout(timer);
    }
    this.gone = true;
    await this.batcher.drain();
    await this.runtime.dispose();
  }

  /** The label the model gives: the validation threshold for two classes (said with it), else the most probable. */
  decide(p: Float32Array): Classification {
    const { labels, threshold } = this.meta;
    const d = decideLabel(labels, p, threshold);
    return { label: d.label, probabilities: Object.fromEntries(labels.map((l, c) => [l, p[c]!])), ...(d.threshold && { threshold: d.threshold }) };
  }
}

export interface ClassifierServer {
  url: string;
  port: number;
  /** the model being served */
  model: () => ClassifierMetadata;
  /**
   * Loads the model again (the newest run, when none was named); requests in flight finish on the
   * old one. `cause` says what asked (for onSwap); a call while a load is under way joins it.
   */
  reload: (cause?: string) => Promise<ClassifierMetadata>;
  close: () => Promise<void>;
}

/** HTTP status for a reason code: the image's fault (4xx), or ours (5xx). */
function statusOf(reason: string): number {
  if (reason === 'too-large') return 413;
  if (reason === 'timeout') return 408;
  if (reason === 'unauthorized') return 401;
  if (reason === 'cross-site') return 403;
  if (reason === 'not-found') return 404;
  if (reason === 'method-not-allowed') return 405;
  if (reason === 'bad-request') return 400;
  if (reason === 'overloaded' || reason === STORAGE_UNAVAILABLE) return 503;
  if (reason === 'internal') return 500;
  return 422; // the preprocess stage's bad-input reasons: empty, not-an-image, truncated, …
}

/** The reason of a key serve could not read because S3 does not answer: no fault of the image's, nor a bug. */
const STORAGE_UNAVAILABLE = 'storage-unavailable';

/** Every reason serve refuses an image or a request for, whose tl_serve_rejected_total series start at 0. */
const SERVE_REJECT_REASONS = [
  'overloaded',
  'too-large',
  'timeout',
  'unauthorized',
  'cross-site',
  'misdirected',
  'not-found',
  'method-not-allowed',
  'bad-request',
  STORAGE_UNAVAILABLE,
  'internal',
  ...IMAGE_FAILURE_REASONS,
] as const;

/** A key that names a folder (it ends with "/"): serve classifies one object per key. */
class FolderKeyError extends Error {
  constructor(url: string) {
    super(`${url} names a folder, not an object: a key is one image (to label every image under a prefix: transferline classify ${url} -m MODEL)`);
  }
}

function asError(err: unknown, s3Endpoint?: string): { reason: string; message: string } {
  if (err instanceof PermanentError) return { reason: err.reason, message: err.message };
  if (err instanceof FolderKeyError) return { reason: 'bad-request', message: err.message };
  // (how, without the endpoint: serve's clients need not learn where its storage is)
  const unreachable = s3Endpoint === undefined ? undefined : S3UnreachableError.from(err, s3Endpoint);
  if (unreachable) return { reason: STORAGE_UNAVAILABLE, message: `the image store does not answer (${unreachable.problem}); retry shortly` };
  if (err instanceof ObjectNotFoundError) return { reason: 'not-found', message: err.message };
  // (without the S3 endpoint: serve's clients need not learn where its storage is)
  if (err instanceof BucketNotFoundError) return { reason: 'not-found', message: `bucket ${err.bucket} does not exist` };
  if (err instanceof ObjectTooLargeError) return { reason: 'too-large', message: err.message };
  // S3 will not let serve read it (no permission, a key it cannot hold): the request's to mend
  if (err instanceof ObjectRefusedError) return { reason: 'bad-request', message: err.message };
  return { reason: 'internal', message: (err as Error).message };
}

/**
 * `transferline serve`: image bytes in, labels out, over HTTP. Each image goes through the
 * preprocess stage's own sharp pipeline (same resize policy, same bad-input reasons) and the
 * exported classifier (EfficientNet-B0 + head, one ONNX model) on ONNX Runtime in worker
 * threads; requests from all clients are micro-batched into forward passes, `streams` at once. At most
 * `maxQueue` images and `maxBytes` of image bytes are held at once; past either, 503 with
 * Retry-After.
 */
export async function startClassifierServer(
  ctx: CliContext,
  o: {
    model: string;
    log: Logger;
    host?: string;
    port?: number;
    /** ONNX Runtime intra-op threads in all (default: the cores) */
    threads?: number;
    /** forward passes at once, sharing the threads (default: one per thread, at most 4) */
    streams?: number;
    /** tests: a shorter stall limit for bodies */
    bodyIdleMs?: number;
    /** tests: a shorter wait for the requests holding a model swapped out (RETIRE_DEADLINE_MS) */
    retireDeadlineMs?: number;
    /** tests: a shorter request timeout than Node's 5 minutes (a body's least pace follows it) */
    requestTimeoutMs?: number;
    /**
     * Told of every load, with the run served before and what asked for it (the cause given to
     * `reload()`, or POST /v1/models/reload); without it, each is logged (info). `serve` prints a
     * line of its own.
     */
    onSwap?: (next: ClassifierMetadata, was: string, cause: string) => void;
    /** Told of a reload asked over HTTP that failed (the model loaded stays); without it, logged (warn). */
    onReloadFailed?: (err: Error, cause: string) => void;
    /** Told once the port is bound, before the model loads. */
    onListening?: () => void;
  },
): Promise<ClassifierServer> {
  const cfg = ctx.config.serve;
  const metrics = createServeMetrics();
  // as preprocess decodes (every upload is new bytes: libvips's cache would only hold memory)
  configureSharp({ concurrency: ctx.config.preprocess.sharpConcurrency });
  // the flags, else TL_SERVE_THREADS and TL_SERVE_STREAMS; a refusal or a warning names the one given
  const set = { threads: o.threads ?? cfg.threads, streams: o.streams ?? cfg.streams };
  const threadsNamed = o.threads === undefined && cfg.threads !== undefined ? 'TL_SERVE_THREADS' : '--threads';
  const streamsNamed = (n: number) => (o.streams === undefined && cfg.streams !== undefined ? `TL_SERVE_STREAMS=${n}` : `--streams ${n}`);
  const { threads, streams } = forwardParallelism(set, { threads: Math.max(1, os.availableParallelism()), from: '--threads, by default the cores' }, { streams: streamsNamed, threads: threadsNamed, of: 'serve has' });
  const over = threadsOverCores(set.threads, os.availableParallelism(), (n) => (threadsNamed === '--threads' ? `--threads ${n}` : `TL_SERVE_THREADS=${n}`));
  if (over) o.log.warn(over);
  const load = async () => ServedModel.start(await loadClassifierModel(ctx, o.model), { threads, streams, batchSize: cfg.batchSize, batchWaitMs: cfg.batchWaitMs, metrics }, o.log);
  // The port first: one in use is said at once, not after the model has loaded. Until it has,
  // every request (/healthz too: not ready yet) is answered 503.
  let handle: http.RequestListener = (_req, res) => {
    res.writeHead(503, { 'content-type': 'application/json', 'retry-after': '1' }).end(JSON.stringify({ error: { reason: 'loading', message: 'loading the model; retry shortly' } }));
  };
  const server = http.createServer((req, res) => handle(req, res));
  if (o.requestTimeoutMs !== undefined) server.requestTimeout = o.requestTimeoutMs;
  const retireMs = o.retireDeadlineMs ?? RETIRE_DEADLINE_MS;
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => reject(err.code === 'EADDRINUSE' ? new Error(`port ${o.port ?? cfg.port} on ${o.host ?? cfg.host} is in use: set TL_SERVE_PORT or --port`) : err));
    server.listen(o.port ?? cfg.port, o.host ?? cfg.host, () => resolve());
  });
  o.onListening?.();
  let current: ServedModel;
  try {
    current = await load();
  } catch (err) {
    const closed = new Promise((resolve) => server.close(resolve));
    // (clients that connected while it loaded: not waited for)
    server.closeAllConnections();
    await closed;
    throw err;
  }
  const showModel = (m: ClassifierMetadata) => {
    metrics.modelInfo.reset();
    metrics.modelInfo.set({ dataset: m.dataset, run: m.runId }, 1);
    // each label's series from 0, so rate() and increase() see its first image (a review: a
    // series that began at 1 showed nothing)
    for (const label of m.labels) metrics.results.inc({ label }, 0);
  };
  for (const reason of SERVE_REJECT_REASONS) metrics.rejected.inc({ reason }, 0);
  showModel(current.meta);
  let admitted = 0;
  const limits = { maxInputPixels: ctx.config.preprocess.maxInputPixels };
  // One image may be as large as TL_MAX_OBJECT_BYTES, and no larger than all it could ever be given.
  const maxBytes = Math.min(ctx.config.preprocess.maxObjectBytes, cfg.maxBytes);
  const limitName = maxBytes < ctx.config.preprocess.maxObjectBytes ? 'TL_SERVE_MAX_BYTES' : 'TL_MAX_OBJECT_BYTES';
  const budget = new ByteBudget(cfg.maxBytes, (held) => metrics.heldBytes.set(held));
  /** What an image over the limit is told: its size when known. */
  const tooLarge = (what: string, size?: number) => `${what} is ${size === undefined ? 'over' : `${size} bytes, over`} the limit of ${maxBytes} bytes (${limitName})`;

  /**
   * Classifies one image on the model the request holds, or on the one served now when that was
   * stopped meanwhile (a slow upload past RETIRE_DEADLINE_MS after a swap: a review saw it
   * answered 500), saying so; bad input is that image's answer, not an exception.
   */
  /**
   * One image's classification. `dropped`: its request was refused meanwhile (a multipart request
   * of one file too many): no forward pass is spent on it once it has decoded (a review: each
   * file before the one too many was classified for nothing, holding the server's slots).
   */
  const classify = async (held: ServedModel, bytes: Uint8Array, dropped?: () => boolean): Promise<Classification> => {
    // the models taken instead, held until the answer (another swap must not stop one under it)
    const taken: (() => void)[] = [];
    try {
      const prepare = (m: ServedModel) => prepareImage(bytes, { ...limits, ...m.image });
      const serving = (m: ServedModel) => {
        // (the one served now is stopped only by close, which waits for its holders first)
        if (!m.gone || m === current) return m;
        taken.push(current.hold());
        return current;
      };
      let model = serving(held);
      let pixels = await prepare(model);
      // stopped while this image decoded: again, on the one served now
      while (model.gone && model !== current) pixels = await prepare((model = serving(model)));
      if (dropped?.()) return { error: { reason: 'overloaded', message: 'not classified, the request was refused' } };
      // (nothing awaited between this look and the submit: a model seen serving takes it)
      const result = model.decide(await model.batcher.submit(pixels));
      if ('label' in result) metrics.results.inc({ label: result.label });
      return model === held ? result : { ...result, model: { dataset: model.meta.dataset, runId: model.meta.runId } };
    } catch (err) {
      const e = asError(err);
      metrics.rejected.inc({ reason: e.reason });
      if (e.reason === 'internal') o.log.error({ err }, 'classification failed');
      return { error: e };
    } finally {
      taken.forEach((release) => release());
    }
  };

  /** Admits n images or answers 503: the bound on work held in memory. The release runs once, however often it is called. */
  const admit = (res: Response, n: number): (() => void) | undefined => {
    if (admitted + n > cfg.maxQueue) {
      // (a request answered already, a multipart body refused as unreadable: told nothing more)
      if (res.headersSent || res.destroyed) return undefined;
      metrics.rejected.inc({ reason: 'overloaded' }, n);
      res.setHeader('Retry-After', '1');
      const asked = n > 1 ? `, and this request brings ${n} more` : '';
      res.status(503).json({ error: { reason: 'overloaded', message: `${admitted} images in progress${asked}: over TL_SERVE_MAX_QUEUE=${cfg.maxQueue}; retry shortly` } });
      return undefined;
    }
    admitted += n;
    metrics.inFlight.set(admitted);
    return once(() => {
      admitted -= n;
      metrics.inFlight.set(admitted);
    });
  };

  /** 503 for a body that would take the image bytes held past TL_SERVE_MAX_BYTES. */
  const overBudget = (res: Response) => {
    if (res.headersSent || res.destroyed) return;
    res.setHeader('Retry-After', '1');
    fail(res, 'overloaded', `${Math.round(budget.bytes / 2 ** 20)} MiB of images in progress (TL_SERVE_MAX_BYTES=${cfg.maxBytes}); retry shortly`);
  };

  /** Answers the request with an error; `model` when it is an image's verdict (as with a 422), not the request's. */
  const fail = (res: Response, reason: string, message: string, model?: object) => {
    // one answer per request: a late error (a body cut off after a 408, a parser failing after a
    // refusal) has no one to tell
    if (res.headersSent || res.destroyed) return;
    metrics.rejected.inc({ reason });
    res.status(statusOf(reason)).json({ error: { reason, message }, ...(model && { model }) });
  };

  /** Set by close: every answer closes its connection, so none is kept open by a busy client. */
  let closing = false;
  const app = express();
  app.disable('x-powered-by');
  // Bound to loopback: only requests that name it, as the console (a site whose name is re-pointed
  // at 127.0.0.1 could otherwise make a browser on this machine classify, or probe for, the
  // deployment's s3:// objects, and reload the model: a review).
  // Let through: a request with no Host (an HTTP/1.0 health check: a browser always sends one),
  // /healthz (it says only "ok"), and the names of TL_SERVE_ALLOWED_HOSTS (a proxy in front that
  // passes its own Host; written as a Host header is, a port or brackets ignored). Not /metrics:
  // it names the datasets, runs and labels (a review); a Prometheus here scrapes 127.0.0.1.
  if (isLoopbackHost(o.host ?? cfg.host)) {
    const allowed = new Set(cfg.allowedHosts.map(hostHeaderName));
    app.use((req: Request, res: Response, next: NextFunction) => {
      const host = req.headers.host;
      if (host === undefined || req.path === '/healthz' || hostHeaderIsLoopback(host) || allowed.has(hostHeaderName(host))) return next();
      res.status(421).json({ error: { reason: 'misdirected', message: 'this server is bound to loopback and answers requests for localhost or 127.0.0.1 only; behind a proxy that passes its own Host, name that host in TL_SERVE_ALLOWED_HOSTS' } });
    });
  }
  /** answers not yet begun: a stop marks them to close their connection too */
  const unanswered = new Set<Response>();
  app.use((req: Request, res: Response, next: NextFunction) => {
    if (closing) res.set('Connection', 'close');
    else {
      unanswered.add(res);
      const answered = () => unanswered.delete(res);
      res.once('finish', answered).once('close', answered);
    }
    // Known routes only: a label per path asked for would let any client add series without end.
    const end = metrics.requestDuration.startTimer({ route: ROUTES.has(req.path) ? req.path : 'other' });
    res.on('finish', () => end({ status: String(res.statusCode) }));
    next();
  });
  // A page of another site that the user's browser shows can POST here (no API key on loopback,
  // or a browser that has one cached): a reload costs a model load (a security trial: 10 in a
  // row took 26 s, and 200 MB more), an image a forward pass. Serve answers programs; it sends no
  // CORS headers, so no page of another site could read its answers anyway.
  app.use((req: Request, res: Response, next: NextFunction) => {
    if (sameOriginWrite(req)) return next();
    fail(res, 'cross-site', `a request from a page of another site (Origin ${req.get('origin') ?? 'unsent'}, Sec-Fetch-Site ${req.get('sec-fetch-site') ?? 'unsent'}) is refused: serve answers programs, not other sites' pages`);
  });
  app.get('/healthz', (_req, res) => void res.type('text/plain').send('ok\n'));
  app.get('/metrics', async (_req, res) => void res.type(metrics.registry.contentType).send(await metrics.registry.metrics()));
  if (cfg.apiKey) {
    const key = Buffer.from(cfg.apiKey);
    app.use('/v1', (req: Request, res: Response, next: NextFunction) => {
      // (an empty X-API-Key does not hide an Authorization header)
      const given = Buffer.from(req.get('x-api-key') || (req.get('authorization') ?? '').replace(/^Bearer(?:\s+|$)/i, '').trim());
      if (given.length === key.length && timingSafeEqual(given, key)) return next();
      fail(res, 'unauthorized', given.length ? 'wrong API key (TL_SERVE_API_KEY of this server)' : 'an API key is required: send it as "Authorization: Bearer KEY" or "X-API-Key: KEY"');
    });
  }
  app.get('/v1/models', (_req, res) => {
    const m = current.meta;
    res.json({ dataset: m.dataset, runId: m.runId, labels: m.labels, threshold: m.threshold ?? null, embedderId: m.embedderId, resize: m.resize, inputSize: m.inputSize, alphaBackground: m.alphaBackground ?? null });
  });
  app.post('/v1/models/reload', async (_req, res) => {
    try {
      const m = await reload('POST /v1/models/reload');
      res.json({ dataset: m.dataset, runId: m.runId });
    } catch (err) {
      // the model it names is gone (its runs deleted): the one loaded is kept, and said so
      const gone = err instanceof ModelNotFoundError;
      const serving = `still serving ${current.meta.dataset}@${current.meta.runId}`;
      const message = `${(err as Error).message}; ${serving}`;
      if (o.onReloadFailed) o.onReloadFailed(err as Error, 'POST /v1/models/reload');
      else o.log.warn({ err, cause: 'POST /v1/models/reload' }, `the model was not reloaded: ${message}`);
      // S3 not answering: no fault of serve's (a trial saw 500 and "internal"), to retry, as for keys (without the endpoint)
      const unreachable = S3UnreachableError.from(err, ctx.config.s3.endpoint);
      const redisDown = err instanceof RedisUnreachableError ? err : undefined;
      if (unreachable || redisDown) res.set('retry-after', '5');
      if (unreachable) fail(res, STORAGE_UNAVAILABLE, `the model store does not answer (${unreachable.problem}); ${serving}; retry shortly`);
      else if (redisDown) fail(res, STORAGE_UNAVAILABLE, `the deployment's Redis, which names the model's embedding space, does not answer (${redisDown.problem}); ${serving}; retry shortly`);
      else fail(res, gone ? 'not-found' : 'internal', message);
    }
  });

  app.post('/v1/classify', (req, res) => {
    const type = (req.get('content-type') ?? '').toLowerCase();
    const model = current;
    // The model stays loaded until this request's answer is sent or its client has gone, even
    // when a newer run is swapped in while its body is still arriving.
    res.on('close', model.hold());
    const modelRef: ModelRef = { dataset: model.meta.dataset, runId: model.meta.runId };
    // (each path below calls it once the body's reader is attached)
    const watchBody = () => endStalledBody(req, res, o.bodyIdleMs ?? BODY_IDLE_MS, server.requestTimeout > 0 ? server.requestTimeout : 300_000, (message) => fail(res, 'timeout', message));
    if (type.startsWith('multipart/form-data')) return void (classifyMultipart(req, res, model, modelRef), watchBody());
    if (type.startsWith('application/json')) return void (classifyKeys(req, res, model, modelRef), watchBody());
    // raw image bytes: the size is checked as they arrive, so an oversized body is not held
    const declared = Number(req.get('content-length') ?? NaN);
    if (declared > maxBytes) return void (fail(res, 'too-large', tooLarge('the image', declared), modelRef), watchBody());
    const slot = admit(res, 1);
    if (!slot) return void (req.resume(), watchBody());
    const body = new HeldBody(budget);
    // With a declared length its room is taken at once, so a refusal comes before the upload, not after it.
    if (Number.isFinite(declared) && !body.reserve(declared)) {
      slot();
      // answered now; the rest of the body is read and dropped (closing instead would reset the
      // connection under a client still sending, which then sees no 503 at all)
      overBudget(res);
      return void (req.resume(), watchBody());
    }
    const release = () => (slot(), body.drop());
    let size = 0;
    let refused: 'too-large' | 'overloaded' | undefined;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (refused === 'too-large') return;
      if (size > maxBytes) {
        refused = 'too-large';
        body.drop();
        // Answered as it passes the limit, not once the body ends (a security trial: a body of no
        // declared length was read to its end, 3 GB, before its 413; refused for room first, too):
        // the rest is read and dropped for 5 s more, so a client still sending sees the answer,
        // then a connection whose body has not ended is cut (one that ended goes on as any).
        fail(res, 'too-large', `${tooLarge('the image')}: ${size} bytes had come when it passed it`, modelRef);
        setTimeout(() => {
          if (!req.complete) req.destroy();
        }, 5_000).unref();
        return;
      }
      if (refused) return;
      if (!body.push(c)) refused = 'overloaded';
    });
    watchBody();
    // A client that goes away mid-body: no 'end' comes.
    req.on('error', release);
    req.on('close', () => {
      if (!req.complete) release();
    });
    req.on('end', () => {
      void (async () => {
        try {
          // (answered as it passed the limit)
          if (refused === 'too-large') return;
          if (refused === 'overloaded') return overBudget(res);
          const r = await classify(model, body.take());
          // curl -d @file sends a form (as --data-binary does, unless told a type), and takes the
          // file's line breaks out of it: what a mangled image looks like, said (not for an empty
          // body: nothing was mangled; a user's trial read it as advice to use what it used)
          if ('error' in r && type.startsWith('application/x-www-form-urlencoded') && statusOf(r.error.reason) === 422 && r.error.reason !== 'empty') {
            r.error.message += ' (it came as a form, application/x-www-form-urlencoded, as curl sends a body not given its type; curl -d @FILE also drops the line breaks of a file: send an image with --data-binary @FILE -H "Content-Type: image/jpeg")';
          }
          // (the model that classified it, when not the request's)
          if ('error' in r) res.status(statusOf(r.error.reason)).json({ model: modelRef, ...r });
          else res.json({ model: modelRef, ...r });
        } finally {
          release();
        }
      })();
    });
  });

  /** multipart/form-data: every file part is one image; the answer lists them in order, each with its name. */
  function classifyMultipart(req: Request, res: Response, model: ServedModel, modelRef: object): void {
    let bb: busboy.Busboy;
    try {
      // (file names as UTF-8, as browsers and curl send them: busboy's default reads them as latin1)
      bb = busboy({ headers: req.headers, defParamCharset: 'utf8', limits: { fileSize: maxBytes, files: cfg.maxQueue } });
    } catch (err) {
      return fail(res, 'bad-request', (err as Error).message);
    }
    const parts: { name: string; done: Promise<Classification> }[] = [];
    const releases: (() => void)[] = [];
    /** each part still holding bytes: drops them (its chunks and its hold) */
    const drops = new Set<() => void>();
    let refused = false;
    let tooMany = false;
    /**
     * bytes of this request's files so far, all of them: never less when earlier files have been
     * classified, so whether a request fits TL_SERVE_MAX_BYTES does not depend on timing
     */
    let own = 0;
    const refuse = (answer: () => void) => {
      refused = true;
      for (const drop of drops) drop();
      answer();
      // Nothing more of the body is wanted. Once answered, Node no longer tells the request that
      // its client hung up (the socket closes, the request never does), and busboy would wait for
      // the rest for ever, holding the request's slots: the parser is stopped now (its open part
      // closes, so every part settles) and the rest of the body read and dropped. (Not from
      // inside busboy's own callback: on the next turn.)
      setImmediate(() => {
        req.unpipe(bb);
        bb.destroy();
        req.resume();
      });
    };
    bb.on('file', (_field, stream, info) => {
      const name = info.filename ?? `file${parts.length + 1}`;
      // A part not taken is read and dropped; stopping the parser destroys it with an error,
      // which must have a listener (an unheard 'error' would end the process).
      const skip = () => void stream.on('error', () => {}).resume();
      if (refused) return skip();
      const release = admit(res, 1);
      if (!release) {
        skip();
        return refuse(() => {}); // admit answered 503
      }
      const body = new HeldBody(budget);
      const drop = () => {
        body.drop();
        drops.delete(drop);
      };
      drops.add(drop);
      releases.push(release, drop);
      let truncated = false;
      // The body ended inside this part, or the client went away: this part has no image.
      let broken: Error | undefined;
      stream.on('error', (err: Error) => (broken = err));
      stream.on('data', (c: Buffer) => {
        if (refused || truncated) return;
        if (own + c.length > cfg.maxBytes) {
          // this request alone is over the budget: no retry would pass
          return refuse(() => !res.headersSent && fail(res, 'too-large', `the files of one request must fit in TL_SERVE_MAX_BYTES (${cfg.maxBytes} bytes) at once: send fewer or smaller files per request`));
        }
        if (!body.push(c)) return refuse(() => overBudget(res));
        own += c.length;
      });
      stream.on('limit', () => {
        truncated = true;
        drop();
      });
      parts.push({
        name,
        done: new Promise<Classification>((resolve) =>
          stream.on('close', () => {
            if (refused) {
              // (closed early by the refusal's stop of the parser, or whole: not classified either way)
              drop();
              resolve({ error: { reason: 'overloaded', message: `${name}: not classified, the request was refused` } });
            } else if (broken) {
              drop();
              metrics.rejected.inc({ reason: 'bad-request' });
              resolve({ error: { reason: 'bad-request', message: `${name}: ${broken.message}` } });
            } else if (truncated) {
              metrics.rejected.inc({ reason: 'too-large' });
              resolve({ error: { reason: 'too-large', message: tooLarge(name) } });
            } else {
              // in the batcher now: its bytes stay held until it is answered, whatever a later part does
              drops.delete(drop);
              resolve(classify(model, body.take(), () => refused).finally(drop));
            }
          }),
        ),
      });
    });
    // One file too many: answered at once (a trial: 300 files were answered 400 after 4.6 s, once
    // the whole body had come and the first 256 had been classified for nothing). The files before
    // it that are in a forward pass already finish there; their results are not sent.
    bb.on('filesLimit', () => {
      tooMany = true;
      if (!refused) refuse(() => fail(res, 'bad-request', `at most ${cfg.maxQueue} files per request (TL_SERVE_MAX_QUEUE)`));
    });
    // busboy closes after an error too: the slots are given back there, once every part has settled.
    // An unreadable body (a malformed part header, a body that ends inside a part): refused like
    // any other, so the parser is stopped and closes (pipe() only unhooks a destination that
    // errs: busboy would wait for ever and the request's slots with it).
    bb.on('error', (err: Error) => {
      if (!refused) refuse(() => fail(res, 'bad-request', `not a readable multipart body: ${err.message}`));
    });
    bb.on('close', () => {
      void (async () => {
        try {
          const results = await Promise.all(parts.map(async (p) => ({ name: p.name, ...(await p.done) })));
          if (res.headersSent) return; // refused (overloaded, too large), or not readable
          if (tooMany) return fail(res, 'bad-request', `at most ${cfg.maxQueue} files per request (TL_SERVE_MAX_QUEUE)`);
          if (results.length === 0) return fail(res, 'bad-request', 'no file in the multipart body');
          res.json({ results, model: modelRef });
        } finally {
          releases.forEach((r) => r());
        }
      })();
    });
    // A client that goes away mid-upload: busboy would wait for the rest of the body for ever.
    req.on('close', () => {
      if (req.complete) return;
      req.unpipe(bb);
      bb.destroy(new Error('the client went away before the upload ended'));
    });
    req.pipe(bb);
  }

  /** JSON `{"keys": ["s3://bucket/key", …]}`: objects read from the deployment's S3. */
  function classifyKeys(req: Request, res: Response, model: ServedModel, modelRef: object): void {
    express.json({ limit: '1mb' })(req, res, (err?: unknown) => {
      void (async () => {
        if (err) {
          // (valid JSON, too long: a request of too many keys, said as such, not as "not JSON")
          if ((err as { type?: string }).type === 'entity.too.large') return fail(res, 'too-large', `a JSON body is at most 1 MB: send at most ${cfg.maxQueue} keys per request (TL_SERVE_MAX_QUEUE)`);
          // an image's bytes sent as JSON read as a parser's complaint about the bytes: said as what they are
          const message = (err as Error).message;
          const binary = /[\uFFFD\u0000-\u0008\u000E-\u001F]/.test(message);
          return fail(res, 'bad-request', binary ? 'not JSON: the body is not text (an image\'s bytes, sent as application/json?): send an image with Content-Type image/jpeg (or any image/*, or application/octet-stream); JSON is for {"keys": ["s3://bucket/key", …]}' : `not JSON: ${message.slice(0, 300)}`);
        }
        const keys = (req.body as { keys?: unknown })?.keys;
        if (!Array.isArray(keys) || keys.length === 0 || !keys.every((k) => typeof k === 'string' && k.startsWith('s3://'))) {
          // the first key that is none is named (a URL of another kind: serve reads objects of its
          // S3 store, it fetches no web address)
          const other = Array.isArray(keys) ? keys.find((k) => typeof k !== 'string' || !k.startsWith('s3://')) : undefined;
          const web = typeof other === 'string' && /^[a-z][a-z0-9+.-]*:\/\//i.test(other) && !/^s3:\/\//i.test(other);
          const shown = other === undefined ? '' : typeof other === 'string' ? JSON.stringify(other.slice(0, 200)) : `${JSON.stringify(other)?.slice(0, 200) ?? String(other)} (not text)`;
          const why = other !== undefined ? `keys are objects of this deployment's S3 store, as s3://bucket/key; ${shown} is not one${web ? ' (serve fetches no web address: send the image\'s bytes instead)' : ''}. ` : '';
          return fail(res, 'bad-request', `${why}send {"keys": ["s3://bucket/key", …]}, or the image bytes, or multipart/form-data`);
        }
        if (keys.length > cfg.maxQueue) return fail(res, 'bad-request', `at most ${cfg.maxQueue} keys per request (TL_SERVE_MAX_QUEUE); this one has ${keys.length}`);
        const release = admit(res, keys.length);
        if (!release) return;
        // a client that goes away stops this request's waits for room
        const gone = new AbortController();
        res.on('close', () => gone.abort());
        try {
          const results = await Promise.all(
            (keys as string[]).map(async (url) => {
              let hold: ByteHold | undefined;
              try {
                // a folder, not an object (a trial: told "s3://…/pets does not exist", its slash dropped)
                if (url.endsWith('/')) throw new FolderKeyError(url);
                const { bucket, key } = parseS3ObjectUrl(url);
                // Room for what the object is (its size from a HEAD), then the object.
                const head = await ctx.services.store.headObject(bucket, key, { bucketToo: true });
                if (!head) throw new ObjectNotFoundError(bucket, key);
                if (head.size > maxBytes) throw new PermanentError('too-large', tooLarge(url, head.size));
                hold = await budget.wait(head.size, { deadlineMs: KEY_ROOM_DEADLINE_MS, signal: gone.signal });
                if (gone.signal.aborted) throw new BudgetWaitError('the request was abandoned');
                const bytes = await ctx.services.store.getObject(bucket, key, maxBytes);
                // replaced by a larger object since the HEAD: held all the same (it is in memory)
                hold.add(bytes.length - head.size);
                const r = await classify(model, bytes);
                // (an object's first bytes are its contents, which the caller may not be allowed to read)
                if ('error' in r) r.error.message = withoutLeadingBytes(r.error.message);
                return { key: url, ...r };
              } catch (e) {
                const error = e instanceof BudgetWaitError ? { reason: 'overloaded', message: `${url}: ${e.message} (TL_SERVE_MAX_BYTES=${cfg.maxBytes}); retry shortly` } : asError(e, ctx.config.s3.endpoint);
                metrics.rejected.inc({ reason: error.reason });
                return { key: url, error };
              } finally {
                hold?.release();
              }
            }),
          );
          if (res.destroyed) return;
          // S3 out of reach for every key: the request's answer is 503, to retry, not 200
          if (results.every((r) => 'error' in r && r.error.reason === STORAGE_UNAVAILABLE)) res.status(503).set('retry-after', '5');
          res.json({ results, model: modelRef });
        } finally {
          release();
        }
      })();
    });
  }

  // A route asked with another method (GET /v1/classify): 405 with the methods it answers, not 404.
  app.use((req, res, next) => {
    const allowed = Object.hasOwn(ROUTE_METHODS, req.path) ? ROUTE_METHODS[req.path]! : undefined;
    if (!allowed) return next();
    res.set('Allow', allowed.join(', '));
    fail(res, 'method-not-allowed', `${req.path} answers ${allowed.filter((m) => m !== 'HEAD').join(', ')}, not ${req.method}`);
  });
  app.use((_req, res) => void fail(res, 'not-found', Object.entries(ROUTE_METHODS).map(([route, methods]) => `${methods[0]} ${route}`).join(', ')));

  // One load at a time: a SIGHUP, a new run landing and POST /v1/models/reload may coincide.
  let reloading: Promise<ClassifierMetadata> | undefined;
  /** the models swapped out and still stopping (close waits for them) */
  const retiring = new Set<Promise<void>>();
  const reload = (cause = 'reload'): Promise<ClassifierMetadata> => (reloading ??= swapModel(cause).finally(() => (reloading = undefined)));
  const swapModel = async (cause: string): Promise<ClassifierMetadata> => {
    // The run's embedding space is read from Redis, whose client waits for it to come back: with
    // Redis down a reload waited with no deadline, and said nothing (a trial). Asked first, with a
    // deadline: the reload fails (503 to retry, over HTTP), the model loaded is kept.
    await pingRedis(ctx.services.redis, ctx.config.redis.url, RELOAD_REDIS_DEADLINE_MS);
    const next = await load();
    // Stopping meanwhile (a SIGTERM while a SIGHUP's reload loaded): the new model is stopped
    // too, where it was put in place, its threads left running, and serve never exited (a review).
    if (closing) {
      await next.retire(retireMs);
      return current.meta;
    }
    const old = current;
    current = next;
    showModel(next.meta);
    if (o.onSwap) o.onSwap(next.meta, old.meta.runId, cause);
    else o.log.info({ dataset: next.meta.dataset, runId: next.meta.runId, was: old.meta.runId, cause }, next.meta.runId === old.meta.runId ? 'model reloaded (the same run)' : 'model swapped');
    const retired = old.retire(retireMs).finally(() => retiring.delete(retired));
    retiring.add(retired);
    return next.meta;
  };

  handle = app;
  let stopping: Promise<void> | undefined;
  const addr = server.address() as AddressInfo;
  const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  return {
    url: `http://${host}:${addr.port}`,
    port: addr.port,
    model: () => current.meta,
    reload,
    // (once: a second call, a SIGINT after the SIGTERM, say, waits for the same stop; a second
    // server.close() would wait for ever for a 'close' event already emitted)
    close: () => (stopping ??= stop()),
  };
  async function stop(): Promise<void> {
    closing = true;
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    server.closeIdleConnections();
    // Answers from now on close their connection (see the first middleware): a client that kept
    // one busy with request after request kept serve up after SIGTERM (a review). So do those
    // of requests already under way (an upload): their connections would otherwise stay open,
    // idle, until the cut-off. One that holds its request open still is cut off after the deadline.
    for (const res of unanswered) if (!res.headersSent) res.set('Connection', 'close');
    unanswered.clear();
    const cutOff = setTimeout(() => server.closeAllConnections(), retireMs);
    await closed;
    clearTimeout(cutOff);
    await reloading?.catch(() => {});
    await Promise.all([current.retire(retireMs), ...retiring]);
  }
}
