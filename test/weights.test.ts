import { createHash } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startEmbeddedS3, type EmbeddedS3 } from '../apps/producer/src/embedded/s3.server.js';
import { loadConfig, ObjectStore, resolveWeights, WeightsUnavailableError, type Config } from '../packages/shared/src/index.js';
import { guardLeaks } from './support/leak-guard.js';

guardLeaks();

const payload = Buffer.from(Array.from({ length: 300_000 }, (_, i) => (i * 31) % 251));
const payloadMd5 = createHash('md5').update(payload).digest('hex');
let dir: string;
let server: http.Server;
let baseUrl: string;
let hits = 0;
let s3: EmbeddedS3;

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'tl-weights-'));
  server = http.createServer((req, res) => {
    hits++;
    if (req.url === '/w.h5') {
      res.writeHead(200, { 'content-length': payload.length });
      // in pieces, so progress is reported more than once
      res.write(payload.subarray(0, 100_000));
      setTimeout(() => res.end(payload.subarray(100_000)), 20);
    } else if (req.url === '/cut.h5') {
      res.writeHead(200, { 'content-length': payload.length });
      res.end(payload.subarray(0, 1000));
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  s3 = await startEmbeddedS3({ directory: path.join(dir, 's3'), port: 0, buckets: ['models'] });
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
  await s3.stop();
  await rm(dir, { recursive: true, force: true });
});

function embedConfig(env: Record<string, string>): Config['embed'] {
  return loadConfig({ TL_MODEL_WEIGHTS_MD5: payloadMd5, ...env }).embed;
}

describe('resolveWeights', () => {
  it('downloads over http(s) with progress into the cache, verified, and uses the cache afterwards', async () => {
    const e = embedConfig({ TL_MODEL_WEIGHTS_SOURCE: `${baseUrl}/w.h5`, TL_MODEL_CACHE_DIR: path.join(dir, 'c1') });
    const progress: number[] = [];
    const first = await resolveWeights(e, { onProgress: (r) => progress.push(r) });
    expect(first.downloaded).toBe(true);
    expect(first.md5).toBe(payloadMd5);
    expect(Buffer.compare(await readFile(first.path), payload)).toBe(0);
    expect(progress.length).toBeGreaterThanOrEqual(2);
    expect(progress.at(-1)).toBe(payload.length);
    const before = hits;
    const second = await resolveWeights(e);
    expect(second.downloaded).toBe(false);
    expect(hits).toBe(before);
  });

  it('refuses a file whose MD5 is wrong and leaves no cache file behind', async () => {
    const cacheDir = path.join(dir, 'c2');
    const e = embedConfig({ TL_MODEL_WEIGHTS_SOURCE: `${baseUrl}/w.h5`, TL_MODEL_CACHE_DIR: cacheDir, TL_MODEL_WEIGHTS_MD5: '0'.repeat(32) });
    await expect(resolveWeights(e)).rejects.toThrow(/have MD5 [0-9a-f]{32}, expected 0{32}/);
    await expect(readFile(path.join(cacheDir, 'efficientnet-b0-' + '0'.repeat(32) + '.h5'))).rejects.toThrow();
  });

  it('says where to put the file when the download fails (offline, truncated, 404)', async () => {
    for (const url of ['http://127.0.0.1:1/w.h5', `${baseUrl}/cut.h5`, `${baseUrl}/missing.h5`]) {
      const cacheDir = path.join(dir, 'c3');
      const e = embedConfig({ TL_MODEL_WEIGHTS_SOURCE: url, TL_MODEL_CACHE_DIR: cacheDir });
      const err = await resolveWeights(e).then(() => undefined, (x: unknown) => x as Error);
      expect(err).toBeInstanceOf(WeightsUnavailableError);
      expect(err!.message).toContain(`could not get the EfficientNet-B0 weights from ${url}`);
      expect(err!.message).toContain(`at ${path.join(cacheDir, `efficientnet-b0-${payloadMd5}.h5`)}`);
      expect(err!.message).toContain('TL_MODEL_WEIGHTS=random');
    }
  });

  it('reads a local path and an s3:// object', async () => {
    const file = path.join(dir, 'local.h5');
    await writeFile(file, payload);
    const local = await resolveWeights(embedConfig({ TL_MODEL_WEIGHTS_SOURCE: file, TL_MODEL_CACHE_DIR: path.join(dir, 'c4') }));
    expect(local.md5).toBe(payloadMd5);

    const store = new ObjectStore({ endpoint: s3.endpoint, region: 'us-east-1', accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey, forcePathStyle: true });
    try {
      await store.putObject('models', 'keras/effnet.h5', payload);
      const fromS3 = await resolveWeights(embedConfig({ TL_MODEL_WEIGHTS_SOURCE: 's3://models/keras/effnet.h5', TL_MODEL_CACHE_DIR: path.join(dir, 'c5') }), { store });
      expect(fromS3.downloaded).toBe(true);
      expect(Buffer.compare(Buffer.from(fromS3.bytes), payload)).toBe(0);
    } finally {
      store.close();
    }
  });

  it('replaces a corrupted cache file instead of using it', async () => {
    const cacheDir = path.join(dir, 'c6');
    const e = embedConfig({ TL_MODEL_WEIGHTS_SOURCE: `${baseUrl}/w.h5`, TL_MODEL_CACHE_DIR: cacheDir });
    await resolveWeights(e);
    const cached = path.join(cacheDir, `efficientnet-b0-${payloadMd5}.h5`);
    await writeFile(cached, payload.subarray(0, 10));
    const again = await resolveWeights(e);
    expect(again.downloaded).toBe(true);
    expect((await readFile(cached)).length).toBe(payload.length);
  });
});
