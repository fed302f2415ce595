import { randomBytes } from 'node:crypto';
import { mkdir, readFile, realpath, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import pMap from 'p-map';
import { parseS3Url, type ObjectInfo } from '@transferline/shared';
import type { CliContext } from '../cli-context.js';
import { createProgress } from '../progress.js';
import { printable } from '../terminal.js';

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
 * there already with the same bytes is left as it is; another is replaced, written beside it first
 * and renamed, so that a download cut short leaves no half file. Keys that can be no file under the
 * folder (`..` or empty parts, or the folder of other keys too) are skipped, and named. Each object
 * is held in memory whole (results and run files are megabytes).
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
    const source = `s3://${printable(bucket)}/${printable(named)}`;
    if (await isFolder(file)) throw new Error(`${printable(file)} is a folder: name the file to write ${source} to`);
    const kept = await writeUnlessSame(file, bytes);
    ctx.out.write(kept ? `${printable(file)} is ${source} already (the same bytes): left as it is\n` : `downloaded ${source} to ${printable(file)} (${size(bytes.length)})\n`);
    return;
  }
  const objects: ObjectInfo[] = [];
  for await (const o of store.listObjects(bucket, prefix)) if (!o.key.endsWith('/')) objects.push(o);
  if (objects.length === 0) {
    throw new Error(named === undefined ? `no objects under s3://${printable(bucket)}/${printable(prefix)}` : `no object s3://${printable(bucket)}/${printable(named)}, nor any under s3://${printable(bucket)}/${printable(prefix)}`);
  }
  if (dest === '-') throw new Error(`- writes one object to stdout, and s3://${printable(bucket)}/${printable(prefix)} holds ${objects.length}: name one of them, or a folder to write them in`);
  // (named after the prefix's last part, as a folder dragged from a file browser would be)
  const root = dest ?? (path.posix.basename(prefix.slice(0, -1)) || bucket);
  if ((await stat(root).catch(() => undefined))?.isDirectory() === false) {
    throw new Error(`${printable(root)} is a file: name a folder to write the ${objects.length} object${objects.length === 1 ? '' : 's'} under s3://${printable(bucket)}/${printable(prefix)} in`);
  }
  const rels = objects.map((o) => o.key.slice(prefix.length));
  // a key that is also the folder of others (p/a beside p/a/b) cannot be both here
  const folders = new Set(rels.flatMap((rel) => rel.split('/').slice(0, -1).map((_, i, parts) => parts.slice(0, i + 1).join('/'))));
  const unsafe = objects.filter((_, i) => !isPathUnder(rels[i]!) || folders.has(rels[i]!));
  const safe = objects.filter((o) => !unsafe.includes(o));
  if (safe.length === 0) throw new Error(`none of the ${objects.length} object${objects.length === 1 ? '' : 's'} under s3://${printable(bucket)}/${printable(prefix)} has a key that can be a file under a folder (${unsafeNames(unsafe)})`);
  const bar = createProgress('downloading');
  let done = 0;
  let kept = 0;
  let bytes = 0;
  const linkedOut: ObjectInfo[] = [];
  await mkdir(root, { recursive: true });
  const top = await realpath(root);
  try {
    await pMap(
      safe,
      async (o) => {
        const rel = o.key.slice(prefix.length);
        const file = path.join(root, ...rel.split('/'));
        // a folder on its way that is a link out of the folder (a security trial: written through
        // it): looked at before any folder is made under it (a review: made outside first), and after
        if (!(await staysUnder(top, file)) || !(await mkdir(path.dirname(file), { recursive: true }).then(() => staysUnder(top, file)))) {
          linkedOut.push(o);
        } else {
          const body = await store.getObject(bucket, o.key);
          if (await writeUnlessSame(file, body)) kept++;
          else bytes += body.length;
        }
        bar.update(++done, safe.length, printable(rel));
      },
      { concurrency: PARALLEL },
    );
  } finally {
    bar.stop();
  }
  const written = safe.length - kept - linkedOut.length;
  const into = root.endsWith('/') || root.endsWith(path.sep) ? root : `${root}${path.sep}`;
  ctx.out.write(
    `downloaded ${written} file${written === 1 ? '' : 's'} (${size(bytes)}) from s3://${printable(bucket)}/${printable(prefix)} to ${printable(into)}` +
      `${kept ? `; ${kept} there already with the same bytes, left as they are` : ''}\n`,
  );
  if (unsafe.length) {
    ctx.out.write(`skipped ${unsafe.length} object${unsafe.length === 1 ? '' : 's'} whose key can be no file under the folder: a .. or empty part, or the folder of other keys too (${unsafeNames(unsafe)})\n`);
  }
  if (linkedOut.length) {
    linkedOut.sort((a, b) => (a.key < b.key ? -1 : 1));
    ctx.out.write(`skipped ${linkedOut.length} object${linkedOut.length === 1 ? '' : 's'} whose folder in ${printable(root)} is a link that leads out of it (${unsafeNames(linkedOut)}): nothing is written through it\n`);
  }
}

function unsafeNames(objects: ObjectInfo[]): string {
  return `${objects.slice(0, 3).map((o) => JSON.stringify(printable(o.key))).join(', ')}${objects.length > 3 ? ', …' : ''}`;
}

/** A key's part under the prefix is a path inside the folder: no `.`, `..` or empty parts, no backslash (a separator on Windows). */
export function isPathUnder(rel: string): boolean {
  return !rel.includes('\\') && rel.split('/').every((part) => part !== '' && part !== '.' && part !== '..');
}

async function isFolder(p: string): Promise<boolean> {
  return stat(p).then((s) => s.isDirectory(), () => false);
}

/** Writes `bytes` to `file` unless it holds them already: true when it was left as it was. */
async function writeUnlessSame(file: string, bytes: Buffer): Promise<boolean> {
  // (read only when the sizes agree)
  const there = (await stat(file).catch(() => undefined))?.size === bytes.length ? await readFile(file).catch(() => undefined) : undefined;
  if (there?.equals(bytes)) return true;
  await mkdir(path.dirname(file), { recursive: true });
  await replaceFile(file, bytes);
  return false;
}

/**
 * Writes `bytes` as `file`: beside it first, then renamed over it, so that a write cut short leaves
 * no half file, and a link standing in the file's place is replaced, not written through (a
 * security trial: export -o wrote the model into the file a planted link named).
 */
export async function replaceFile(file: string, bytes: Uint8Array): Promise<void> {
  // What is no file is written to as it is (a -o /dev/stdout, a pipe: its link is not replaced);
  // a disk is not written at all.
  const there = await stat(file).catch(() => undefined);
  if (there?.isBlockDevice()) throw new Error(`${file} is a disk (a block device): name a file to write`);
  if (there && !there.isFile() && !there.isDirectory()) return writeFile(file, bytes);
  const part = `${file}.${randomBytes(4).toString('hex')}.part`;
  try {
    await writeFile(part, bytes, { flag: 'wx' });
    await rename(part, file);
  } catch (err) {
    await rm(part, { force: true });
    throw err;
  }
}

/**
 * Whether the folder `file` goes in is under `top` (the target folder, its links followed) once
 * links are followed (a link among the folders may lead anywhere): the deepest of its folders
 * that is there, when not all are yet.
 */
async function staysUnder(top: string, file: string): Promise<boolean> {
  let dir = path.dirname(file);
  for (;;) {
    const real = await realpath(dir).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
      return undefined;
    });
    if (real !== undefined) return real === top || real.startsWith(top.endsWith(path.sep) ? top : `${top}${path.sep}`);
    const up = path.dirname(dir);
    if (up === dir) return false;
    dir = up;
  }
}

function size(n: number): string {
  if (n < 1024) return `${n} bytes`;
  return n < 1024 * 1024 ? `${Math.round(n / 1024)} KB` : `${(n / 1024 / 1024).toFixed(1)} MB`;
}
