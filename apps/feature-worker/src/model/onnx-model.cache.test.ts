import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadOrBuildOnnx } from './onnx-model.cache.js';

describe('loadOrBuildOnnx', () => {
  let root: string;
  let cacheDir: string;

  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'onnx-cache-'));
    cacheDir = join(root, 'models'); // missing on purpose: the cache creates it
  });

  afterEach(async () => {
    await rm(root, { recursive: true, force: true });
  });

  function counter(bytes: Uint8Array): { build: () => Promise<Uint8Array>; calls: () => number } {
    let calls = 0;
    return {
      build: async () => {
        calls += 1;
        return bytes;
      },
      calls: () => calls,
    };
  }

  it('builds once, then reads the file', async () => {
    const model = counter(Uint8Array.of(8, 1, 2, 3));
    const first = await loadOrBuildOnnx({ cacheDir, key: 'abc-1', build: model.build });
    const second = await loadOrBuildOnnx({ cacheDir, key: 'abc-1', build: model.build });

    expect(model.calls()).toBe(1);
    expect(first).toMatchObject({ built: true, path: join(cacheDir, 'efficientnet-b0-abc-1.onnx') });
    expect(second).toMatchObject({ built: false, path: first.path });
    expect([...second.bytes]).toEqual([8, 1, 2, 3]);
    expect([...(await readFile(first.path))]).toEqual([8, 1, 2, 3]);
    expect(await readdir(cacheDir)).toEqual(['efficientnet-b0-abc-1.onnx']); // no temp file left
  });

  it('builds again for another key', async () => {
    const model = counter(Uint8Array.of(1));
    await loadOrBuildOnnx({ cacheDir, key: 'abc-1', build: model.build });
    const other = await loadOrBuildOnnx({ cacheDir, key: 'abc-2', build: model.build });
    expect(model.calls()).toBe(2);
    expect(other.built).toBe(true);
    expect((await readdir(cacheDir)).sort()).toEqual(['efficientnet-b0-abc-1.onnx', 'efficientnet-b0-abc-2.onnx']);
  });

  it('survives racing builders: both build, one whole file remains', async () => {
    const model = counter(new Uint8Array(1 << 20).fill(7));
    const results = await Promise.all([1, 2, 3].map(() => loadOrBuildOnnx({ cacheDir, key: 'race', build: model.build })));
    expect(results.every((r) => r.bytes.length === 1 << 20)).toBe(true);
    expect(await readdir(cacheDir)).toEqual(['efficientnet-b0-race.onnx']);
    expect((await readFile(results[0]!.path)).length).toBe(1 << 20);
  });

  it('rebuilds over an empty file and rejects a key that is not a plain file name', async () => {
    await loadOrBuildOnnx({ cacheDir, key: 'k', build: () => Uint8Array.of(1) });
    await writeFile(join(cacheDir, 'efficientnet-b0-k.onnx'), new Uint8Array(0));
    const again = await loadOrBuildOnnx({ cacheDir, key: 'k', build: () => Uint8Array.of(2) });
    expect(again.built).toBe(true);
    expect([...again.bytes]).toEqual([2]);
    await expect(loadOrBuildOnnx({ cacheDir, key: '../x', build: () => Uint8Array.of(1) })).rejects.toThrow(/cache key/);
  });

  it('writes nothing when the build fails', async () => {
    await expect(
      loadOrBuildOnnx({ cacheDir, key: 'bad', build: () => Promise.reject(new Error('export failed')) }),
    ).rejects.toThrow('export failed');
    await expect(readdir(cacheDir)).rejects.toThrow(/ENOENT/);
  });
});
