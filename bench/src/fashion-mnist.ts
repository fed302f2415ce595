import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { gunzipSync } from 'node:zlib';

export const FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist';
export const FASHION_MNIST_LABELS = ['t-shirt', 'trouser', 'pullover', 'dress', 'coat', 'sandal', 'shirt', 'sneaker', 'bag', 'ankle-boot'];

/** Reads Debian's dataset-fashion-mnist (gzipped IDX, big-endian): images [n, 28·28] uint8 and labels. */
export async function readFashionMnist(split: 'train' | 't10k'): Promise<{ images: Uint8Array; labels: Uint8Array; n: number }> {
  const read = async (kind: string) => {
    const file = path.join(FASHION_MNIST_DIR, `${split}-${kind}-idx${kind === 'images' ? 3 : 1}-ubyte.gz`);
    try {
      return gunzipSync(await readFile(file));
    } catch (err) {
      throw new Error(`cannot read ${file} (${(err as Error).message}): apt-get install dataset-fashion-mnist`);
    }
  };
  const img = await read('images');
  const lab = await read('labels');
  const view = new DataView(img.buffer, img.byteOffset);
  if (view.getUint32(0) !== 0x803) throw new Error('fashion-mnist: bad image file magic');
  const n = view.getUint32(4);
  return { images: img.subarray(16, 16 + n * 784), labels: lab.subarray(8, 8 + n), n };
}
