import { randomUUID } from 'node:crypto';
import { mkdir, open, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';

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
}

/** What {@link loadOrBuildOnnx} returns. */
export interface LoadedOnnxModel {
  bytes: Uint8Array;
  /** `<cacheDir>/efficientnet-b0-<key>.onnx` */
  path: string;
  /** True when this call built (and wrote) the model, false when it read the cache. */
  built: boolean;
}

const KEY_PATTERN = /^[A-Za-z0-9._-]+$/;

/**
 * Returns the cached ONNX model for `key`, building and caching it first if absent.
 *
 * Safe across processes without a lock: a writer fills a temp file in the same folder, syncs it
 * and renames it into place, so readers see either no file or a whole one. Two processes that
 * miss at once both build and both rename; the last rename wins, and the bytes are the same.
 */
export async function loadOrBuildOnnx(o: LoadOrBuildOnnxOptions): Promise<LoadedOnnxModel> {
  if (!KEY_PATTERN.test(o.key)) {
    throw new Error(`ONNX cache key ${JSON.stringify(o.key)} must match ${String(KEY_PATTERN)}`);
  }
  const path = join(o.cacheDir, `efficientnet-b0-${o.key}.onnx`);
  const cached = await readIfPresent(path);
  if (cached !== null) return { bytes: cached, path, built: false };

  const bytes = await o.build();
  if (bytes.length === 0) throw new Error(`ONNX cache: build() for key '${o.key}' returned no bytes`);
  await mkdir(o.cacheDir, { recursive: true });
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
  return { bytes, path, built: true };
}

async function readIfPresent(path: string): Promise<Uint8Array | null> {
  try {
    const buffer = await readFile(path);
    // An empty file is not a model (e.g. left by a copy that failed): rebuild over it.
    return buffer.length === 0 ? null : new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw error;
  }
}
