import { readFileSync, statSync, type Stats } from 'node:fs';
import { readdir } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import path from 'node:path';
import { isBucketName } from '@transferline/shared/labels';
import type { GateRefusal } from './s3-gate.js';
import { besideObject, md5OfBytes, OBJECT_SUFFIX, STORED_ETAG } from './s3-plain-get.js';

/**
 * The embedded S3 server's bucket listings (ListObjectsV2, and the older ListObjects), answered
 * from s3rver's folder without going through s3rver, in the order S3 lists: keys by their UTF-8
 * bytes.
 *
 * s3rver walks its folder in the order of file names, which is not the order of keys: `a/b`'s
 * file is in folder `a`, which sorts before `a-c` and `a.jpg`, though the key `a/b` sorts after
 * them (`/` comes after `-` and `.`). And it continues a listing after the last key it sent,
 * skipping every key before it: a listing of more than 1,000 keys lost every key it had put out
 * of order (1,003 images in `train/dogs/` and 3 in `train/dogs-extra/`: the 3 were never listed,
 * nor was `train/dogs.jpg`, and an ingest never saw them). It also read every listed key's
 * metadata on the thread pool: about 0.2 ms of its CPU per key listed, which a `--watch` pays
 * for the whole bucket every round. Answered here, a folder is read once (and kept while it does
 * not change) and each listed key costs a stat and its ETag file.
 *
 * Taken: GET of a bucket (path style) that names no sub-resource (`?location`, `?versions`, …:
 * s3rver's, as its router would choose), no Origin (CORS: s3rver's), a valid max-keys, no
 * parameter twice, and a continuation token this module wrote; other parameters are ignored, as
 * s3rver and S3 ignore them. Everything else (a bucket that does not exist, a parameter S3
 * refuses) goes on to s3rver, which answers or refuses it as before, with nothing sent here.
 *
 * What S3 does and s3rver did not: MaxKeys and KeyCount count common prefixes with keys, a
 * listing that stops at a common prefix continues after every key under it, `encoding-type=url`
 * is honoured (keys, prefixes and the delimiter URL-encoded, as awscli asks), and an object is
 * listed once its upload is complete: s3rver writes the bytes as they come, then the ETag, then
 * the metadata, and listed a half-written object with the MD5 of the bytes so far, or a
 * half-overwritten one with the new size under the old ETag. Here an object without its metadata
 * file is not listed yet; one being overwritten keeps its old ETag (with the size of the bytes
 * so far: the old size is gone), so an ingest sees it unchanged until the new one is complete.
 */

/** The parameters of a listing; others are ignored, but for the sub-resources below. */
const LIST_PARAMS = ['list-type', 'prefix', 'delimiter', 'max-keys', 'continuation-token', 'start-after', 'encoding-type', 'fetch-owner', 'marker', 'x-id'];
/** A bucket's sub-resources (S3's; s3rver's router answers those it knows, and lists for the rest): never a listing here. */
const SUBRESOURCES = new Set(['accelerate', 'acl', 'analytics', 'cors', 'delete', 'encryption', 'intelligent-tiering', 'inventory', 'lifecycle', 'location', 'logging', 'metrics', 'notification', 'object-lock', 'ownershipControls', 'policy', 'policyStatus', 'publicAccessBlock', 'replication', 'requestPayment', 'tagging', 'uploads', 'versioning', 'versions', 'website']);
/** S3 sends at most this many keys and common prefixes in one answer. */
const MAX_KEYS = 1000;
/** The account s3rver names as every object's owner. */
const OWNER = '<Owner><ID>123456789000</ID><DisplayName>S3rver</DisplayName></Owner>';
/** Continuation tokens this module writes: `tl1.` and the bucket, the last entry sent and when the listing began, as base64url JSON. */
const TOKEN_PREFIX = 'tl1.';

export interface ListRequest {
  bucket: string;
  version: 1 | 2;
  prefix: string;
  delimiter: string;
  /** at most MAX_KEYS */
  maxKeys: number;
  /** MaxKeys as asked, sent back as S3 does */
  maxKeysAsked: string;
  /** keys up to this one (in S3's order) are not listed: the continuation token's, start-after's or marker's */
  after: string;
  /** when the listing began (its first page; ms): folders read since then may be used again for its pages */
  startedAt: number;
  /** the v2 continuation token as sent */
  token?: string;
  /** the v2 start-after as sent (sent back when there is no token) */
  startAfter?: string;
  /** the v1 marker as sent */
  marker?: string;
  encodeUrl: boolean;
  fetchOwner: boolean;
}

/**
 * The listing a request asks for, a refusal (what S3 refuses: a bucket name that cannot be, an
 * encoding other than `url`, an empty token or another bucket's), or undefined when s3rver should
 * answer it. `rawPath` and `query` as sent.
 */
export function listTarget(req: Pick<IncomingMessage, 'method' | 'headers'>, root: string, rawPath: string, query: string): ListRequest | GateRefusal | undefined {
  if (req.method !== 'GET' || req.headers.origin !== undefined || process.platform === 'win32') return undefined;
  const m = /^\/([^/]+)\/?$/.exec(rawPath);
  if (!m) return undefined;
  let bucket: string;
  try {
    bucket = decodeURIComponent(m[1]!);
  } catch {
    return undefined;
  }
  // `/photos%2Fbig` names a bucket "photos/big", which cannot be (s3rver listed folder big of photos)
  if (!isBucketName(bucket)) return { status: 400, code: 'InvalidBucketName', message: 'The specified bucket is not valid.' };
  const q = new URLSearchParams(query);
  for (const name of q.keys()) if (SUBRESOURCES.has(name)) return undefined;
  const params: Record<string, string | undefined> = {};
  for (const name of LIST_PARAMS) {
    const values = q.getAll(name);
    if (values.length > 1) return undefined; // a parameter twice: s3rver's to word
    params[name] = values[0];
  }
  const listType = params['list-type'];
  const version = listType === '2' ? 2 : listType === undefined ? 1 : undefined;
  if (version === undefined) return undefined;
  if (params['x-id'] !== undefined && params['x-id'] !== (version === 2 ? 'ListObjectsV2' : 'ListObjects')) return undefined;
  if (version === 2 && params.marker !== undefined) return undefined; // refused by s3rver, as by S3
  if (version === 1 && (params['continuation-token'] !== undefined || params['start-after'] !== undefined)) return undefined;
  const maxKeysAsked = params['max-keys'];
  if (maxKeysAsked !== undefined && (!/^\d+$/.test(maxKeysAsked) || Number(maxKeysAsked) > 2147483647)) return undefined;
  const encoding = params['encoding-type'];
  if (encoding !== undefined && encoding !== 'url') return { status: 400, code: 'InvalidArgument', message: 'Invalid Encoding Method specified in Request' };
  // not a bucket here: s3rver says NoSuchBucket
  try {
    if (!statSync(path.join(root, bucket)).isDirectory()) return undefined;
  } catch {
    return undefined;
  }
  let after = version === 2 ? (params['start-after'] ?? '') : (params.marker ?? '');
  // a marker or start-after says nothing of when a listing began: each such page starts one
  let startedAt = Date.now();
  const token = version === 2 ? params['continuation-token'] : undefined;
  if (token !== undefined) {
    const decoded = decodeToken(token);
    if (!decoded && token !== '') return undefined; // not ours: s3rver's own, or nothing s3rver can read either
    if (decoded?.bucket !== bucket) return { status: 400, code: 'InvalidArgument', message: 'The continuation token provided is incorrect' };
    ({ after, startedAt } = decoded);
  }
  return {
    bucket,
    version,
    prefix: params.prefix ?? '',
    delimiter: params.delimiter ?? '',
    maxKeys: Math.min(MAX_KEYS, Number(maxKeysAsked ?? MAX_KEYS)),
    maxKeysAsked: maxKeysAsked ?? String(MAX_KEYS),
    after,
    startedAt,
    ...(token !== undefined && { token }),
    ...(version === 2 && params['start-after'] !== undefined && { startAfter: params['start-after'] }),
    ...(version === 1 && { marker: params.marker ?? '' }),
    encodeUrl: encoding === 'url',
    fetchOwner: version === 1 || params['fetch-owner'] === 'true',
  };
}

function encodeToken(bucket: string, after: string, startedAt: number): string {
  return TOKEN_PREFIX + Buffer.from(JSON.stringify([bucket, after, startedAt])).toString('base64url');
}

function decodeToken(token: string): { bucket: string; after: string; startedAt: number } | undefined {
  if (!token.startsWith(TOKEN_PREFIX)) return undefined;
  try {
    const v = JSON.parse(Buffer.from(token.slice(TOKEN_PREFIX.length), 'base64url').toString('utf8')) as unknown;
    if (Array.isArray(v) && v.length === 3 && typeof v[0] === 'string' && typeof v[1] === 'string' && typeof v[2] === 'number') return { bucket: v[0], after: v[1], startedAt: v[2] };
  } catch {
    // not ours
  }
  return undefined;
}

/**
 * S3's order of keys: by their UTF-8 bytes, which is the order of code points. JavaScript's `<`
 * compares UTF-16 units, which puts a character past U+FFFF (a surrogate pair, D800-DFFF) before
 * one in E000-FFFF: the units are mapped so that surrogates come last.
 */
export function compareKeys(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x !== y) return codePointRank(x) - codePointRank(y);
  }
  return a.length - b.length;
}

function codePointRank(unit: number): number {
  return unit < 0xd800 ? unit : unit >= 0xe000 ? unit - 0x800 : unit + 0x2000;
}

/** One entry of a folder: a sub-folder (`part` ends with `/`) or an object (`part` is the key's last part). */
interface Child {
  name: string;
  part: string;
  folder: boolean;
}

/**
 * Folders' entries as last read: used again while the folder's time has not changed since it was
 * still, and by the pages of a listing that began before the read.
 */
const folders = new Map<string, { mtimeMs: number; readAt: number; settled: boolean; children: Child[] }>();
/** Most entries kept, over all folders (a few tens of MB; a larger folder is kept alone); the least recently read go first. */
const ENTRIES_KEPT = 200_000;
let entriesKept = 0;
/** A folder changed less than this long ago may change again within its time's resolution. */
const FOLDER_SETTLED_MS = 1_000;

/**
 * A folder's objects and sub-folders in S3's order of the keys they hold, or [] when it is gone.
 * A read made since `since` (when the listing asking began) is used again even if the folder
 * changed since: S3 does not promise that a listing shows keys written after it began (it does
 * promise those written before), and a folder of 100,000 keys being uploaded to would otherwise
 * be read again for every page. Read off the event loop: such a folder is 300,000 files.
 */
async function children(dir: string, since: number): Promise<Child[]> {
  let mtimeMs: number;
  try {
    mtimeMs = statSync(dir).mtimeMs;
  } catch {
    return [];
  }
  const kept = folders.get(dir);
  if (kept && ((kept.settled && kept.mtimeMs === mtimeMs) || kept.readAt >= since)) {
    folders.delete(dir); // most recently used last
    folders.set(dir, kept);
    return kept.children;
  }
  const readAt = Date.now();
  let entries;
  try {
    entries = await readdir(dir, { withFileTypes: true });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return [];
    throw err;
  }
  const list: Child[] = [];
  for (const e of entries) {
    // A key's objects under `a/` sort as `a/…`: after `a-c` and `a.jpg`, though folder `a` is read before them.
    const part = e.isDirectory() ? `${e.name}/` : e.isFile() && e.name.endsWith(OBJECT_SUFFIX) ? e.name.slice(0, -OBJECT_SUFFIX.length) : undefined;
    if (part !== undefined) list.push({ name: e.name, part, folder: e.isDirectory() });
  }
  list.sort((a, b) => compareKeys(a.part, b.part));
  const old = folders.get(dir);
  if (old) {
    folders.delete(dir);
    entriesKept -= old.children.length;
  }
  folders.set(dir, { mtimeMs, readAt, settled: readAt - mtimeMs > FOLDER_SETTLED_MS, children: list });
  entriesKept += list.length;
  for (const [oldest, f] of folders) {
    if (entriesKept <= ENTRIES_KEPT || oldest === dir) break;
    folders.delete(oldest);
    entriesKept -= f.children.length;
  }
  return list;
}

/** The first index of `list` whose part is after `s` (or at it, with `inclusive`). */
function firstAfter(list: Child[], s: string, inclusive: boolean): number {
  let lo = 0;
  let hi = list.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    const c = compareKeys(list[mid]!.part, s);
    if (c < 0 || (c === 0 && !inclusive)) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** Keys a walk passes over besides those up to its bound: every key under `under`, while it is set (a common prefix sent). */
interface Skip {
  under?: string;
}

/**
 * The objects under `dir` (whose keys begin with `base`), in S3's order, from the first key after
 * `after` (undefined: from the first) whose last part here begins with `namePrefix`, but for
 * those `skip` names when they come.
 */
async function* objectsUnder(dir: string, base: string, namePrefix: string, after: string | undefined, skip: Skip, since: number): AsyncGenerator<{ key: string; file: string }> {
  if (after !== undefined && !after.startsWith(base)) {
    // every key here begins with `base`: all of them are before a bound past it, all after one before it
    if (compareKeys(after, base) > 0) return;
    after = undefined;
  }
  const list = await children(dir, since);
  let i = namePrefix ? firstAfter(list, namePrefix, true) : 0;
  // The key to continue after, relative to this folder: the children up to it are passed over,
  // but for the folder that holds it (the last child at or before it, when a prefix of it).
  const rel = after?.slice(base.length);
  if (rel !== undefined) {
    let j = firstAfter(list, rel, false);
    if (j > 0 && list[j - 1]!.folder && rel.startsWith(list[j - 1]!.part)) j--;
    i = Math.max(i, j);
  }
  for (; i < list.length; i++) {
    const c = list[i]!;
    if (namePrefix && !c.part.startsWith(namePrefix)) return;
    if (skip.under !== undefined && base.startsWith(skip.under)) return;
    const key = base + c.part;
    if (skip.under !== undefined && key.startsWith(skip.under)) continue;
    if (c.folder) yield* objectsUnder(path.join(dir, c.name), key, '', rel !== undefined && rel.startsWith(c.part) ? after : undefined, skip, since);
    else if (key !== '' && !(rel !== undefined && c.part === rel)) yield { key, file: path.join(dir, c.name) };
  }
}

type Entry = { key: string; file: string } | { commonPrefix: string };

/**
 * A page of a listing: its entries (keys and common prefixes, in S3's order), and whether more
 * follow. Folders read since the listing began (`startedAt`) are not read again.
 */
export async function listPage(root: string, r: Pick<ListRequest, 'bucket' | 'prefix' | 'delimiter' | 'maxKeys' | 'after' | 'startedAt'>): Promise<{ entries: Entry[]; truncated: boolean }> {
  const parts = r.prefix.split('/');
  const namePrefix = parts.pop()!;
  // No key has an empty, `.` or `..` part (the gate refuses them): such a prefix names nothing,
  // and is never a path to read.
  if (parts.some((p) => p === '' || p === '.' || p === '..' || p.includes('\0')) || namePrefix.includes('\0') || r.maxKeys === 0) return { entries: [], truncated: false };
  const { delimiter, prefix } = r;
  /** the common prefix a key rolls up into, if any */
  const rollUp = (key: string) => {
    const i = delimiter ? key.indexOf(delimiter, prefix.length) : -1;
    return i < 0 ? undefined : key.slice(0, i + delimiter.length);
  };
  // A listing continued after a common prefix goes on after every key under it.
  const skip: Skip = r.after.startsWith(prefix) && rollUp(r.after) === r.after ? { under: r.after } : {};
  const entries: Entry[] = [];
  for await (const o of objectsUnder(path.join(root, r.bucket, ...parts), parts.map((p) => `${p}/`).join(''), namePrefix, r.after === '' ? undefined : r.after, skip, r.startedAt)) {
    // an upload not complete yet is no key: nor a common prefix, nor a reason to say more follow
    if (!o.key.startsWith(prefix) || !complete(o.file)) continue;
    if (entries.length === r.maxKeys) return { entries, truncated: true };
    const common = rollUp(o.key);
    if (common === undefined) entries.push(o);
    else {
      entries.push({ commonPrefix: common });
      skip.under = common;
    }
  }
  return { entries, truncated: false };
}

/**
 * Whether an object's upload is complete: s3rver writes its metadata file last (an upload cut
 * short never has one). An object being overwritten (or cut short while it was) has its old
 * one: it is listed with the ETag of its last complete upload, as S3 lists the old version until
 * the new one is complete.
 */
function complete(objectFile: string): boolean {
  return statSync(besideObject(objectFile, 'metadata.json'), { throwIfNoEntry: false }) !== undefined;
}

/** An object's size, time and ETag as a listing shows them, or undefined when it was deleted meanwhile. */
async function described(file: string): Promise<{ st: Stats; etag: string } | undefined> {
  let st: Stats;
  try {
    st = statSync(file);
  } catch {
    return undefined;
  }
  let etag: string | undefined;
  try {
    etag = readFileSync(besideObject(file, 'object.md5'), 'utf8');
  } catch {
    // not there (a copy with new metadata is being made: see s3.main.ts)
  }
  if (etag !== undefined && STORED_ETAG.test(etag)) return { st, etag };
  // the MD5 of the bytes, as s3rver computes it, once they are still (else of the last read)
  try {
    const h = await md5OfBytes(file, STILL_TRIES);
    return { st: h.st, etag: h.md5 };
  } catch {
    return undefined;
  }
}

/** How many times an object being written is hashed, 50 ms apart, before its last hash is listed. */
const STILL_TRIES = 20;

/** Text for XML: markup escaped; control characters as character references (XML 1.0 cannot hold most of them at all: use encoding-type=url for such keys). */
function xml(s: string): string {
  // A raw CR would be read back as LF (XML's line-end handling): another key. S3 sends &#13;.
  return s.replace(/[&<>"'\u0000-\u0008\u000a-\u001f]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&apos;' })[c] ?? `&#${c.charCodeAt(0)};`);
}

/** Answers a listing (see listTarget) from `root`, s3rver's folder. */
export async function serveList(root: string, r: ListRequest, res: ServerResponse): Promise<void> {
  const { entries, truncated } = await listPage(root, r);
  const name = (s: string) => xml(r.encodeUrl ? encodeURIComponent(s).replace(/%2F/g, '/') : s);
  const contents: string[] = [];
  const prefixes: string[] = [];
  let keyCount = 0;
  for (const e of entries) {
    if ('commonPrefix' in e) {
      prefixes.push(`<CommonPrefixes><Prefix>${name(e.commonPrefix)}</Prefix></CommonPrefixes>`);
      keyCount++;
      continue;
    }
    const d = await described(e.file);
    if (!d) continue; // deleted while listed
    keyCount++;
    // s3rver's time: the file's, to the second
    const modified = new Date(Math.floor(d.st.mtimeMs / 1000) * 1000).toISOString();
    contents.push(`<Contents><Key>${name(e.key)}</Key><LastModified>${modified}</LastModified><ETag>&quot;${d.etag}&quot;</ETag><Size>${d.st.size}</Size>${r.fetchOwner ? OWNER : ''}<StorageClass>STANDARD</StorageClass></Contents>`);
  }
  const last = entries.at(-1);
  const lastName = last === undefined ? '' : 'commonPrefix' in last ? last.commonPrefix : last.key;
  const opt = (tag: string, v: string | undefined) => (v === undefined ? '' : `<${tag}>${v}</${tag}>`);
  const head =
    r.version === 2
      ? opt('StartAfter', r.token === undefined && r.startAfter !== undefined ? name(r.startAfter) : undefined) +
        opt('ContinuationToken', r.token && xml(r.token)) +
        opt('NextContinuationToken', truncated ? encodeToken(r.bucket, lastName, r.startedAt) : undefined) +
        `<KeyCount>${keyCount}</KeyCount>`
      : `<Marker>${name(r.marker ?? '')}</Marker>` + opt('NextMarker', truncated && r.delimiter ? name(lastName) : undefined);
  const body =
    `<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="http://doc.s3.amazonaws.com/2006-03-01/"><Name>${xml(r.bucket)}</Name><Prefix>${name(r.prefix)}</Prefix>${head}` +
    `<MaxKeys>${xml(r.maxKeysAsked)}</MaxKeys>${opt('Delimiter', r.delimiter ? name(r.delimiter) : undefined)}<IsTruncated>${truncated}</IsTruncated>${opt('EncodingType', r.encodeUrl ? 'url' : undefined)}` +
    `${contents.join('')}${prefixes.join('')}</ListBucketResult>`;
  res.writeHead(200, { 'content-type': 'application/xml', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}
