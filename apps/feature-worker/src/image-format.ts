/**
 * What an image's bytes are, read from the bytes alone (no decoder: the CLI's upload asks it too,
 * without loading sharp): the format, whether we decode it, and whether the file is cut short.
 */
import { crc32 } from 'node:zlib';
import type { ImageFailureReason } from '@transferline/shared';

/** Formats this worker decodes (HEIC only where the sharp build has an HEVC decoder). */
export type ImageFormat = 'jpeg' | 'png' | 'webp' | 'gif' | 'tiff' | 'avif' | 'heic' | 'heif';

export type Sniffed = { supported: true; format: ImageFormat } | { supported: false; format: string };

/**
 * The format of bytes we decode, or why we do not: `empty`, `not-an-image` (text, video, …),
 * `unsupported-format` (named: BMP, PSD, SVG, HEIC without a decoder, …), with the message a
 * failure carries.
 */
export function readableFormat(bytes: Uint8Array): { format: ImageFormat } | { reason: ImageFailureReason; message: string } {
  if (bytes.length === 0) return { reason: 'empty', message: 'zero bytes (an empty object, or an empty upload)' };
  const sniffed = sniffFormat(bytes);
  if (!sniffed) return { reason: 'not-an-image', message: `not an image (${describeStart(bytes)})` };
  if (!sniffed.supported) return { reason: 'unsupported-format', message: `${sniffed.format} images are not supported: convert them to JPEG, PNG, WebP, AVIF, GIF or TIFF` };
  return { format: sniffed.format };
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

/**
 * The type of a PNG's first chunk whose CRC does not match its type and data (damage inside a
 * file: a bit flip in storage, a broken copy), or undefined when every chunk that lies whole in the
 * file up to IEND matches. libpng stops at such a chunk saying only "libpng read error".
 */
export function pngChunkFailingCrc(b: Uint8Array): string | undefined {
  let at = 8;
  while (at + 12 <= b.length && isChunkType(b, at + 4)) {
    const length = u32be(b, at);
    const end = at + 12 + length;
    if (end > b.length) return undefined;
    const type = Buffer.from(b.subarray(at + 4, at + 8)).toString('latin1');
    if ((crc32(b.subarray(at + 4, at + 8 + length)) >>> 0) !== u32be(b, at + 8 + length)) return type;
    if (type === 'IEND') return undefined;
    at = end;
  }
  return undefined;
}

/**
 * `message` without what describeStart said of the bytes' first values: for whoever may not read
 * the object (serve's callers naming s3:// keys: a security trial read 8 bytes of a weights.bin).
 */
export function withoutLeadingBytes(message: string): string {
  return message.replace(/ \(starts with bytes [0-9a-f]+\)/, '');
}

/** A short, safe description of what the bytes start with, for the failure detail. */
function describeStart(b: Uint8Array): string {
  const head = b.subarray(0, 16);
  const printable = head.every((c) => c === 9 || c === 10 || c === 13 || (c >= 32 && c < 127));
  if (printable) return 'starts with text';
  return `starts with bytes ${Buffer.from(head.subarray(0, 8)).toString('hex')}`;
}

/**
 * A JPEG without stray bytes between the segments of its header (before its first scan): padding
 * some webcams and IP cameras write, which libjpeg skips with a warning ("N extraneous bytes before
 * marker 0x…"), and which would stop a decode that fails on warnings before it reached the image's
 * data (where damage would be seen). The bytes themselves when there are none, or when the header
 * cannot be walked (left to the decoder to say why).
 */
export function withoutHeaderPadding(b: Uint8Array): Uint8Array {
  if (b[0] !== 0xff || b[1] !== 0xd8) return b;
  const keep: Uint8Array[] = [b.subarray(0, 2)];
  let at = 2;
  let stray = 0;
  for (;;) {
    const from = at;
    while (at < b.length && b[at] !== 0xff) at++;
    stray += at - from;
    // fill bytes (0xff runs) before a marker are allowed, and kept
    let m = at + 1;
    while (m < b.length && b[m] === 0xff) m++;
    const marker = b[m];
    if (marker === undefined) return b;
    if (marker === 0xda) {
      keep.push(b.subarray(at)); // the first scan: the rest as it is
      break;
    }
    // not a segment with a length (the image's end, a restart, a byte-stuffed 0): no header to walk
    if (marker === 0x00 || marker === 0x01 || marker === 0xd8 || marker === 0xd9 || (marker >= 0xd0 && marker <= 0xd7)) return b;
    if (m + 2 >= b.length) return b;
    const end = m + 1 + ((b[m + 1]! << 8) | b[m + 2]!);
    if (end <= m + 2 || end > b.length) return b;
    keep.push(b.subarray(at, end));
    at = end;
  }
  return stray ? Buffer.concat(keep) : b;
}
