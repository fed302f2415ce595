import { createHash } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import { SignatureV4 } from '@smithy/signature-v4';
import { encodeKeyPath, Sha256 } from './s3.signing.js';

/** What a direct GET came back with: the whole body, a definite answer, or "ask the SDK". */
export type DirectGetResult =
  | { kind: 'body'; body: Buffer; etag: string | undefined }
  | { kind: 'status'; status: 404 | 412 }
  | { kind: 'too-large'; size: number }
  | { kind: 'other' };

/** The SHA-256 of no bytes: a GET's payload hash, as the SDK signs it. */
const EMPTY_SHA256 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';

/** How long a direct request may sit without a byte before it is handed to the SDK instead. */
const IDLE_TIMEOUT_MS = 30_000;

/**
 * Whole-object GETs and PUTs without the SDK's middleware stack: signed by the SDK's own SigV4
 * signer, sent on a keep-alive agent. In the preprocess worker (one GET per image, beside sharp)
 * the SDK's GetObject took about 0.95 ms of CPU per image, this about 0.25-0.45 ms; the embed
 * worker writes two objects per batch. Only path-style endpoints (the default here, and what
 * MinIO, SeaweedFS and the embedded server use); only the plain answers (200, and for a GET
 * 404 and 412). Anything else, a refusal, a 5xx, a redirect, a dropped connection, comes back
 * as `other`, and the caller asks again through the SDK, which retries and words the error as
 * it always has. A PUT sent twice stores the same bytes twice: harmless.
 */
export class DirectS3 {
  private readonly signer: SignatureV4;
  private readonly agent: http.Agent;
  private readonly request: typeof http.request;
  private readonly base: URL;

  constructor(o: { endpoint: string; region: string; accessKeyId: string; secretAccessKey: string }) {
    this.base = new URL(o.endpoint);
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

  private async signed(method: 'GET' | 'PUT', bucket: string, key: string, headers: Record<string, string>): Promise<{ path: string; headers: Record<string, string> }> {
    const path = `${this.base.pathname.replace(/\/+$/, '')}/${encodeURIComponent(bucket)}/${encodeKeyPath(key)}`;
    const req = await this.signer.sign({
      method,
      protocol: this.base.protocol,
      hostname: this.base.hostname,
      ...(this.base.port !== '' && { port: Number(this.base.port) }),
      path,
      headers: { host: this.base.host, ...headers },
    });
    return { path, headers: req.headers };
  }

  private send(method: 'GET' | 'PUT', path: string, headers: Record<string, string>): http.ClientRequest {
    const req = this.request({ agent: this.agent, protocol: this.base.protocol, hostname: this.base.hostname, port: this.base.port, method, path, headers });
    req.setTimeout(IDLE_TIMEOUT_MS, () => req.destroy(new Error('idle')));
    return req;
  }

  async get(bucket: string, key: string, maxBytes: number, ifMatch?: string): Promise<DirectGetResult> {
    const { path, headers } = await this.signed('GET', bucket, key, {
      'x-amz-content-sha256': EMPTY_SHA256,
      ...(ifMatch !== undefined && { 'if-match': `"${ifMatch}"` }),
    });
    return new Promise<DirectGetResult>((resolve) => {
      const req = this.send('GET', path, headers);
      req.on('error', () => resolve({ kind: 'other' }));
      req.on('response', (res) => {
        const status = res.statusCode ?? 0;
        if (status !== 200) {
          res.resume();
          return resolve(status === 404 || status === 412 ? { kind: 'status', status } : { kind: 'other' });
        }
        const announced = res.headers['content-length'] === undefined ? undefined : Number(res.headers['content-length']);
        if (announced !== undefined && announced > maxBytes) {
          res.destroy();
          return resolve({ kind: 'too-large', size: announced });
        }
        const etag = typeof res.headers.etag === 'string' ? res.headers.etag.replace(/"/g, '') : undefined;
        // Copied once into a buffer of the announced size; collected in chunks without one.
        const out = announced !== undefined && Number.isSafeInteger(announced) ? Buffer.allocUnsafe(announced) : undefined;
        const chunks: Buffer[] = [];
        let total = 0;
        res.on('data', (chunk: Buffer) => {
          if (total + chunk.length > maxBytes) {
            res.destroy();
            return resolve({ kind: 'too-large', size: total + chunk.length });
          }
          if (out && total + chunk.length <= out.length) chunk.copy(out, total);
          else chunks.push(chunk);
          total += chunk.length;
        });
        res.on('error', () => resolve({ kind: 'other' }));
        res.on('aborted', () => resolve({ kind: 'other' }));
        res.on('end', () => {
          // A body shorter or longer than announced: not trusted, the SDK asks again.
          if (announced !== undefined && (total !== announced || chunks.length > 0)) return resolve({ kind: 'other' });
          resolve({ kind: 'body', body: out ?? Buffer.concat(chunks), etag });
        });
      });
      req.end();
    });
  }

  /** Stores `body` under `key`: true when the server said 200, false when the SDK should try. */
  async put(bucket: string, key: string, body: Uint8Array, contentType: string): Promise<boolean> {
    const { path, headers } = await this.signed('PUT', bucket, key, {
      'content-length': String(body.byteLength),
      'content-type': contentType,
      'x-amz-content-sha256': createHash('sha256').update(body).digest('hex'),
    });
    return new Promise<boolean>((resolve) => {
      const req = this.send('PUT', path, headers);
      req.on('error', () => resolve(false));
      req.on('response', (res) => {
        res.resume();
        res.on('error', () => resolve(false));
        res.on('end', () => resolve(res.statusCode === 200));
      });
      req.end(body);
    });
  }

  close(): void {
    this.agent.destroy();
  }
}
