import sharp, { type OutputInfo } from 'sharp';
import { EFFICIENTNET_B0, PermanentError, spaceBackground, type Config, type EmbeddingSpace } from '@transferline/shared';
import { looksTruncated, pngChunkFailingCrc, readableFormat, withoutHeaderPadding } from './image-format.js';
import { VipsErrorAttribution } from './vips-errors.js';

export { looksTruncated, sniffFormat, withoutLeadingBytes, type ImageFormat, type Sniffed } from './image-format.js';

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
  /** Colour that transparent pixels are flattened onto (`#rrggbb`: the embedding space's, spaceImageOptions). */
  background: string;
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

/** What preprocess decodes each image with, whatever the space: the model's input size, and the deployment's pixel limit. */
export function preprocessImageOptions(preprocess: Pick<Config['preprocess'], 'maxInputPixels'>): Omit<PrepareOptions, 'resize' | 'background'> {
  return { size: EFFICIENTNET_B0.inputSize, maxInputPixels: preprocess.maxInputPixels };
}

/**
 * How an embedding space prepares its images (its resize policy and background), from the space's
 * record or from a preprocess job of it, which names them: never from this process's environment,
 * so every process prepares a space's images alike, and serve as the model's space did.
 */
export function spaceImageOptions(space: Pick<EmbeddingSpace, 'id' | 'resize' | 'background'>): Pick<PrepareOptions, 'resize' | 'background'> {
  return { resize: space.resize, background: spaceBackground(space) };
}

/**
 * An image's width and height from its header alone (nothing decoded); undefined when the header
 * does not say. A read of libvips like any decode, so tracked as one: it clears the shared error
 * buffer too.
 */
async function headerSize(bytes: Buffer | Uint8Array): Promise<{ width: number; height: number } | undefined> {
  const meta = await vipsErrors.run(() => sharp(bytes, { limitInputPixels: false }).metadata()).catch(() => undefined);
  return meta?.width && meta.height ? { width: meta.width, height: meta.height } : undefined;
}

/** What a decode refused for its pixel count says: the image's size, and the setting that sets the limit. */
function tooManyPixels(size: { width: number; height: number } | undefined, max: number): string {
  const shown = size ? `${size.width}×${size.height}, ${(size.width * size.height).toLocaleString('en-US')} pixels, ` : '';
  return `the image is ${shown}more than TL_MAX_INPUT_PIXELS (${max.toLocaleString('en-US')}) allows`;
}

/**
 * Why preprocess would refuse these bytes before decoding them: over `maxObjectBytes`, or more
 * pixels than `maxInputPixels` by the header; undefined when neither. For upload, which sends
 * no file the workers would refuse.
 */
export async function refusedBeforeDecode(bytes: Buffer, o: { maxObjectBytes: number; maxInputPixels: number }): Promise<string | undefined> {
  if (bytes.length > o.maxObjectBytes) return `${bytes.length.toLocaleString('en-US')} bytes, over the limit of ${o.maxObjectBytes.toLocaleString('en-US')} (TL_MAX_OBJECT_BYTES)`;
  const size = await headerSize(bytes);
  return size && size.width * size.height > o.maxInputPixels ? tooManyPixels(size, o.maxInputPixels) : undefined;
}

/**
 * Decode → EXIF orientation → sRGB (embedded ICC profiles, CMYK, 16-bit and grey all end as
 * 8-bit sRGB) → alpha flattened onto the background → size×size by the resize policy, as raw
 * RGB uint8 (HWC, what the model's input layer takes). Large JPEGs are decoded at 1/2, 1/4 or
 * 1/8 scale (sharp's shrink-on-load, which keeps a margin: below a ~3× reduction, e.g. 640×480,
 * the JPEG is decoded whole); animations give their first frame. Throws PermanentError with a reason from IMAGE_FAILURE_REASONS when the bytes are
 * not an image we can read.
 */
export async function prepareImage(bytes: Uint8Array, o: PrepareOptions): Promise<Uint8Array> {
  // Only the formats we mean to read reach a decoder: libvips would also try SVG (rendered with
  // whatever fonts this machine has, so two workers could turn the same bytes into different
  // pixels under one content hash) and whatever else its loaders accept.
  const sniffed = readableFormat(bytes);
  if ('reason' in sniffed) throw new PermanentError(sniffed.reason, sniffed.message);
  const kernel = o.kernel ?? RESIZE_KERNEL;
  const timeoutSeconds = o.timeoutSeconds ?? 60;
  let started = 0;
  // a JPEG without its header's padding (see the decode below)
  const input = sniffed.format === 'jpeg' ? withoutHeaderPadding(bytes) : bytes;
  const decode = (failOn: 'warning' | 'error') => {
    started = performance.now();
    const image = sharp(input, {
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
  // (attributed: a failure beside other decodes is run again alone, so its message is its own)
  const attempt = (failOn: 'warning' | 'error') => vipsErrors.run(() => decode(failOn), timedOut);
  let out: { data: Buffer; info: OutputInfo };
  try {
    // A JPEG damaged inside (a bit flip, a broken copy) decodes all the same, with grey or garbled
    // bands, and libjpeg says so only as a warning: a JPEG's decode stops at its first warning
    // (libjpeg says only the first), attributed as any failure is. A warning of damage fails the
    // image; one of no damage (a JFIF revision libjpeg does not know, stray bytes between scans or
    // before restart markers) is read again without stopping at warnings, so damage after it goes
    // unseen. Padding in the header, the most common such warning (webcams, IP cameras), is taken
    // out before the decode (input). Other formats' warnings are mostly harmless (a PNG's "known
    // incorrect sRGB profile"): they are decoded stopping at errors only.
    out = await attempt(sniffed.format === 'jpeg' ? 'warning' : 'error').catch(async (err: unknown) => {
      if (sniffed.format !== 'jpeg' || timedOut() || jpegDamage(err as Error)) throw err;
      return attempt('error');
    });
  } catch (err) {
    if (timedOut()) throw new PermanentError('decode-timeout', `decoding took longer than ${timeoutSeconds} s`);
    const e = classifyDecodeError(err as Error, sniffed.format, bytes);
    if (e.reason !== 'too-many-pixels') throw e;
    throw new PermanentError('too-many-pixels', tooManyPixels(await headerSize(bytes), o.maxInputPixels));
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
  // damage said is damage, whatever the file's end looks like (a motion photo's video after the
  // image hides its end marker from looksTruncated)
  const damage = format === 'jpeg' ? jpegDamage(err) : undefined;
  if (damage) {
    return new PermanentError('corrupt', `the JPEG's data is damaged inside (a bit flip in storage, or a broken copy?): it would decode only in part, with grey or garbled bands; the decoder said: ${damage}`);
  }
  // a PNG chunk that fails its checksum: damage, said with the chunk (libpng says "read error")
  const chunk = format === 'png' ? pngChunkFailingCrc(bytes) : undefined;
  if (chunk) {
    return new PermanentError('corrupt', `the PNG's data is damaged inside (a bit flip in storage, or a broken copy?): its ${chunk} chunk does not match its checksum${m ? `; the decoder said: ${m}` : ''}`);
  }
  // (libjpeg's "premature end of data segment" is damage inside a complete file, not its end)
  if (looksTruncated(format, bytes) || /premature end(?! of data segment)|truncated|unexpected end|not enough data/i.test(err.message)) {
    // in our words first: the decoder's may speak of a corrupt header where the file is cut short
    return new PermanentError('truncated', `the ${format} file ends before its image does (cut short: an upload or copy that did not finish?)${m ? `; the decoder said: ${m}` : ''}`);
  }
  return new PermanentError('undecodable', m || `the ${format} decoder could not read it and gave no reason`);
}

/**
 * Whether a libjpeg line tells of damaged data ("Corrupt JPEG data: …": a bad Huffman or
 * arithmetic code, a segment that ends early, a marker where a restart marker should be). Stray
 * bytes before a marker ("N extraneous bytes before marker 0x…") lose no pixel: webcams, scanners
 * and IP cameras write them (padding before a frame header, between scans, before restart
 * markers), and libjpeg skips them.
 */
const isJpegDamage = (line: string) => /^Corrupt JPEG data: /.test(line) && !/extraneous bytes before marker/.test(line);

/** The first line of damage in a JPEG decode's error, or undefined. */
function jpegDamage(err: Error): string | undefined {
  return err.message
    .split('\n')
    .map((l) => l.trim().replace(/^VipsJpeg: /, ''))
    .find(isJpegDamage);
}
