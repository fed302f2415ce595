import { closeSync, createReadStream, fstatSync, openSync, readFileSync, readSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import path from 'node:path';

/**
 * The embedded S3 server's plain object GET, answered from s3rver's folder without going through
 * s3rver. A preprocess worker GETs every image once; through s3rver's Koa stack (its logger,
 * router, CORS and website lookups, a bucket check, the metadata's three reads on the thread pool)
 * a 100 KB image cost the server about 1.8 ms of CPU, a third of what the worker spends on it, on
 * the same cores when the whole stack runs on one machine (`up`); answered here, about 0.5 ms.
 *
 * Only the plainest request is taken: GET of an object, no query string, no Range, no
 * If-None-Match/If-Modified-Since/If-Unmodified-Since, no Origin (CORS), with the object's files as
 * s3rver writes them. Everything else, and any
 * surprise on the way (no such file, no MD5 file yet, unreadable metadata, a folder), goes on to
 * s3rver, which answers as it always has: nothing is sent before the whole answer is known.
 * If-Match is honoured (412 when the object's ETag is another), as S3 does and s3rver does not.
 * (s3rver's website behaviour never applies here: it takes a request with x-amz-* headers, as every
 * request the gate lets through is signed with, for an API request.)
 *
 * The small files (the ETag, the metadata, and objects up to SMALL_OBJECT_BYTES) are read
 * synchronously: from the page cache that takes microseconds, less than a hop to libuv's thread
 * pool and back for each. Larger objects are streamed.
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
export const SMALL_OBJECT_BYTES = 1024 * 1024;

/** The bucket and key of a GET this module answers, or undefined when s3rver should. `rawPath` as sent (percent-encoded). */
export function plainGetTarget(req: Pick<IncomingMessage, 'method' | 'headers'>, rawPath: string, query: string): { bucket: string; key: string } | undefined {
  if (req.method !== 'GET' || query !== '' || process.platform === 'win32') return undefined;
  if (LEFT_TO_S3RVER.some((h) => req.headers[h] !== undefined)) return undefined;
  const m = /^\/([^/]+)\/(.+)$/s.exec(rawPath);
  if (!m) return undefined;
  try {
    return { bucket: decodeURIComponent(m[1]!), key: decodeURIComponent(m[2]!) };
  } catch {
    return undefined;
  }
}

/** The path of one of an object's files in s3rver's folder (`resource`: object, object.md5, metadata.json). */
function filePath(root: string, bucket: string, key: string, resource: string): string {
  const parts = key.split('/');
  const name = parts.pop()!;
  return path.join(root, bucket, ...parts, `${name}._S3rver_${resource}`);
}

/** A small file's text, or undefined when it does not exist. */
function textOf(file: string): string | undefined {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

/** What an If-Match header asks for holds for an object of ETag `md5` (without quotes). */
function matches(ifMatch: string, md5: string): boolean {
  return ifMatch.split(',').some((t) => t.trim() === '*' || t.trim().replace(/"/g, '') === md5);
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

/**
 * Answers a plain GET of `bucket/key` from `root` (s3rver's folder) and returns true; returns
 * false, with nothing sent, when s3rver should answer instead.
 */
export function servePlainGet(root: string, bucket: string, key: string, req: IncomingMessage, res: ServerResponse): boolean {
  const objectFile = filePath(root, bucket, key, 'object');
  let fd: number;
  try {
    fd = openSync(objectFile, 'r');
  } catch {
    return false; // no such key or bucket, or not readable: s3rver words it
  }
  let streaming = false;
  try {
    let size: number, mtime: Date, md5: string | undefined, stored: Record<string, unknown>;
    try {
      // the size and time of the bytes this descriptor reads, even if the object is replaced meanwhile
      const st = fstatSync(fd);
      if (!st.isFile()) return false;
      [size, mtime] = [st.size, st.mtime];
      md5 = textOf(`${objectFile}.md5`);
      if (md5 === undefined) return false; // s3rver writes a missing MD5 file itself
      const metadata = textOf(filePath(root, bucket, key, 'metadata.json'));
      stored = metadata === undefined ? {} : (JSON.parse(metadata) as Record<string, unknown>);
    } catch {
      return false;
    }
    const ifMatch = req.headers['if-match'];
    if (ifMatch !== undefined && !matches(ifMatch, md5)) {
      const body = `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>PreconditionFailed</Code><Message>At least one of the pre-conditions you specified did not hold.</Message><Condition>If-Match</Condition></Error>`;
      res.writeHead(412, { 'content-type': 'application/xml', 'content-length': Buffer.byteLength(body) });
      res.end(body);
      return true;
    }
    const headers: Record<string, string | number> = { 'accept-ranges': 'bytes', 'content-type': 'binary/octet-stream' };
    for (const [name, value] of Object.entries(stored)) {
      if (typeof value === 'string' && (STORED_HEADERS.has(name) || name.startsWith('x-amz-meta-'))) headers[name] = value;
    }
    headers['last-modified'] = mtime.toUTCString();
    headers.etag = JSON.stringify(md5);
    if (size <= SMALL_OBJECT_BYTES) {
      let body: Buffer;
      try {
        body = readAll(fd, size);
      } catch {
        return false;
      }
      res.writeHead(200, { ...headers, 'content-length': body.length });
      res.end(body);
      return true;
    }
    res.writeHead(200, { ...headers, 'content-length': size });
    const stream = createReadStream('', { fd, start: 0, end: size - 1, autoClose: true });
    streaming = true; // the stream closes the descriptor
    stream.on('error', () => res.destroy());
    res.on('close', () => stream.destroy());
    stream.pipe(res);
    return true;
  } finally {
    if (!streaming) closeSync(fd);
  }
}
