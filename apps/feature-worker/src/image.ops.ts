import sharp from 'sharp';
import { PermanentError } from '@transferline/shared';

export interface PrepareOptions {
  /** Output side in pixels (the model's input size). */
  size: number;
  /** Decompression-bomb guard: images with more pixels are refused before decoding. */
  maxInputPixels: number;
  /** Colour that transparent pixels are flattened onto. */
  background: { r: number; g: number; b: number };
}

/**
 * Decode → EXIF orientation → sRGB → alpha flattened → squashed to size×size, as raw RGB uint8
 * (HWC, what the model's input layer takes). "Squash" is what Keras
 * `image_dataset_from_directory` does by default, so the classic recipe's numbers carry over.
 * Throws PermanentError with a reason code when the bytes are not an image we can read.
 */
export async function prepareImage(bytes: Uint8Array, o: PrepareOptions): Promise<Uint8Array> {
  if (bytes.length === 0) throw new PermanentError('empty', 'the object is zero bytes');
  try {
    const { data, info } = await sharp(bytes, {
      limitInputPixels: o.maxInputPixels,
      // Some damaged images still decode partially; a training set is better without them.
      failOn: 'error',
      animated: false,
    })
      .rotate()
      .flatten({ background: o.background })
      .toColourspace('srgb')
      .resize(o.size, o.size, { fit: 'fill' })
      .removeAlpha()
      .raw()
      .toBuffer({ resolveWithObject: true });
    if (info.channels !== 3 || info.width !== o.size || info.height !== o.size) {
      throw new PermanentError('undecodable', `decoded to ${info.width}×${info.height}×${info.channels}, expected ${o.size}×${o.size}×3`);
    }
    return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  } catch (err) {
    if (err instanceof PermanentError) throw err;
    throw classifySharpError(err as Error);
  }
}

/** Maps libvips/sharp messages to bounded reason codes. */
export function classifySharpError(err: Error): PermanentError {
  const m = err.message;
  if (/pixel limit/i.test(m)) return new PermanentError('too-many-pixels', m);
  if (/unsupported image format/i.test(m)) return new PermanentError('unsupported-format', m);
  if (/premature end|truncated|unexpected end|not enough data|EOF/i.test(m)) return new PermanentError('truncated', m);
  return new PermanentError('undecodable', m);
}
