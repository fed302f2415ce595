/**
 * The numpy `.npy` format (version 1.0), for little-endian float32 2-D arrays, so that cached
 * embeddings open with `numpy.load` as they are. Spec: numpy/lib/format.py.
 */
const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // \x93NUMPY

/** Encodes a row-major float32 matrix [rows, cols] as `.npy` bytes. */
export function encodeNpyFloat32(data: Float32Array, rows: number, cols: number): Uint8Array {
  if (data.length !== rows * cols) throw new Error(`npy: ${data.length} values do not make a ${rows}×${cols} matrix`);
  let header = `{'descr': '<f4', 'fortran_order': False, 'shape': (${rows}, ${cols}), }`;
  // magic(6) + version(2) + header length(2) + header, padded with spaces to a multiple of 64, ending in \n
  const unpadded = 10 + header.length + 1;
  header += ' '.repeat((64 - (unpadded % 64)) % 64) + '\n';
  const out = new Uint8Array(10 + header.length + data.byteLength);
  out.set(MAGIC, 0);
  out[6] = 1;
  out[7] = 0;
  new DataView(out.buffer).setUint16(8, header.length, true);
  for (let i = 0; i < header.length; i++) out[10 + i] = header.charCodeAt(i);
  const body = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (isLittleEndian()) out.set(body, 10 + header.length);
  else {
    const view = new DataView(out.buffer, 10 + header.length);
    data.forEach((v, i) => view.setFloat32(i * 4, v, true));
  }
  return out;
}

/** Decodes `.npy` bytes holding a little-endian float32 2-D C-order array (a view on `bytes` when aligned). */
export function decodeNpyFloat32(bytes: Uint8Array): { data: Float32Array; rows: number; cols: number } {
  if (bytes.length < 10 || MAGIC.some((b, i) => bytes[i] !== b)) throw new Error('npy: not a .npy file (bad magic)');
  const major = bytes[6];
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLen = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const start = major === 1 ? 10 : 12;
  const header = new TextDecoder('latin1').decode(bytes.subarray(start, start + headerLen));
  if (!/'descr':\s*'<f4'/.test(header)) throw new Error(`npy: only little-endian float32 is supported, header ${header.trim()}`);
  if (/'fortran_order':\s*True/.test(header)) throw new Error('npy: Fortran-order arrays are not supported');
  const shape = /'shape':\s*\((\d+),\s*(\d+)\)/.exec(header);
  if (!shape) throw new Error(`npy: expected a 2-D shape, header ${header.trim()}`);
  const rows = Number(shape[1]);
  const cols = Number(shape[2]);
  const offset = start + headerLen;
  const expected = rows * cols * 4;
  if (bytes.length - offset !== expected) throw new Error(`npy: truncated: ${bytes.length - offset} data bytes, expected ${expected}`);
  // A view when the payload is 4-byte aligned (no copy of a large shard), else an aligned copy.
  const start4 = bytes.byteOffset + offset;
  if (isLittleEndian() && start4 % 4 === 0) return { data: new Float32Array(bytes.buffer, start4, rows * cols), rows, cols };
  const data = new Float32Array(rows * cols);
  new Uint8Array(data.buffer).set(bytes.subarray(offset, offset + expected));
  if (!isLittleEndian()) {
    const dv = new DataView(bytes.buffer, bytes.byteOffset + offset, expected);
    for (let i = 0; i < data.length; i++) data[i] = dv.getFloat32(i * 4, true);
  }
  return { data, rows, cols };
}

function isLittleEndian(): boolean {
  return new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
}
