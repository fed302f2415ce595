import { existsSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { createHash } from 'node:crypto';
import pMap from 'p-map';
import { looksTruncated, readableFormat } from '@transferline/feature-worker/image-format';
import type { preprocessImageOptions } from '@transferline/feature-worker/image.ops';
import { BUCKET_NAME_RULE, DEFAULT_ALPHA_BACKGROUND, isBucketName, isHiddenPath, itemFromKey, keyBesideLabel, manifestFormat, parseS3Url, PermanentError } from '@transferline/shared';
import type { CliContext } from '../cli-context.js';
import { backslashHint, readManifest, type ManifestRow } from '../manifest.js';
import { createProgress } from '../progress.js';
import { printable, shellQuote } from '../terminal.js';

/** Every file below `dir`, as paths relative to it with `/` separators (hidden files and folders skipped). */
export async function listFiles(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return (
    entries
      .filter((e) => e.isFile())
      // Dirent.parentPath is Node 20.12+; 20.9-20.11 (which package.json allows) call it path.
      .map((e) => path.relative(dir, path.join(e.parentPath ?? (e as unknown as { path: string }).path, e.name)).split(path.sep).join('/'))
      // .DS_Store, and folders such as .thumbnails/ that would otherwise become a label
      .filter((rel) => !isHiddenPath(rel))
      .sort()
  );
}

/** What an upload uses: the bucket alone (no Redis: a bucket is filled before a stack runs, too). */
export interface UploadContext {
  services: Pick<CliContext['services'], 'store'>;
  out: NodeJS.WritableStream;
  /** the decode settings and limits preprocess applies (a file cut short is decoded as it would be; one over a limit is not sent) */
  config: { preprocess: Parameters<typeof preprocessImageOptions>[0] & { maxObjectBytes: number } };
}

/**
 * Why preprocess would fail a file it can read the format of, or undefined: over
 * TL_MAX_OBJECT_BYTES, more pixels than TL_MAX_INPUT_PIXELS by its header, or bytes missing at
 * its end by its own structure (a JPEG without its end marker, PNG chunks that run past the file:
 * a copy that did not finish). A file cut short is decoded as preprocess decodes it: one that
 * decodes is sent (a motion photo's video after the image hides its end marker). A complete
 * file is not decoded.
 */
async function refusedByPreprocess(bytes: Buffer, format: string, preprocess: UploadContext['config']['preprocess']): Promise<string | undefined> {
  // too large, or too many pixels by its header: refused by preprocess before any decode
  const { prepareImage, preprocessImageOptions, refusedBeforeDecode } = await import('@transferline/feature-worker/image.ops');
  const refused = await refusedBeforeDecode(bytes, preprocess);
  if (refused !== undefined || !looksTruncated(format, bytes)) return refused;
  try {
    // (whether it decodes does not depend on the space that will prepare it)
    await prepareImage(bytes, { ...preprocessImageOptions(preprocess), resize: 'squash', background: DEFAULT_ALPHA_BACKGROUND });
    return undefined;
  } catch (err) {
    // (damage said first: a cut-short JPEG's first warning can be of its data, not its end)
    return err instanceof PermanentError && (err.reason === 'truncated' || err.reason === 'corrupt') ? err.message : undefined;
  }
}

/** A local label manifest, read and checked before anything is sent: where it goes, its bytes, its rows. */
interface LocalManifest {
  file: string;
  key: string;
  bytes: Buffer;
  format: 'csv' | 'jsonl';
  rows: ManifestRow[];
  /** its path under the folder, when it is in it (not sent as an image) */
  rel?: string;
}

/**
 * The label manifest `file` as an upload sends it: beside the images, at its path under `dir`
 * (or at the prefix's top when it is elsewhere), read as ingest will read it there. A manifest
 * that cannot be read is refused before anything is sent.
 */
async function localManifest(file: string, dir: string, bucket: string, prefix: string): Promise<LocalManifest> {
  const format = manifestFormat(file);
  if (format === undefined) throw new Error(`--manifest ${file}: a label manifest is a .csv, .tsv, .jsonl or .ndjson file (README: "A label manifest")`);
  const bytes = await readFile(file).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') throw new Error(`--manifest: no file ${file}${path.isAbsolute(file) ? '' : ` here (${path.resolve(file)})`}`);
    throw err;
  });
  const under = path.relative(dir, file);
  const rel = under !== '' && !under.startsWith('..') && !path.isAbsolute(under) ? under.split(path.sep).join('/') : undefined;
  const key = `${prefix}${rel ?? path.basename(file)}`;
  const rows = await readManifest(bytes, format, { bucket, key }, { shownAs: `${file} (for s3://${bucket}/${key})`, refused: 'nothing was uploaded' });
  return { file, key, bytes, format, rows, ...(rel !== undefined && { rel }) };
}

/**
 * `transferline upload ./photos s3://bucket/train/`: copies a local folder (one sub-folder per
 * label) into the bucket. With `unlabelled`, images to classify: every file keeps its path under
 * the folder, and no label folder is asked for (nor looked for under others: relabel's moves
 * concern labelled images). With `manifest`, images that a label manifest labels: sent as they
 * are laid out, then the manifest (checked first, and against the files), for ingest to read.
 */
export async function uploadCommand(ctx: UploadContext, dir: string, url: string, o: { copies?: boolean; unlabelled?: boolean; manifest?: string; parallel?: number } = {}): Promise<number> {
  const parallel = o.parallel ?? 8;
  /** the command that reads what is uploaded */
  const reader = o.unlabelled ? 'classify' : 'ingest';
  const { bucket, prefix } = parseS3Url(url);
  // before the folder is read: a name S3 would refuse is said first, whatever the folder holds
  if (!isBucketName(bucket)) throw new Error(`${JSON.stringify(bucket)} cannot be a bucket's name: ${BUCKET_NAME_RULE}`);
  const listed = await listFiles(dir).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') throw new Error(`no folder ${dir}${path.isAbsolute(dir) ? '' : ` here (${path.resolve(dir)})`}`);
    if (err.code === 'ENOTDIR') throw new Error(`${dir} is a file: upload takes a folder${o.unlabelled || o.manifest ? '' : ' with one sub-folder per label'}`);
    throw err;
  });
  const manifest = o.manifest === undefined ? undefined : await localManifest(o.manifest, dir, bucket, prefix);
  const files = listed.filter((f) => f !== manifest?.rel);
  // (a manifest alone is sent: its rows may name images in the bucket already, or in others)
  if (files.length === 0 && !manifest) throw new Error(`no files under ${dir}`);
  // files that ingest would find no label for (not in a label folder), by ingest's own rule
  const loose = o.unlabelled || manifest ? [] : files.filter((f) => itemFromKey(prefix, `${prefix}${f}`) === undefined);
  const named = `${loose.slice(0, 3).map((f) => JSON.stringify(f)).join(', ')}${loose.length > 3 ? ', …' : ''}`;
  const example = path.join(dir, 'LABEL', loose[0] ?? '');
  // none in a label folder: nothing ingest could use, so nothing is sent (ingest would refuse it)
  if (loose.length === files.length) throw new Error(`none of the ${files.length} files under ${dir} is in a label folder (${named}): ingest could use none of them; put them in a folder per label (${example}), or add --unlabelled for images to classify`);
  const looseSet = new Set(loose);
  // (a README beside the label folders is among them: the advice is for the images)
  if (loose.length) ctx.out.write(`note: ${loose.length} of the ${files.length} files ${loose.length === 1 ? 'is' : 'are'} not in a label folder (${named}): ingest skips them; for an image among them, put it in a folder per label (${example})\n`);
  // A bucket that is not there is made (a new deployment's first upload), and said: a typo in its name should not pass unseen.
  if (await ctx.services.store.ensureBucket(bucket)) ctx.out.write(`created bucket s3://${bucket} (it did not exist)\n`);
  // what is there already, by ETag (the MD5 of an object put whole): the same bytes are not sent again
  const there = new Map<string, string>();
  // and each object by its key with the label folder left out: a file not there, whose image is
  // under another label folder at the same place, was moved by relabel since the last upload (sent
  // again, it would come back under its old label); --copies sends it all the same
  const beside = new Map<string, { key: string; etag: string; size: number }[]>();
  // (--unlabelled, --manifest: no label folders, so none beside; for --unlabelled, counted
  // instead, the images in label folders under the prefix that are not this folder's files)
  const fromHere = o.unlabelled ? new Set(files.map((f) => `${prefix}${f}`)) : undefined;
  let labelled = 0;
  for await (const obj of ctx.services.store.listObjects(bucket, prefix)) {
    there.set(obj.key, obj.etag);
    // (nor, below, a hidden one: a listing leaves it out, so it is no image of a label)
    if (manifest || isHiddenPath(obj.key.slice(prefix.length))) continue;
    if (fromHere) {
      if (!fromHere.has(obj.key) && itemFromKey(prefix, obj.key) !== undefined) labelled++;
      continue;
    }
    const at = keyBesideLabel(prefix, obj.key);
    if (at !== undefined) beside.set(at, [...(beside.get(at) ?? []), obj]);
  }
  if (manifest) refuseMisplaced(manifest, { dir, bucket, prefix, files, there });
  // images to classify sent into a training prefix (by mistake, most likely): said before they go
  if (labelled) {
    ctx.out.write(
      `note: s3://${bucket}/${prefix} holds ${labelled} image${labelled === 1 ? '' : 's'} in label folders already (a training set?): ` +
        'these files go beside them; an ingest of the prefix would take their sub-folders for labels, and a classify of it would label those images too\n',
    );
  }
  // The same bytes: its ETag is their MD5 when it was put whole; a multipart upload's, or a copy
  // of one, is not an MD5 (and relabel's copy of it another one): the same size then.
  const movedFrom = (key: string, bytes: Buffer, md5: string) =>
    beside.get(keyBesideLabel(prefix, key) ?? '')?.find((o) => o.etag === md5 || (!/^[0-9a-f]{32}$/.test(o.etag) && o.size === bytes.length));
  const bar = createProgress('uploading');
  let done = 0;
  let sent = 0;
  /** files ingest could not read (empty, not an image, a format it does not decode): not sent */
  const skipped: { rel: string; why: string }[] = [];
  /** files beside the label folders that are no image either: named in the note above alone, not sent */
  let looseNotSent = 0;
  /** files whose image is in the bucket under another label folder (relabel moved it): not sent without --copies */
  const elsewhere: { rel: string; key: string }[] = [];
  const upload = async (rel: string) => {
    const bytes = await readFile(path.join(dir, rel));
    const readable = readableFormat(bytes);
    const short = 'reason' in readable ? undefined : await refusedByPreprocess(bytes, readable.format, ctx.config.preprocess);
    const key = `${prefix}${rel}`;
    // the progress line names the file last done, and what became of it: not only the files sent
    let fate = '';
    if (looseSet.has(rel) && ('reason' in readable || short !== undefined)) {
      // named once, in the note above: no label, and no image either (a README beside the folders)
      looseNotSent++;
      fate = ' (skipped: not in a label folder)';
    } else if ('reason' in readable || short !== undefined) {
      skipped.push({ rel, why: 'reason' in readable ? readable.message : short! });
      fate = 'reason' in readable ? ' (skipped: not readable as an image)' : ' (skipped: ingest would fail it)';
    } else {
      const md5 = createHash('md5').update(bytes).digest('hex');
      const other = there.has(key) || o.copies ? undefined : movedFrom(key, bytes, md5);
      if (there.get(key) === md5) fate = ' (already there)';
      else if (other) {
        elsewhere.push({ rel, key: other.key });
        fate = ` (skipped: under another label as s3://${bucket}/${other.key})`;
      } else {
        await ctx.services.store.putObject(bucket, key, bytes, contentType(rel));
        sent++;
      }
    }
    bar.update(++done, files.length, `${rel}${fate}`);
  };
  try {
    await pMap(files, upload, { concurrency: parallel });
  } finally {
    bar.stop();
  }
  if (skipped.length) {
    skipped.sort((a, b) => (a.rel < b.rel ? -1 : 1));
    const named = skipped.slice(0, 5).map((s) => `${JSON.stringify(s.rel)}: ${s.why}`);
    ctx.out.write(`skipped ${skipped.length} file${skipped.length === 1 ? '' : 's'} that ${reader} could not read as images (${named.join('; ')}${skipped.length > 5 ? `; and ${skipped.length - 5} more` : ''})\n`);
  }
  if (elsewhere.length) {
    elsewhere.sort((a, b) => (a.rel < b.rel ? -1 : 1));
    const named = elsewhere.slice(0, 5).map((e) => `${JSON.stringify(e.rel)} is s3://${bucket}/${e.key}`);
    ctx.out.write(
      `skipped ${elsewhere.length} file${elsewhere.length === 1 ? '' : 's'} whose image is in the bucket under another label (${named.join('; ')}${elsewhere.length > 5 ? `; and ${elsewhere.length - 5} more` : ''}): ` +
        `moved there by relabel since, and sent again ${elsewhere.length === 1 ? 'it' : 'they'} would come back under the old label as a copy; add --copies to send ${elsewhere.length === 1 ? 'it' : 'them'} all the same\n`,
    );
  }
  const same = files.length - skipped.length - elsewhere.length - looseNotSent - sent;
  ctx.out.write(`uploaded ${sent} file${sent === 1 ? '' : 's'} to s3://${bucket}/${prefix}${same ? ` (${same} more already there, the same bytes: not sent again)` : ''}\n`);
  if (manifest) await sendManifest(ctx, manifest, { dir, bucket, prefix, files, skipped, there });
  return sent;
}

/** The manifest's rows under the prefix, each with its path under it. */
function rowsUnder(m: LocalManifest, bucket: string, prefix: string): { row: ManifestRow; rel: string }[] {
  // rows in another bucket or outside the prefix are for ingest to find: not checked here
  return m.rows.filter((row) => row.bucket === bucket && row.key.startsWith(prefix)).map((row) => ({ row, rel: row.key.slice(prefix.length) }));
}

/** "; or: <the backslash hint>" when some of `keys` hold one (they may be why none is found), else "". */
const windowsNote = (keys: string[]) => {
  const hint = backslashHint(keys);
  return hint ? `; or: ${printable(hint)}` : '';
};

/**
 * A manifest none of whose rows under the prefix names a file of the folder or an object there
 * is in the wrong place (its keys are paths from its own folder): refused before anything is sent.
 */
function refuseMisplaced(m: LocalManifest, up: { dir: string; bucket: string; prefix: string; files: string[]; there: Map<string, string> }): void {
  const under = rowsUnder(m, up.bucket, up.prefix);
  const files = new Set(up.files);
  if (under.length === 0 || under.some(({ row, rel }) => files.has(rel) || up.there.has(row.key))) return;
  const first = under[0]!;
  const folder = `s3://${up.bucket}/${m.key.slice(0, m.key.lastIndexOf('/') + 1)}`;
  throw new Error(
    `none of the manifest's ${under.length} row${under.length === 1 ? '' : 's'} under s3://${up.bucket}/${up.prefix} names a file under ${up.dir} or an object in the bucket ` +
      `(line ${first.row.line}: s3://${up.bucket}/${first.row.key}), so nothing was uploaded: its keys are paths from the manifest's own folder, which would be ${folder}; ` +
      `put the manifest in the folder the keys start from (upload sends it to its path under the folder), or upload that folder${windowsNote(under.map(({ rel }) => rel))}`,
  );
}

/**
 * The manifest, sent after the images it names (an ingest that reads it then finds them all),
 * with what it and the folder disagree on: rows under the prefix naming images neither sent nor
 * in the bucket (ingest leaves them out), and the folder's files that no row names.
 */
async function sendManifest(ctx: UploadContext, m: LocalManifest, up: { dir: string; bucket: string; prefix: string; files: string[]; skipped: { rel: string; why: string }[]; there: Map<string, string> }): Promise<void> {
  const { bucket } = up;
  const notSent = new Map(up.skipped.map((s) => [s.rel, s.why]));
  const sent = new Set(up.files.filter((f) => !notSent.has(f)));
  const named = new Set<string>();
  const missing: string[] = [];
  const missingKeys: string[] = [];
  for (const { row, rel } of rowsUnder(m, bucket, up.prefix)) {
    named.add(rel);
    if (sent.has(rel) || up.there.has(row.key)) continue;
    const why = notSent.get(rel) ?? (existsSync(path.join(up.dir, rel)) ? 'upload leaves out files and folders whose names start with a dot' : undefined);
    missing.push(`line ${row.line}: "${printable(rel)}" ${why === undefined ? `is neither in ${up.dir} nor in the bucket` : `was not sent (${why})`}`);
    if (why === undefined) missingKeys.push(rel);
  }
  const unnamed = up.files.filter((f) => !named.has(f) && !notSent.has(f));
  const show = (list: string[]) => `${list.slice(0, 5).join('; ')}${list.length > 5 ? `; and ${list.length - 5} more` : ''}`;
  if (missing.length) ctx.out.write(`note: ${missing.length} of the manifest's rows name${missing.length === 1 ? 's an image' : ' images'} that ingest will not find (it leaves them out): ${show(missing)}\n`);
  const windows = backslashHint(missingKeys);
  if (windows) ctx.out.write(`note: ${printable(windows)}\n`);
  if (unnamed.length) ctx.out.write(`note: ${unnamed.length} of the folder's images ${unnamed.length === 1 ? 'is' : 'are'} named by no row of the manifest (an ingest of it leaves ${unnamed.length === 1 ? 'it' : 'them'} out): ${show(unnamed.map((f) => JSON.stringify(f)))}\n`);
  const url = `s3://${bucket}/${m.key}`;
  const md5 = createHash('md5').update(m.bytes).digest('hex');
  const fresh = up.there.get(m.key) !== md5;
  if (fresh) await ctx.services.store.putObject(bucket, m.key, m.bytes, m.format === 'csv' ? 'text/csv' : 'application/x-ndjson');
  const images = `it names ${m.rows.length} image${m.rows.length === 1 ? '' : 's'}`;
  ctx.out.write(`${fresh ? 'uploaded' : 'already there, the same bytes:'} the label manifest ${printable(url)} (${images}); next: transferline ingest ${shellQuote(printable(url))} --dataset NAME\n`);
}

function contentType(file: string): string {
  const ext = path.extname(file).toLowerCase();
  const types: Record<string, string> = { '.jpg': 'image/jpeg', '.jpeg': 'image/jpeg', '.png': 'image/png', '.webp': 'image/webp', '.gif': 'image/gif', '.avif': 'image/avif', '.tif': 'image/tiff', '.tiff': 'image/tiff' };
  return types[ext] ?? 'application/octet-stream';
}
