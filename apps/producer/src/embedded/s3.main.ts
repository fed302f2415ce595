/**
 * The embedded S3 server as a process of its own, supervised by `up` like the workers: a request
 * that crashes it takes down this process only, and `up` starts it again on the same port.
 *
 * Run with `--openssl-legacy-provider`: s3rver builds ListObjects continuation tokens with DES,
 * which OpenSSL 3 refuses by default, for the listings it still answers (a browser's, with an
 * Origin header: see s3-list.ts; past 1,000 keys they would fail with an internal error).
 *
 * Environment: TL_S3_DIR, TL_S3_HOST, TL_S3_PORT (0: any free port), TL_S3_BUCKETS (comma-separated),
 * TL_S3_ACCESS_KEY_ID, TL_S3_SECRET_ACCESS_KEY. Tells its parent `{ listening: port }` over IPC,
 * and exits when the parent goes away (the IPC channel closes, even when the parent was SIGKILLed).
 */
import { createServer, IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdir } from 'node:fs/promises';
import S3rver from 's3rver';
import { isStopMessage, stopSignals } from '@transferline/shared/lifecycle';
import { hostHeaderIsLoopback, isLoopbackHost } from '../loopback-host.js';
import { listTarget, serveList } from './s3-list.js';
import { beingWritten, forgetStoredEtag, plainGetTarget, servePlainGet, storeEtagOfBytes, storedSize } from './s3-plain-get.js';
import { absoluteRange, checkConditions, EMBEDDED_S3_HEALTH_PATH, checkCopySource, checkKey, checkKeysElsewhere, checkSignature, copySourceForS3rver, copySourceObject, deleteBody, isDeleteQuery, isSuffixRange, objectOfPath, sendRefusal } from './s3-gate.js';

const env = process.env;
const directory = env.TL_S3_DIR;
const creds = { accessKeyId: env.TL_S3_ACCESS_KEY_ID ?? '', secretAccessKey: env.TL_S3_SECRET_ACCESS_KEY ?? '' };
if (!directory || !creds.accessKeyId || !creds.secretAccessKey) {
  process.stderr.write('s3 server: TL_S3_DIR, TL_S3_ACCESS_KEY_ID and TL_S3_SECRET_ACCESS_KEY are required\n');
  process.exit(2);
}
const line = (msg: string) => process.stderr.write(`${new Date().toISOString()} s3 server: ${msg}\n`);

await mkdir(directory, { recursive: true });
const s3rver = new S3rver({
  directory,
  silent: true,
  vhostBuckets: false,
  configureBuckets: (env.TL_S3_BUCKETS ?? '').split(',').filter(Boolean).map((name) => ({ name })),
});
await s3rver.configureBuckets();
const handle = s3rver.callback();
const { store } = s3rver as unknown as { store: { getMetadata: (bucket: string, key: string) => Promise<{ etag: string }> } };
/** An object's ETag without quotes, as s3rver would send it; undefined when there is no such object. */
const etagOf = (bucket: string, key: string) => store.getMetadata(bucket, key).then(
  (m) => m.etag.replace(/"/g, ''),
  () => undefined,
);

/** Most bytes of a multi-object delete body read (1,000 keys of 1,024 bytes, and the XML around them). */
const MAX_DELETE_BODY = 2 * 1024 * 1024;

/** The request's body, or undefined when it is larger than `max`. */
function readBody(req: IncomingMessage, max: number): Promise<Buffer | undefined> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size <= max) chunks.push(c);
    });
    req.on('end', () => resolve(size <= max ? Buffer.concat(chunks) : undefined));
    req.on('error', reject);
  });
}

/** A request like `req` whose body is `body`, read already: what s3rver reads instead of `req`. */
function replay(req: IncomingMessage, body: Buffer): IncomingMessage {
  const again = new IncomingMessage(req.socket);
  const headers: IncomingMessage['headers'] = { ...req.headers, 'content-length': String(body.length) };
  delete headers['content-md5']; // of the body as sent, not of this one
  // complete: the whole body is here (an incomplete one ending would be taken for an abort, and its socket cut)
  Object.assign(again, { method: req.method, url: req.url, headers, httpVersion: req.httpVersion, httpVersionMajor: req.httpVersionMajor, httpVersionMinor: req.httpVersionMinor, complete: true });
  again.push(body);
  again.push(null);
  return again;
}

// Bound to loopback: only requests that name it (see loopback-host.ts: DNS rebinding).
const loopbackOnly = isLoopbackHost(env.TL_S3_HOST ?? '127.0.0.1');

const server = createServer((req, res) => {
  const [rawPath = '/', query = ''] = (req.url ?? '/').split(/\?(.*)/s);
  if (loopbackOnly && !hostHeaderIsLoopback(req.headers.host)) {
    return sendRefusal(res, { status: 400, code: 'InvalidRequest', message: 'This server answers requests to localhost or 127.0.0.1 only.' }, rawPath);
  }
  // up's liveness probe (the path MinIO answers it on): anonymous, so never a request for an object
  if (req.method === 'GET' && rawPath === EMBEDDED_S3_HEALTH_PATH && !query && !req.headers.authorization) {
    res.writeHead(200, { 'content-length': 0 }).end();
    return;
  }
  const copySource = req.headers['x-amz-copy-source'];
  const badKey = checkKey(rawPath) ?? checkCopySource(Array.isArray(copySource) ? copySource[0] : copySource) ?? checkKeysElsewhere(req.method, rawPath, query);
  if (badKey) return sendRefusal(res, badKey, rawPath);
  checkSignature(req, creds).then(
    async (refusal) => {
      if (refusal) {
        line(`refused ${req.method} ${JSON.stringify(rawPath.slice(0, 200))}: ${refusal.code}`);
        return sendRefusal(res, refusal, rawPath);
      }
      // Verified here; s3rver would check the key id against its own fixed account, so it sees
      // the request as anonymous (which it serves) instead.
      delete req.headers.authorization;
      // A listing and a plain GET are answered from s3rver's files (see s3-list.ts and
      // s3-plain-get.ts); the rest is s3rver's.
      const list = listTarget(req, directory, rawPath, query);
      if (list && 'code' in list) return sendRefusal(res, list, rawPath);
      if (list) return serveList(directory, list, res);
      const plain = plainGetTarget(req, rawPath, query);
      if (plain && servePlainGet(directory, plain, req, res, rawPath)) return;
      const source = req.headers['x-amz-copy-source'];
      // (checkCopySource let it through: it decodes)
      const from = typeof source === 'string' ? copySourceObject(source) : undefined;
      if (from && beingWritten(directory, from)) {
        return sendRefusal(res, { status: 503, code: 'SlowDown', message: 'The copy source is being written; please ask again.' }, rawPath);
      }
      const condition = await checkConditions(req, rawPath, etagOf);
      if (condition) return sendRefusal(res, condition, rawPath);
      const object = objectOfPath(rawPath);
      if (typeof source === 'string') {
        req.headers['x-amz-copy-source'] = copySourceForS3rver(source);
        // s3rver keeps the old MD5 file of a key copied over with new metadata: forgotten before
        // (the copy's answer computes it from the new bytes), and stored again from the bytes
        // after (a read meanwhile may have stored the old bytes' MD5)
        if (object && String(req.headers['x-amz-metadata-directive']).toUpperCase() === 'REPLACE') {
          forgetStoredEtag(directory, object.bucket, object.key);
          res.on('finish', () => void storeEtagOfBytes(directory, object.bucket, object.key));
        }
      }
      if (isSuffixRange(req.headers.range) && object && (req.method === 'GET' || req.method === 'HEAD')) {
        const size = storedSize(directory, object.bucket, object.key);
        if (size !== undefined) {
          const range = absoluteRange(req.headers.range, size);
          if (range === null) delete req.headers.range;
          else req.headers.range = range;
        }
      }
      if (req.method !== 'POST' || !isDeleteQuery(query)) return handle(req, res);
      // A multi-object delete names its keys in its body: each is checked like a key in a path,
      // and s3rver gets a body of the checked keys only.
      const body = await readBody(req, MAX_DELETE_BODY);
      if (!body) return sendRefusal(res, { status: 400, code: 'MalformedXML', message: `A delete request of more than ${MAX_DELETE_BODY} bytes is not accepted.` }, rawPath);
      const checked = deleteBody(decodeURIComponent(rawPath.split('/')[1] ?? ''), body.toString('utf8'));
      if ('refusal' in checked) return sendRefusal(res, checked.refusal, rawPath);
      handle(replay(req, Buffer.from(checked.body)), res);
    },
  ).catch((err: unknown) => sendRefusal(res, { status: 500, code: 'InternalError', message: (err as Error).message }, rawPath));
});
// Keep-alive sockets from SDK clients would hold close() open.
const stop = () => {
  server.closeAllConnections();
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2_000).unref();
};
// Started by up: the terminal's Ctrl-C is up's, which stops this server last, with SIGTERM.
for (const signal of stopSignals()) process.on(signal, stop);
process.on('message', (m: unknown) => isStopMessage(m) && stop());
process.on('disconnect', stop);
// `up` may have gone while this process was starting: the 'disconnect' event is then long past.
if (process.send && !process.connected) stop();

server.once('error', (err: NodeJS.ErrnoException) => {
  line(err.code === 'EADDRINUSE' ? `port ${env.TL_S3_PORT} is in use` : err.message);
  process.send?.({ error: err.code === 'EADDRINUSE' ? 'EADDRINUSE' : err.message });
  process.exit(1);
});
server.listen(Number(env.TL_S3_PORT ?? 0), env.TL_S3_HOST ?? '127.0.0.1', () => {
  const { port } = server.address() as AddressInfo;
  line(`listening on ${env.TL_S3_HOST ?? '127.0.0.1'}:${port}, data in ${directory}`);
  process.send?.({ listening: port });
});
