import sharp, { type Sharp, type Metadata } from 'sharp';
import { PermanentError } from '@transferline/shared';
import { describe, expect, it } from 'vitest';
import { prepareImage, type PrepareOptions } from '../apps/feature-worker/src/image.ops.js';
import { tinyBmp } from './support/images.js';

/**
 * Every kind of image a user may drop, generated here, through `prepareImage`: each must come
 * out 224×224 RGB, upright, in sRGB, with transparency flattened onto the configured background.
 * The source is asymmetric (four coloured quadrants), so a missed rotation or mirror shows.
 */

const W = 320;
const H = 240;
const SIZE = 224;
const BACKGROUND = '#0000ff';
const OPTS: PrepareOptions = { size: SIZE, maxInputPixels: 100_000_000, background: BACKGROUND };

type RGB = [number, number, number];
const RED: RGB = [220, 30, 30];
const GREEN: RGB = [30, 200, 40];
const BLUE: RGB = [30, 50, 220];
const YELLOW: RGB = [240, 220, 30];
/** top-left, top-right, bottom-left, bottom-right */
const QUADRANTS: RGB[] = [RED, GREEN, BLUE, YELLOW];
const PRINTABLE: RGB[] = [[180, 70, 60], [70, 140, 80], [60, 80, 150], [210, 190, 90]];
const GREYS: RGB[] = [[40, 40, 40], [90, 90, 90], [160, 160, 160], [220, 220, 220]];

function quadrantPixels(colours: RGB[], width = W, height = H): Buffer {
  const px = Buffer.alloc(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) px.set(colours[(y < height / 2 ? 0 : 2) + (x < width / 2 ? 0 : 1)]!, (y * width + x) * 3);
  }
  return px;
}
const quadrants = (colours: RGB[] = QUADRANTS) => sharp(quadrantPixels(colours), { raw: { width: W, height: H, channels: 3 } });

/** Where EXIF orientation `o` says the stored pixel (x, y) of a ws×hs image is displayed. */
function displayed(o: number, x: number, y: number, ws: number, hs: number): [number, number] {
  switch (o) {
    case 2: return [ws - 1 - x, y];
    case 3: return [ws - 1 - x, hs - 1 - y];
    case 4: return [x, hs - 1 - y];
    case 5: return [y, x];
    case 6: return [hs - 1 - y, x];
    case 7: return [hs - 1 - y, ws - 1 - x];
    case 8: return [y, ws - 1 - x];
    default: return [x, y];
  }
}

/** The stored pixels of a file whose EXIF orientation `o` displays the upright quadrants. */
function storedFor(o: number): Sharp {
  const upright = quadrantPixels(QUADRANTS);
  const [ws, hs] = o <= 4 ? [W, H] : [H, W];
  const px = Buffer.alloc(ws * hs * 3);
  for (let y = 0; y < hs; y++) {
    for (let x = 0; x < ws; x++) {
      const [xd, yd] = displayed(o, x, y, ws, hs);
      upright.copy(px, (y * ws + x) * 3, (yd * W + xd) * 3, (yd * W + xd) * 3 + 3);
    }
  }
  return sharp(px, { raw: { width: ws, height: hs, channels: 3 } }).withMetadata({ orientation: o });
}

const at = (p: Uint8Array, x: number, y: number): RGB => [p[(y * SIZE + x) * 3]!, p[(y * SIZE + x) * 3 + 1]!, p[(y * SIZE + x) * 3 + 2]!];

/** Samples the middle of each quadrant of the 224×224 output. */
function expectQuadrants(p: Uint8Array, colours: RGB[], tolerance: number, what: string): void {
  expect(p.length, what).toBe(SIZE * SIZE * 3);
  const points: [number, number][] = [[56, 56], [168, 56], [56, 168], [168, 168]];
  points.forEach(([x, y], i) => {
    const got = at(p, x, y);
    const want = colours[i]!;
    const off = Math.max(...got.map((v, c) => Math.abs(v - want[c]!)));
    expect(off, `${what}: quadrant ${i} is ${got}, expected ${want} ±${tolerance}`).toBeLessThanOrEqual(tolerance);
  });
  // and a corner well inside the top-left quadrant, the one an unapplied rotation moves first
  const corner = at(p, 8, 8);
  expect(Math.max(...corner.map((v, c) => Math.abs(v - colours[0]![c]!))), `${what}: top-left corner ${corner}`).toBeLessThanOrEqual(tolerance);
}

describe('every format comes out 224×224 sRGB', () => {
  const cases: { name: string; tolerance: number; colours?: RGB[]; make: () => Promise<Buffer>; check?: (m: Metadata) => void; stored?: (bytes: Buffer) => Promise<void> }[] = [
    { name: 'JPEG baseline 4:2:0', tolerance: 12, make: () => quadrants().jpeg({ quality: 90 }).toBuffer() },
    { name: 'JPEG progressive', tolerance: 12, make: () => quadrants().jpeg({ quality: 90, progressive: true }).toBuffer(), check: (m) => expect(m.isProgressive).toBe(true) },
    { name: 'JPEG 4:4:4', tolerance: 8, make: () => quadrants().jpeg({ quality: 95, chromaSubsampling: '4:4:4' }).toBuffer() },
    { name: 'PNG RGB', tolerance: 1, make: () => quadrants().png().toBuffer() },
    { name: 'PNG palette', tolerance: 6, make: () => quadrants().png({ palette: true }).toBuffer(), check: (m) => expect(m.isPalette).toBe(true) },
    { name: 'PNG 16-bit', tolerance: 1, make: () => quadrants().toColourspace('rgb16').png().toBuffer(), check: (m) => expect(m.depth).toBe('ushort') },
    {
      name: 'PNG grey 8-bit',
      tolerance: 1,
      colours: GREYS,
      make: () => sharp(quadrantPixels(GREYS), { raw: { width: W, height: H, channels: 3 } }).extractChannel(0).toColourspace('b-w').png().toBuffer(),
      check: (m) => expect(m.channels).toBe(1),
    },
    {
      name: 'PNG grey 16-bit',
      tolerance: 1,
      colours: GREYS,
      make: () => sharp(quadrantPixels(GREYS), { raw: { width: W, height: H, channels: 3 } }).toColourspace('grey16').png().toBuffer(),
      check: (m) => expect([m.channels, m.depth]).toEqual([1, 'ushort']),
    },
    { name: 'WebP lossy', tolerance: 16, make: () => quadrants().webp({ quality: 90 }).toBuffer() },
    { name: 'WebP lossless', tolerance: 1, make: () => quadrants().webp({ lossless: true }).toBuffer() },
    { name: 'AVIF', tolerance: 20, make: () => quadrants().avif({ quality: 80 }).toBuffer() },
    { name: 'GIF', tolerance: 8, make: () => quadrants().gif().toBuffer() },
    { name: 'TIFF LZW', tolerance: 1, make: () => quadrants().tiff({ compression: 'lzw' }).toBuffer() },
    { name: 'TIFF JPEG-compressed', tolerance: 12, make: () => quadrants().tiff({ compression: 'jpeg', quality: 90 }).toBuffer() },
    {
      name: 'JPEG in Display P3 (an ICC profile, as phones write)',
      tolerance: 8,
      make: () => quadrants().withIccProfile('p3').jpeg({ quality: 95, chromaSubsampling: '4:4:4' }).toBuffer(),
      check: (m) => expect(m.hasProfile).toBe(true),
      // the stored numbers are P3's, far from the sRGB ones: only a colour conversion gets them back
      stored: async (bytes) => {
        const raw = await sharp(bytes).keepIccProfile().raw().toBuffer();
        expect(Math.abs(raw[0]! - RED[0]) + Math.abs(raw[1]! - RED[1]) + Math.abs(raw[2]! - RED[2])).toBeGreaterThan(30);
      },
    },
    {
      name: 'CMYK JPEG with an ICC profile',
      // colours a press can print (saturated sRGB green is outside its gamut), through the profile and back
      tolerance: 24,
      colours: PRINTABLE,
      make: () => quadrants(PRINTABLE).toColourspace('cmyk').withIccProfile('cmyk').jpeg({ quality: 95 }).toBuffer(),
      check: (m) => expect([m.space, m.channels, m.hasProfile]).toEqual(['cmyk', 4, true]),
    },
    {
      name: 'CMYK TIFF with an ICC profile',
      tolerance: 24,
      colours: PRINTABLE,
      make: () => quadrants(PRINTABLE).toColourspace('cmyk').withIccProfile('cmyk').tiff().toBuffer(),
      check: (m) => expect([m.space, m.channels, m.hasProfile]).toEqual(['cmyk', 4, true]),
    },
  ];

  for (const c of cases) {
    it(c.name, async () => {
      const bytes = await c.make();
      c.check?.(await sharp(bytes).metadata());
      await c.stored?.(bytes);
      expectQuadrants(await prepareImage(bytes, OPTS), c.colours ?? QUADRANTS, c.tolerance, c.name);
    });
  }

  it('HEIC (HEVC) where the sharp build decodes it, else unsupported-format', async () => {
    // 64×48 quadrants encoded by libheif's heif-enc (x265): sharp cannot write HEVC, so it is a fixture.
    const heic = Buffer.from(HEIC_QUADRANTS, 'base64');
    const decodes = await sharp(heic).raw().toBuffer().then(() => true, () => false);
    if (decodes) expectQuadrants(await prepareImage(heic, OPTS), QUADRANTS, 25, 'HEIC');
    else await expect(prepareImage(heic, OPTS)).rejects.toMatchObject({ reason: 'unsupported-format', message: expect.stringMatching(/heic/) });
  });
});

describe('EXIF orientation', () => {
  for (let o = 1; o <= 8; o++) {
    it(`JPEG orientation ${o} comes out upright`, async () => {
      const bytes = await storedFor(o).jpeg({ quality: 92 }).toBuffer();
      expect((await sharp(bytes).metadata()).orientation).toBe(o);
      expectQuadrants(await prepareImage(bytes, OPTS), QUADRANTS, 12, `orientation ${o}`);
      expectQuadrants(await prepareImage(bytes, { ...OPTS, resize: 'crop' }), QUADRANTS, 12, `orientation ${o}, crop`);
    });
  }
  for (const format of ['png', 'webp', 'tiff'] as const) {
    it(`${format} orientation 6 (rotated 90°) comes out upright`, async () => {
      const bytes = await storedFor(6).toFormat(format, format === 'webp' ? { lossless: true } : {}).toBuffer();
      expect((await sharp(bytes).metadata()).orientation).toBe(6);
      expectQuadrants(await prepareImage(bytes, OPTS), QUADRANTS, 2, `${format} orientation 6`);
    });
  }
});

describe('transparency is flattened onto the configured background', () => {
  /** Top half: left opaque red, right fully transparent (green underneath, which must not show). Bottom half: 50% white. */
  function rgba(): Buffer {
    const px = Buffer.alloc(W * H * 4);
    for (let y = 0; y < H; y++) {
      for (let x = 0; x < W; x++) px.set(y >= H / 2 ? [255, 255, 255, 128] : x < W / 2 ? [220, 30, 30, 255] : [0, 255, 0, 0], (y * W + x) * 4);
    }
    return px;
  }
  const HALF: RGB = [128, 128, 255];
  const expected: RGB[] = [RED, [0, 0, 255], HALF, HALF];

  it('PNG RGBA', async () => {
    const bytes = await sharp(rgba(), { raw: { width: W, height: H, channels: 4 } }).png().toBuffer();
    expectQuadrants(await prepareImage(bytes, OPTS), expected, 2, 'PNG RGBA');
  });
  it('WebP with alpha', async () => {
    const bytes = await sharp(rgba(), { raw: { width: W, height: H, channels: 4 } }).webp({ lossless: true }).toBuffer();
    expectQuadrants(await prepareImage(bytes, OPTS), expected, 2, 'WebP RGBA');
  });
  it('PNG 16-bit RGBA', async () => {
    const bytes = await sharp(rgba(), { raw: { width: W, height: H, channels: 4 } }).toColourspace('rgb16').png().toBuffer();
    expectQuadrants(await prepareImage(bytes, OPTS), expected, 2, 'PNG 16-bit RGBA');
  });
  it('palette PNG with a transparent colour', async () => {
    const bytes = await sharp(rgba(), { raw: { width: W, height: H, channels: 4 } }).png({ palette: true, dither: 0 }).toBuffer();
    expect((await sharp(bytes).metadata()).isPalette).toBe(true);
    expectQuadrants(await prepareImage(bytes, OPTS), expected, 8, 'palette PNG');
  });
  // (sharp's TIFF writer drops the alpha of grey images, so PNG stands for every format here)
  for (const format of ['png'] as const) {
    it(`grey + alpha ${format}, onto a coloured background`, async () => {
      const px = Buffer.alloc(W * H * 2);
      for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) px.set(x < W / 2 ? [200, 255] : [50, 0], (y * W + x) * 2);
      const bytes = await sharp(px, { raw: { width: W, height: H, channels: 2 } }).toColourspace('b-w').toFormat(format).toBuffer();
      expect((await sharp(bytes).metadata()).channels).toBe(2);
      const out = await prepareImage(bytes, { ...OPTS, background: '#0a781e' });
      expect(at(out, 56, 112)).toEqual([200, 200, 200]);
      expect(at(out, 168, 112)).toEqual([10, 120, 30]);
    });
  }
});

describe('animations and pages: the first frame', () => {
  const frames = async () => [await quadrants().png().toBuffer(), await sharp({ create: { width: W, height: H, channels: 3, background: '#000000' } }).png().toBuffer()];

  it('animated GIF', async () => {
    const bytes = await sharp(await frames(), { join: { animated: true } }).gif({ delay: [100, 100] }).toBuffer();
    expect((await sharp(bytes).metadata()).pages).toBe(2);
    expectQuadrants(await prepareImage(bytes, OPTS), QUADRANTS, 8, 'animated GIF');
  });
  it('animated WebP', async () => {
    const bytes = await sharp(await frames(), { join: { animated: true } }).webp({ lossless: true }).toBuffer();
    expect((await sharp(bytes).metadata()).pages).toBe(2);
    expectQuadrants(await prepareImage(bytes, OPTS), QUADRANTS, 2, 'animated WebP');
  });
});

describe('a format we do not read fails with its reason', () => {
  it('BMP → unsupported-format', async () => {
    const bmp = tinyBmp();
    const err = await prepareImage(bmp, OPTS).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PermanentError);
    expect(err).toMatchObject({ reason: 'unsupported-format', message: expect.stringMatching(/BMP/) });
  });
});

const HEIC_QUADRANTS =
  'AAAAHGZ0eXBoZWljAAAAAG1pZjFoZWljbWlhZgAAAa1tZXRhAAAAAAAAACFoZGxyAAAAAAAAAABwaWN0AAAAAAAAAAAAAAAAAAAA' +
  'AA5waXRtAAAAAAACAAAAEGlkYXQAAAAAAEAAMAAAADhpbG9jAQAAAERAAAIAAQAAAAAAAAHRAAEAAAAAAAABAgACAAEAAAAAAAAA' +
  'AQAAAAAAAAAIAAAAOGlpbmYAAAAAAAIAAAAVaW5mZQIAAAEAAQAAaHZjMQAAAAAVaW5mZQIAAAAAAgAAZ3JpZAAAAADYaXBycAAA' +
  'ALZpcGNvAAAAdmh2Y0MBA3AAAAAAAAAAAAAe8AD8/fj4AAAPAyAAAQAYQAEMAf//A3AAAAMAkAAAAwAAAwAeugJAIQABACpCAQED' +
  'cAAAAwCQAAADAAADAB6gIIEFlurkprm4EBAwIAAAAwAgAAADACEiAAEABkQBwXPAiQAAABRpc3BlAAAAAAAAAEAAAABAAAAAFGlz' +
  'cGUAAAAAAAAAQAAAADAAAAAQcGl4aQAAAAADCAgIAAAAGmlwbWEAAAAAAAAAAgABAoECAAICA4QAAAAaaXJlZgAAAAAAAAAOZGlt' +
  'ZwACAAEAAQAAAQptZGF0AAAA/igBrwY44+e97bfxKT///ZHPof1U/onRW/GlY2qvczpffnf3//kpRMT86NbCpQX8pR6uG4n0bpfb' +
  'eoeptlVOw/dueMf6a485jkt3PpgWf/ZxH/9aioAJmXg6v/Xwf/26lse1DuM/lXn/5Fqu+o7mpohPW//Z9dp2Ukut9PzNuT5PlNt3' +
  'qI1tHDILvr2rHS+Omp69gy2AYB4BHFsl0JM63fmfEvjU9HFXTplmKk4z/mm0JCvqZgZVosKm0KB/rO1NOgWBhQPOMb7DwB4NzZPT' +
  'KoZmp77IWz9Mk9hFCJBEeKzZLV6gHYgZa6JJeas/arSP6tPSy/p/S8CWzahqWKMI';
