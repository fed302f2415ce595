import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import sharp from 'sharp';
import { seededRandom } from '@transferline/shared';

/** The demo's classes: a shape and a hue family each, so the set is learnable even by features from random weights. */
export const SAMPLE_CLASSES = {
  circle: { hue: 0 },
  square: { hue: 120 },
  triangle: { hue: 230 },
} as const;
export type SampleClass = keyof typeof SAMPLE_CLASSES;

function shapeSvg(kind: SampleClass, rand: () => number, size: number): string {
  const hue = (SAMPLE_CLASSES[kind].hue + (rand() - 0.5) * 50 + 360) % 360;
  const fill = `hsl(${hue.toFixed(0)}, ${(55 + rand() * 40).toFixed(0)}%, ${(35 + rand() * 25).toFixed(0)}%)`;
  const bg = `hsl(${(rand() * 360).toFixed(0)}, ${(rand() * 15).toFixed(0)}%, ${(86 + rand() * 12).toFixed(0)}%)`;
  const r = size * (0.28 + rand() * 0.12);
  const cx = r + rand() * (size - 2 * r);
  const cy = r + rand() * (size - 2 * r);
  let shape: string;
  if (kind === 'circle') shape = `<circle cx="${cx}" cy="${cy}" r="${r}" fill="${fill}"/>`;
  else if (kind === 'square') shape = `<rect x="${cx - r}" y="${cy - r}" width="${2 * r}" height="${2 * r}" fill="${fill}" transform="rotate(${(rand() * 30 - 15).toFixed(1)} ${cx} ${cy})"/>`;
  else shape = `<polygon points="${cx},${cy - r} ${cx - r},${cy + r * 0.8} ${cx + r},${cy + r * 0.8}" fill="${fill}"/>`;
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${size}" height="${size}"><rect width="100%" height="100%" fill="${bg}"/>${shape}</svg>`;
}

/** One sample image as JPEG bytes; the same (class, index, seed) always gives the same bytes. */
export async function renderSample(kind: SampleClass, index: number, seed = 1, size = 192): Promise<Buffer> {
  const rand = seededRandom(seed * 100_003 + index * 7 + Object.keys(SAMPLE_CLASSES).indexOf(kind) * 1_000_003);
  return sharp(Buffer.from(shapeSvg(kind, rand, size))).jpeg({ quality: 85 }).toBuffer();
}

/**
 * Writes `perClass` images per class as `<dir>/<class>/<class>-NNN.jpg` (the folder-per-label
 * layout ingest expects). Returns the number written.
 */
export async function writeSampleSet(dir: string, perClass: number, seed = 1): Promise<number> {
  let n = 0;
  for (const kind of Object.keys(SAMPLE_CLASSES) as SampleClass[]) {
    await mkdir(path.join(dir, kind), { recursive: true });
    for (let i = 0; i < perClass; i++) {
      await writeFile(path.join(dir, kind, `${kind}-${String(i).padStart(3, '0')}.jpg`), await renderSample(kind, i, seed));
      n++;
    }
  }
  return n;
}
