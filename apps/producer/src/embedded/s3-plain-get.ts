import { createHash } from 'node:crypto';
import { closeSync, createReadStream, fstatSync, openSync, readFileSync, readSync, rmSync, statSync, writeFileSync, type Stats } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import path from 'node:path';
import { ifMatchHolds, objectOfPath, sendRefusal } from './s3-gate.js';

/**
 * The embedded S3 server's plain object GET, answered from s3rver's folder without going through
 * s3rver. A preprocess worker GETs every image once; through s3rver's Koa stack (its logger,
 * router, CORS and website lookups, a bucket check, the metadata's three reads on the thread pool)
 * a 100 KB image cost the server about 1.8 ms of CPU, a third of what the worker spends on it, on
 * the same cores when the whole stack runs on one machine (`up`); answered here, about 0.5 ms.
 *
 * Only the plainest request is taken: GET of an object, no query string (but the SDKs' `x-id=GetObject`,
 * which s3rver ignores too), no Range, no If-None-Match/If-Modified-Since/If-Unmodified-Since, no
 * Origin (CORS), with the object's files as s3rver writes them. Everything else, and any surprise
 * on the way (no such file, no MD5 file yet, unreadable metadata, a folder, a large object a PUT
 * may be writing: see servePlainGet), goes on to s3rver, which answers as it always has (nothing
 * is sent before that is decided).
 * If-Match is honoured (412 when the object's ETag is another), as S3 does and s3rver does not.
 * (s3rver's website behaviour never applies here: it takes a request with x-amz-* headers, as every
 * request the gate lets through is signed with, for an API request.)
 *
 * The small files (the ETag, the metadata, and objects up to SMALL_OBJECT_BYTES) are read
 * synchronously: from the page cache that takes microseconds, less than a hop to libuv's thread
 * pool and back for each (a cold read of one blocks the server for as long; the bound keeps that
 * short). Larger objects are streamed. A copy's source is judged by the same rule (beingWritten)
 * before s3rver copies it.
 *
 * s3rver's file layout (its FilesystemStore, 3.x, on POSIX): `<dir>/<bucket>/<key>._S3rver_object`,
 * beside it `…object.md5` (the ETag) and `…_S3rver_metadata.json` (Content-Type, Cache-Control,
 * …, x-amz-meta-*).
 */

/** The stored headers s3rver sends back on a GET (its S3Object.ALLOWED_METADATA), besides x-amz-meta-*. */
const STORED_HEADERS = new Set(['cache-control', 'content-disposition', 'content-encoding', 'content-language', 'content-type', 'expires', 'x-amz-storage-class', 'x-amz-website-redirect-location']);
/** Request headers whose handling is s3rver's. */
const LEFT_TO_S3RVER = ['range', 'if-none-match', 'if-modified-since', 'if-unmodified-since', 'origin'];
/** Objects up to this size are read in one synchronous call; larger ones are streamed. */
export const SMALL_OBJECT_BYTES = 256 * 1024;

/** The bucket and key of a GET this module answers, or undefined when s3rver should. `rawPath` as sent (percent-encoded). */
export function plainGetTarget(req: Pick<IncomingMessage, 'method' | 'headers'>, rawPath: string, query: string): { bucket: string; key: string } | undefined {
  if (req.method !== 'GET' || (query !== '' && query !== 'x-id=GetObject') || process.platform === 'win32') return undefined;
  if (LEFT_TO_S3RVER.some((h) => req.headers[h] !== undefined)) return undefined;
  let object;
  try {
    object = objectOfPath(rawPath);
  } catch {
    return undefined; // not percent-decodable
  }
  // an empty part would vanish in the file's path (the gate refuses such keys anyway)
  if (!object || object.bucket === '' || object.key === '' || object.key.startsWith('/') || object.key.includes('//')) return undefined;
  return object;
}

/** What s3rver appends to the last part of a key to name its files. */
const S3RVER_SUFFIX = '._S3rver_';
/** The ending of an object's bytes file: `<key>._S3rver_object` (its ETag is in `….md5` beside it). */
export const OBJECT_SUFFIX = `${S3RVER_SUFFIX}object`;

/** The path of one of an object's files in s3rver's folder (`resource`: object, object.md5, metadata.json). */
function filePath(root: string, bucket: string, key: string, resource: string): string {
  const parts = key.split('/');
  const name = parts.pop()!;
  return path.join(root, bucket, ...parts, `${name}${S3RVER_SUFFIX}${resource}`);
}

/** An object's size from its file (what s3rver would send), or undefined when there is none. */
export function storedSize(root: string, bucket: string, key: string): number | undefined {
  try {
    return statSync(filePath(root, bucket, key, 'object')).size;
  } catch {
    return undefined;
  }
}

/**
 * Forgets an object's stored ETag (its MD5 file), so that s3rver computes it again from the bytes
 * at the next read. s3rver's copy with new metadata (`x-amz-metadata-directive: REPLACE`) over an
 * existing key keeps the old object's MD5 file: the copy would be sent under the old ETag.
 */
export function forgetStoredEtag(root: string, bucket: string, key: string): void {
  rmSync(`${filePath(root, bucket, key, 'object')}.md5`, { force: true });
}

/** Another of an object's files (`resource`: object.md5, metadata.json), from the path of its bytes file. */
export function besideObject(objectFile: string, resource: string): string {
  return `${objectFile.slice(0, -OBJECT_SUFFIX.length)}${S3RVER_SUFFIX}${resource}`;
}

/**
 * The MD5 of a file's bytes, as s3rver computes an ETag, read up to `tries` times 50 ms apart
 * until the file did not change during a read (`still`); with the file's state at the last read.
 * Throws when the file is gone.
 */
export async function md5OfBytes(file: string, tries: number): Promise<{ md5: string; st: Stats; still: boolean }> {
  for (let i = 1; ; i++) {
    const before = statSync(file);
    const hash = createHash('md5');
    for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
    const st = statSync(file);
    const still = st.size === before.size && st.mtimeMs === before.mtimeMs;
    if (still || i >= tries) return { md5: hash.digest('hex'), st, still };
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * Stores an object's ETag computed from its bytes (after such a copy), so that no later reader
 * finds it without one: s3rver's own copy from it, a plain GET, a listing. Left forgotten when
 * the bytes changed while they were read (a write in progress stores its own).
 */
export async function storeEtagOfBytes(root: string, bucket: string, key: string): Promise<void> {
  const file = filePath(root, bucket, key, 'object');
  try {
    const { md5, still } = await md5OfBytes(file, 1);
    if (still) writeFileSync(besideObject(file, 'object.md5'), md5);
    else forgetStoredEtag(root, bucket, key);
  } catch {
    forgetStoredEtag(root, bucket, key);
  }
}

/** A small file's text and when it was last written, or undefined when it does not exist. */
function smallFile(file: string): { text: string; mtimeMs: number } | undefined {
  let fd: number;
  try {
    fd = openSync(file, 'r');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  try {
    const { mtimeMs, size } = fstatSync(fd);
    return { text: readAll(fd, size).toString('utf8'), mtimeMs };
  } finally {
    closeSync(fd);
  }
}

/** All of a file's bytes from `fd`, up to `size` (fewer if it was cut short meanwhile). */
function readAll(fd: number, size: number): Buffer {
  const body = Buffer.allocUnsafe(size);
  let n = 0;
  while (n < size) {
    const got = readSync(fd, body, n, size - n, n);
    if (got === 0) break;
    n += got;
  }
  return n === size ? body : body.subarray(0, n);
}

/** The ETag of an object PUT whole: the MD5 of its bytes, in hex (one uploaded in parts has `-<parts>` after it). */
const PLAIN_MD5 = /^[0-9a-f]{32}$/;
/** An ETag as s3rver stores it: an MD5 in hex, or an upload in parts' (`<md5>-<parts>`). */
export const STORED_ETAG = /^[0-9a-f]{32}(-\d+)?$/;
/** An object last written longer ago than this is taken to be still (no write of it in progress). */
const SETTLED_MS = 2_000;

function md5Hex(body: Uint8Array): string {
  return createHash('md5').update(body).digest('hex');
}

/**
 * A small object's MD5 file holding a whole ETag of an upload in parts, no older than its bytes:
 * s3rver never writes one (it stores such an upload under its bytes' MD5), so it was put there as
 * it is, by a copy (the bytes, then the ETag), and names the bytes beside it, though none can be
 * checked against it. Bytes newer than it are a PUT rewriting the object, whose new MD5 file comes
 * last; an MD5 file cut short by a PUT has no '-'.
 */
function copiedPartsEtag(tag: { text: string; mtimeMs: number }, bytes: { mtimeMs: number }): boolean {
  return !PLAIN_MD5.test(tag.text) && STORED_ETAG.test(tag.text) && tag.mtimeMs >= bytes.mtimeMs;
}

/** No PUT of an object in progress: its bytes and its MD5 file both last written more than SETTLED_MS ago. */
function still(bytes: { mtimeMs: number }, tag: { mtimeMs: number }): boolean {
  return Date.now() - Math.max(bytes.mtimeMs, tag.mtimeMs) > SETTLED_MS;
}

/**
 * Whether a PUT may still be writing `bucket/key` in `root`, judged as servePlainGet judges it: a
 * small object's bytes are not what its MD5 file names, or a large object's MD5 file is not newer
 * than its bytes, and one of the two files was written within SETTLED_MS. s3rver copies an
 * object's bytes and its MD5 file as they are: a copy from such a source would keep bytes its
 * ETag does not name (asked again, 503, it copies what landed). A small object's ETag of an
 * upload in parts names no bytes to check: it is still when its file is no older than the bytes.
 * False when it cannot tell (no such files): s3rver's as before.
 */
export function beingWritten(root: string, target: { bucket: string; key: string }): boolean {
  const objectFile = filePath(root, target.bucket, target.key, 'object');
  try {
    const st = statSync(objectFile);
    const tag = smallFile(`${objectFile}.md5`);
    if (!st.isFile() || tag === undefined || still(st, tag)) return false;
    if (st.size > SMALL_OBJECT_BYTES) return tag.mtimeMs <= st.mtimeMs;
    if (PLAIN_MD5.test(tag.text)) return md5Hex(readFileSync(objectFile)) !== tag.text;
    return !copiedPartsEtag(tag, st);
  } catch {
    return false;
  }
}

/**
 * Answers a plain GET of `bucket/key` from `root` (s3rver's folder) and returns true; returns
 * false, with nothing sent, when s3rver should answer instead. `rawPath` names the resource in an
 * error's body.
 *
 * s3rver overwrites an object's files in place (the object, then its MD5 file, then its metadata),
 * so a read can meet a PUT halfway: new bytes under the old ETag, or an MD5 file cut short. A
 * small object's bytes are checked against its ETag before they are sent (one whose ETag is an
 * upload in parts' is s3rver's: that names no bytes to check): a body that is not the
 * content its ETag names is never sent. When they differ and the object or its MD5 file was
 * written just now, the answer is 503 SlowDown (a PUT is in progress: every S3 client asks
 * again; s3rver may write a PUT's MD5 file before the bytes, and answer the PUT before either);
 * when both have been still for SETTLED_MS, the MD5 file is what is stale (s3rver's copy with new
 * metadata over an existing key keeps the old one), and s3rver answers as it always has. A larger object is
 * streamed only when its MD5 file was written after it (or it has been still for SETTLED_MS),
 * and a response whose file changed while it was sent is cut off before its last bytes.
 */
export function servePlainGet(root: string, target: { bucket: string; key: string }, req: IncomingMessage, res: ServerResponse, rawPath: string): boolean {
  const { bucket, key } = target;
  const objectFile = filePath(root, bucket, key, 'object');
  let fd: number;
  try {
    fd = openSync(objectFile, 'r');
  } catch {
    return false; // no such key or bucket, or not readable: s3rver words it
  }
  let streaming = false;
  try {
    let st: Stats, tag: { text: string; mtimeMs: number } | undefined, metadata: { text: string } | undefined;
    try {
      // the size and time of the bytes this descriptor reads, even if the object is replaced meanwhile
      st = fstatSync(fd);
      tag = smallFile(`${objectFile}.md5`);
      if (!st.isFile() || tag === undefined) return false; // no MD5 file yet: s3rver writes it
      metadata = smallFile(filePath(root, bucket, key, 'metadata.json'));
    } catch {
      return false;
    }
    const md5 = tag.text;
    const settled = still(st, tag);
    const slowDown = () => {
      sendRefusal(res, { status: 503, code: 'SlowDown', message: 'The object is being written; please ask again.' }, rawPath);
      return true;
    };
    let stored: Record<string, unknown>;
    try {
      stored = metadata === undefined ? {} : (JSON.parse(metadata.text) as Record<string, unknown>);
    } catch {
      return settled ? false : slowDown(); // cut short while a PUT writes it
    }
    let body: Buffer | undefined;
    if (st.size <= SMALL_OBJECT_BYTES) {
      try {
        body = readAll(fd, st.size);
      } catch {
        return false;
      }
      // (no PUT of s3rver's in progress, nothing to check: s3rver answers, as once both are still)
      if (copiedPartsEtag(tag, st)) return false;
      if (!PLAIN_MD5.test(md5) || md5Hex(body) !== md5) return settled ? false : slowDown();
    } else if (!STORED_ETAG.test(md5) || (tag.mtimeMs <= st.mtimeMs && !settled)) {
      return false; // a PUT may be writing it: s3rver's
    }
    const ifMatch = req.headers['if-match'];
    if (ifMatch !== undefined && !ifMatchHolds(ifMatch, md5)) {
      sendRefusal(res, { status: 412, code: 'PreconditionFailed', message: 'At least one of the pre-conditions you specified did not hold.' }, rawPath);
      return true;
    }
    const headers: Record<string, string | number> = { 'accept-ranges': 'bytes' };
    for (const [name, value] of Object.entries(stored)) {
      if (typeof value === 'string' && (STORED_HEADERS.has(name) || name.startsWith('x-amz-meta-'))) headers[name] = value;
    }
    if (!headers['content-type']) headers['content-type'] = 'binary/octet-stream'; // s3rver's default, for an empty one too
    headers['last-modified'] = st.mtime.toUTCString();
    headers.etag = JSON.stringify(md5);
    if (body) {
      res.writeHead(200, { ...headers, 'content-length': body.length });
      res.end(body);
      return true;
    }
    res.writeHead(200, { ...headers, 'content-length': st.size });
    const stream = createReadStream('', { fd, start: 0, end: st.size - 1, autoClose: true });
    streaming = true; // the stream closes the descriptor
    stream.on('error', () => res.destroy());
    res.on('close', () => stream.destroy());
    // The last chunk is held back until the file is known unchanged: a client that got every byte
    // would take a file rewritten meanwhile for the content its ETag names; cut off, it asks again.
    let held: Buffer | undefined;
    stream.on('data', (chunk) => {
      if (held && !res.write(held)) {
        stream.pause();
        res.once('drain', () => stream.resume());
      }
      held = chunk as Buffer; // no encoding set: Buffers
    });
    stream.on('end', () => {
      // (the descriptor is closed after 'end': still open here)
      let changed: boolean;
      try {
        const after = fstatSync(fd);
        changed = after.size !== st.size || after.mtimeMs !== st.mtimeMs;
      } catch {
        changed = true;
      }
      if (changed) res.destroy();
      else res.end(held);
    });
    return true;
  } finally {
    if (!streaming) closeSync(fd);
  }
}
