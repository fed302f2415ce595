import { createHash, randomUUID } from 'node:crypto';
import { mkdir, open, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

/** Options of {@link loadOrBuildOnnx}. */
export interface LoadOrBuildOnnxOptions {
  /** Folder of the cached models; created if missing. */
  cacheDir: string;
  /**
   * Identifies the exact graph: must change with the weights, the input size and
   * `ONNX_BUILDER_VERSION`. Letters, digits, `.`, `_` and `-` only (it becomes a file name).
   */
  key: string;
  /** Makes the model bytes when the cache has none for `key`. */
  build: () => Uint8Array | Promise<Uint8Array>;
  /**
   * Why the cached graph must not be used even though it matches its checksum (ONNX Runtime
   * refused it): it is built again and written over. Undefined: a whole cached graph is used.
   */
  rebuild?: string;
}

/** What {@link loadOrBuildOnnx} returns. */
export interface LoadedOnnxModel {
  bytes: Uint8Array;
  /** `<cacheDir>/efficientnet-b0-<key>.onnx` */
  path: string;
  /** True when this call built the model, false when it read the cache. */
  built: boolean;
  /**
   * Something the operator should hear: a cached graph that was damaged and is built again, or
   * a built graph that could not be cached (a read-only folder: built again at every start).
   */
  warning?: string;
  /** True when the graph built could not be written to the cache (the warning says why). */
  uncached?: boolean;
}

const KEY_PATTERN = /^[A-Za-z0-9._-]+$/;
/** A temp file older than this was left by a writer that died (a write takes about a second). */
const STALE_TEMP_MS = 10 * 60_000;

/** The checksum file beside a cached graph: `sha256sum -c` checks it. */
export function checksumPath(path: string): string {
  return `${path}.sha256`;
}

/**
 * Returns the cached ONNX model for `key`, building and caching it first if absent, or if the
 * cached file does not match the SHA-256 written beside it (a damaged or truncated file, or one
 * cached by a version before the checksum): a graph that still parses but has wrong bytes would
 * give every image a wrong (or NaN) embedding, and one that does not parse would send every
 * worker to a slower backend, start after start.
 *
 * Safe across processes without a lock: a writer fills a temp file in the same folder, syncs it
 * and renames it into place, so readers see either no file or a whole one; the checksum follows
 * the same way. Two processes that miss at once both build and both rename; the last rename wins,
 * and the bytes are the same. A reader between a graph's rename and its checksum's builds again.
 */
export async function loadOrBuildOnnx(o: LoadOrBuildOnnxOptions): Promise<LoadedOnnxModel> {
  if (!KEY_PATTERN.test(o.key)) {
    throw new Error(`ONNX cache key ${JSON.stringify(o.key)} must match ${String(KEY_PATTERN)}`);
  }
  const path = join(o.cacheDir, `efficientnet-b0-${o.key}.onnx`);
  await sweepStaleTemps(path);
  const cached = await readIfPresent(path);
  let why: string | undefined;
  if (cached !== null) {
    const expected = (await readIfPresent(checksumPath(path)).then((b) => b && Buffer.from(b).toString('utf8').trim().split(/\s+/)[0]))?.toLowerCase();
    const actual = sha256(cached);
    if (expected === actual && o.rebuild === undefined) return { bytes: cached, path, built: false };
    // (no checksum: cached by an earlier version, built again once and quietly)
    if (o.rebuild !== undefined) why = `the cached ONNX graph ${path} was refused (${o.rebuild}): built again from the weights`;
    else if (expected !== undefined) why = `the cached ONNX graph ${path} does not match its checksum (${checksumPath(path)}): damaged, so built again from the weights`;
  }

  const bytes = await o.build();
  if (bytes.length === 0) throw new Error(`ONNX cache: build() for key '${o.key}' returned no bytes`);
  try {
    await mkdir(o.cacheDir, { recursive: true });
    await writeWhole(path, bytes);
    await writeWhole(checksumPath(path), Buffer.from(`${sha256(bytes)}  ${basename(path)}\n`));
  } catch (error) {
    // The cache only saves a build: the graph built is used all the same (a read-only volume, a
    // file where the folder should be, a full disk).
    const unwritable = `the ONNX graph could not be cached in ${o.cacheDir} (${(error as Error).message}): it is built again at every start; set TL_MODEL_CACHE_DIR to a folder this process can write`;
    return { bytes, path, built: true, uncached: true, warning: why ? `${why}; ${unwritable}` : unwritable };
  }
  return { bytes, path, built: true, ...(why && { warning: why }) };
}

function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** Writes `bytes` to `path` through a synced temp file renamed into place: readers see no file or a whole one. */
async function writeWhole(path: string, bytes: Uint8Array): Promise<void> {
  const temp = `${path}.${process.pid}.${randomUUID()}.tmp`;
  try {
    const file = await open(temp, 'wx');
    try {
      await file.writeFile(bytes);
      // Without the sync a crash after the rename could leave a named but empty file.
      await file.sync();
    } finally {
      await file.close();
    }
    await rename(temp, path);
  } catch (error) {
    await rm(temp, { force: true });
    throw error;
  }
}

/** Temp files of this graph (or its checksum) that a writer killed mid-write left behind. */
async function sweepStaleTemps(path: string): Promise<void> {
  const dir = dirname(path);
  const prefix = `${basename(path)}.`;
  const names = await readdir(dir).catch(() => [] as string[]);
  await Promise.all(
    names
      .filter((n) => n.startsWith(prefix) && n.endsWith('.tmp'))
      .map(async (n) => {
        const s = await stat(join(dir, n)).catch(() => undefined);
        if (s && Date.now() - s.mtimeMs > STALE_TEMP_MS) await rm(join(dir, n), { force: true });
      }),
  );
}

async function readIfPresent(path: string): Promise<Uint8Array | null> {
  try {
    const buffer = await readFile(path);
    // An empty file is not a model (e.g. left by a copy that failed): rebuild over it.
    return buffer.length === 0 ? null : new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength);
  } catch (error) {
    // (ENOTDIR: a file where the folder should be, which the write then says)
    if (['ENOENT', 'ENOTDIR'].includes((error as NodeJS.ErrnoException).code ?? '')) return null;
    throw error;
  }
}
