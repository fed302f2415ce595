import { describe, expect, it } from 'vitest';
import { redactIfSecret, redactUrl } from './redact.js';

describe('redactUrl', () => {
  it('hides the password of a URL, whole, wherever it is given (a review: an @ in it, or a query parameter, let it through)', () => {
    expect(redactUrl('redis://user:s3cret@host:6379/0')).toBe('redis://user:***@host:6379/0');
    expect(redactUrl('redis://default:p@ssw0rd@host')).toBe('redis://default:***@host');
    expect(redactUrl('redis://:s3cret@host')).toBe('redis://:***@host');
    expect(redactUrl('rediss://token@host')).toBe('rediss://***@host');
    expect(redactUrl('redis://host:6379?password=s3cret&db=2')).toBe('redis://host:6379?password=***&db=2');
    expect(redactUrl('http://user:s3cret@127.0.0.1:9000')).toBe('http://user:***@127.0.0.1:9000');
    // nothing to hide: as it was (an @ in the path is no user part)
    expect(redactUrl('http://127.0.0.1:9000/bucket/a@b.jpg')).toBe('http://127.0.0.1:9000/bucket/a@b.jpg');
    expect(redactUrl('redis://127.0.0.1:6390')).toBe('redis://127.0.0.1:6390');
  });

  it('hides a secret setting whole', () => {
    expect(redactIfSecret('S3_SECRET_ACCESS_KEY', 'abc')).toBe('***');
    expect(redactIfSecret('REDIS_URL', 'redis://u:p@h')).toBe('redis://u:***@h');
  });
});
