import { describe, expect, it } from 'vitest';
import { connectionFailure } from './errors.js';
import { isConnectionError } from './queues.js';
import { isRedisUnavailable } from './redis.client.js';
import { S3UnreachableError } from './s3.client.js';

const socketError = (code: string, message = `connect ${code} 10.0.0.9:6379`) => Object.assign(new Error(message), { code, address: '10.0.0.9', port: 6379 });

describe('a connection that could not be made or kept, told the same way everywhere', () => {
  // a host name that does not resolve, a connection refused, reset, timed out…
  const codes = ['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'ETIMEDOUT', 'EHOSTUNREACH', 'ECONNRESET', 'EPIPE'];

  it.each(codes)('%s: Redis is unavailable, the worker error is a lost connection, and connectionFailure words it', (code) => {
    const err = socketError(code);
    expect(isRedisUnavailable(err)).toBe(true);
    expect(isConnectionError(err)).toBe(true);
    // the code lost, the message kept (as BullMQ passes some on)
    expect(isConnectionError(new Error(err.message))).toBe(true);
    expect(connectionFailure(err)).toMatchObject({ address: '10.0.0.9', port: 6379 });
  });

  it("an error of the command, or a code inside another client's error, is not Redis being unavailable", () => {
    expect(isRedisUnavailable(Object.assign(new Error('WRONGTYPE Operation against a key holding the wrong kind of value'), { code: 'WRONGTYPE' }))).toBe(false);
    expect(isRedisUnavailable(new Error('S3 request failed', { cause: socketError('ECONNREFUSED') }))).toBe(false);
    expect(isConnectionError(new Error('ERR value is not an integer'))).toBe(false);
    expect(connectionFailure(new Error('NoSuchKey'))).toBeUndefined();
  });
});

describe("S3's own connection failures are S3's", () => {
  // as the SDK rejects them: Node's error itself, not wrapped
  const dns = (hostname: string) => Object.assign(new Error(`getaddrinfo ENOTFOUND ${hostname}`), { code: 'ENOTFOUND', hostname });

  it('a host name of the endpoint that does not resolve, path-style or virtual-hosted (bucket.host), is S3 unreachable', () => {
    expect(S3UnreachableError.from(dns('minio.internal'), 'http://minio.internal:9000')?.message).toMatch(/^cannot reach S3 at http:\/\/minio\.internal:9000: no such host/);
    expect(S3UnreachableError.from(dns('photos.minio.internal'), 'http://minio.internal:9000')).toBeInstanceOf(S3UnreachableError);
  });

  it('another host is not the endpoint: neither a look-alike name nor Redis on the same machine', () => {
    expect(S3UnreachableError.from(dns('notminio.internal'), 'http://minio.internal:9000')).toBeUndefined();
    expect(S3UnreachableError.from(Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:6379'), { code: 'ECONNREFUSED', address: '127.0.0.1', port: 6379 }), 'http://127.0.0.1:9000')).toBeUndefined();
  });
});
