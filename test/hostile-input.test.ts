import sharp from 'sharp';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openCliContext, type CliContext } from '../apps/producer/src/cli-context.js';
import { renderSample, type SampleClass } from '../apps/producer/src/demo/sample-images.js';
import { contentHash, DatasetRepository, ReportDoc } from '../packages/shared/src/index.js';
import { guardLeaks } from './support/leak-guard.js';
import { runCli, startTestStack, type TestStack } from './support/stack.js';

/**
 * Hostile input and a bucket that changes under the pipeline, as a user meets them through the
 * CLI: labels that are names of Object.prototype, keys that carry terminal escapes, objects
 * overwritten while their job waits, objects deleted after they were embedded, and the small
 * CLI holes (unknown datasets, empty model names, empty prefixes, nonsense options).
 */

guardLeaks();

let stack: TestStack;
let ctx: CliContext;
const sink = { write: () => true } as unknown as NodeJS.WritableStream;
const photos = 'hostile';
const cli = (args: string[], deadlineMs = 120_000) => runCli(args, stack.env, deadlineMs);
const ESC = '\u001b';

beforeAll(async () => {
  stack = await startTestStack({ TL_MODEL_WEIGHTS: 'random', TL_EMBED_BATCH_SIZE: '4', TL_EMBED_BATCH_WAIT_MS: '50' });
  ctx = await openCliContext(stack.config, sink);
  await ctx.services.store.ensureBucket(photos);
});
afterAll(async () => {
  await ctx?.close();
  await stack?.destroy();
});

describe('labels named after Object.prototype', () => {
  it('train, report and print like any other label', async () => {
    const labels = ['__proto__', 'constructor', 'toString'];
    const kinds: SampleClass[] = ['circle', 'square', 'triangle'];
    for (const [i, label] of labels.entries()) {
      for (let n = 0; n < 8; n++) await ctx.services.store.putObject(photos, `proto/${label}/${n}.jpg`, await renderSample(kinds[i]!, n, 5));
    }
    const ingest = await cli(['ingest', `s3://${photos}/proto/`, '-d', 'proto']);
    expect(ingest.code).toBe(0);
    expect(ingest.stdout).toMatch(/dataset proto: 24 images, 24 embedded/);
    for (const label of labels) expect(ingest.stdout).toContain(`${label} (8)`);

    const train = await cli(['train', '-d', 'proto', '--epochs', '30', '--run-id', 'proto-1']);
    expect(train.stderr).not.toMatch(/TypeError|at .*\.js:\d+/);
    expect(train.code).toBe(0);
    const report = (await ctx.services.store.getDocument(ReportDoc, stack.config.s3.bucket, ctx.services.layout.runFile('proto', 'proto-1', 'report.json')))!;
    expect(report.labels).toEqual([...labels].sort());
    const perClass = report.validation.perClass.map((c) => c.label).sort();
    expect(perClass).toEqual([...labels].sort());
    // every validation image counted once in the confusion matrix
    expect(report.validation.confusionMatrix.flat().reduce((a, b) => a + b, 0)).toBe(report.split.validation);
    const status = await cli(['status', '-d', 'proto']);
    for (const label of labels) expect(status.stdout).toContain(`${label} (8)`);
    // its queue counts are every dataset's, and said so (a user's trial took them for the dataset's)
    expect(status.stdout).toMatch(/^queue \(of every dataset\) +workers {2}waiting/m);
    expect((await cli(['status'])).stdout).toMatch(/^queue +workers {2}waiting/m);

    // A dataset of those 24, then two new images from another prefix: the bar counts the two,
    // not the dataset's 24 done before (24/26 at once read as this ingest's progress).
    expect((await cli(['ingest', `s3://${photos}/proto/`, '-d', 'proto-more'])).code).toBe(0);
    for (const n of [0, 1]) await ctx.services.store.putObject(photos, `more/square/${n}.jpg`, await renderSample('square', n, 77));
    const more = await cli(['ingest', `s3://${photos}/more/`, '-d', 'proto-more']);
    expect(more.code).toBe(0);
    expect(more.stdout).toMatch(/2 enqueued/);
    expect(more.stderr).toMatch(/embedding proto-more: 2\/2 of this ingest's images done \(the dataset: 26\/26 done, 26 embedded/);
    expect(more.stderr).not.toMatch(/embedding proto-more: \d+\/26/);
  }, 240_000);
});

describe('keys with control characters', () => {
  it('are printed escaped by ingest, status and failures, never obeyed by the terminal', async () => {
    const evil = `esc/circle/${ESC}[2J${ESC}]0;pwned\u0007line\nbreak\ttab.jpg`;
    await ctx.services.store.putObject(photos, evil, Buffer.from('this is not a JPEG'));
    await ctx.services.store.putObject(photos, 'esc/circle/ok.jpg', await renderSample('circle', 1, 9));
    const ingest = await cli(['ingest', `s3://${photos}/esc/`, '-d', 'esc']);
    expect(ingest.code).toBe(3);
    // the progress counts the failed image as done, and says it failed
    expect(ingest.stderr).toMatch(/embedding esc: 2\/2 done: 1 embedded \(0 of them already in the cache\), 1 failed/);
    const status = await cli(['status', '-d', 'esc']);
    const failures = await cli(['failures', '-d', 'esc']);
    for (const r of [ingest, status, failures]) {
      expect(r.stdout + r.stderr).not.toMatch(/[\u0000-\u0008\u000b-\u001f\u007f]/);
      expect(r.stdout).toContain('\\x1b[2J\\x1b]0;pwned\\x07line\\nbreak\\ttab.jpg');
    }
    expect(failures.stdout).toMatch(/not-an-image/);
  }, 120_000);
});

describe('a bucket that changes under the pipeline', () => {
  it('an object overwritten while its job waits never leaves the new bytes\' hash under the old ETag', async () => {
    // The repro: stop preprocess, ingest, overwrite, continue, restore the original, ingest again.
    const key = 'changing/square/0.jpg';
    const original = await renderSample('square', 0, 21);
    const other = await renderSample('square', 1, 99);
    await ctx.services.store.putObject(photos, key, original);
    await ctx.services.store.putObject(photos, 'changing/circle/0.jpg', await renderSample('circle', 0, 21));
    stack.supervisor.signal('preprocess', 1, 'SIGSTOP');
    try {
      const listed = await cli(['ingest', `s3://${photos}/changing/`, '-d', 'changing', '--no-wait']);
      expect(listed.stdout).toMatch(/2 enqueued/);
      await ctx.services.store.putObject(photos, key, other);
    } finally {
      stack.supervisor.signal('preprocess', 1, 'SIGCONT');
    }
    const deadline = Date.now() + 60_000;
    while ((await ctx.services.inspector.status('changing')).pending > 0) {
      if (Date.now() > deadline) throw new Error('the jobs did not end within 60 s');
      await new Promise((r) => setTimeout(r, 100));
    }
    const id = DatasetRepository.itemId(photos, key);
    const [stale] = await ctx.services.datasets.getItems('changing', [id]);
    expect(stale).toMatchObject({ state: 'failed', reason: 'changed' });

    await ctx.services.store.putObject(photos, key, original); // the listed content (and ETag) again
    const again = await cli(['ingest', `s3://${photos}/changing/`, '-d', 'changing']);
    expect(again.code).toBe(0);
    expect(again.stdout).toMatch(/dataset changing: 2 images, 2 embedded/);
    const [item] = await ctx.services.datasets.getItems('changing', [id]);
    expect(item?.sha256).toBe(contentHash(original));
    const [known] = await ctx.services.datasets.knownHashes([id]);
    expect(known?.sha256).toBe(contentHash(original));

    // and a plain overwrite is picked up by the next ingest with its own hash
    await ctx.services.store.putObject(photos, key, other);
    const third = await cli(['ingest', `s3://${photos}/changing/`, '-d', 'changing']);
    expect(third.code).toBe(0);
    expect(third.stdout).toMatch(/1 enqueued/);
    const [updated] = await ctx.services.datasets.getItems('changing', [id]);
    expect(updated?.sha256).toBe(contentHash(other));
  }, 180_000);

  it('an object deleted from the bucket leaves the dataset at the next ingest, and training', async () => {
    for (const kind of ['circle', 'square'] as const) {
      for (let n = 0; n < 6; n++) await ctx.services.store.putObject(photos, `shrinking/${kind}/${n}.jpg`, await renderSample(kind, n, 31));
    }
    const first = await cli(['ingest', `s3://${photos}/shrinking/`, '-d', 'shrinking']);
    expect(first.stdout).toMatch(/dataset shrinking: 12 images, 12 embedded/);
    await ctx.services.store.deleteObject(photos, 'shrinking/circle/0.jpg');
    await ctx.services.store.deleteObject(photos, 'shrinking/square/5.jpg');
    const again = await cli(['ingest', `s3://${photos}/shrinking/`, '-d', 'shrinking']);
    expect(again.code).toBe(0);
    // a reason asked of a dataset with no failures (the wrong dataset): said
    expect((await cli(['failures', '-d', 'shrinking', '--reason', 'truncated'])).stdout).toBe('dataset shrinking: 0 failed with truncated; it has no failed images\n');
    expect((await cli(['retry', '-d', 'shrinking', '--reason', 'truncated'])).stdout).toBe('retrying 0 failed images of shrinking with reason truncated; it has no failed images\n');
    // a code no image fails with (a typo): bad usage, with the codes there are
    const typo = await cli(['retry', '-d', 'shrinking', '--reason', 'truncate']);
    expect(typo.code).toBe(2);
    expect(typo.stderr).toMatch(/argument 'truncate' is invalid\. Allowed choices are .*truncated/);
    expect(again.stdout).toMatch(/10 objects listed, .*2 removed from the dataset \(deleted from the bucket\)/);
    expect(again.stdout).toMatch(/dataset shrinking: 10 images, 10 embedded .*0 failed, 0 pending/);
    const train = await cli(['train', '-d', 'shrinking', '--epochs', '10', '--run-id', 'after-delete']);
    expect(train.code).toBe(0);
    const report = (await ctx.services.store.getDocument(ReportDoc, stack.config.s3.bucket, ctx.services.layout.runFile('shrinking', 'after-delete', 'report.json')))!;
    expect(report.coverage.total).toBe(10);
    expect(report.split.train + report.split.validation + report.split.test).toBe(10);
    // other prefixes of the dataset's bucket are not touched
    const proto = await cli(['status', '-d', 'proto']);
    expect(proto.stdout).toMatch(/dataset proto: 24 images/);
  }, 180_000);
});

describe('small CLI holes', () => {
  it('unknown datasets and models are errors, not zeros', async () => {
    for (const args of [['status', '-d', 'nope'], ['failures', '-d', 'nope'], ['models', '-d', 'nope']]) {
      const r = await cli(args);
      expect(r.code, args.join(' ')).toBe(1);
      expect(r.stderr).toMatch(/no dataset named nope/);
    }
    const empty = await cli(['classify', `s3://${photos}/proto/`, '-m', '']);
    expect(empty.code).toBe(2);
    expect(empty.stderr).toMatch(/--model needs a dataset name/);
    expect(empty.stderr).not.toMatch(/XML|parse/i);
  });

  it('upload says when it creates the bucket (a typo in its name does not pass unseen), and names a folder that is not there', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'tl-upload-'));
    try {
      await mkdir(path.join(dir, 'circle'));
      await writeFile(path.join(dir, 'circle', '1.jpg'), await renderSample('circle', 1, 5, 64));
      const fresh = await cli(['upload', dir, 's3://photos-typo/x/']);
      expect(fresh.code).toBe(0);
      expect(fresh.stdout).toBe('created bucket s3://photos-typo (it did not exist)\nuploaded 1 file to s3://photos-typo/x/\n');
      // the same bytes again: not sent again (a user's trial: every file went again); a changed file is
      const again = await cli(['upload', dir, 's3://photos-typo/x/']);
      expect(again.stdout).toBe('uploaded 0 files to s3://photos-typo/x/ (1 more already there, the same bytes: not sent again)\n');
      await writeFile(path.join(dir, 'circle', '1.jpg'), await renderSample('circle', 3, 5, 64));
      expect((await cli(['upload', dir, 's3://photos-typo/x/'])).stdout).toBe('uploaded 1 file to s3://photos-typo/x/\n');
      // files ingest could not read as images are not sent, and named (they would fail for good)
      await writeFile(path.join(dir, 'circle', 'notes.txt'), 'my notes\n');
      await writeFile(path.join(dir, 'circle', 'empty.jpg'), '');
      const bad = await cli(['upload', dir, 's3://photos-typo/x/']);
      expect(bad.stdout).toBe(
        'skipped 2 files that ingest could not read as images ("circle/empty.jpg": zero bytes (an empty object, or an empty upload); "circle/notes.txt": not an image (starts with text))\n' +
          'uploaded 0 files to s3://photos-typo/x/ (1 more already there, the same bytes: not sent again)\n',
      );
      expect(await ctx.services.store.headObject('photos-typo', 'x/circle/notes.txt')).toBeUndefined();
      // the progress names no skipped or unchanged file as if it were sent (a user's trial)
      const progress = bad.stderr.split('\n').filter((l) => l.startsWith('uploading: '));
      expect(progress.length).toBeGreaterThan(0);
      for (const line of progress) expect(line).toMatch(/^uploading: \d\/3 circle\/(?:(?:empty\.jpg|notes\.txt) \(skipped: not readable as an image\)|1\.jpg \(already there\))$/);
      await rm(path.join(dir, 'circle', 'notes.txt'));
      await rm(path.join(dir, 'circle', 'empty.jpg'));
      // a JPEG cut short (a copy that did not finish) is not sent either, with the reason ingest
      // would fail it with (a user's trial: it was sent, and failed at ingest); one with data after
      // its end marker (a motion photo's video) decodes whole, and is sent
      const whole = await renderSample('circle', 4, 5, 64);
      await writeFile(path.join(dir, 'circle', 'cut.jpg'), whole.subarray(0, Math.floor(whole.length * 0.6)));
      await writeFile(path.join(dir, 'circle', 'motion.jpg'), Buffer.concat([whole, Buffer.alloc(4096, 0x42)]));
      const cut = await cli(['upload', dir, 's3://photos-typo/x/']);
      expect(cut.stdout).toMatch(
        /^skipped 1 file that ingest could not read as images \("circle\/cut\.jpg": the jpeg file ends before its image does \(cut short: an upload or copy that did not finish\?\)[^\n]*\)\nuploaded 1 file to s3:\/\/photos-typo\/x\/ \(1 more already there, the same bytes: not sent again\)\n$/,
      );
      expect(await ctx.services.store.headObject('photos-typo', 'x/circle/cut.jpg')).toBeUndefined();
      expect(await ctx.services.store.headObject('photos-typo', 'x/circle/motion.jpg')).toBeDefined();
      await rm(path.join(dir, 'circle', 'cut.jpg'));
      // over the workers' limits, as this shell's settings say them: not sent either (a user's
      // trial: a 75 MB and a 16000×16000 PNG went, and failed at ingest)
      await writeFile(path.join(dir, 'circle', 'big.jpg'), await renderSample('circle', 7, 5, 900));
      await writeFile(path.join(dir, 'circle', 'wide.png'), await sharp({ create: { width: 300, height: 200, channels: 3, background: '#808080' } }).png().toBuffer());
      const limits = await runCli(['upload', dir, 's3://photos-typo/x/'], { ...stack.env, TL_MAX_OBJECT_BYTES: '12000', TL_MAX_INPUT_PIXELS: '50000' });
      expect(limits.stdout).toMatch(/^skipped 2 files that ingest could not read as images \("circle\/big\.jpg": [\d,]+ bytes, over the limit of 12,000 \(TL_MAX_OBJECT_BYTES\); "circle\/wide\.png": the image is 300×200, 60,000 pixels, more than TL_MAX_INPUT_PIXELS \(50,000\) allows\)\n/);
      expect(await ctx.services.store.headObject('photos-typo', 'x/circle/big.jpg')).toBeUndefined();
      expect(await ctx.services.store.headObject('photos-typo', 'x/circle/wide.png')).toBeUndefined();
      await rm(path.join(dir, 'circle', 'big.jpg'));
      await rm(path.join(dir, 'circle', 'wide.png'));
      await rm(path.join(dir, 'circle', 'motion.jpg'));
      await ctx.services.store.deleteObject('photos-typo', 'x/circle/motion.jpg');
      // the image moved to another label folder in the bucket since, as relabel does: the folder
      // uploaded again does not bring it back under its old label (a user's trial); --copies does
      await ctx.services.store.putObject('photos-typo', 'x/square/1.jpg', await readFile(path.join(dir, 'circle', '1.jpg')));
      await ctx.services.store.deleteObject('photos-typo', 'x/circle/1.jpg');
      const moved = await cli(['upload', dir, 's3://photos-typo/x/']);
      expect(moved.stdout).toBe(
        'skipped 1 file whose image is in the bucket under another label ("circle/1.jpg" is s3://photos-typo/x/square/1.jpg): moved there by relabel since, and sent again it would come back under the old label as a copy; add --copies to send it all the same\n' +
          'uploaded 0 files to s3://photos-typo/x/\n',
      );
      expect(await ctx.services.store.headObject('photos-typo', 'x/circle/1.jpg')).toBeUndefined();
      expect((await cli(['upload', dir, 's3://photos-typo/x/', '--copies'])).stdout).toBe('uploaded 1 file to s3://photos-typo/x/\n');
      // its bytes in a hidden folder beside (a listing leaves it out) are no image of another
      // label: sent (a review: it was skipped as moved there by relabel)
      const square = await ctx.services.store.getObject('photos-typo', 'x/square/1.jpg');
      await ctx.services.store.putObject('photos-typo', 'x/.rejected/1.jpg', square);
      await ctx.services.store.deleteObject('photos-typo', 'x/square/1.jpg');
      await ctx.services.store.deleteObject('photos-typo', 'x/circle/1.jpg');
      expect((await cli(['upload', dir, 's3://photos-typo/x/'])).stdout).toBe('uploaded 1 file to s3://photos-typo/x/\n');
      await ctx.services.store.putObject('photos-typo', 'x/square/1.jpg', square);
      // the same folder to the bucket's root, above x/ (its keys are others, not moved ones): sent
      expect((await cli(['upload', dir, 's3://photos-typo/'])).stdout).toBe('uploaded 1 file to s3://photos-typo/\n');
      // a file beside the label folders has no label: said before it is uploaded
      await writeFile(path.join(dir, 'loose.jpg'), await renderSample('circle', 2, 5, 64));
      const loose = await cli(['upload', dir, 's3://photos-typo/y/']);
      expect(loose.stdout).toContain(`note: 1 of the 2 files is not in a label folder ("loose.jpg"): ingest skips them; for an image among them, put it in a folder per label (${path.join(dir, 'LABEL', 'loose.jpg')})\n`);
      // a file beside them that is no image either is named once, in that note (a user's trial: it was also counted among those ingest could not read)
      await writeFile(path.join(dir, 'README.txt'), 'my photos\n');
      const readme = await cli(['upload', dir, 's3://photos-typo/y/']);
      expect(readme.stdout).toMatch(/^note: 2 of the 3 files are not in a label folder \([^)]*"README.txt"/m);
      expect(readme.stdout).not.toContain('could not read as images');
      // nor counted among those there already (a review: "1 more already there, the same bytes")
      expect(readme.stdout).toMatch(/^uploaded 0 files to s3:\/\/photos-typo\/y\/ \(2 more already there, the same bytes: not sent again\)$/m);
      expect(await ctx.services.store.headObject('photos-typo', 'y/README.txt')).toBeUndefined();
      await rm(path.join(dir, 'README.txt'));
      // a folder with no label folder at all: nothing is sent (a user's trial: every file went, exit 0)
      const flat = await cli(['upload', path.join(dir, 'circle'), 's3://photos-typo/flat/']);
      expect(flat.code).toBe(1);
      expect(flat.stderr).toBe(`transferline: none of the 1 files under ${path.join(dir, 'circle')} is in a label folder ("1.jpg"): ingest could use none of them; put them in a folder per label (${path.join(dir, 'circle', 'LABEL', '1.jpg')}), or add --unlabelled for images to classify\n`);
      expect(await ctx.services.store.headObject('photos-typo', 'flat/1.jpg')).toBeUndefined();
      // images to classify have no label: --unlabelled sends them, each at its path under the
      // folder (a user's trial: classify's images had to go up with another S3 client), with the
      // same checks (not an image: not sent; the same bytes: not sent again)
      await mkdir(path.join(dir, 'circle', 'more'));
      await writeFile(path.join(dir, 'circle', 'more', '2.jpg'), await renderSample('circle', 6, 5, 64));
      await writeFile(path.join(dir, 'circle', 'notes.txt'), 'my notes\n');
      const toClassify = ['upload', path.join(dir, 'circle'), 's3://photos-typo/flat/', '--unlabelled'];
      const unlabelled = await cli(toClassify);
      expect(unlabelled.code).toBe(0);
      const notRead = 'skipped 1 file that classify could not read as images ("notes.txt": not an image (starts with text))\n';
      expect(unlabelled.stdout).toBe(`${notRead}uploaded 2 files to s3://photos-typo/flat/\n`);
      expect(await ctx.services.store.headObject('photos-typo', 'flat/1.jpg')).toBeDefined();
      expect(await ctx.services.store.headObject('photos-typo', 'flat/more/2.jpg')).toBeDefined();
      expect(await ctx.services.store.headObject('photos-typo', 'flat/notes.txt')).toBeUndefined();
      expect((await cli(toClassify)).stdout).toBe(`${notRead}uploaded 0 files to s3://photos-typo/flat/ (2 more already there, the same bytes: not sent again)\n`);
      // into a prefix that holds a training set (x/: circle/, square/), said before they go
      const intoTraining = await cli(['upload', path.join(dir, 'circle'), 's3://photos-typo/x/', '--unlabelled']);
      expect(intoTraining.stdout).toMatch(/^note: s3:\/\/photos-typo\/x\/ holds 2 images in label folders already \(a training set\?\): these files go beside them; an ingest of the prefix would take their sub-folders for labels, and a classify of it would label those images too\n/);
      // (not the hidden one: a listing leaves it out)
      for (const key of ['x/1.jpg', 'x/more/2.jpg', 'x/.rejected/1.jpg']) await ctx.services.store.deleteObject('photos-typo', key);
      // --copies is about label folders: refused beside --unlabelled, before anything is sent
      const copies = await cli([...toClassify, '--copies']);
      expect(copies.code).not.toBe(0);
      expect(copies.stderr).toMatch(/--copies.*cannot be used with.*--unlabelled/);
      await rm(path.join(dir, 'circle', 'more'), { recursive: true });
      await rm(path.join(dir, 'circle', 'notes.txt'));
      await rm(path.join(dir, 'loose.jpg'));
      const missing = await cli(['upload', path.join(dir, 'nope'), 's3://photos-typo/x/']);
      expect(missing.code).toBe(1);
      expect(missing.stderr).toContain(`transferline: no folder ${path.join(dir, 'nope')}\n`);
      expect(missing.stderr).not.toMatch(/ENOENT|scandir/);
      // a name S3 would refuse is said so, not an UnknownError from the HEAD of a bucket
      for (const name of ['Bad_Bucket', 'ab']) {
        const bad = await cli(['upload', dir, `s3://${name}/x/`]);
        expect(bad.code).toBe(1);
        expect(bad.stderr).toBe(`transferline: "${name}" cannot be a bucket's name: 3 to 63 lowercase letters, digits, dots and hyphens, starting and ending with a letter or digit\n`);
      }
      // said before the folder is read: not a missing folder, nor a note about loose files
      const both = await cli(['upload', path.join(dir, 'nope'), 's3://Bad_Bucket/x/']);
      expect(both.stderr).toMatch(/^transferline: "Bad_Bucket" cannot be a bucket's name/);
      expect(both.stdout).toBe('');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }, 180_000); // about 20 CLI commands, each one's start about 0.7 s of CPU: 16 s alone, more beside other work

  it('an empty prefix says so, and nonsense sizes are refused', async () => {
    const none = await cli(['ingest', `s3://${photos}/no-such-prefix/`, '-d', 'none']);
    expect(none.stdout).toMatch(/no objects there \(is the prefix right\?/);
    // nothing to wait for (not a dataset that vanished), and nothing created: an error a script sees
    expect(none.code).toBe(1);
    expect(none.stderr).toMatch(/nothing to ingest under s3:\/\/\S+\/no-such-prefix\/, so dataset none was not created/);
    expect(none.stderr).not.toMatch(/vanished/);
    // a prefix one level too deep: objects, but none in a label folder
    await ctx.services.store.putObject(photos, 'flat/1.jpg', await renderSample('circle', 1, 1, 64));
    const flat = await cli(['ingest', `s3://${photos}/flat/`, '-d', 'flat']);
    expect(flat.code).toBe(1);
    expect(flat.stdout).toMatch(/1 skipped \(not in a label folder/);
    expect(flat.stderr).toMatch(/none of the 1 objects is in a label folder under s3:\/\/\S+\/flat\/, so dataset flat was not created/);
    expect(await ctx.services.datasets.sourceOf('flat', `${photos}/flat/1.jpg`)).toBeUndefined();
    // the same mistake for a dataset that exists: the prefix one level too deep adds nothing, and
    // is not taken for the dataset's source (relabel would find no label folder under it)
    const deep = await cli(['ingest', `s3://${photos}/proto/toString/`, '-d', 'proto']);
    expect(deep.stdout).toMatch(/8 skipped \(not in a label folder/);
    expect(deep.stdout).not.toMatch(/removed from the dataset/);
    // an error, as for a new dataset, naming where its label folders are; not the dataset's old
    // figures waited for and printed as if they were this ingest's
    expect(deep.code).toBe(1);
    expect(deep.stderr).toContain(`\ntransferline: none of the 8 objects is in a label folder under s3://${photos}/proto/toString/, so nothing was added to dataset proto (a prefix one level too deep? its label folders are under s3://${photos}/proto/)\n`);
    expect(deep.stdout).not.toMatch(/^dataset proto:/m);
    expect((await ctx.services.inspector.status('proto')).total).toBe(24);
    // and a typo in the prefix of a dataset that exists (nothing there): the same, not its old
    // figures and failures with exit 3 as if this ingest had found them (a user's trial)
    const typo = await cli(['ingest', `s3://${photos}/prot/`, '-d', 'proto']);
    expect(typo.stdout).toMatch(/no objects there \(is the prefix right\?/);
    expect(typo.code).toBe(1);
    expect(typo.stderr).toContain(`\ntransferline: nothing to ingest under s3://${photos}/prot/, so nothing was added to dataset proto (a typo in the prefix? its label folders are under s3://${photos}/proto/)\n`);
    expect(typo.stdout).not.toMatch(/^dataset proto:/m);
    // a label that starts with a dot: refused once, as usage (a listing leaves hidden folders out: a review)
    const hidden = await cli(['relabel', '-d', 'proto', `s3://${photos}/proto/toString/7.jpg`, '--to', '.net']);
    expect(hidden.code).toBe(2);
    expect(hidden.stderr).toBe('transferline: a label cannot start with a dot (.net): a listing leaves hidden folders out, so the images would leave the dataset at its next ingest\n');
    // (zebra: a label proto does not have yet)
    const moved = await cli(['relabel', '-d', 'proto', `s3://${photos}/proto/toString/7.jpg`, '--to', 'zebra', '--new-label']);
    expect(moved.stderr).toBe('');
    expect(moved.stdout).toMatch(/relabel proto: 1 moved/);
    // the object was in another dataset too (proto-more, from the first test): named, and true
    expect(moved.stdout).toContain('note: 1 of the objects to move is also in dataset proto-more (ingested from the same keys): it holds it under the old key and label until it is ingested again, which finds it moved (nothing is embedded again)\n');
    const other = await cli(['ingest', `s3://${photos}/proto/`, '-d', 'proto-more']);
    expect(other.stdout).toMatch(/0 enqueued, 1 added from the embedding cache \(no job\).*, 1 removed from the dataset/);
    const [gone, there] = await ctx.services.datasets.getItems('proto-more', [`${photos}/proto/toString/7.jpg`, `${photos}/proto/zebra/7.jpg`]);
    expect(gone).toBeUndefined();
    expect(there).toMatchObject({ label: 'zebra' });
    const rows = await cli(['cache', 'compact', '--rows', '0']);
    expect(rows.code).toBe(2); // bad usage, as the README's exit codes say
    expect(rows.stderr).toMatch(/--rows must be at least 2/);
  });
  it('split folders beside other folders under the prefix (a prefix one level too high) are pointed out', async () => {
    const img = await renderSample('circle', 7, 7, 64);
    for (const key of ['layout/train/cat/1.jpg', 'layout/val/cat/2.jpg', 'layout/incoming/x.jpg', 'layout/more/cat/3.jpg']) await ctx.services.store.putObject(photos, key, img);
    const mixed = await cli(['ingest', `s3://${photos}/layout/`, '-d', 'layout', '--no-wait']);
    expect(mixed.code).toBe(0);
    expect(mixed.stdout).toContain(`note: under s3://${photos}/layout/, train/, val/ hold splits (the folders in them are labels), but incoming/, more/ are taken as labels themselves: if they are not labels, ingest the right prefixes one by one into a new dataset`);
    // a bucket's own splits alone, or label folders alone, are the layouts the README describes: no note
    const splits = await cli(['ingest', `s3://${photos}/layout/train/`, '-d', 'layout-train', '--no-wait']);
    expect(splits.stdout).not.toMatch(/^note:/m);
    // folder markers (an S3 console's "create folder"): not "skipped", and an empty label folder is named (a user's trial)
    // (cat/raw/: a label's own sub-folder, empty: no label of its own, nothing to say)
    for (const key of ['markers/cat/', 'markers/cat/raw/', 'markers/dog/', 'markers/empty/']) await ctx.services.store.putObject(photos, key, Buffer.alloc(0));
    for (const key of ['markers/cat/1.jpg', 'markers/dog/2.jpg']) await ctx.services.store.putObject(photos, key, img);
    const marked = await cli(['ingest', `s3://${photos}/markers/`, '-d', 'markers', '--no-wait']);
    expect(marked.code).toBe(0);
    expect(marked.stdout).not.toContain('skipped');
    expect(marked.stdout).toContain(`note: under s3://${photos}/markers/, empty/ is an empty folder (a folder marker, no image in it): no label of it is in the dataset\n`);
  });
});

describe('deleting a dataset', () => {
  it("removes its failed preprocess jobs, and no other dataset's; with --runs, those of the images its runs classified", async () => {
    for (const d of ['gone', 'kept']) {
      for (const kind of ['circle', 'square'] as const) for (let n = 0; n < 2; n++) await ctx.services.store.putObject(photos, `${d}/${kind}/${n}.jpg`, await renderSample(kind, n, 41));
      await ctx.services.store.putObject(photos, `${d}/circle/notes.jpg`, `not an image: ${d}\n`);
      expect((await cli(['ingest', `s3://${photos}/${d}/`, '-d', d])).stdout).toMatch(new RegExp(`dataset ${d}: 5 images, 4 embedded .*1 failed`));
    }
    // a run of gone, which classified an unreadable image: a failed job of _classify.gone
    expect((await cli(['train', '-d', 'gone', '--epochs', '1', '--run-id', 'gone-run'])).code).toBe(0);
    await ctx.services.store.putObject(photos, 'gone-in/a.jpg', await renderSample('circle', 7, 41));
    await ctx.services.store.putObject(photos, 'gone-in/b.jpg', 'not an image either\n');
    const classified = await cli(['classify', `s3://${photos}/gone-in/`, '--model', 'gone']);
    expect(classified.stdout).toMatch(/classified 1 image\(s\) .*, 1 failed/);
    const failedOf = async (d: string) => (await ctx.queues.preprocess.getFailed()).filter((j) => (j.data as { dataset: string }).dataset === d).length;
    const counts = async () => [await failedOf('gone'), await failedOf('_classify.gone'), await failedOf('kept')];
    expect(await counts()).toEqual([1, 1, 1]);
    const del = await cli(['delete', 'dataset', 'gone', '--yes']);
    expect(del.code).toBe(0);
    expect(del.stdout).toContain('\n  1 failed preprocess job of gone (in Redis; status and the console count them among the queue\'s failures)\n');
    // status and the console count the queue's failed jobs: the deleted dataset's no longer; the
    // classified images stay with the runs that are kept
    expect(await counts()).toEqual([0, 1, 1]);
    expect((await cli(['failures', '-d', 'kept'])).stdout).toMatch(/^dataset kept: 1 failed \(not-an-image 1\)/);
    // with its runs: the images they classified go, their failed job with them
    const runs = await cli(['delete', 'dataset', 'gone', '--runs', '--yes']);
    expect(runs.code).toBe(0);
    expect(runs.stdout).toContain('\n  1 failed preprocess job of gone and _classify.gone (in Redis; status and the console count them among the queue\'s failures)\n');
    expect(await counts()).toEqual([0, 0, 1]);
  }, 240_000);
});
