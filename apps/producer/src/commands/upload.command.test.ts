import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { listFiles } from './upload.command.js';

describe('the files upload sends', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'tl-upload-'));
    for (const f of ['cats/a.jpg', 'cats/.DS_Store', 'dogs/puppies/b.jpg', '.thumbnails/cats/a.jpg', 'dogs/.cache/c.jpg']) {
      await mkdir(path.dirname(path.join(dir, f)), { recursive: true });
      await writeFile(path.join(dir, f), 'x');
    }
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('are every file below the folder, relative and sorted, without hidden files or folders (a .thumbnails/ label)', async () => {
    expect(await listFiles(dir)).toEqual(['cats/a.jpg', 'dogs/puppies/b.jpg']);
  });
});
