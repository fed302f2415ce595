import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { runPython } from '../../../test/support/python.js';
import { decodeNpyFloat32, encodeNpyFloat32 } from './npy.format.js';

const dir = mkdtempSync(path.join(os.tmpdir(), 'tl-npy-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('npy format', () => {
  it('round-trips a float32 matrix', () => {
    const data = Float32Array.from({ length: 3 * 5 }, (_, i) => i * 0.5 - 3);
    const out = decodeNpyFloat32(encodeNpyFloat32(data, 3, 5));
    expect(out.rows).toBe(3);
    expect(out.cols).toBe(5);
    expect([...out.data]).toEqual([...data]);
  });

  it('writes files numpy.load reads as they are', () => {
    const data = Float32Array.from({ length: 4 * 1280 }, (_, i) => Math.sin(i));
    const file = path.join(dir, 'a.npy');
    writeFileSync(file, encodeNpyFloat32(data, 4, 1280));
    const res = JSON.parse(runPython('import numpy as np,sys,json; a=np.load(sys.argv[1]); print(json.dumps([list(a.shape), str(a.dtype), float(a[3,1279]), float(a.sum(dtype=np.float64))]))', [file]));
    expect(res[0]).toEqual([4, 1280]);
    expect(res[1]).toBe('float32');
    expect(res[2]).toBeCloseTo(data[4 * 1280 - 1]!, 6);
    expect(res[3]).toBeCloseTo(data.reduce((a, b) => a + b, 0), 2);
  });

  it('reads files numpy.save writes', () => {
    const file = path.join(dir, 'b.npy');
    runPython('import numpy as np,sys; np.save(sys.argv[1], np.arange(6, dtype="<f4").reshape(2,3) / 4)', [file]);
    const out = decodeNpyFloat32(readFileSync(file));
    expect([out.rows, out.cols]).toEqual([2, 3]);
    expect([...out.data]).toEqual([0, 0.25, 0.5, 0.75, 1, 1.25]);
  });

  it('refuses what it cannot read, with a reason', () => {
    expect(() => decodeNpyFloat32(new Uint8Array([1, 2, 3]))).toThrow(/not a .npy/);
    const good = encodeNpyFloat32(new Float32Array(6), 2, 3);
    expect(() => decodeNpyFloat32(good.subarray(0, good.length - 4))).toThrow(/truncated/);
    expect(() => encodeNpyFloat32(new Float32Array(5), 2, 3)).toThrow(/do not make/);
  });
});
