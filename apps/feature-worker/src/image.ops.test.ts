import sharp, { type Sharp } from 'sharp';
import { PermanentError } from '@transferline/shared';
import { describe, expect, it } from 'vitest';
import { classifyDecodeError, configureSharp, looksTruncated, prepareImage, sniffFormat, vipsErrors, type PrepareOptions } from './image.ops.js';
import { pngChunkFailingCrc, readableFormat, withoutLeadingBytes } from './image-format.js';

const OPTS: PrepareOptions = { size: 224, maxInputPixels: 10_000_000, background: '#ffffff' };

const noise = (width: number, height: number) => sharp({ create: { width, height, channels: 3, background: '#808080', noise: { type: 'gaussian', mean: 128, sigma: 40 } } });

/** Three vertical bands: red | green (the middle half) | blue. */
function bands(width: number, height: number): Sharp {
  const px = Buffer.alloc(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) px.set(x < width / 4 ? [230, 20, 20] : x < (3 * width) / 4 ? [20, 200, 20] : [20, 20, 230], (y * width + x) * 3);
  }
  return sharp(px, { raw: { width, height, channels: 3 } });
}

const pixel = (p: Uint8Array, x: number, y: number, size = 224) => [...p.subarray((y * size + x) * 3, (y * size + x) * 3 + 3)];

async function reasonOf(bytes: Uint8Array, o: PrepareOptions = OPTS): Promise<string> {
  try {
    await prepareImage(bytes, o);
  } catch (err) {
    expect(err).toBeInstanceOf(PermanentError);
    return (err as PermanentError).reason;
  }
  return 'decoded';
}

describe('sniffFormat', () => {
  it('names the formats we decode from their first bytes', async () => {
    const img = noise(8, 8);
    expect(sniffFormat(await img.clone().jpeg().toBuffer())).toEqual({ supported: true, format: 'jpeg' });
    expect(sniffFormat(await img.clone().png().toBuffer())).toEqual({ supported: true, format: 'png' });
    expect(sniffFormat(await img.clone().webp().toBuffer())).toEqual({ supported: true, format: 'webp' });
    expect(sniffFormat(await img.clone().gif().toBuffer())).toEqual({ supported: true, format: 'gif' });
    expect(sniffFormat(await img.clone().tiff().toBuffer())).toEqual({ supported: true, format: 'tiff' });
    expect(sniffFormat(await img.clone().avif().toBuffer())).toEqual({ supported: true, format: 'avif' });
  });

  it('tells other image formats from bytes that are no image at all', () => {
    const bmp = Buffer.alloc(64);
    bmp.write('BM', 0, 'latin1');
    bmp.writeUInt32LE(40, 14);
    expect(sniffFormat(bmp)).toEqual({ supported: false, format: 'BMP' });
    expect(sniffFormat(Buffer.from('8BPS\0\x01'))).toMatchObject({ supported: false, format: 'Photoshop PSD' });
    expect(sniffFormat(Buffer.from('\uFEFF <?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>'))).toMatchObject({ format: 'SVG' });
    expect(sniffFormat(Buffer.from('%PDF-1.7\n'))).toMatchObject({ format: 'PDF' });
    expect(sniffFormat(Buffer.from('hello, this is a text file\n'))).toBeUndefined();
    expect(sniffFormat(Buffer.from('BMW drivers\n'))).toBeUndefined();
    const mp4 = Buffer.alloc(32);
    mp4.writeUInt32BE(24, 0);
    mp4.write('ftypisom\0\0\0\0isommp41', 4, 'latin1');
    expect(sniffFormat(mp4)).toBeUndefined();
  });
});

describe('withoutLeadingBytes', () => {
  it('takes out what the failure said of the first bytes, and nothing else', () => {
    const said = readableFormat(Uint8Array.of(0x4d, 0x66, 0x0f, 0x3b, 0x61, 0x34, 0x22, 0xbc, 0, 1));
    expect(said).toEqual({ reason: 'not-an-image', message: 'not an image (starts with bytes 4d660f3b613422bc)' });
    expect(withoutLeadingBytes((said as { message: string }).message)).toBe('not an image');
    const text = readableFormat(Buffer.from('hello, world'));
    expect(withoutLeadingBytes((text as { message: string }).message)).toBe('not an image (starts with text)');
  });
});

describe('prepareImage', () => {
  it('squashes by default and centre-crops with resize: crop', async () => {
    const img = await bands(800, 200).png().toBuffer();
    const squash = await prepareImage(img, OPTS);
    expect(squash.length).toBe(224 * 224 * 3);
    expect(pixel(squash, 5, 112)).toEqual([230, 20, 20]); // the red band survives, squeezed
    expect(pixel(squash, 218, 112)).toEqual([20, 20, 230]);
    const crop = await prepareImage(img, { ...OPTS, resize: 'crop' });
    // the centre 200×200 of an 800×200 image lies inside the green band
    for (const x of [0, 112, 223]) expect(pixel(crop, x, 112)).toEqual([20, 200, 20]);
  });

  it('decodes large JPEGs at reduced scale without losing what matters', async () => {
    const original = bands(2400, 1800).blur(3);
    const jpeg = await original.clone().jpeg({ quality: 92 }).toBuffer();
    const reference = await original.clone().resize(224, 224, { fit: 'fill', kernel: 'lanczos3' }).raw().toBuffer();
    const ours = await prepareImage(jpeg, OPTS);
    let diff = 0;
    for (let i = 0; i < ours.length; i++) diff += Math.abs(ours[i]! - reference[i]!);
    expect(diff / ours.length).toBeLessThan(2.5);
  });

  it('classifies bad bytes with one reason each', async () => {
    const jpeg = await noise(320, 240).jpeg().toBuffer();
    const png = await noise(320, 240).png().toBuffer();
    expect(await reasonOf(new Uint8Array(0))).toBe('empty');
    expect(await reasonOf(Buffer.from('not an image, just text in a .jpg\n'))).toBe('not-an-image');
    expect(await reasonOf(Buffer.from('<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>'))).toBe('unsupported-format');
    for (const format of ['jpeg', 'png', 'webp', 'gif', 'tiff', 'avif'] as const) {
      const whole = await noise(320, 240).toFormat(format).toBuffer();
      expect(await reasonOf(whole.subarray(0, Math.floor(whole.length * 0.6))), format).toBe('truncated');
      expect(looksTruncated(format, whole), format).toBe(false);
    }
    // a PNG whose header claims 30000×30000: refused before any pixel is decoded
    const bomb = Buffer.from(png);
    bomb.writeUInt32BE(30000, 16);
    bomb.writeUInt32BE(30000, 20);
    expect(await reasonOf(bomb)).toBe('too-many-pixels');
    // said with its size and the setting to raise
    await expect(prepareImage(bomb, OPTS)).rejects.toThrow(`the image is 30000×30000, 900,000,000 pixels, more than TL_MAX_INPUT_PIXELS (${OPTS.maxInputPixels.toLocaleString('en-US')}) allows`);
    // the same with a JPEG's frame header
    const jbomb = Buffer.from(jpeg);
    const sof = jbomb.indexOf(Buffer.from([0xff, 0xc0]));
    jbomb.writeUInt16BE(30000, sof + 5);
    jbomb.writeUInt16BE(30000, sof + 7);
    expect(await reasonOf(jbomb)).toBe('too-many-pixels');
    // complete, but damaged inside: the chunk that fails its checksum is named (libpng said only
    // "libpng read error", reason undecodable: a user's trial found the JPEG's words more helpful)
    const corrupt = Buffer.from(png);
    for (let i = 200; i < 260; i++) corrupt[i]! ^= 0x55;
    expect(pngChunkFailingCrc(png)).toBeUndefined();
    expect(pngChunkFailingCrc(corrupt)).toBe('IDAT');
    await expect(prepareImage(corrupt, OPTS)).rejects.toMatchObject({ reason: 'corrupt', message: expect.stringMatching(/^the PNG's data is damaged inside \(a bit flip in storage, or a broken copy\?\): its IDAT chunk does not match its checksum; the decoder said: .*libpng/) });
    // a corrupt header is not a short file: garbage after the signature, a first chunk that is
    // not IHDR, a chunk type that is not four letters (sharp says "corrupt header:" and no more)
    const junk = Buffer.concat([png.subarray(0, 8), Buffer.alloc(200, 0x41)]);
    const notIhdr = Buffer.from(png);
    notIhdr.write('QQQQ', 12, 'latin1');
    const badType = Buffer.from(png);
    badType.write('I~AT', 37, 'latin1');
    for (const [name, bytes] of Object.entries({ junk, notIhdr, badType })) {
      expect(looksTruncated('png', bytes), name).toBe(false);
      const err = await prepareImage(bytes, OPTS).then(() => undefined, (e: unknown) => e as PermanentError);
      // (a first chunk renamed fails its checksum: damage, said so)
      expect(err?.reason, name).toBe(name === 'notIhdr' ? 'corrupt' : 'undecodable');
      expect(err?.message, name).not.toMatch(/:$/);
    }
    // a complete file with one length gone wrong (its chunks now run past the end): complete all
    // the same, it ends with IEND
    const badLength = Buffer.from(png);
    const idat = badLength.indexOf('IDAT', 0, 'latin1') - 4;
    badLength.writeUInt32BE(badLength.readUInt32BE(idat) ^ 0x100000, idat);
    expect(looksTruncated('png', badLength)).toBe(false);
    expect(await reasonOf(badLength)).toBe('undecodable');
    // cut inside a chunk, and cut between chunks before IEND
    expect(looksTruncated('png', png.subarray(0, 100))).toBe(true);
    expect(looksTruncated('png', png.subarray(0, 33))).toBe(true);
  });

  it('fails a JPEG damaged inside, which libjpeg decodes all the same with grey bands, and reads healthy ones that libjpeg warns of', async () => {
    const jpeg = await bands(640, 480).jpeg({ quality: 90 }).toBuffer();
    // 200 bytes gone wrong in the middle of the scan (no 0xff: no marker, so no decode error at all)
    const rotted = Buffer.from(jpeg);
    let seed = 7;
    const from = Math.floor(jpeg.length * 0.4);
    for (let i = from; i < from + 200; i++) rotted[i] = (seed = (seed * 1103515245 + 12345) % 2 ** 31) % 255;
    // what a decode that fails on errors alone made of it: a picture, wrong below the damage
    const { info } = await sharp(rotted, { failOn: 'error' }).raw().toBuffer({ resolveWithObject: true });
    expect([info.width, info.height]).toEqual([640, 480]);
    const err = await prepareImage(rotted, OPTS).then(() => undefined, (e: unknown) => e as PermanentError);
    expect(err?.reason).toBe('corrupt');
    expect(err?.message).toMatch(/^the JPEG's data is damaged inside \(a bit flip in storage, or a broken copy\?\): it would decode only in part, with grey or garbled bands; the decoder said: Corrupt JPEG data: /);
    // healthy files libjpeg warns of, read as the clean file is: padding before the frame header
    // (webcams, scanners: "1 extraneous bytes before marker 0xc0"), and a JFIF revision it does
    // not know with a trailer after the image (a motion photo's video: not a file cut short)
    const sof = jpeg.indexOf(Buffer.from([0xff, 0xc0]));
    const padded = Buffer.concat([jpeg.subarray(0, sof), Buffer.from([0]), jpeg.subarray(sof)]);
    const jfif201 = Buffer.from([0xff, 0xe0, 0x00, 0x10, 0x4a, 0x46, 0x49, 0x46, 0x00, 0x02, 0x01, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00]);
    const trailed = Buffer.concat([jpeg.subarray(0, 2), jfif201, jpeg.subarray(2), Buffer.alloc(4096, 7)]);
    const clean = Buffer.from(await prepareImage(jpeg, OPTS));
    for (const [name, bytes] of Object.entries({ padded, trailed })) {
      // (each warns: a decode that stops at warnings refuses it)
      await expect(sharp(bytes, { failOn: 'warning' }).raw().toBuffer(), name).rejects.toThrow(/extraneous bytes before marker 0xc0|unknown JFIF revision/);
      expect(Buffer.from(await prepareImage(bytes, OPTS)).equals(clean), name).toBe(true);
    }
    // such a camera's photo damaged inside: its padding's warning, the first libjpeg says, does
    // not hide the damage; nor does a motion photo's trailer make the damage a file cut short
    const paddedRot = Buffer.concat([rotted.subarray(0, sof), Buffer.from([0]), rotted.subarray(sof)]);
    expect(await reasonOf(paddedRot)).toBe('corrupt');
    expect(await reasonOf(Buffer.concat([rotted, Buffer.alloc(4096, 7)]))).toBe('corrupt');
    // a file cut short is still told apart from one damaged inside
    expect(await reasonOf(jpeg.subarray(0, Math.floor(jpeg.length * 0.7)))).toBe('truncated');
  });

  it('gives each image its own reason and message when many fail at once', async () => {
    // libvips's error buffer is shared by the decodes in flight: without attribution, about a
    // quarter of these came back with another image's message, some with its reason
    const png = await noise(320, 240).png().toBuffer();
    const jpeg = await noise(640, 480).jpeg().toBuffer();
    const webp = await noise(320, 240).webp().toBuffer();
    const bomb = Buffer.from(png);
    bomb.writeUInt32BE(30000, 16);
    bomb.writeUInt32BE(30000, 20);
    const corrupt = Buffer.from(png);
    for (let i = 200; i < 260; i++) corrupt[i]! ^= 0x55;
    const cases = { bomb, corrupt, jpegCut: jpeg.subarray(0, Math.floor(jpeg.length * 0.6)), webpCut: webp.subarray(0, Math.floor(webp.length * 0.6)), good: jpeg };
    const outcome = async (bytes: Uint8Array) => prepareImage(bytes, OPTS).then(() => 'decoded', (err: PermanentError) => `${err.reason}: ${err.message}`);
    const alone: Record<string, string> = {};
    for (const [name, bytes] of Object.entries(cases)) alone[name] = await outcome(bytes);
    expect(alone.corrupt).toMatch(/^corrupt: the PNG's data is damaged inside/);
    expect(alone.jpegCut).toMatch(/^truncated: .*jpeg/i);
    const names = Object.keys(cases) as (keyof typeof cases)[];
    const { rerunAlone: reruns, keptFirstError: kept } = vipsErrors.counts;
    const wrong: string[] = [];
    // mostly bad images (their messages mix), then one bad among good ones (a neighbour's finish
    // clears the buffer: its message was lost about one time in eight)
    const mixes = [
      (round: number) => Array.from({ length: 16 }, (_, i) => names[(i * 7 + round) % names.length]!),
      (round: number) => Array.from({ length: 16 }, (_, i) => (i === round % 16 ? names[round % 4]! : 'good')),
    ];
    for (const mix of mixes) {
      for (let round = 0; round < 24; round++) {
        const batch = mix(round);
        const got = await Promise.all(batch.map((name) => outcome(cases[name])));
        batch.forEach((name, i) => got[i] !== alone[name] && wrong.push(`${name} → ${got[i]}`));
      }
    }
    expect(wrong).toEqual([]);
    expect(vipsErrors.counts.rerunAlone).toBeGreaterThan(reruns); // failures did overlap other decodes
    expect(vipsErrors.counts.keptFirstError).toBe(kept);
  });

  it('maps decoder messages it cannot see from the bytes', () => {
    const jpeg = Buffer.from([0xff, 0xd8, 0xff, 0xe0, 0, 0, 0xff, 0xd9]);
    expect(classifyDecodeError(new Error('timeout: 3% complete'), 'jpeg', jpeg).reason).toBe('decode-timeout');
    expect(classifyDecodeError(new Error('x: bad seek to 1024\nheif: Support for this compression format has not been built in: HEVC'), 'heic', jpeg).reason).toBe('unsupported-format');
    expect(classifyDecodeError(new Error('VipsJpeg: premature end of JPEG image'), 'jpeg', jpeg).reason).toBe('truncated');
    expect(classifyDecodeError(new Error('something else'), 'jpeg', jpeg).reason).toBe('undecodable');
  });

  it('words the failure once, and in words when libvips gives none', () => {
    const cut = Buffer.from([0xff, 0xd8, 0xff, 0xe0, 0, 0x10, 0x4a, 0x46]); // no end marker
    // libvips's error buffer, shared by concurrent decodes: a line twice, or "Unknown error"
    expect(classifyDecodeError(new Error('VipsJpeg: premature end of JPEG image\nVipsJpeg: premature end of JPEG image'), 'jpeg', cut).message).toBe(
      'the jpeg file ends before its image does (cut short: an upload or copy that did not finish?); the decoder said: VipsJpeg: premature end of JPEG image',
    );
    // a PNG cut after its header: libvips calls that a corrupt header; the reason and the words agree
    const png = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
    expect(classifyDecodeError(new Error('Input buffer has corrupt header: '), 'png', png).message).toBe(
      'the png file ends before its image does (cut short: an upload or copy that did not finish?); the decoder said: Input buffer has corrupt header',
    );
    const none = classifyDecodeError(new Error('Unknown error'), 'jpeg', cut);
    expect(none.reason).toBe('truncated');
    expect(none.message).toBe('the jpeg file ends before its image does (cut short: an upload or copy that did not finish?)');
    const whole = Buffer.from([0xff, 0xd8, 0xff, 0xe0, 0, 0, 0xff, 0xd9]);
    expect(classifyDecodeError(new Error('Unknown error'), 'jpeg', whole).message).toBe('the jpeg decoder could not read it and gave no reason');
  });
});

describe('configureSharp', () => {
  it('sets libvips threads per image when asked, and keeps the default for 0', () => {
    const before = sharp.concurrency();
    try {
      expect(configureSharp({ concurrency: 2 }).concurrency).toBe(2);
      expect(configureSharp({ concurrency: 0 }).concurrency).toBe(2);
    } finally {
      sharp.concurrency(before);
      sharp.cache(true);
    }
  });
});
