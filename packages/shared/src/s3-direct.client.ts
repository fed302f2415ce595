import { Buffer, constants as bufferConstants } from 'node:buffer';
import { createHash } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import { SignatureV4 } from '@smithy/signature-v4';
import { encodeKeyPath, Sha256 } from './s3.signing.js';

/** What a direct GET came back with: the whole body, a definite answer, or "ask the SDK". */
export type DirectGetResult =
  | { kind: 'body'; body: Buffer }
  | { kind: 'not-found' }
  | { kind: 'no-bucket' }
  | { kind: 'changed'; etag: string | undefined }
  | { kind: 'too-large'; size: number }
  | { kind: 'other' };

/** Told when a request is all sent (its body too) and when its answer begins (its status line). */
export interface RequestWatch {
  sent: () => void;
  answered: () => void;
}

/**
 * The ETag a server sent (quotes off) when it names other content than If-Match asked for;
 * undefined when it is that content or nothing was asked. Servers that ignore If-Match (s3rver,
 * say) still say which content they send. Both GET paths decide by this.
 */
export function otherContent(etagHeader: string | undefined, ifMatch: string | undefined): string | undefined {
  const etag = etagHeader?.replace(/"/g, '');
  return ifMatch !== undefined && etag !== undefined && etag !== ifMatch ? etag : undefined;
}

/** The SHA-256 of no bytes: a GET's payload hash, as the SDK signs it. */
const EMPTY_SHA256 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';

/** After this many answers in a row that the SDK had to take over, the direct path rests... */
const FALLBACKS_BEFORE_REST = 20;
/** ...for this long: a server it does not suit (or an outage) costs one request, not two. */
const REST_MS = 60_000;

/**
 * Whole-object GETs and PUTs without the SDK's middleware stack: signed by the SDK's own SigV4
 * signer, sent on a keep-alive agent. In the preprocess worker (one GET per image, beside sharp)
 * the SDK's GetObject took about 0.95 ms of CPU per image, this about 0.25-0.45 ms; the embed
 * worker writes two objects per shard. Only path-style endpoints (the default here, and what
 * MinIO, SeaweedFS and the embedded server use); only the plain answers (200, and for a GET
 * 404, 412 or another ETag, and a body over the limit). Anything else, a refusal, a 5xx, a
 * redirect, a dropped connection, comes back as `other`, and the caller asks again through the
 * SDK, which retries and words the error as it always has. A PUT sent twice stores the same
 * bytes twice: harmless. Requests are signed at the SDK's clock offset, which it corrects on a
 * skew error; 20 hand-overs in a row rest the direct path for a minute.
 */
export class DirectS3 {
  private readonly signer: SignatureV4;
  private readonly agent: http.Agent;
  private readonly request: typeof http.request;
  private readonly base: URL;
  /** The endpoint's own path (a proxy's prefix, say), without its trailing slash. */
  private readonly pathPrefix: string;
  /** `URL.hostname` keeps an IPv6 address's brackets; a socket wants it bare. */
  private readonly connectHost: string;
  private readonly idleTimeoutMs: number;
  private fallbacks = 0;
  private restUntil = 0;

  constructor(
    o: { endpoint: string; region: string; accessKeyId: string; secretAccessKey: string; /** how long a request may sit without a byte before it is handed to the SDK instead */ idleTimeoutMs: number },
    /** the SDK's correction of this machine's clock (ms), so both sign at the same time */
    private readonly clockOffsetMs: () => number = () => 0,
  ) {
    this.base = new URL(o.endpoint);
    this.idleTimeoutMs = o.idleTimeoutMs;
    this.pathPrefix = this.base.pathname.replace(/\/+$/, '');
    this.connectHost = this.base.hostname.replace(/^\[(.*)\]$/, '$1');
    const tls = this.base.protocol === 'https:';
    this.agent = tls ? new https.Agent({ keepAlive: true, maxSockets: 50 }) : new http.Agent({ keepAlive: true, maxSockets: 50 });
    this.request = tls ? https.request : http.request;
    this.signer = new SignatureV4({
      credentials: { accessKeyId: o.accessKeyId, secretAccessKey: o.secretAccessKey },
      region: o.region,
      service: 's3',
      sha256: Sha256,
      // S3 signs the path as sent, not encoded a second time.
      uriEscapePath: false,
      applyChecksum: false,
    });
  }

  /** Whether this endpoint can be reached this way (path-style, http or https). */
  static supports(o: { endpoint: string; forcePathStyle: boolean }): boolean {
    if (!o.forcePathStyle) return false;
    try {
      return ['http:', 'https:'].includes(new URL(o.endpoint).protocol);
    } catch {
      return false;
    }
  }

  /** False while the direct path rests after too many hand-overs in a row. */
  get usable(): boolean {
    return Date.now() >= this.restUntil;
  }

  private tally<T>(result: T, handedOver: boolean): T {
    if (!handedOver) this.fallbacks = 0;
    else if (++this.fallbacks >= FALLBACKS_BEFORE_REST) {
      this.fallbacks = 0;
      this.restUntil = Date.now() + REST_MS;
    }
    return result;
  }

  private async signed(method: 'GET' | 'PUT', bucket: string, key: string, headers: Record<string, string>): Promise<{ path: string; headers: Record<string, string> }> {
    const path = `${this.pathPrefix}/${encodeURIComponent(bucket)}/${encodeKeyPath(key)}`;
    const req = await this.signer.sign(
      {
        method,
        protocol: this.base.protocol,
        hostname: this.base.hostname,
        ...(this.base.port !== '' && { port: Number(this.base.port) }),
        path,
        headers: { host: this.base.host, ...headers },
      },
      { signingDate: new Date(Date.now() + this.clockOffsetMs()) },
    );
    return { path, headers: req.headers };
  }

  /**
   * Sends one request; `onResponse` settles it (a throw there hands it over). Whatever else
   * happens, an error, a timeout, the connection closing before an answer, it settles as
   * handed over: no outcome is left waiting.
   */
  private exchange<T>(
    method: 'GET' | 'PUT',
    path: string,
    headers: Record<string, string>,
    body: Uint8Array | undefined,
    watch: RequestWatch | undefined,
    handOver: T,
    onResponse: (res: http.IncomingMessage, settle: (r: T) => void) => void,
  ): Promise<T> {
    return new Promise<T>((resolve) => {
      let settled = false;
      const settle = (r: T) => {
        if (settled) return;
        settled = true;
        resolve(r);
      };
      try {
        const req = this.request({ agent: this.agent, protocol: this.base.protocol, hostname: this.connectHost, port: this.base.port, method, path, headers });
        req.setTimeout(this.idleTimeoutMs, () => req.destroy(new Error('idle')));
        // That timer runs once connected. While a new connection is made, this one: a host that
        // drops its first packets (black-holed, or its accept queue full) would hold the request
        // for the system's connect timeout, about 2 minutes, before the SDK could try. (Not while
        // the request waits for one of the agent's sockets: a busy worker is no dead host.)
        let connecting: NodeJS.Timeout | undefined;
        req.once('socket', (socket) => {
          if (!socket.connecting) return;
          connecting = setTimeout(() => req.destroy(new Error('not connected')), this.idleTimeoutMs);
          socket.once('connect', () => clearTimeout(connecting));
        });
        req.once('close', () => clearTimeout(connecting));
        req.on('error', () => settle(handOver));
        req.on('close', () => settle(handOver));
        if (watch) req.once('finish', watch.sent);
        req.on('response', (res) => {
          watch?.answered();
          res.on('error', () => settle(handOver));
          res.on('close', () => settle(handOver));
          try {
            onResponse(res, settle);
          } catch {
            settle(handOver);
            res.destroy();
          }
        });
        req.end(body);
      } catch {
        settle(handOver);
      }
    });
  }

  async get(bucket: string, key: string, maxBytes: number, ifMatch?: string, watch?: RequestWatch): Promise<DirectGetResult> {
    const { path, headers } = await this.signed('GET', bucket, key, {
      'x-amz-content-sha256': EMPTY_SHA256,
      ...(ifMatch !== undefined && { 'if-match': `"${ifMatch}"` }),
    });
    const other: DirectGetResult = { kind: 'other' };
    const r = await this.exchange<DirectGetResult>('GET', path, headers, undefined, watch, other, (res, settle) => {
      const status = res.statusCode ?? 0;
      if (status === 404) {
        // S3 says in the body whether the key or the whole bucket is missing: a wrong bucket
        // is a setting to name, not an object to report missing.
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => {
          if (text.length < 4096) text += chunk;
        });
        res.on('end', () => settle(text.includes('<Code>NoSuchBucket</Code>') ? { kind: 'no-bucket' } : { kind: 'not-found' }));
        return;
      }
      if (status !== 200) {
        res.resume();
        if (status === 412 && ifMatch !== undefined) settle({ kind: 'changed', etag: undefined });
        else settle(other);
        return;
      }
      // Other content than the listed one is refused before its body is read, as the SDK path does.
      const sent = otherContent(res.headers.etag, ifMatch);
      if (sent !== undefined) {
        settle({ kind: 'changed', etag: sent });
        res.destroy();
        return;
      }
      const announced = res.headers['content-length'] === undefined ? undefined : Number(res.headers['content-length']);
      if (announced !== undefined && announced > maxBytes) {
        settle({ kind: 'too-large', size: announced });
        res.destroy();
        return;
      }
      if (announced !== undefined && !(Number.isSafeInteger(announced) && announced <= bufferConstants.MAX_LENGTH)) {
        settle(other);
        res.destroy();
        return;
      }
      // Copied once into a buffer of the announced size; collected in chunks without one.
      const out = announced === undefined ? undefined : Buffer.allocUnsafe(announced);
      const chunks: Buffer[] = [];
      let total = 0;
      res.on('data', (chunk: Buffer) => {
        if (total + chunk.length > maxBytes) {
          settle({ kind: 'too-large', size: total + chunk.length });
          res.destroy();
          return;
        }
        if (out && total + chunk.length <= out.length) chunk.copy(out, total);
        else chunks.push(chunk);
        total += chunk.length;
      });
      res.on('end', () => {
        // A body shorter or longer than announced: not trusted, the SDK asks again.
        if (out && (total !== out.length || chunks.length > 0)) return settle(other);
        try {
          settle({ kind: 'body', body: out ?? Buffer.concat(chunks) });
        } catch {
          settle(other);
        }
      });
    });
    return this.tally(r, r.kind === 'other');
  }

  /** Stores `body` under `key`: true when the server said 200, false when the SDK should try. */
  async put(bucket: string, key: string, body: Uint8Array, contentType: string, watch?: RequestWatch): Promise<boolean> {
    const { path, headers } = await this.signed('PUT', bucket, key, {
      'content-length': String(body.byteLength),
      'content-type': contentType,
      'x-amz-content-sha256': createHash('sha256').update(body).digest('hex'),
    });
    const ok = await this.exchange<boolean>('PUT', path, headers, body, watch, false, (res, settle) => {
      res.resume();
      res.on('end', () => settle(res.statusCode === 200));
    });
    return this.tally(ok, !ok);
  }

  close(): void {
    this.agent.destroy();
  }
}
