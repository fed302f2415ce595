import { randomBytes } from 'node:crypto';
import { mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import pMap from 'p-map';
import { parseS3Url, type ObjectInfo } from '@transferline/shared';
import type { CliContext } from '../cli-context.js';
import { createProgress } from '../progress.js';

/** What a download uses: the bucket alone (no Redis), and where to speak (stderr when the object itself goes to stdout). */
export interface DownloadContext {
  services: Pick<CliContext['services'], 'store'>;
  out: NodeJS.WritableStream;
  /** where the object goes with `-` */
  stdout: NodeJS.WritableStream;
}

/** Objects fetched at once under a prefix. */
const PARALLEL = 8;

/**
 * The other way from upload: one object to a file (or to stdout with `-`), or every object under a
 * prefix (a URL ending in `/`, or one that names no object but has some under it) into a folder,
 * each at its path under the prefix. Classify's results, a review's list, a run's files. A file
 * there already with the same bytes is left as it is; another is replaced, written beside it first and renamed, so that a download cut short leaves
 * no half file. Keys that are no path under the folder (`..`, empty parts) are skipped, and named.
 */
export async function downloadCommand(ctx: DownloadContext, url: string, dest?: string): Promise<void> {
  const { store } = ctx.services;
  const { bucket, prefix } = parseS3Url(url);
  // an object's key as the URL names it (without the slash parseS3Url puts at the end of a prefix)
  const named = url.endsWith('/') || prefix === '' ? undefined : prefix.slice(0, -1);
  const one = named === undefined ? undefined : await store.headObject(bucket, named, { bucketToo: true });
  if (named !== undefined && one) {
    const bytes = await store.getObject(bucket, named);
    if (dest === '-') {
      await new Promise<void>((resolve, reject) => ctx.stdout.write(bytes, (err) => (err ? reject(err) : resolve())));
      return;
    }
    const base = path.posix.basename(named);
    const file = dest === undefined ? base : dest.endsWith('/') || dest.endsWith(path.sep) || (await isFolder(dest)) ? path.join(dest, base) : dest;
    const kept = await writeUnlessSame(file, bytes);
    ctx.out.write(kept ? `${file} is s3://${bucket}/${named} already (the same bytes): left as it is\n` : `downloaded s3://${bucket}/${named} to ${file} (${size(bytes.length)})\n`);
    return;
  }
  const objects: ObjectInfo[] = [];
  for await (const o of store.listObjects(bucket, prefix)) if (!o.key.endsWith('/')) objects.push(o);
  if (objects.length === 0) {
    throw new Error(named === undefined ? `no objects under s3://${bucket}/${prefix}` : `no object s3://${bucket}/${named}, nor any under s3://${bucket}/${prefix}`);
  }
  if (dest === '-') throw new Error(`- writes one object to stdout, and s3://${bucket}/${prefix} holds ${objects.length}: name one of them, or a folder to write them in`);
  // (named after the prefix's last part, as a folder dragged from a file browser would be)
  const root = dest ?? (path.posix.basename(prefix.slice(0, -1)) || bucket);
  const unsafe = objects.filter((o) => !isPathUnder(o.key.slice(prefix.length)));
  const safe = objects.filter((o) => !unsafe.includes(o));
  const bar = createProgress('downloading');
  let done = 0;
  let kept = 0;
  let bytes = 0;
  try {
    await pMap(
      safe,
      async (o) => {
        const rel = o.key.slice(prefix.length);
        const body = await store.getObject(bucket, o.key);
        if (await writeUnlessSame(path.join(root, ...rel.split('/')), body)) kept++;
        else bytes += body.length;
        bar.update(++done, safe.length, rel);
      },
      { concurrency: PARALLEL },
    );
  } finally {
    bar.stop();
  }
  const written = safe.length - kept;
  ctx.out.write(
    `downloaded ${written} file${written === 1 ? '' : 's'} (${size(bytes)}) from s3://${bucket}/${prefix} to ${root}${path.sep}` +
      `${kept ? `; ${kept} there already with the same bytes, left as they are` : ''}\n`,
  );
  if (unsafe.length) {
    const shown = unsafe.slice(0, 3).map((o) => JSON.stringify(o.key)).join(', ');
    ctx.out.write(`skipped ${unsafe.length} object${unsafe.length === 1 ? '' : 's'} whose key is no path under the folder (${shown}${unsafe.length > 3 ? ', …' : ''})\n`);
  }
}

/** A key's part under the prefix is a path inside the folder: no `.`, `..` or empty parts. */
export function isPathUnder(rel: string): boolean {
  return rel.split('/').every((part) => part !== '' && part !== '.' && part !== '..');
}

async function isFolder(p: string): Promise<boolean> {
  return stat(p).then((s) => s.isDirectory(), () => false);
}

/** Writes `bytes` to `file` unless it holds them already: true when it was left as it was. */
async function writeUnlessSame(file: string, bytes: Buffer): Promise<boolean> {
  const there = await readFile(file).catch(() => undefined);
  if (there?.equals(bytes)) return true;
  await mkdir(path.dirname(file), { recursive: true });
  const part = `${file}.${randomBytes(4).toString('hex')}.part`;
  try {
    await writeFile(part, bytes);
    await rename(part, file);
  } catch (err) {
    await rm(part, { force: true });
    throw err;
  }
  return false;
}

function size(n: number): string {
  if (n < 1024) return `${n} bytes`;
  return n < 1024 * 1024 ? `${Math.round(n / 1024)} KB` : `${(n / 1024 / 1024).toFixed(1)} MB`;
}
