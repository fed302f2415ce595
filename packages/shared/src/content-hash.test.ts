import { describe, expect, it } from 'vitest';
import { contentHash } from './content-hash.js';

describe('contentHash', () => {
  it('is the SHA-256 of the bytes (FIPS 180-2 test vectors)', () => {
    expect(contentHash(new TextEncoder().encode('abc'))).toBe('ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
    expect(contentHash(new Uint8Array(0))).toBe('e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
  });
  it('depends on the bytes only', () => {
    const a = Buffer.from([1, 2, 3, 4]);
    expect(contentHash(a)).toBe(contentHash(new Uint8Array([1, 2, 3, 4])));
    expect(contentHash(a)).not.toBe(contentHash(Buffer.from([1, 2, 3, 5])));
  });
});
