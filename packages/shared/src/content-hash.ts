import { createHash } from 'node:crypto';

/** The identity of an image: SHA-256 of its bytes, lowercase hex. Same bytes, same id, whatever the key. */
export function contentHash(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}
