import sharp, { type OutputInfo } from 'sharp';
import { PermanentError } from '@transferline/shared';
import { VipsErrorAttribution } from './vips-errors.js';

/**
 * How a non-square image becomes size×size. `squash` scales each axis on its own (the whole
 * picture, aspect ratio lost: what Keras `image_dataset_from_directory` does by default);
 * `crop` scales the short side to size and cuts the centre (aspect kept, edges lost).
 */
export type ResizePolicy = 'squash' | 'crop';

/** libvips reduction kernels worth choosing between for a model input. */
export type ResizeKernel = 'linear' | 'cubic' | 'mitchell' | 'lanczos3';

/**
 * The kernel every image is resized with (see PrepareOptions.kernel); an exported model names it,
 * so code outside transferline can prepare its input the same way.
 */
export const RESIZE_KERNEL: ResizeKernel = 'linear';

export interface PrepareOptions {
  /** Output side in pixels (the model's input size). */
  size: number;
  /** Decompression-bomb guard: images with more pixels are refused before decoding. */
  maxInputPixels: number;
  /** Colour that transparent pixels are flattened onto. */
  background: { r: number; g: number; b: number };
  /** Default `squash`. Part of the embedder id, so embeddings of two policies never mix. */
  resize?: ResizePolicy;
  /**
   * Default `linear`: an antialiased triangle filter whose support grows with the reduction
   * (PIL's and torchvision's `bilinear` with antialias). On 640×480 JPEGs it is ~25% faster
   * than libvips's default lanczos3, and what the sharper kernel adds is detail the network
   * does not use at 224 px. Exposed for the benchmark, not in config.
   */
  kernel?: ResizeKernel;
  /** Longest time libvips may spend on one image before it fails with `decode-timeout`. */
  timeoutSeconds?: number;
}

/** Formats this worker decodes (HEIC only where the sharp build has an HEVC decoder). */
export type ImageFormat = 'jpeg' | 'png' | 'webp' | 'gif' | 'tiff' | 'avif' | 'heic' | 'heif';

export type Sniffed = { supported: true; format: ImageFormat } | { supported: false; format: string };

/**
 * Process-wide sharp settings, applied once at role start. `concurrency` is libvips's threads
 * per image (0 keeps sharp's default); the worker already runs several images at once.
 * Every object is new bytes, so libvips's operation cache could never hit: it would only hold
 * memory, so it is turned off.
 */
export function configureSharp(o: { concurrency: number }): { concurrency: number } {
  if (o.concurrency > 0) sharp.concurrency(o.concurrency);
  sharp.cache(false);
  return { concurrency: sharp.concurrency() };
}

/** This process's decodes, for telling apart the failures of images that fail at once. */
export const vipsErrors = new VipsErrorAttribution();

/**
 * Decode → EXIF orientation → sRGB (embedded ICC profiles, CMYK, 16-bit and grey all end as
 * 8-bit sRGB) → alpha flattened onto the background → size×size by the resize policy, as raw
 * RGB uint8 (HWC, what the model's input layer takes). Large JPEGs are decoded at 1/2, 1/4 or
 * 1/8 scale (sharp's shrink-on-load, which keeps a margin: below a ~3× reduction, e.g. 640×480,
 * the JPEG is decoded whole); animations give their first frame. Throws PermanentError with a reason from IMAGE_FAILURE_REASONS when the bytes are
 * not an image we can read.
 */
export async function prepareImage(bytes: Uint8Array, o: PrepareOptions): Promise<Uint8Array> {
  if (bytes.length === 0) throw new PermanentError('empty', 'zero bytes (an empty object, or an empty upload)');
  const sniffed = sniffFormat(bytes);
  // Only the formats we mean to read reach a decoder: libvips would also try SVG (rendered with
  // whatever fonts this machine has, so two workers could turn the same bytes into different
  // pixels under one content hash) and whatever else its loaders accept.
  if (!sniffed) throw new PermanentError('not-an-image', `not an image (${describeStart(bytes)})`);
  if (!sniffed.supported) {
    throw new PermanentError('unsupported-format', `${sniffed.format} images are not supported: convert them to JPEG, PNG, WebP, AVIF, GIF or TIFF`);
  }
  const kernel = o.kernel ?? RESIZE_KERNEL;
  const timeoutSeconds = o.timeoutSeconds ?? 60;
  let started = 0;
  // A JPEG whose data is damaged inside (a bit flip, a broken copy) decodes all the same, with
  // grey or garbled bands where libjpeg lost its way, and says so only as a warning: JPEGs are
  // read failing on warnings, and one whose warnings tell of no damage is read again without.
  // (Other formats' warnings are mostly harmless: a PNG's "known incorrect sRGB profile".)
  const decode = (failOn: 'warning' | 'error') => {
    started = performance.now();
    const image = sharp(bytes, {
      limitInputPixels: o.maxInputPixels,
      failOn,
      autoOrient: true,
      // The first frame of an animation or the first page of a multi-page TIFF.
      animated: false,
    });
    // Grey + alpha would be flattened in grey, onto the background's red channel alone: such
    // formats work in sRGB from the start. Not JPEG (never alpha) nor WebP (always RGB): that
    // would turn off their shrink-on-load.
    if (sniffed.format !== 'jpeg' && sniffed.format !== 'webp') image.pipelineColourspace('srgb');
    return image
      .timeout({ seconds: timeoutSeconds })
      // No-ops for images without alpha; sRGB is sharp's output space unless told otherwise.
      .flatten({ background: o.background })
      .resize(o.size, o.size, o.resize === 'crop' ? { fit: 'cover', position: 'centre', kernel } : { fit: 'fill', kernel })
      .removeAlpha()
      .raw()
      .toBuffer({ resolveWithObject: true });
  };
  // A decode that ran out its time failed on its own account, whatever the shared error buffer
  // says by then (another image's lines, or nothing); any other failure is checked (vips-errors.ts).
  const timedOut = () => performance.now() - started >= timeoutSeconds * 1000;
  let out: { data: Buffer; info: OutputInfo };
  try {
    out = await vipsErrors.run(() => decode(sniffed.format === 'jpeg' ? 'warning' : 'error'), timedOut).catch(async (err: unknown) => {
      if (sniffed.format !== 'jpeg' || timedOut() || jpegDamage(err as Error) || looksTruncated('jpeg', bytes)) throw err;
      return vipsErrors.run(() => decode('error'), timedOut);
    });
  } catch (err) {
    if (timedOut()) throw new PermanentError('decode-timeout', `decoding took longer than ${timeoutSeconds} s`);
    const e = classifyDecodeError(err as Error, sniffed.format, bytes);
    if (e.reason !== 'too-many-pixels') throw e;
    // its size from the header alone (nothing decoded), and the setting that sets the limit; a
    // read of libvips like any decode, so tracked as one: it clears the shared error buffer too
    const meta = await vipsErrors.run(() => sharp(bytes, { limitInputPixels: false }).metadata()).catch(() => undefined);
    const size = meta?.width && meta.height ? `${meta.width}×${meta.height}, ${(meta.width * meta.height).toLocaleString('en-US')} pixels, ` : '';
    throw new PermanentError('too-many-pixels', `the image is ${size}more than TL_MAX_INPUT_PIXELS (${o.maxInputPixels.toLocaleString('en-US')}) allows`);
  }
  const { data, info } = out;
  if (info.channels !== 3 || info.width !== o.size || info.height !== o.size) {
    throw new PermanentError('undecodable', `decoded to ${info.width}×${info.height}×${info.channels}, expected ${o.size}×${o.size}×3`);
  }
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

/**
 * Maps a libvips/sharp failure on bytes that looked like `format` to a reason code. Truncation
 * is judged from the file's structure first (a missing end marker, a box or chunk longer than
 * the file), since decoders word it in many ways.
 */
export function classifyDecodeError(err: Error, format: string, bytes: Uint8Array): PermanentError {
  // libvips's last lines, each once (a line can come twice; "Unknown error" is no message at all)
  // (sharp's "Input buffer has corrupt header: " is followed by nothing when libvips said nothing)
  const lines = [...new Set(err.message.split('\n').map((l) => l.trim().replace(/:$/, '')).filter((l) => l && !/^unknown error$/i.test(l)))];
  const m = lines.slice(-3).join('; ');
  if (/pixel limit/i.test(err.message)) return new PermanentError('too-many-pixels', m);
  if (/timeout/i.test(err.message)) return new PermanentError('decode-timeout', m);
  if (/has not been built in|decoder plugin|unsupported codec/i.test(err.message)) {
    return new PermanentError('unsupported-format', `${format}: this build of sharp cannot decode it (${m})`);
  }
  // (libjpeg's "premature end of data segment" is damage inside a complete file, not its end)
  if (looksTruncated(format, bytes) || /premature end(?! of data segment)|truncated|unexpected end|not enough data/i.test(err.message)) {
    // in our words first: the decoder's may speak of a corrupt header where the file is cut short
    return new PermanentError('truncated', `the ${format} file ends before its image does (cut short: an upload or copy that did not finish?)${m ? `; the decoder said: ${m}` : ''}`);
  }
  const damage = format === 'jpeg' ? jpegDamage(err) : undefined;
  if (damage) {
    return new PermanentError('corrupt', `the JPEG's data is damaged inside (a bit flip in storage, or a broken copy?): it would decode only in part, with grey or garbled bands; the decoder said: ${damage}`);
  }
  return new PermanentError('undecodable', m || `the ${format} decoder could not read it and gave no reason`);
}

/**
 * libjpeg's warnings of damaged data ("Corrupt JPEG data: …": a bad Huffman code, a segment that
 * ends early, a marker where data should be), but for a few stray bytes before the end marker,
 * which lose no pixel (some cameras and editors write them). The first such line, or undefined.
 */
function jpegDamage(err: Error): string | undefined {
  const lines = err.message.split('\n').map((l) => l.trim().replace(/^VipsJpeg: /, ''));
  return lines.find((l) => /^Corrupt JPEG data: /.test(l) && !/extraneous bytes before marker 0xd9$/.test(l));
}

const ascii = (b: Uint8Array, start: number, length: number) => String.fromCharCode(...b.subarray(start, start + length));
const startsWith = (b: Uint8Array, sig: number[], at = 0) => sig.every((v, i) => b[at + i] === v);
const u32be = (b: Uint8Array, at: number) => ((b[at]! << 24) >>> 0) + (b[at + 1]! << 16) + (b[at + 2]! << 8) + b[at + 3]!;
const u32le = (b: Uint8Array, at: number) => ((b[at + 3]! << 24) >>> 0) + (b[at + 2]! << 16) + (b[at + 1]! << 8) + b[at]!;

const PNG_IHDR = [0x49, 0x48, 0x44, 0x52];
const PNG_IEND = [0, 0, 0, 0, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82];
const isLetter = (c: number) => (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a);
/** Four ASCII letters at `at`: a PNG chunk type. */
const isChunkType = (b: Uint8Array, at: number) => isLetter(b[at]!) && isLetter(b[at + 1]!) && isLetter(b[at + 2]!) && isLetter(b[at + 3]!);

const HEIC_BRANDS = new Set(['heic', 'heix', 'hevc', 'hevx', 'heim', 'heis', 'hevm', 'hevs']);

/**
 * What the first bytes say the file is: one of the formats we decode, another image format we
 * name in the error (BMP, PSD, JPEG XL…), or undefined for bytes that are no image at all.
 */
export function sniffFormat(b: Uint8Array): Sniffed | undefined {
  if (startsWith(b, [0xff, 0xd8, 0xff])) return { supported: true, format: 'jpeg' };
  if (startsWith(b, [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])) return { supported: true, format: 'png' };
  if (ascii(b, 0, 6) === 'GIF87a' || ascii(b, 0, 6) === 'GIF89a') return { supported: true, format: 'gif' };
  if (ascii(b, 0, 4) === 'RIFF' && ascii(b, 8, 4) === 'WEBP') return { supported: true, format: 'webp' };
  const tiff = ascii(b, 0, 4);
  if (tiff === 'II*\0' || tiff === 'MM\0*' || tiff === 'II+\0' || tiff === 'MM\0+') return { supported: true, format: 'tiff' };
  if (b.length >= 12 && ascii(b, 4, 4) === 'ftyp') {
    const boxEnd = Math.min(b.length, Math.max(16, u32be(b, 0)));
    const brands = [ascii(b, 8, 4)];
    for (let at = 16; at + 4 <= boxEnd; at += 4) brands.push(ascii(b, at, 4));
    if (brands.includes('avif') || brands.includes('avis')) return { supported: true, format: 'avif' };
    if (brands.some((x) => HEIC_BRANDS.has(x))) return { supported: true, format: 'heic' };
    if (brands.includes('mif1') || brands.includes('msf1')) return { supported: true, format: 'heif' };
    if (brands.includes('crx ')) return { supported: false, format: 'Canon CR3 raw' };
    return undefined; // MP4, QuickTime, 3GP: video
  }
  if (ascii(b, 0, 2) === 'BM' && b.length >= 18 && [12, 40, 52, 56, 64, 108, 124].includes(u32le(b, 14))) return { supported: false, format: 'BMP' };
  if (ascii(b, 0, 4) === '8BPS') return { supported: false, format: 'Photoshop PSD' };
  if (startsWith(b, [0xff, 0x0a]) || startsWith(b, [0, 0, 0, 0x0c, 0x4a, 0x58, 0x4c, 0x20])) return { supported: false, format: 'JPEG XL' };
  if (startsWith(b, [0, 0, 0, 0x0c, 0x6a, 0x50, 0x20, 0x20]) || startsWith(b, [0xff, 0x4f, 0xff, 0x51])) return { supported: false, format: 'JPEG 2000' };
  if (startsWith(b, [0, 0, 1, 0]) && b.length >= 6 && b[4]! + b[5]! > 0) return { supported: false, format: 'ICO' };
  if (ascii(b, 0, 4) === 'qoif') return { supported: false, format: 'QOI' };
  if (ascii(b, 0, 4) === 'DDS ') return { supported: false, format: 'DDS' };
  if (startsWith(b, [0x76, 0x2f, 0x31, 0x01])) return { supported: false, format: 'OpenEXR' };
  if (ascii(b, 0, 10) === '#?RADIANCE') return { supported: false, format: 'Radiance HDR' };
  if (ascii(b, 0, 15) === 'FUJIFILMCCD-RAW') return { supported: false, format: 'Fujifilm RAF raw' };
  if (ascii(b, 0, 5) === '%PDF-') return { supported: false, format: 'PDF' };
  if (/^P[1-7]\s/.test(ascii(b, 0, 3))) return { supported: false, format: 'Netpbm' };
  const head = Buffer.from(b.subarray(0, 1024)).toString('utf8').replace(/^\uFEFF/, '').trimStart();
  if (head.startsWith('<') && /<svg[\s>]/i.test(head)) return { supported: false, format: 'SVG' };
  return undefined;
}

/** True when the file's own structure says bytes are missing at the end. */
export function looksTruncated(format: string, b: Uint8Array): boolean {
  const tail = (n: number) => b.subarray(Math.max(0, b.length - n));
  switch (format) {
    case 'jpeg': {
      // EOI (FF D9) ends every complete JPEG; some writers pad after it. Inside the entropy-coded
      // data FF is always followed by 00 or a restart marker, so FF D9 there is the real end.
      const t = tail(1024);
      for (let i = t.length - 2; i >= 0; i--) if (t[i] === 0xff && t[i + 1] === 0xd9) return false;
      return true;
    }
    case 'png': {
      // A complete file ends with IEND (length 0, its type, its CRC), whatever its chunks say.
      if (startsWith(tail(12), PNG_IEND)) return false;
      // Otherwise its chunks (length, type, data, CRC) are followed from the signature: the file is
      // cut short when they run past its end or stop before IEND; chunks that make no sense (a type
      // that is not four letters, IHDR not first) are a corrupt file, not a short one.
      let at = 8;
      while (at + 8 <= b.length) {
        if (!isChunkType(b, at + 4) || (at === 8 && !startsWith(b, PNG_IHDR, at + 4)) || b[at]! > 0x7f) return false;
        if (startsWith(b, PNG_IEND.slice(4, 8), at + 4)) return false;
        at += 12 + u32be(b, at);
      }
      return true;
    }
    case 'gif':
      return !tail(16).includes(0x3b);
    case 'webp':
      return b.length < 12 || u32le(b, 4) + 8 > b.length;
    case 'tiff': {
      if (b.length < 8 || b[2] === 0x2b || b[3] === 0x2b) return b.length < 16; // BigTIFF: 64-bit offsets
      const ifd = b[0] === 0x49 ? u32le(b, 4) : u32be(b, 4);
      return ifd + 2 > b.length;
    }
    case 'avif':
    case 'heic':
    case 'heif': {
      // ISO-BMFF: top-level boxes must tile the file exactly.
      let at = 0;
      while (at + 8 <= b.length) {
        let size = u32be(b, at);
        if (size === 1) size = b.length >= at + 16 ? u32be(b, at + 8) * 2 ** 32 + u32be(b, at + 12) : Number.POSITIVE_INFINITY;
        if (size === 0) return false; // the last box runs to the end of the file
        if (size < 8 || at + size > b.length) return true;
        at += size;
      }
      return at !== b.length;
    }
    default:
      return false;
  }
}

/** A short, safe description of what the bytes start with, for the failure detail. */
function describeStart(b: Uint8Array): string {
  const head = b.subarray(0, 16);
  const printable = head.every((c) => c === 9 || c === 10 || c === 13 || (c >= 32 && c < 127));
  if (printable) return 'starts with text';
  return `starts with bytes ${Buffer.from(head.subarray(0, 8)).toString('hex')}`;
}
