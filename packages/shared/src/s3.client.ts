import {
  CopyObjectCommand,
  CreateBucketCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  NoSuchKey,
  NotFound,
  PutObjectCommand,
  S3Client,
  S3ServiceException,
} from '@aws-sdk/client-s3';
import type { Readable } from 'node:stream';
import type { z } from 'zod';
import { parseDocument } from './documents.js';
import { connectionFailure } from './errors.js';
import { deadlineTimer } from './lifecycle.js';
import { redactUrl } from './redact.js';
import { DirectS3, otherContent, type RequestWatch } from './s3-direct.client.js';

/** Where and how to reach an S3-compatible server. */
export interface S3Settings {
  endpoint: string;
  region: string;
  accessKeyId: string;
  secretAccessKey: string;
  forcePathStyle: boolean;
  /**
   * How long a request may go without a byte, or a connection take, before it is given up (and
   * retried as the SDK retries): a server that accepts connections and never answers (stopped,
   * wedged) would otherwise hold every caller for ever. Default 30 s.
   */
  idleTimeoutMs?: number;
}

/** How long ObjectStore.probe waits for an answer, all attempts together. */
const PROBE_TIMEOUT_MS = 5_000;

/** How long a request to S3 may go without a byte before it is tried again (S3Settings.idleTimeoutMs, TL_S3_IDLE_TIMEOUT_MS, unset). */
export const DEFAULT_IDLE_TIMEOUT_MS = 30_000;
/** Attempts of one request to S3 (the SDK's retries). */
export const S3_ATTEMPTS = 5;

/**
 * When a request without an answer is called slow (ObjectStore.onSlowRequest): after two idle
 * timeouts, or 10 s, whichever is first. A wedged S3 holds a request for all its attempts
 * (minutes at the default idle timeout); this is when the CLI says so and a worker asks its probe.
 */
export function slowRequestAfterMs(idleTimeoutMs: number | undefined): number {
  return Math.min(10_000, 2 * (idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS));
}

/** One listed object. `etag` is the server's ETag without quotes. */
export interface ObjectInfo {
  key: string;
  size: number;
  etag: string;
  /** when the object was last written, where the server says (listings do) */
  lastModified?: Date;
}

/** The object is not there (deleted between listing and processing, or never was). */
export class ObjectNotFoundError extends Error {
  override readonly name = 'ObjectNotFoundError';
  constructor(readonly bucket: string, readonly key: string) {
    super(`s3://${bucket}/${key} does not exist`);
  }
}

/** The object is larger than the configured limit; it was not downloaded. */
export class ObjectTooLargeError extends Error {
  override readonly name = 'ObjectTooLargeError';
  constructor(readonly bucket: string, readonly key: string, readonly size: number, readonly limit: number) {
    super(`s3://${bucket}/${key} is ${size} bytes, over the limit of ${limit} (TL_MAX_OBJECT_BYTES)`);
  }
}

/** The bucket itself does not exist (S3's NoSuchBucket): a setting or a URL to mend, not a missing object. */
export class BucketNotFoundError extends Error {
  override readonly name = 'BucketNotFoundError';
  constructor(readonly bucket: string, endpoint: string) {
    super(`bucket ${bucket} does not exist at ${redactUrl(endpoint)}`);
  }
}

/** The object's content is no longer the one that was listed (its ETag changed): it was overwritten. */
export class ObjectChangedError extends Error {
  override readonly name = 'ObjectChangedError';
  constructor(readonly bucket: string, readonly key: string, readonly expected: string, readonly actual: string | undefined) {
    super(`s3://${bucket}/${key} changed after it was listed (listed with ETag ${expected}${actual === undefined ? '' : `, now ${actual}`})`);
  }
}

/**
 * S3 refused a request about this key with a client error other than 404 (a key it cannot
 * store, no permission): asking again will not help. A HEAD's answer has no body to say why.
 */
export class ObjectRefusedError extends Error {
  override readonly name = 'ObjectRefusedError';
  constructor(readonly bucket: string, readonly key: string, readonly status: number, code: string) {
    // a HEAD's refusal has no body: the SDK names it "Unknown"
    super(`S3 refused s3://${bucket}/${key}: HTTP ${status}${/^Unknown(Error)?$/.test(code) ? '' : ` (${code})`}`);
  }
}

/**
 * S3 rejects the credentials themselves (a wrong secret, an unknown or disabled key, an expired
 * session token): every request of this process would fail alike, so no item is to blame.
 */
export class S3CredentialsError extends Error {
  override readonly name = 'S3CredentialsError';
  constructor(readonly endpoint: string, readonly code: string) {
    // a malformed authorization header names the wrong region, most often
    super(`S3 at ${redactUrl(endpoint)} rejects this process's credentials (${code}): check ${code === 'AuthorizationHeaderMalformed' ? 'S3_REGION' : 'S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY'}`);
  }
}

/** S3 did not answer: `problem` says how (connection refused, no such host, timed out…). */
export class S3UnreachableError extends Error {
  override readonly name = 'S3UnreachableError';
  constructor(
    readonly endpoint: string,
    readonly problem: string,
  ) {
    super(`cannot reach S3 at ${redactUrl(endpoint)}: ${problem}. Is it running? (set S3_ENDPOINT or TL_S3_PORT, or run "transferline up")`);
  }

  /** `err` as this error when it is a connection to `endpoint` that could not be made or kept. */
  static from(err: unknown, endpoint: string): S3UnreachableError | undefined {
    if (err instanceof S3UnreachableError) return err;
    const failed = connectionFailure(err);
    if (!failed) {
      // (the SDK's own timeouts, of the requests this store sends to `endpoint`: they name no
      // host; the SDK also names a reset connection TimeoutError, which connectionFailure took)
      const timeout = timedOut(err);
      if (timeout === 'connect') return new S3UnreachableError(endpoint, 'the connection was not established in time');
      if (timeout) return new S3UnreachableError(endpoint, 'it did not answer in time (a server that accepts connections but never answers is stopped or wedged)');
      return undefined;
    }
    // Its host and port, not either: Redis may be on the same host, anything else on the same port.
    const url = new URL(endpoint);
    const port = Number(url.port || (url.protocol === 'https:' ? 443 : 80));
    const host = url.hostname.replace(/^\[|\]$/g, '');
    const loopback = (a?: string) => a === '127.0.0.1' || a === '::1';
    // a virtual-hosted request (S3_FORCE_PATH_STYLE=false) goes to bucket.host
    const hostMatches = failed.hostname === host || failed.hostname?.endsWith(`.${host}`) === true || failed.address === host || (host === 'localhost' && loopback(failed.address));
    const ours = hostMatches && (failed.port === undefined || failed.port === port);
    return ours ? new S3UnreachableError(endpoint, failed.problem) : undefined;
  }
}

/** Whether `err` (or its cause) is a request given up for want of an answer (the SDK's idle timeout, an AbortSignal.timeout), or of a connection (`connect`). */
function timedOut(err: unknown): 'connect' | 'answer' | undefined {
  for (let e = err; e instanceof Error; e = e.cause) if (e.name === 'TimeoutError') return /did not establish a connection/.test(e.message) ? 'connect' : 'answer';
  return undefined;
}

/** The error codes with which S3 rejects the credentials rather than a request. */
const CREDENTIAL_CODES = new Set(['SignatureDoesNotMatch', 'InvalidAccessKeyId', 'InvalidToken', 'ExpiredToken', 'TokenRefreshRequired', 'InvalidClientTokenId', 'AuthorizationHeaderMalformed']);

/**
 * An answer of S3 said as what to do about it: credentials it refuses (S3CredentialsError, naming
 * the settings), or a bucket that does not exist, named with the endpoint, and as the
 * deployment's bucket (TL_BUCKET) when it is this process's. Undefined for any other error.
 */
export function s3Refusal(err: unknown, s3: { endpoint: string; bucket: string }): Error | undefined {
  let named: unknown;
  if (err instanceof BucketNotFoundError) named = err.bucket;
  else if (!(err instanceof S3ServiceException)) return undefined;
  else if (CREDENTIAL_CODES.has(err.name)) return new S3CredentialsError(s3.endpoint, err.name);
  else if (err.name !== 'NoSuchBucket') return undefined;
  else named = (err as { BucketName?: unknown }).BucketName;
  const bucket = typeof named === 'string' && named !== '' ? named : undefined;
  const at = redactUrl(s3.endpoint);
  if (bucket === undefined) return new Error(`a bucket this command reads does not exist at ${at} (S3 did not say which; this process's TL_BUCKET is ${s3.bucket})`);
  if (bucket !== s3.bucket) return new Error(`bucket ${bucket} does not exist at ${at}`);
  // (only `up` and `upload` make a bucket: a deployment started by hand has its user make TL_BUCKET)
  return new Error(`bucket ${bucket} does not exist at ${at}: it is this process's TL_BUCKET, where the workers keep embeddings and models; set TL_BUCKET as the workers have it, or, if they have this one, create it (aws s3 mb s3://${bucket})`);
}

/** S3 refused a request made with `If-Match` (412): the object holds other content than that ETag. */
function preconditionFailed(err: unknown, ifMatch: string | undefined): ifMatch is string {
  return ifMatch !== undefined && err instanceof S3ServiceException && err.$metadata.httpStatusCode === 412;
}

/** A client error S3 would give again (not 404; not 408 or 429, which ask to try again later). */
function refusedStatus(err: unknown): number | undefined {
  const status = err instanceof S3ServiceException ? err.$metadata.httpStatusCode : undefined;
  return status !== undefined && status >= 400 && status < 500 && ![404, 408, 429].includes(status) ? status : undefined;
}

/**
 * An S3 error that may pass if asked again, past the SDK's own attempts: a 5xx or a throttling
 * answer; not a refusal (refusedStatus), a missing key or bucket, or an error of our own.
 */
export function mayPassIfAskedAgain(err: unknown): boolean {
  const e = err as { $metadata?: { httpStatusCode?: number }; name?: string; $retryable?: unknown };
  const status = e.$metadata?.httpStatusCode;
  return (status !== undefined && (status >= 500 || status === 429)) || e.$retryable !== undefined || ['SlowDown', 'InternalError', 'ServiceUnavailable', 'RequestTimeout', 'ThrottlingException'].includes(e.name ?? '');
}

/** `s3://bucket/some/prefix/` → `{ bucket, prefix }` (prefix normalised to end with `/` or be empty). */
export function parseS3Url(url: string): { bucket: string; prefix: string } {
  const m = /^s3:\/\/([^/]+)\/?(.*)$/.exec(url);
  if (!m || !m[1]) throw new Error(`not an s3:// URL: ${JSON.stringify(url)} (expected s3://bucket/prefix)`);
  const rest = m[2] ?? '';
  return { bucket: m[1], prefix: rest === '' || rest.endsWith('/') ? rest : `${rest}/` };
}

/** `s3://bucket/some/key.jpg` → `{ bucket, key }`: one object, not a prefix. */
export function parseS3ObjectUrl(url: string): { bucket: string; key: string } {
  const { bucket, prefix } = parseS3Url(url);
  const key = prefix.replace(/\/$/, '');
  if (key === '') throw new Error(`${JSON.stringify(url)} names a bucket, not an object (expected s3://bucket/key)`);
  return { bucket, key };
}

/** S3's answer that the bucket itself is missing (a GET's or a listing's; a HEAD's 404 cannot say). */
function isNoSuchBucket(err: unknown): boolean {
  return err instanceof S3ServiceException && err.name === 'NoSuchBucket';
}

/** S3's answers that a bucket as a whole cannot be read by these credentials: another owner's, another region's, a name it refuses. */
const BUCKET_REFUSALS = new Set(['AccessDenied', 'AllAccessDisabled', 'PermanentRedirect', 'InvalidBucketName']);

/**
 * Why a bucket cannot be read at all, from the error a listing of it met ("does not exist", or
 * S3's code for a refusal), whichever path (the SDK's or the direct one) met it; undefined for any
 * other error (an outage, a server error: not the bucket's fault).
 */
export function bucketUnreadable(err: unknown): string | undefined {
  if (err instanceof BucketNotFoundError || isNoSuchBucket(err)) return 'does not exist';
  if (err instanceof S3ServiceException && BUCKET_REFUSALS.has(err.name)) return `S3 refuses it: ${err.name}`;
  return undefined;
}

/** S3's answer that the key is missing, in a bucket that exists (as far as the answer says). */
function isNotFound(err: unknown): boolean {
  if (isNoSuchBucket(err)) return false;
  return (
    err instanceof NoSuchKey ||
    err instanceof NotFound ||
    (err instanceof S3ServiceException && (err.$metadata.httpStatusCode === 404 || err.name === 'NoSuchKey'))
  );
}

/**
 * The object store behind one module, with domain verbs; nothing outside this file and its direct
 * path (s3-direct.client.ts) sees the SDK or S3's protocol.
 * Works with AWS S3, MinIO and the embedded s3rver (path-style addressing).
 */
export class ObjectStore {
  private readonly client: S3Client;
  private readonly direct: DirectS3 | undefined;
  private readonly endpoint: string;
  /** Who is told of a request that goes unanswered (onSlowRequest). */
  private readonly slowWatchers: { afterMs: number; notify: () => boolean | void; told: boolean }[] = [];

  constructor(settings: S3Settings) {
    this.endpoint = settings.endpoint;
    this.client = new S3Client({
      endpoint: settings.endpoint,
      region: settings.region,
      forcePathStyle: settings.forcePathStyle,
      credentials: { accessKeyId: settings.accessKeyId, secretAccessKey: settings.secretAccessKey },
      // Checksums only where the protocol requires them: the embedded server and older MinIO do
      // not understand the streaming trailer checksums newer SDKs send by default.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      maxAttempts: S3_ATTEMPTS,
      // A request waiting for one of the agent's sockets counts towards connectionTimeout: room
      // for every job a worker may hold (TL_PREPROCESS_CONCURRENCY is at most 256).
      requestHandler: {
        connectionTimeout: settings.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS,
        socketTimeout: settings.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS,
        httpAgent: { keepAlive: true, maxSockets: 256 },
        httpsAgent: { keepAlive: true, maxSockets: 256 },
      },
      // The middleware stack is resolved once per command type, not on every request: about
      // 0.06 ms less client CPU per small GET (measured against the embedded server). Whole
      // GETs and PUTs mostly go direct; listing, HEAD, copy, delete and the hand-overs do not.
      cacheMiddleware: true,
    });
    // Every request of the SDK's goes by the slow-request watchers (none until onSlowRequest).
    this.client.middlewareStack.add((next) => (args) => this.watchedBySdk(() => next(args)), { step: 'initialize', name: 'transferlineSlowRequest' });
    // Signed at the SDK's clock: it corrects its offset when a server says the clock is skewed.
    const client = this.client;
    this.direct = DirectS3.supports(settings) ? new DirectS3({ ...settings, idleTimeoutMs: settings.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS }, () => client.config.systemClockOffset ?? 0) : undefined;
  }

  /**
   * Calls `notify` when a request has gone `afterMs` without an answer since it was sent: a
   * command waiting on a wedged S3 says so, where it sat silent for minutes, and a worker asks its
   * outage probe. Once until a request is answered again. Every request counts: the SDK's
   * (listings, HEADs, copies; its retries included) and the direct GETs and PUTs (from when the
   * body is sent to the status line). A `notify` that returns false did nothing with it: the
   * next slow request tells it again.
   */
  onSlowRequest(afterMs: number, notify: () => boolean | void): void {
    this.slowWatchers.push({ afterMs, notify, told: false });
  }

  /**
   * The slow-request watch of one request, or none while no one watches (the per-request hot
   * path pays nothing then): its timers run from `sent` until `answered` (which also re-arms every
   * watcher) or `done`. Deadline timers: a late one (the event loop was blocked) lets an answer
   * that came meanwhile be read first.
   */
  private watchRequest(): (RequestWatch & { done: () => void }) | undefined {
    if (this.slowWatchers.length === 0) return undefined;
    let timers: NodeJS.Timeout[] | undefined;
    let over = false;
    const stop = () => {
      over = true;
      for (const t of timers ?? []) clearTimeout(t);
    };
    return {
      sent: () => {
        if (over || timers) return;
        timers = this.slowWatchers.map((w) => {
          const timer = deadlineTimer(w.afterMs, () => {
            if (over || w.told) return;
            w.told = w.notify() !== false;
          });
          timer.unref();
          return timer;
        });
      },
      answered: () => {
        stop();
        for (const w of this.slowWatchers) w.told = false;
      },
      done: stop,
    };
  }

  /** An SDK request under the slow-request watch; a refusal or a 404 is S3's answer too (a probe's is one). */
  private async watchedBySdk<T>(request: () => Promise<T>): Promise<T> {
    const watch = this.watchRequest();
    if (!watch) return request();
    watch.sent();
    try {
      const r = await request();
      watch.answered();
      return r;
    } catch (err) {
      if (err instanceof S3ServiceException) watch.answered();
      throw err;
    } finally {
      watch.done();
    }
  }

  /** Whether the bucket exists (a HEAD of it answered, rather than a 404). */
  async bucketExists(bucket: string): Promise<boolean> {
    try {
      await this.client.send(new HeadBucketCommand({ Bucket: bucket }));
      return true;
    } catch (err) {
      if (isNotFound(err) || isNoSuchBucket(err)) return false;
      // A refused HEAD has no body to say why ("UnknownError"): a listing of no keys is asked,
      // whose refusal names it (credentials, a policy), said as any other refusal is.
      if (!(err instanceof S3ServiceException) || err.$metadata.httpStatusCode !== 403) throw err;
      try {
        await this.client.send(new ListObjectsV2Command({ Bucket: bucket, MaxKeys: 0 }));
        return true;
      } catch (listErr) {
        if (isNoSuchBucket(listErr)) return false;
        throw listErr;
      }
    }
  }

  /** Creates the bucket unless it exists already; true when this call created it. */
  async ensureBucket(bucket: string): Promise<boolean> {
    if (await this.bucketExists(bucket)) return false;
    try {
      await this.client.send(new CreateBucketCommand({ Bucket: bucket }));
      return true;
    } catch (createErr) {
      const name = (createErr as Error).name;
      if (name !== 'BucketAlreadyOwnedByYou' && name !== 'BucketAlreadyExists') throw createErr;
      return false;
    }
  }

  /**
   * Whether S3 serves this process at all (for telling an outage from an item's error): any
   * answer but a 5xx or a refusal of the credentials counts, so a missing key or bucket, or a
   * request denied by a policy, still means S3 is up. Refused credentials: S3CredentialsError.
   */
  async probe(bucket: string): Promise<void> {
    // (a deadline timer: a blocked event loop does not make a prompt answer late)
    const aborter = new AbortController();
    const deadline = aborter.signal;
    const timer = deadlineTimer(PROBE_TIMEOUT_MS, () => aborter.abort());
    try {
      // A GET (not a HEAD, whose refusals have no body): S3 names why it refuses. The key is
      // not expected to exist; any answer but a rejection of the credentials or a 5xx is "up".
      const res = await this.client.send(new GetObjectCommand({ Bucket: bucket, Key: '.transferline-probe' }), { abortSignal: deadline });
      (res.Body as Readable | undefined)?.destroy();
    } catch (err) {
      // (its own deadline, shorter than the SDK's attempts at a mute server: minutes)
      if (deadline.aborted) throw new S3UnreachableError(this.endpoint, `it did not answer within ${PROBE_TIMEOUT_MS / 1000} s`);
      const refused = s3Refusal(err, { endpoint: this.endpoint, bucket });
      if (refused instanceof S3CredentialsError) throw refused;
      const status = err instanceof S3ServiceException ? err.$metadata.httpStatusCode : undefined;
      if (status !== undefined && status < 500) return;
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Stores an object; path-style endpoints directly, as getObject reads them, else through the SDK. */
  async putObject(bucket: string, key: string, body: Uint8Array | string, contentType = 'application/octet-stream'): Promise<void> {
    if (this.direct?.usable) {
      const watch = this.watchRequest();
      const ok = await this.direct.put(bucket, key, typeof body === 'string' ? Buffer.from(body, 'utf8') : body, contentType, watch).finally(() => watch?.done());
      if (ok) return;
    }
    await this.client.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: body, ContentType: contentType }));
  }

  /**
   * Downloads an object into memory. The size is checked from the response headers before the
   * body is read, so an oversized object costs one request and no transfer. With `ifMatch` (an
   * ETag without quotes) it downloads only that content, or throws ObjectChangedError.
   * Path-style endpoints are read directly (see DirectS3: about a third of the SDK's CPU per
   * request); what that path cannot settle is asked again through the SDK.
   */
  async getObject(bucket: string, key: string, maxBytes = Number.POSITIVE_INFINITY, o: { ifMatch?: string } = {}): Promise<Buffer> {
    if (this.direct?.usable) {
      const watch = this.watchRequest();
      const r = await this.direct.get(bucket, key, maxBytes, o.ifMatch, watch).finally(() => watch?.done());
      if (r.kind === 'body') return r.body;
      if (r.kind === 'not-found') throw new ObjectNotFoundError(bucket, key);
      if (r.kind === 'no-bucket') throw new BucketNotFoundError(bucket, this.endpoint);
      if (r.kind === 'changed') throw new ObjectChangedError(bucket, key, o.ifMatch ?? '', r.etag);
      if (r.kind === 'too-large') throw new ObjectTooLargeError(bucket, key, r.size, maxBytes);
    }
    return this.getObjectViaSdk(bucket, key, maxBytes, o);
  }

  private async getObjectViaSdk(bucket: string, key: string, maxBytes: number, o: { ifMatch?: string }): Promise<Buffer> {
    let res;
    try {
      res = await this.client.send(new GetObjectCommand({ Bucket: bucket, Key: key, ...(o.ifMatch !== undefined && { IfMatch: `"${o.ifMatch}"` }) }));
    } catch (err) {
      if (isNotFound(err)) throw new ObjectNotFoundError(bucket, key);
      if (isNoSuchBucket(err)) throw new BucketNotFoundError(bucket, this.endpoint);
      if (preconditionFailed(err, o.ifMatch)) throw new ObjectChangedError(bucket, key, o.ifMatch, undefined);
      throw err;
    }
    const body = res.Body as Readable | undefined;
    const sent = otherContent(res.ETag, o.ifMatch);
    if (sent !== undefined) {
      body?.destroy();
      throw new ObjectChangedError(bucket, key, o.ifMatch ?? '', sent);
    }
    if (!body) return Buffer.alloc(0);
    const length = res.ContentLength ?? 0;
    if (length > maxBytes) {
      body.destroy();
      throw new ObjectTooLargeError(bucket, key, length, maxBytes);
    }
    // With a known length the body is copied once into a buffer of that size, instead of being
    // collected in chunks and concatenated (twice the memory at the peak, for large shards).
    const out = res.ContentLength !== undefined ? Buffer.allocUnsafe(length) : undefined;
    const chunks: Buffer[] = [];
    let total = 0;
    for await (const chunk of body) {
      const buf = chunk as Buffer;
      if (total + buf.length > maxBytes) {
        body.destroy();
        throw new ObjectTooLargeError(bucket, key, total + buf.length, maxBytes);
      }
      if (out && total + buf.length <= out.length) buf.copy(out, total);
      else chunks.push(buf);
      total += buf.length;
    }
    if (out && chunks.length === 0) return total === out.length ? out : out.subarray(0, total);
    // The server sent more than it announced: fall back to collecting everything.
    return Buffer.concat([...(out ? [out.subarray(0, Math.min(total, out.length))] : []), ...chunks]);
  }

  /** Reads a small JSON object, or returns undefined when it does not exist (BucketNotFoundError when its bucket does not). */
  async getJson<T>(bucket: string, key: string): Promise<T | undefined> {
    try {
      return JSON.parse((await this.getObject(bucket, key)).toString('utf8')) as T;
    } catch (err) {
      if (err instanceof ObjectNotFoundError) return undefined;
      throw err;
    }
  }

  /** Reads a stored JSON document and checks it against its schema; undefined when it does not exist. */
  async getDocument<S extends z.ZodType>(schema: S, bucket: string, key: string): Promise<z.output<S> | undefined> {
    const raw = await this.getJson(bucket, key);
    return raw === undefined ? undefined : parseDocument(schema, raw, `s3://${bucket}/${key}`);
  }

  async putJson(bucket: string, key: string, value: unknown): Promise<void> {
    await this.putObject(bucket, key, JSON.stringify(value, null, 2), 'application/json');
  }

  /**
   * Size and ETag of one object, or undefined when it does not exist. A HEAD's 404 has no body
   * to tell a missing key from a missing bucket: with `bucketToo`, a 404 asks about the bucket
   * (one more request, on a miss only) and throws BucketNotFoundError when it is the bucket.
   */
  async headObject(bucket: string, key: string, o: { bucketToo?: boolean } = {}): Promise<ObjectInfo | undefined> {
    try {
      const res = await this.client.send(new HeadObjectCommand({ Bucket: bucket, Key: key }));
      return { key, size: res.ContentLength ?? 0, etag: stripQuotes(res.ETag) };
    } catch (err) {
      // (a second look that fails leaves it a missing object, as it was without the look)
      if (isNotFound(err) && o.bucketToo && !(await this.bucketExists(bucket).catch(() => true))) throw new BucketNotFoundError(bucket, this.endpoint);
      if (isNotFound(err)) return undefined;
      const status = refusedStatus(err);
      if (status !== undefined) throw new ObjectRefusedError(bucket, key, status, (err as Error).name);
      throw err;
    }
  }

  /** Every object under a prefix, page by page (1,000 keys a request), in key order. */
  async *listObjects(bucket: string, prefix: string): AsyncGenerator<ObjectInfo> {
    let token: string | undefined;
    do {
      const res = await this.client.send(
        new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token }),
      );
      for (const o of res.Contents ?? []) {
        if (o.Key === undefined) continue;
        yield { key: o.Key, size: o.Size ?? 0, etag: stripQuotes(o.ETag), ...(o.LastModified && { lastModified: o.LastModified }) };
      }
      token = res.IsTruncated ? res.NextContinuationToken : undefined;
    } while (token);
  }

  /** The names of the folders right under `prefix` (a listing with a `/` delimiter). */
  async listFolders(bucket: string, prefix: string): Promise<string[]> {
    const names: string[] = [];
    let token: string | undefined;
    do {
      const res = await this.client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, Delimiter: '/', ContinuationToken: token }));
      for (const p of res.CommonPrefixes ?? []) if (p.Prefix !== undefined) names.push(p.Prefix.slice(prefix.length, -1));
      token = res.IsTruncated ? res.NextContinuationToken : undefined;
    } while (token);
    return names;
  }

  /**
   * Copies an object within the store (server-side, no download); returns the copy's ETag. With
   * `ifMatch` (an ETag without quotes) it copies only that content, or throws ObjectChangedError;
   * ObjectNotFoundError when there is no such object, BucketNotFoundError when no such bucket.
   */
  async copyObject(bucket: string, from: string, to: string, o: { ifMatch?: string } = {}): Promise<string> {
    const source = `${bucket}/${from}`.split('/').map(encodeURIComponent).join('/');
    try {
      const res = await this.client.send(new CopyObjectCommand({ Bucket: bucket, Key: to, CopySource: source, ...(o.ifMatch !== undefined && { CopySourceIfMatch: `"${o.ifMatch}"` }) }));
      return stripQuotes(res.CopyObjectResult?.ETag);
    } catch (err) {
      if (preconditionFailed(err, o.ifMatch)) throw new ObjectChangedError(bucket, from, o.ifMatch, undefined);
      if (isNotFound(err)) throw new ObjectNotFoundError(bucket, from);
      if (isNoSuchBucket(err)) throw new BucketNotFoundError(bucket, this.endpoint);
      throw err;
    }
  }

  /**
   * Deletes an object. With `ifMatch` (an ETag without quotes) only while it holds that content:
   * another throws ObjectChangedError, and one already gone is not an error. (S3 and Ceph check
   * the condition; a server that ignores it deletes whatever is there, as without it.)
   */
  async deleteObject(bucket: string, key: string, o: { ifMatch?: string } = {}): Promise<void> {
    try {
      await this.client.send(new DeleteObjectCommand({ Bucket: bucket, Key: key, ...(o.ifMatch !== undefined && { IfMatch: `"${o.ifMatch}"` }) }));
    } catch (err) {
      if (preconditionFailed(err, o.ifMatch)) throw new ObjectChangedError(bucket, key, o.ifMatch, undefined);
      if (o.ifMatch !== undefined && isNotFound(err)) return;
      if (isNoSuchBucket(err)) throw new BucketNotFoundError(bucket, this.endpoint);
      throw err;
    }
  }

  close(): void {
    this.direct?.close();
    this.client.destroy();
  }
}

function stripQuotes(etag: string | undefined): string {
  return (etag ?? '').replace(/^"|"$/g, '');
}
