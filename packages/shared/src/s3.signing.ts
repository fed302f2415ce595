/** What signing S3 requests with the SDK's own SigV4 signer needs: the client's direct GETs and the embedded server's gate. */
import { createHash, createHmac } from 'node:crypto';

/** Node's SHA-256 in the shape the SDK's SigV4 signer wants (an HMAC when given a secret). */
export class Sha256 {
  private readonly hash;
  constructor(secret?: string | Uint8Array | ArrayBuffer | ArrayBufferView) {
    this.hash = secret === undefined ? createHash('sha256') : createHmac('sha256', toBytes(secret));
  }
  update(data: string | Uint8Array | ArrayBuffer | ArrayBufferView): void {
    this.hash.update(toBytes(data));
  }
  digest(): Promise<Uint8Array> {
    return Promise.resolve(this.hash.digest());
  }
}

function toBytes(d: string | Uint8Array | ArrayBuffer | ArrayBufferView): Uint8Array | string {
  if (typeof d === 'string' || d instanceof Uint8Array) return d;
  if (ArrayBuffer.isView(d)) return new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
  return new Uint8Array(d);
}

/** A key as it goes in a SigV4 path: each segment percent-encoded as RFC 3986 asks, `/` kept. */
export function encodeKeyPath(key: string): string {
  return key
    .split('/')
    .map((s) => encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`))
    .join('/');
}
