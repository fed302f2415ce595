import { timingSafeEqual } from 'node:crypto';
import { createRequire } from 'node:module';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { SignatureV4 } from '@smithy/signature-v4';
import { isBucketName, S3_MAX_KEY_BYTES } from '@transferline/shared/labels';
import { Sha256 } from '@transferline/shared/s3-signing';

/**
 * The embedded S3 server's front door. s3rver accepts anonymous requests, does not check
 * Signature V4 at all, and writes keys to its folder as they come (`..` and over-long segments
 * included); this gate stands before it and refuses, with S3's own error codes:
 * - requests without a valid AWS Signature V4 (recomputed with the AWS SDK's own signer for the
 *   credentials the server was started with), or more than 15 minutes off the server's clock;
 * - keys S3 would refuse (over 1,024 bytes) or that this server could not store as files
 *   (`.`/`..` segments, empty segments, a segment over 200 bytes).
 * It reads the request line and headers; the body goes on to s3rver untouched, but for a
 * multi-object delete's (a small XML list of keys), which it reads and checks first.
 */
/** Where the embedded server answers 200 to an anonymous GET while it serves (up's liveness probe; MinIO's path for it). */
export const EMBEDDED_S3_HEALTH_PATH = '/minio/health/live';

export interface GateCredentials {
  accessKeyId: string;
  secretAccessKey: string;
}

export interface GateRefusal {
  status: number;
  code: string;
  message: string;
}

const MAX_SKEW_MS = 15 * 60_000;
/** s3rver stores a key as `<dir>/<bucket>/<key>._S3rver_object` (and siblings): room for the suffix under NAME_MAX. */
const MAX_SEGMENT_BYTES = 200;

/** `Credential=AKID/20261128/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-date, Signature=…` */
const AUTH_RE = /^AWS4-HMAC-SHA256\s+Credential=([^/,\s]+)\/(\d{8})\/([^/,\s]+)\/([^/,\s]+)\/aws4_request\s*,\s*SignedHeaders=([a-z0-9;._-]+)\s*,\s*Signature=([0-9a-f]{64})\s*$/i;

function refuse(status: number, code: string, message: string): GateRefusal {
  return { status, code, message };
}

/** Why a request's key cannot be stored, or null. `rawPath` is the path as sent (percent-encoded). */
export function checkKey(rawPath: string): GateRefusal | null {
  let decoded: string;
  try {
    decoded = decodeURIComponent(rawPath);
  } catch {
    return refuse(400, 'InvalidURI', 'Could not parse the specified URI.');
  }
  const slash = decoded.indexOf('/', 1);
  const bucket = decoded.slice(1, slash < 0 ? undefined : slash);
  if (bucket !== '' && !isBucketName(bucket)) return refuse(400, 'InvalidBucketName', 'The specified bucket is not valid.');
  if (slash < 0) return null; // the service or a bucket
  const key = decoded.slice(slash + 1);
  if (key === '') return null;
  if (Buffer.byteLength(key) > S3_MAX_KEY_BYTES) return refuse(400, 'KeyTooLongError', `Your key is too long: ${Buffer.byteLength(key)} bytes, at most ${S3_MAX_KEY_BYTES}.`);
  const segments = key.split('/');
  if (key.endsWith('/')) segments.pop(); // a "folder" key: one trailing slash
  for (const segment of segments) {
    // stored as a path, "a//b" would be "a/b": another key's object
    if (segment === '') return refuse(400, 'InvalidArgument', 'Object keys with an empty part between slashes ("a//b", or a leading "/") are not supported by this server.');
    if (segment === '.' || segment === '..') return refuse(400, 'InvalidArgument', 'Object keys with "." or ".." segments are not supported by this server.');
    if (Buffer.byteLength(segment) > MAX_SEGMENT_BYTES) return refuse(400, 'KeyTooLongError', `A part of the key between slashes is too long: over ${MAX_SEGMENT_BYTES} bytes, which this server cannot store.`);
    if (segment.includes('\0')) return refuse(400, 'InvalidArgument', 'Object keys with NUL characters are not supported.');
  }
  return null;
}

/**
 * Why a copy request's source (`x-amz-copy-source: bucket/key`) cannot be read, or null. The
 * whole header is the key to s3rver (it takes no `?versionId=`), so the whole header is checked.
 */
export function checkCopySource(source: string | undefined): GateRefusal | null {
  if (source === undefined) return null;
  return checkKey(source.startsWith('/') ? source : `/${source}`);
}

/**
 * A copy's source as s3rver must be given it. It reads the header with `decodeURI`, which leaves
 * `%2C`, `%2B`, `%3A`, … encoded (the SDKs and awscli encode `, + : & = @ $ ; ? #` in a key): a key
 * with one of them was "not found". Re-encoded with `encodeURI`, which `decodeURI` undoes exactly,
 * the header names the key S3 would read. (`source` was checked by checkCopySource: it decodes.)
 */
export function copySourceForS3rver(source: string): string {
  return encodeURI(decodeURIComponent(source));
}

/** The object a copy source names (`/bucket/key` or `bucket/key`, percent-encoded, `?versionId=…` left out). */
export function copySourceObject(source: string): { bucket: string; key: string } | undefined {
  return objectOfPath(source.split('?')[0]!);
}

/** `bytes=-N`: the last N bytes of an object. */
const SUFFIX_RANGE = /^bytes=-(\d+)$/;

/** The object a request's path names (`/bucket/key…`, percent-encoded), or undefined for the service's or a bucket's (`/bucket`). */
export function objectOfPath(rawPath: string): { bucket: string; key: string } | undefined {
  const [bucket = '', ...key] = rawPath.replace(/^\//, '').split('/').map(decodeURIComponent);
  return key.length === 0 ? undefined : { bucket, key: key.join('/') };
}

/**
 * A suffix range (`bytes=-N`, the last N bytes) as an absolute one for an object of `size` bytes
 * (s3rver reads `bytes=-100` as `bytes=0-100`: the first 101 bytes), or null for no range at all:
 * an empty object has no last bytes to send, and is sent whole. The last 0 bytes of another are a
 * range past its end, which s3rver refuses as S3 does (416). `range` is a suffix range.
 */
export function absoluteRange(range: string, size: number): string | null {
  const n = Number(SUFFIX_RANGE.exec(range)?.[1]);
  if (size === 0) return null;
  return n === 0 ? `bytes=${size}-` : `bytes=${Math.max(0, size - n)}-`;
}

export function isSuffixRange(range: string | string[] | undefined): range is string {
  return typeof range === 'string' && SUFFIX_RANGE.test(range);
}

/**
 * S3's content conditions that s3rver ignores: a copy's `x-amz-copy-source-if-match` (its source
 * must hold that ETag), and a delete's, a GET's or a HEAD's `if-match` (the object must hold it).
 * Refused with 412 as S3 refuses them, and a conditional delete of an object that is not there
 * with 404, as S3 does (a read of one is s3rver's 404 to word). `etagOf` gives an object's ETag
 * (without quotes), or undefined when it does not exist.
 */
export async function checkConditions(req: IncomingMessage, rawPath: string, etagOf: (bucket: string, key: string) => Promise<string | undefined>): Promise<GateRefusal | null> {
  const one = (h: string | string[] | undefined) => (Array.isArray(h) ? h[0] : h);
  const source = one(req.headers['x-amz-copy-source']);
  const onPath = req.method === 'DELETE' || req.method === 'GET' || req.method === 'HEAD';
  const wanted = source !== undefined ? one(req.headers['x-amz-copy-source-if-match']) : onPath ? one(req.headers['if-match']) : undefined;
  if (wanted === undefined) return null;
  const object = source !== undefined ? copySourceObject(source) : objectOfPath(rawPath);
  if (!object) return null; // a bucket's request: not an object's condition
  const etag = await etagOf(object.bucket, object.key);
  if (etag === undefined) return req.method === 'DELETE' && source === undefined ? refuse(404, 'NoSuchKey', 'The specified key does not exist.') : null;
  return ifMatchHolds(wanted, etag) ? null : refuse(412, 'PreconditionFailed', 'At least one of the pre-conditions you specified did not hold.');
}

/** Whether an If-Match header (`"tag"`, a list of them, or `*`) holds for an object of ETag `etag` (without quotes). */
export function ifMatchHolds(header: string, etag: string): boolean {
  return header.split(',').some((t) => t.trim() === '*' || t.trim().replace(/"/g, '') === etag);
}

/**
 * Requests whose keys are not in the path: a browser-form upload (`POST /bucket`, the key a form
 * field) is refused. A multi-object delete (`POST /bucket?delete`, its keys in its XML body,
 * which `deleteBody` reads) must ask for that and nothing else: s3rver's router reads only the
 * first 1,000 query parameters, so `?a0&…&a999&delete` would pass here as a delete and reach it
 * as a form upload.
 */
export function checkKeysElsewhere(method: string | undefined, rawPath: string, query: string): GateRefusal | null {
  if (method !== 'POST' || !/^\/[^/]+\/?$/.test(rawPath) || isDeleteQuery(query)) return null;
  return refuse(405, 'MethodNotAllowed', 'POST uploads (browser forms) are not supported by the embedded S3 server: use PUT.');
}

/** Whether a bucket POST's query asks for a multi-object delete, as the SDKs send it. */
export function isDeleteQuery(query: string): boolean {
  return query === 'delete' || query === 'delete=';
}

// s3rver's own XML parser and entity decoder, as it calls them on a delete's body: the keys the
// gate checks are the keys s3rver would delete.
const fromS3rver = createRequire(createRequire(import.meta.url).resolve('s3rver'));
const xmlParser = fromS3rver('fast-xml-parser') as { validate: (xml: string) => true | object; parse: (xml: string, o: object) => unknown };
const he = fromS3rver('he') as { decode: (s: string) => string };

const xmlEscape = (s: string) => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

/**
 * A multi-object delete of `bucket`: the keys of `xml` read as s3rver reads them, each checked
 * like a key in a path, and the body to hand s3rver instead (those keys only, written out plainly,
 * so it deletes exactly what was checked); or why not.
 */
export function deleteBody(bucket: string, xml: string): { body: string } | { refusal: GateRefusal } {
  const malformed = { refusal: refuse(400, 'MalformedXML', 'The XML you provided was not well-formed or did not validate against our published schema.') };
  if (xmlParser.validate(xml) !== true) return malformed;
  const parsed = xmlParser.parse(xml, { tagValueProcessor: (a: string) => he.decode(a) }) as { Delete?: { Object?: unknown } };
  if (!parsed.Delete?.Object) return malformed;
  const keys = ([] as unknown[]).concat(parsed.Delete.Object).map((o) => String((o as { Key?: unknown } | undefined)?.Key ?? ''));
  for (const key of keys) {
    const bad = checkKey(`/${bucket}/${encodeURIComponent(key).replace(/%2F/g, '/')}`);
    if (bad) return { refusal: bad };
  }
  return { body: `<?xml version="1.0" encoding="UTF-8"?><Delete>${keys.map((k) => `<Object><Key>${xmlEscape(k)}</Key></Object>`).join('')}</Delete>` };
}

function parseAmzDate(s: string | undefined): Date | null {
  const m = s ? /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(s) : null;
  return m ? new Date(Date.UTC(+m[1]!, +m[2]! - 1, +m[3]!, +m[4]!, +m[5]!, +m[6]!)) : null;
}

function header(req: IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v.join(',') : v;
}

/** Why the request is not signed by `creds`, or null when it is. */
export async function checkSignature(req: IncomingMessage, creds: GateCredentials, now = Date.now()): Promise<GateRefusal | null> {
  const url = new URL(req.url ?? '/', 'http://localhost');
  if (url.searchParams.has('X-Amz-Algorithm') || url.searchParams.has('Signature')) {
    return refuse(403, 'AccessDenied', 'Presigned URLs are not accepted by the embedded S3 server; sign requests with an Authorization header.');
  }
  const auth = header(req, 'authorization');
  if (!auth) return refuse(403, 'AccessDenied', 'Anonymous requests are not allowed: sign your requests with the credentials the server was started with.');
  const m = AUTH_RE.exec(auth);
  if (!m) return refuse(400, 'AuthorizationHeaderMalformed', 'Only AWS Signature Version 4 (AWS4-HMAC-SHA256) is accepted.');
  const [, accessKeyId, scopeDate, region, service, signedHeaderList, signature] = m as unknown as string[];
  if (accessKeyId !== creds.accessKeyId) return refuse(403, 'InvalidAccessKeyId', 'The AWS Access Key Id you provided does not exist in our records.');
  const date = parseAmzDate(header(req, 'x-amz-date'));
  if (!date || scopeDate !== header(req, 'x-amz-date')!.slice(0, 8)) return refuse(403, 'AccessDenied', 'The request needs an x-amz-date header matching its credential scope.');
  if (Math.abs(date.getTime() - now) > MAX_SKEW_MS) return refuse(403, 'RequestTimeTooSkewed', 'The difference between the request time and the current time is too large.');

  const signed = signedHeaderList!.toLowerCase().split(';');
  if (!signed.includes('host')) return refuse(403, 'AccessDenied', 'The host header must be signed.');
  const headers: Record<string, string> = {};
  for (const name of signed) {
    const value = header(req, name);
    if (value === undefined) return refuse(403, 'SignatureDoesNotMatch', `Signed header ${name} is missing from the request.`);
    headers[name] = value;
  }
  const query: Record<string, string | string[]> = {};
  for (const [k, v] of url.searchParams) {
    const prev = query[k];
    query[k] = prev === undefined ? v : Array.isArray(prev) ? [...prev, v] : [prev, v];
  }
  const signer = new SignatureV4({ credentials: creds, region: region!, service: service!, sha256: Sha256, uriEscapePath: false, applyChecksum: false });
  const rawPath = (req.url ?? '/').split('?')[0]!;
  const expected = await signer.sign(
    { method: req.method ?? 'GET', protocol: 'http:', hostname: 'localhost', path: rawPath, query, headers },
    { signingDate: date, signingRegion: region, signingService: service, signableHeaders: new Set(signed) },
  );
  const calculated = /Signature=([0-9a-f]{64})/.exec(String(expected.headers.authorization ?? expected.headers.Authorization))?.[1] ?? '';
  const ok = calculated.length === 64 && timingSafeEqual(Buffer.from(calculated), Buffer.from(signature!.toLowerCase()));
  return ok ? null : refuse(403, 'SignatureDoesNotMatch', 'The request signature we calculated does not match the signature you provided. Check your key and signing method.');
}

export function sendRefusal(res: ServerResponse, r: GateRefusal, resource: string): void {
  const esc = (s: string) => s.replace(/[<>&'"]/g, (c) => `&#${c.charCodeAt(0)};`);
  const body = `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${r.code}</Code><Message>${esc(r.message)}</Message><Resource>${esc(resource)}</Resource></Error>`;
  res.writeHead(r.status, { 'content-type': 'application/xml', 'content-length': Buffer.byteLength(body), connection: 'close' });
  res.end(body);
}
