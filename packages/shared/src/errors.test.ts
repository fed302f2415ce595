import { describe, expect, it } from 'vitest';
import { connectionFailure } from './errors.js';
import { isConnectionError } from './queues.js';
import { isRedisUnavailable } from './redis.client.js';

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
