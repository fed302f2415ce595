import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { checksumPath, loadOrBuildOnnx } from './onnx-model.cache.js';

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
    // the graph and its checksum, in `sha256sum -c`'s format; no temp file left
    expect((await readdir(cacheDir)).sort()).toEqual(['efficientnet-b0-abc-1.onnx', 'efficientnet-b0-abc-1.onnx.sha256']);
    expect(await readFile(checksumPath(first.path), 'utf8')).toBe(`${createHash('sha256').update(Uint8Array.of(8, 1, 2, 3)).digest('hex')}  efficientnet-b0-abc-1.onnx\n`);
    expect(first.warning).toBeUndefined();
  });

  it('builds again for another key', async () => {
    const model = counter(Uint8Array.of(1));
    await loadOrBuildOnnx({ cacheDir, key: 'abc-1', build: model.build });
    const other = await loadOrBuildOnnx({ cacheDir, key: 'abc-2', build: model.build });
    expect(model.calls()).toBe(2);
    expect(other.built).toBe(true);
    expect((await readdir(cacheDir)).filter((n) => n.endsWith('.onnx')).sort()).toEqual(['efficientnet-b0-abc-1.onnx', 'efficientnet-b0-abc-2.onnx']);
  });

  it('survives racing builders: both build, one whole file remains', async () => {
    const model = counter(new Uint8Array(1 << 20).fill(7));
    const results = await Promise.all([1, 2, 3].map(() => loadOrBuildOnnx({ cacheDir, key: 'race', build: model.build })));
    expect(results.every((r) => r.bytes.length === 1 << 20)).toBe(true);
    expect((await readdir(cacheDir)).sort()).toEqual(['efficientnet-b0-race.onnx', 'efficientnet-b0-race.onnx.sha256']);
    expect((await readFile(results[0]!.path)).length).toBe(1 << 20);
    expect((await loadOrBuildOnnx({ cacheDir, key: 'race', build: model.build })).built).toBe(false);
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

  it('builds again over a cached graph that does not match its checksum (damaged: it may still parse, and give NaN), and says so', async () => {
    const first = await loadOrBuildOnnx({ cacheDir, key: 'd', build: () => new Uint8Array(4096).fill(3) });
    const damaged = new Uint8Array(4096).fill(3);
    damaged[2000] = 9;
    await writeFile(first.path, damaged);
    const model = counter(new Uint8Array(4096).fill(3));
    const again = await loadOrBuildOnnx({ cacheDir, key: 'd', build: model.build });
    expect(model.calls()).toBe(1);
    expect(again.built).toBe(true);
    expect(again.warning).toBe(`the cached ONNX graph ${first.path} does not match its checksum (${first.path}.sha256): damaged, so built again from the weights`);
    expect([...(await readFile(first.path))]).toEqual([...new Uint8Array(4096).fill(3)]);
    // mended: read from the cache from now on
    expect(await loadOrBuildOnnx({ cacheDir, key: 'd', build: model.build })).toMatchObject({ built: false });
    // a truncated one too
    await writeFile(first.path, new Uint8Array(100).fill(3));
    expect(await loadOrBuildOnnx({ cacheDir, key: 'd', build: model.build })).toMatchObject({ built: true, warning: expect.stringMatching(/does not match its checksum/) });
  });

  it('builds again, quietly, over a graph cached with no checksum (by an earlier version), and once', async () => {
    await loadOrBuildOnnx({ cacheDir, key: 'old', build: () => Uint8Array.of(5) });
    await rm(join(cacheDir, 'efficientnet-b0-old.onnx.sha256'));
    const model = counter(Uint8Array.of(5));
    const again = await loadOrBuildOnnx({ cacheDir, key: 'old', build: model.build });
    expect(again).toMatchObject({ built: true });
    expect(again.warning).toBeUndefined();
    expect(await loadOrBuildOnnx({ cacheDir, key: 'old', build: model.build })).toMatchObject({ built: false });
    expect(model.calls()).toBe(1);
  });

  it('builds again over a whole cached graph the runtime refused, when asked to, saying why', async () => {
    const first = await loadOrBuildOnnx({ cacheDir, key: 'r', build: () => Uint8Array.of(1, 2) });
    const again = await loadOrBuildOnnx({ cacheDir, key: 'r', build: () => Uint8Array.of(3, 4), rebuild: 'protobuf parsing failed' });
    expect(again).toMatchObject({ built: true, warning: `the cached ONNX graph ${first.path} was refused (protobuf parsing failed): built again from the weights` });
    expect([...(await loadOrBuildOnnx({ cacheDir, key: 'r', build: () => Uint8Array.of(0) })).bytes]).toEqual([3, 4]);
  });

  it('gives the graph it built, with a warning, when the folder cannot be written (a read-only volume)', async () => {
    // (as root no permission stops a write: a file where the folder should be does)
    const file = join(root, 'a-file');
    await writeFile(file, 'x');
    const model = counter(Uint8Array.of(7, 7));
    const got = await loadOrBuildOnnx({ cacheDir: join(file, 'models'), key: 'ro', build: model.build });
    expect([...got.bytes]).toEqual([7, 7]);
    expect(got.built).toBe(true);
    expect(got).toMatchObject({ built: true, uncached: true });
    expect(got.warning).toMatch(new RegExp(`^the ONNX graph could not be cached in ${join(file, 'models')} \\(ENOTDIR: not a directory, .+\\): it is built again at every start; set TL_MODEL_CACHE_DIR to a folder this process can write$`));
    // the folder named is itself a file (a review: EEXIST was thrown, and the graph lost)
    const itself = await loadOrBuildOnnx({ cacheDir: file, key: 'ro', build: model.build });
    expect(itself).toMatchObject({ built: true, uncached: true, warning: expect.stringMatching(/^the ONNX graph could not be cached in \S+ \(EEXIST: file already exists, mkdir .+\): it is built again/) });
    expect([...itself.bytes]).toEqual([7, 7]);
  });

  it('removes the temp files a writer killed mid-write left, once they are old, and leaves a fresh one (a write in progress) be', async () => {
    await loadOrBuildOnnx({ cacheDir, key: 't', build: () => Uint8Array.of(1) });
    const old = join(cacheDir, 'efficientnet-b0-t.onnx.5061.0b1c.tmp');
    const fresh = join(cacheDir, 'efficientnet-b0-t.onnx.5062.0b1d.tmp');
    const other = join(cacheDir, 'efficientnet-b0-u.onnx.5063.0b1e.tmp');
    for (const f of [old, fresh, other]) await writeFile(f, new Uint8Array(10));
    const hourAgo = new Date(Date.now() - 3_600_000);
    await utimes(old, hourAgo, hourAgo);
    await utimes(other, hourAgo, hourAgo);
    // swept at a read of the cache too, not only after a build (a review: a good graph kept them for ever)
    expect(await loadOrBuildOnnx({ cacheDir, key: 't', build: () => Uint8Array.of(1) })).toMatchObject({ built: false });
    expect((await readdir(cacheDir)).sort()).toEqual(['efficientnet-b0-t.onnx', 'efficientnet-b0-t.onnx.5062.0b1d.tmp', 'efficientnet-b0-t.onnx.sha256', 'efficientnet-b0-u.onnx.5063.0b1e.tmp']);
  });
});
