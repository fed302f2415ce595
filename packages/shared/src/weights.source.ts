import { createHash } from 'node:crypto';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Config } from './config.js';
import { OFFICIAL_WEIGHTS } from './config.js';
import { parseS3ObjectUrl, type ObjectStore } from './s3.client.js';

/** Model weights that could not be had; the message says where to put the file. */
export class WeightsUnavailableError extends Error {
  override readonly name = 'WeightsUnavailableError';
}

export interface WeightsFile {
  bytes: Uint8Array;
  md5: string;
  /** where the bytes were read from: the cache file, or the configured path */
  path: string;
  /** true when this call downloaded them */
  downloaded: boolean;
}

export type DownloadProgress = (received: number, total: number | undefined) => void;

export function md5(bytes: Uint8Array): string {
  return createHash('md5').update(bytes).digest('hex');
}

/** The cache file for weights with this MD5 (official ones keep Keras's file name). */
export function cachedWeightsPath(cacheDir: string, expectedMd5: string): string {
  return path.join(cacheDir, expectedMd5 === OFFICIAL_WEIGHTS.md5 ? OFFICIAL_WEIGHTS.fileName : `efficientnet-b0-${expectedMd5}.h5`);
}

function howToProvide(e: Config['embed']): string {
  return (
    `Put ${path.basename(cachedWeightsPath(e.cacheDir, e.weightsMd5))} (MD5 ${e.weightsMd5}, from ${OFFICIAL_WEIGHTS.url}) at ` +
    `${cachedWeightsPath(e.cacheDir, e.weightsMd5)}, or set TL_MODEL_WEIGHTS_SOURCE to a file path, an https:// URL or an s3:// object ` +
    'that holds it; TL_MODEL_WEIGHTS=random runs with seeded random weights instead (and says so everywhere).'
  );
}

/**
 * The EfficientNet-B0 weights file named by config, verified by MD5: from the cache folder when
 * it is there already, else from `TL_MODEL_WEIGHTS_SOURCE` (a path, an http(s):// URL or an
 * s3:// object), copied into the cache. A download is streamed with progress, written to a
 * temporary file and renamed only once its MD5 is right, so an interrupted or corrupted download
 * never leaves a bad cache file.
 */
export async function resolveWeights(
  e: Config['embed'],
  deps: { store?: Pick<ObjectStore, 'getObject'>; onProgress?: DownloadProgress } = {},
): Promise<WeightsFile> {
  const cacheFile = cachedWeightsPath(e.cacheDir, e.weightsMd5);
  const cached = await readFile(cacheFile).catch(() => undefined);
  if (cached) {
    const got = md5(cached);
    if (got === e.weightsMd5) return { bytes: cached, md5: got, path: cacheFile, downloaded: false };
    // A wrong file in the cache is replaced below, never used.
  }
  const source = e.weightsSource;
  let bytes: Uint8Array;
  try {
    if (/^https?:\/\//.test(source)) bytes = await download(source, deps.onProgress);
    else if (source.startsWith('s3://')) {
      if (!deps.store) throw new Error('no S3 client to read an s3:// weights source');
      const { bucket, key } = parseS3ObjectUrl(source);
      bytes = await deps.store.getObject(bucket, key);
    } else {
      const file = source.startsWith('file:') ? fileURLToPath(source) : source;
      bytes = await readFile(file);
      const got = md5(bytes);
      if (got !== e.weightsMd5) throw new WeightsUnavailableError(md5Mismatch(source, got, e.weightsMd5));
      return { bytes, md5: got, path: path.resolve(file), downloaded: false };
    }
  } catch (err) {
    if (err instanceof WeightsUnavailableError) throw err;
    const cause = (err as Error & { cause?: Error }).cause;
    const why = `${(err as Error).message}${cause?.message ? ` (${cause.message})` : ''}`;
    throw new WeightsUnavailableError(`could not get the EfficientNet-B0 weights from ${source}: ${why}. ${howToProvide(e)}`);
  }
  const got = md5(bytes);
  if (got !== e.weightsMd5) throw new WeightsUnavailableError(md5Mismatch(source, got, e.weightsMd5));
  await mkdir(e.cacheDir, { recursive: true });
  const tmp = `${cacheFile}.${process.pid}.part`;
  await writeFile(tmp, bytes);
  await rename(tmp, cacheFile).catch(async (err: unknown) => {
    await rm(tmp, { force: true });
    throw err;
  });
  return { bytes, md5: got, path: cacheFile, downloaded: true };
}

function md5Mismatch(source: string, got: string, expected: string): string {
  return (
    `the weights from ${source} have MD5 ${got}, expected ${expected}: the file is truncated, corrupted or not the one configured ` +
    '(to use other weights on purpose, set TL_MODEL_WEIGHTS_MD5 to their MD5)'
  );
}

async function download(url: string, onProgress?: DownloadProgress): Promise<Uint8Array> {
  const res = await fetch(url, { signal: AbortSignal.timeout(10 * 60_000) });
  if (!res.ok || !res.body) throw new Error(`HTTP ${res.status} ${res.statusText}`);
  const total = Number(res.headers.get('content-length')) || undefined;
  const chunks: Uint8Array[] = [];
  let received = 0;
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    chunks.push(chunk);
    received += chunk.length;
    onProgress?.(received, total);
  }
  if (total !== undefined && received !== total) throw new Error(`download ended at ${received} of ${total} bytes`);
  return Buffer.concat(chunks, received);
}
