import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, utimes, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pMap from 'p-map';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openCliContext, type CliContext } from '../apps/producer/src/cli-context.js';
import { relabelCommand } from '../apps/producer/src/commands/review.command.js';
import { startConsole } from '../apps/producer/src/console/console.server.js';
import { renderSample, type SampleClass } from '../apps/producer/src/demo/sample-images.js';
import { ReportDoc, parseS3ObjectUrl } from '../packages/shared/src/index.js';
import { createLogger } from '../packages/shared/src/service-runtime.js';
import { guardLeaks } from './support/leak-guard.js';
import { runCli, scrape, startTestStack, type TestStack } from './support/stack.js';

/**
 * Fixing the training data where the model disagrees with it: 10% of a separable set is put in
 * the wrong label folder on purpose; `review` must rank most of those at the top, `relabel`
 * moves them back without embedding anything again, and training afterwards does better.
 */

guardLeaks();

const KINDS: SampleClass[] = ['circle', 'square', 'triangle'];
const PER_CLASS = 20;
const bucket = 'review-photos';
let stack: TestStack;
let ctx: CliContext;
const sink = { write: () => true } as unknown as NodeJS.WritableStream;
/** the keys put under a wrong label, with their true label */
const flipped = new Map<string, SampleClass>();
/** Where the S3 server keeps an object's bytes (`<key>._S3rver_object`) and ETag (`….md5`). */
const stored = (key: string) => path.join(stack.dataDir, 's3', bucket, `${key}._S3rver_object`);
/** relabel of one image through the CLI: it says it moved it, the old key is gone, the new one holds `bytes`. */
async function expectMoved(from: string, to: string, label: string, bytes: Buffer): Promise<void> {
  const r = await runCli(['relabel', '-d', 'noisy', `s3://${bucket}/${from}`, '--to', label], stack.env);
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  expect(r.stdout).toMatch(/relabel noisy: 1 moved/);
  expect(await ctx.services.store.headObject(bucket, from)).toBeUndefined();
  expect((await ctx.services.store.getObject(bucket, to)).equals(bytes)).toBe(true);
}
/** A review's line suggesting `suggested` for the image at `key` (in `bucket`), labelled `given`, as review writes one. */
const suggestion = (key: string, given: string, suggested: string) => ({ key: `s3://${bucket}/${key}`, given, suggested, pGiven: 0.1, pSuggested: 0.8, issue: true, uncertainty: 0.2, probabilities: { [given]: 0.1, [suggested]: 0.8 } });
/** relabel -d noisy --from-review of a review file of these lines, written for the command and deleted after it. */
async function relabelFromReview(lines: ReturnType<typeof suggestion>[]): Promise<Awaited<ReturnType<typeof runCli>>> {
  const key = ctx.services.layout.review('noisy', '9999-12-31T00-00-00-001Z');
  await ctx.services.store.putObject(stack.config.s3.bucket, key, lines.map((l) => JSON.stringify(l)).join('\n') + '\n', 'application/x-ndjson');
  try {
    return await runCli(['relabel', '-d', 'noisy', '--from-review', `s3://${stack.config.s3.bucket}/${key}`], stack.env);
  } finally {
    await ctx.services.store.deleteObject(stack.config.s3.bucket, key);
  }
}
/**
 * Gives an object the ETag S3 gives one uploaded in parts ("<MD5 of the parts' MD5s>-<parts>"):
 * this server stores every object under the plain MD5 of its bytes, and a copy gets the plain MD5.
 * Its files are dated a minute back, as an upload finished a while ago.
 */
async function uploadedInParts(key: string): Promise<string> {
  const etag = `${createHash('md5').update(key).digest('hex')}-2`;
  await writeFile(`${stored(key)}.md5`, etag);
  const longAgo = new Date(Date.now() - 60_000);
  for (const file of [stored(key), `${stored(key)}.md5`]) await utimes(file, longAgo, longAgo);
  expect((await ctx.services.store.headObject(bucket, key))?.etag).toBe(etag);
  return etag;
}

beforeAll(async () => {
  stack = await startTestStack({ TL_MODEL_WEIGHTS: 'random', TL_EMBED_BATCH_SIZE: '8', TL_EMBED_BATCH_WAIT_MS: '50' });
  ctx = await openCliContext(stack.config, sink);
  await ctx.services.store.ensureBucket(bucket);
  for (const [c, kind] of KINDS.entries()) {
    for (let i = 0; i < PER_CLASS; i++) {
      // every tenth image of each class goes into the next class's folder
      const wrong = i % 10 === 3;
      const folder = wrong ? KINDS[(c + 1) % KINDS.length]! : kind;
      const key = `train/${folder}/${kind}-${i}.jpg`;
      if (wrong) flipped.set(`s3://${bucket}/${key}`, kind);
      await ctx.services.store.putObject(bucket, key, await renderSample(kind, i, 21, 128));
    }
  }
  const ingest = await runCli(['ingest', `s3://${bucket}/train/`, '-d', 'noisy'], stack.env, 240_000);
  expect(ingest.code).toBe(0);
}, 300_000);

afterAll(async () => {
  await ctx?.close();
  await stack?.destroy();
});

const accuracyOf = async (runId: string) => (await ctx.services.store.getDocument(ReportDoc, stack.config.s3.bucket, ctx.services.layout.runFile('noisy', runId, 'report.json')))!;

describe('review and relabel', () => {
  it('ranks the flipped images at the top, moves them back without embedding, and training recovers', async () => {
    expect(flipped.size).toBe(6); // 10% of 60
    const before = await runCli(['train', '-d', 'noisy', '--epochs', '60', '--run-id', 'noisy-1', '--seed', '2'], stack.env, 240_000);
    expect(before.code).toBe(0);

    const review = await runCli(['review', '-d', 'noisy', '--json'], stack.env, 240_000);
    expect(review.code).toBe(0);
    // no advice from TF.js to install a package this project does not use
    expect(review.stderr).not.toMatch(/TensorFlow\.js in Node\.js/);
    const r = JSON.parse(review.stdout) as { lines: { key: string; given: string; suggested: string; issue: boolean; pGiven: number }[]; outputKey: string; seconds: number; folds: number };
    expect(r.lines.length).toBe(60);
    const top = r.lines.slice(0, flipped.size);
    const hits = top.filter((l) => flipped.has(l.key));
    expect(hits.length / flipped.size).toBeGreaterThanOrEqual(0.8); // precision at k = number flipped
    for (const l of hits) if (l.issue) expect(l.suggested).toBe(flipped.get(l.key));
    // the full list is in the bucket, most doubtful first
    expect(r.outputKey).toMatch(new RegExp(`^s3://${stack.config.s3.bucket}/reviews/noisy/.+\\.jsonl$`));
    // an image not embedded yet (its job lost: orphaned) is left out, and said so
    const pendingId = `${bucket}/train/circle/not-yet.jpg`;
    await ctx.services.datasets.putItem('noisy', pendingId, { label: 'circle', etag: 'e-not-yet', state: 'pending' });
    // and one that failed for good is left out too; a circle's bytes filed under square as well
    // are predicted but fitted under neither: the header counts both
    const failedId = `${bucket}/train/circle/broken.jpg`;
    await ctx.services.datasets.putItem('noisy', failedId, { label: 'circle', etag: 'e-broken', state: 'failed', stage: 'preprocess', reason: 'truncated' });
    const circle = (await ctx.services.datasets.getItems('noisy', [r.lines.find((l) => l.given === 'circle')!.key.replace('s3://', '')]))[0]!;
    const tornId = `${bucket}/train/square/also-a-circle.jpg`;
    await ctx.services.datasets.putItem('noisy', tornId, { ...circle, label: 'square' });
    // and a label of one image (a trial: it refused the whole review): left out of it, and said so
    const yetiSha = 'f'.repeat(64);
    await ctx.services.cache.writeShard(stack.space.id, [yetiSha], Float32Array.from({ length: 1280 }, (_, i) => Math.sin(i)), 1280);
    const yetiId = `${bucket}/train/yeti/only.jpg`;
    await ctx.services.datasets.putItem('noisy', yetiId, { label: 'yeti', etag: 'e-yeti', space: stack.space.id, state: 'cached', sha256: yetiSha });
    const text = await runCli(['review', '-d', 'noisy', '--top', '6'], stack.env, 240_000);
    await ctx.services.datasets.removeItems('noisy', [pendingId, failedId, tornId, yetiId]);
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(/^ {2}left out: label yeti \(1 image\): a review needs 2 distinct images of a label, one fitted on while the other is held out; add another to review it$/m);
    expect(text.stdout).not.toContain('only.jpg');
    expect(text.stdout).toMatch(/^review of noisy: 61 embedded images, 60 distinct \(copies of the same bytes count once and share a fold\), 5-fold/m);
    expect(text.stdout).toMatch(/^ {2}1 of them is filed under more than one label: predicted, but fitted under none \(move the copies to their label with transferline relabel\)$/m);
    expect(text.stdout).toMatch(/^ {2}left out: 1 failed image \(see transferline failures -d noisy\)$/m);
    expect(text.stdout).toMatch(/^ {2}left out: 1 images not embedded yet \(on their way, or orphaned: see transferline status\)/m);
    // progress, fold by fold (a plain line per update off a terminal)
    expect(text.stderr).toMatch(/^review of noisy: folds: 5\/5 fitted$/m);
    expect(text.stdout).toMatch(/look mislabelled/);
    // how far to trust it: the share of labels its out-of-fold predictions agree with (a user's trial relabelled on its word)
    const agree = r.lines.filter((l) => l.suggested === l.given).length / r.lines.length;
    expect(text.stdout).toMatch(/^ {2}the model behind these suggestions agrees with the given label on [\d.]+% of the \d+ images \(out of fold\)/m);
    expect(text.stdout.includes('look at each before moving it')).toBe(agree < 0.9);
    expect(text.stdout).toMatch(/most uncertain/);
    // a label of 2 images that are both copies of another label's is not left out as too small
    // (adding images would not mend it): refused as before, naming the copies and their mend (a review)
    const circles = r.lines.filter((l) => l.given === 'circle').slice(0, 2).map((l) => l.key.replace('s3://', ''));
    const kittens = (await ctx.services.datasets.getItems('noisy', circles)).map((rec, i) => [`${bucket}/train/kitten/copy-${i}.jpg`, { ...rec!, label: 'kitten' }] as const);
    for (const [id, rec] of kittens) await ctx.services.datasets.putItem('noisy', id, rec);
    const copies = await runCli(['review', '-d', 'noisy'], stack.env, 240_000);
    await ctx.services.datasets.removeItems('noisy', kittens.map(([id]) => id));
    expect(copies.code).toBe(1);
    expect(copies.stderr).toMatch(/needs at least 2 distinct embedded images per label .*kitten: 0 \(and 2 filed under another label too, which are fitted under neither: /);
    expect(copies.stdout).not.toContain('left out: label kitten');
    // each uncertain image with the label it is confused with, never its own label twice
    const [head, rest] = text.stdout.split('the 6 most uncertain of the others (lowest top probability first):\n');
    const uncertainRows = rest!.split('\nfull list')[0]!.split('\n').slice(1);
    expect(uncertainRows).toHaveLength(6);
    // an image listed as mislabelled is not listed again among the uncertain ones
    const keysIn = (rows: string) => new Set([...rows.matchAll(/(s3:\/\/\S+)$/gm)].map((m) => m[1]!));
    const mislabelled = keysIn(head!.split('least likely:\n')[1]!);
    expect(mislabelled.size).toBeGreaterThan(0);
    for (const key of keysIn(uncertainRows.join('\n'))) expect(mislabelled.has(key), key).toBe(false);
    for (const line of uncertainRows) {
      const m = /^ +[\d.]+% {2}(\S+), or (\S+) \([\d.]+%\) {2}s3:\/\//.exec(line);
      expect(m, line).not.toBeNull();
      expect(m![1]).not.toBe(m![2]);
    }
    expect(text.stdout).toMatch(/transferline relabel -d noisy --from-review s3:\/\//);

    // the console shows the review, with a thumbnail of each image, and no image outside the dataset
    const web = await startConsole({ services: ctx.services, queues: ctx.queues, config: { ...stack.config, console: { ...stack.config.console, port: 0 } }, log: createLogger('console', 'warn') });
    try {
      const pageHtml = await (await fetch(`${web.url}datasets/noisy/review`)).text();
      for (const l of hits) expect(pageHtml).toContain(`data-key="${l.key}"`);
      const src = /<img src="([^"]+)"/.exec(pageHtml)![1]!.replace(/&amp;/g, '&');
      const img = await fetch(new URL(src, web.url));
      expect(img.headers.get('content-type')).toBe('image/jpeg');
      expect((await img.arrayBuffer()).byteLength).toBeGreaterThan(500);
      const outside = await fetch(`${web.url}datasets/noisy/thumbnail?key=${encodeURIComponent(`s3://${stack.config.s3.bucket}/${r.outputKey.split('/').slice(3).join('/')}`)}`);
      expect(outside.status).toBe(404);
    } finally {
      await web.close();
    }

    const forwardPasses = async () => (await scrape(stack.ports.embed)).get('tl_embed_batch_size_count') ?? 0;
    const passes = await forwardPasses();
    const issues = r.lines.filter((l) => l.issue).length;
    const moves = Math.min(issues, flipped.size);
    // first, as a look: every move checked and printed, nothing moved
    const records = async () => {
      const all: [string, unknown][] = [];
      for await (const page of ctx.services.datasets.scan('noisy')) all.push(...page);
      return all.sort((a, b) => (a[0] < b[0] ? -1 : 1));
    };
    const itemsBefore = await records();
    const look = await runCli(['relabel', '-d', 'noisy', '--from-review', r.outputKey, '--top', String(moves), '--dry-run'], stack.env, 120_000);
    expect({ code: look.code, stderr: look.stderr }).toEqual({ code: 0, stderr: '' });
    expect(look.stdout.match(/^ {2}would move s3:\/\/\S+ → s3:\/\/\S+$/gm)).toHaveLength(moves);
    expect(look.stdout).toContain(`relabel noisy: ${moves} to move, 0 already there, 0 not found; nothing moved (--dry-run): run it without --dry-run to move them\n`);
    for (const l of hits.filter((h) => h.issue)) expect(await ctx.services.store.headObject(bucket, l.key.replace(`s3://${bucket}/`, ''))).toBeDefined();
    expect(await records()).toEqual(itemsBefore);
    const relabel = await runCli(['relabel', '-d', 'noisy', '--from-review', r.outputKey, '--top', String(moves)], stack.env, 120_000);
    expect(relabel.code).toBe(0);
    expect(relabel.stdout).toMatch(new RegExp(`relabel noisy: ${Math.min(issues, flipped.size)} moved`));
    // the objects moved in the bucket: the true label's folder now holds them
    for (const l of hits.filter((h) => h.issue)) {
      const file = l.key.split('/').pop()!;
      expect(await ctx.services.store.headObject(bucket, `train/${flipped.get(l.key)}/${file}`)).toBeDefined();
      expect(await ctx.services.store.headObject(bucket, l.key.replace(`s3://${bucket}/`, ''))).toBeUndefined();
    }
    // relabelling again changes nothing
    const again = await runCli(['relabel', '-d', 'noisy', '--from-review', r.outputKey, '--top', String(Math.min(issues, flipped.size))], stack.env, 120_000);
    expect(again.stdout).toMatch(/0 moved/);
    // the dataset matches the bucket: an ingest finds nothing to do, and nothing was embedded again
    const ingest = await runCli(['ingest', `s3://${bucket}/train/`, '-d', 'noisy'], stack.env, 120_000);
    expect(ingest.stdout).toMatch(/60 objects listed, 0 enqueued, 0 added from the embedding cache \(no job\), 60 unchanged/);
    expect(ingest.stdout).toMatch(/dataset noisy: 60 images, 60 embedded/);
    expect(await forwardPasses()).toBe(passes);

    const after = await runCli(['train', '-d', 'noisy', '--epochs', '60', '--run-id', 'noisy-2', '--seed', '2'], stack.env, 240_000);
    expect(after.code).toBe(0);
    const [b, a] = [await accuracyOf('noisy-1'), await accuracyOf('noisy-2')];
    process.stderr.write(`review figures: ${JSON.stringify({ images: 60, flipped: flipped.size, precisionAtK: hits.length / flipped.size, reviewSeconds: r.seconds, folds: r.folds, validationAccuracyBefore: b.validation.accuracy, validationAccuracyAfter: a.validation.accuracy })}\n`);
    expect(a.validation.accuracy).toBeGreaterThan(b.validation.accuracy);
    expect(a.validation.accuracy).toBeGreaterThanOrEqual(0.9);
  }, 600_000);

  it('moves named images with --to, and says what it cannot find', async () => {
    const key = `s3://${bucket}/train/circle/circle-0.jpg`;
    // a label the dataset lacks: a typo more often than a new class (a user's trial made a class of one image)
    const typo = await runCli(['relabel', '-d', 'noisy', key, '--to', 'squares'], stack.env);
    expect({ code: typo.code, stderr: typo.stderr }).toEqual({ code: 2, stderr: 'transferline: squares is not a label of noisy (circle, square, triangle); did you mean square?: add --new-label to make it one\n' });
    // a letter left out, or two swapped, inside the name: the same (a trial: only prefixes were caught)
    // (whatever the sizes: a new label holds no image yet)
    for (const slip of ['trangle', 'cirlce']) {
      const r = await runCli(['relabel', '-d', 'noisy', key, '--to', slip], stack.env);
      expect(r.stderr).toBe(`transferline: ${slip} is not a label of noisy (circle, square, triangle); did you mean ${slip === 'trangle' ? 'triangle' : 'circle'}?: add --new-label to make it one\n`);
    }
    expect(await ctx.services.store.headObject(bucket, 'train/circle/circle-0.jpg')).toBeDefined();
    const moved = await runCli(['relabel', '-d', 'noisy', key, '--to', 'square'], stack.env);
    expect(moved.code).toBe(0);
    expect(moved.stdout).toMatch(/moved s3:\/\/review-photos\/train\/circle\/circle-0\.jpg → s3:\/\/review-photos\/train\/square\/circle-0\.jpg/);
    // the console's review (older than the move) says so, and shows no broken thumbnail for it (a user's trial)
    const web = await startConsole({ services: ctx.services, queues: ctx.queues, config: { ...stack.config, console: { ...stack.config.console, port: 0 } }, log: createLogger('console', 'warn') });
    try {
      const pageHtml = await (await fetch(`${web.url}datasets/noisy/review`)).text();
      expect(pageHtml).toMatch(/<p class="bad" id="moved">\d+ images? of this review (is|are) no longer in noisy under the label it gave/);
      const row = new RegExp(`<tr data-key="${key}"><td>(.*?)</td>`).exec(pageHtml);
      if (row) expect(row[1]).toBe('<span class="muted">moved or gone since</span>');
    } finally {
      await web.close();
    }
    const missing = await runCli(['relabel', '-d', 'noisy', `s3://${bucket}/train/circle/nope.jpg`, '--to', 'square'], stack.env);
    expect(missing.stdout).toMatch(/not in noisy: s3:\/\/review-photos\/train\/circle\/nope\.jpg/);
    expect(missing.code).toBe(1);
    // nothing moved: no "train again"; and one image is one
    expect(missing.stdout).toContain('relabel noisy: 0 moved, 0 already there, 1 not found\n');
    expect(missing.stderr).toContain('1 of the images named is not in noisy');
    const unknown = await runCli(['relabel', '-d', 'nope', key, '--to', 'square'], stack.env);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toMatch(/no dataset named nope/);
  }, 120_000);

  it('moves the images a list file names (--keys-from FILE, or - for standard input), and refuses a list with a line that is not a key', async () => {
    const keys = ['circle-11.jpg', 'circle-12.jpg'].map((f) => `s3://${bucket}/train/circle/${f}`);
    const dir = await mkdtemp(path.join(os.tmpdir(), 'tl-keys-'));
    try {
      const list = path.join(dir, 'moves.txt');
      await writeFile(list, `# to look at again\n${keys[0]}\n\n${keys[1]}\r\n`);
      const moved = await runCli(['relabel', '-d', 'noisy', '--keys-from', list, '--to', 'square'], stack.env);
      expect(moved.code).toBe(0);
      expect(moved.stdout).toContain('relabel noisy: 2 moved, 0 already there, 0 not found; nothing to embed again. Train again to use the new labels.\n');
      expect(await ctx.services.store.headObject(bucket, 'train/square/circle-11.jpg')).toBeDefined();
      expect(await ctx.services.store.headObject(bucket, 'train/circle/circle-12.jpg')).toBeUndefined();
      // back again, the keys read from standard input, one of them given as an argument too
      const back = await runCli(['relabel', '-d', 'noisy', `s3://${bucket}/train/square/circle-11.jpg`, '--keys-from', '-', '--to', 'circle'], stack.env, 120_000, { input: ['circle-11.jpg', 'circle-12.jpg'].map((f) => `s3://${bucket}/train/square/${f}`).join('\n') });
      expect(back.code).toBe(0);
      expect(back.stdout).toContain('relabel noisy: 2 moved, ');
      expect(await ctx.services.store.headObject(bucket, 'train/circle/circle-12.jpg')).toBeDefined();
      // a line that is not a key: nothing moved, the line named
      await writeFile(list, `${keys[0]}\ntrain/circle/circle-12.jpg\n`);
      const bad = await runCli(['relabel', '-d', 'noisy', '--keys-from', list, '--to', 'square'], stack.env);
      expect({ code: bad.code, stderr: bad.stderr }).toEqual({ code: 2, stderr: `transferline: --keys-from ${list} has 1 line that is not s3://bucket/key; nothing was moved:\n  line 2: train/circle/circle-12.jpg\n` });
      const none = await runCli(['relabel', '-d', 'noisy', '--keys-from', path.join(dir, 'absent.txt'), '--to', 'square'], stack.env);
      expect(none.code).toBe(1);
      expect(none.stderr).toMatch(/^transferline: cannot read --keys-from \S+absent\.txt: ENOENT/);
      expect(await ctx.services.store.headObject(bucket, 'train/circle/circle-11.jpg')).toBeDefined();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }, 120_000);

  it('checks every move before making one: a key outside the dataset moves nothing', async () => {
    const inside = `s3://${bucket}/train/square/square-1.jpg`;
    const outside = `s3://${bucket}/elsewhere/square/x.jpg`;
    const r = await runCli(['relabel', '-d', 'noisy', inside, outside, '--to', 'triangle'], stack.env);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/nothing was moved: s3:\/\/review-photos\/elsewhere\/square\/x\.jpg is not under a prefix ingested into noisy/);
    expect(await ctx.services.store.headObject(bucket, 'train/square/square-1.jpg')).toBeDefined();
    expect(await ctx.services.store.headObject(bucket, 'train/triangle/square-1.jpg')).toBeUndefined();
  }, 120_000);

  it('a move that fails part way leaves the moves before it listed, and the same command again finishes', async () => {
    const first = `s3://${bucket}/train/square/square-2.jpg`;
    const second = `s3://${bucket}/train/square/square-4.jpg`;
    // The connection to Redis is lost once the first move is made and printed: the second
    // image's copy is made, its record cannot be.
    let printed = '';
    const out = {
      write: (text: string) => {
        printed += text;
        if (text.includes('moved s3://review-photos/train/square/square-2.jpg')) own.services.redis.disconnect();
        return true;
      },
    } as unknown as NodeJS.WritableStream;
    const own = await openCliContext(stack.config, out);
    try {
      await expect(relabelCommand(own, { dataset: 'noisy', keys: [first, second], to: 'circle' })).rejects.toThrow(/Connection is closed/);
    } finally {
      await own.close();
    }
    expect(printed).toMatch(/moved s3:\/\/review-photos\/train\/square\/square-2\.jpg → s3:\/\/review-photos\/train\/circle\/square-2\.jpg/);
    expect(printed).toMatch(/relabel noisy stopped after 1 of 2: 1 moved, 0 already there, 0 not found; the same command again finishes the rest/);
    expect(await ctx.services.store.headObject(bucket, 'train/square/square-4.jpg')).toBeDefined();
    // the same command again: the first stays moved, the second (its copy made, not recorded) is finished
    const again = await runCli(['relabel', '-d', 'noisy', first, second, '--to', 'circle'], stack.env);
    expect(again.code).toBe(0);
    expect(again.stdout).toMatch(/relabel noisy: 1 moved, 1 already there, 0 not found/);
    expect(await ctx.services.store.headObject(bucket, 'train/square/square-4.jpg')).toBeUndefined();
    expect((await ctx.services.datasets.getItems('noisy', [`${bucket}/train/circle/square-4.jpg`]))[0]).toMatchObject({ label: 'circle' });
  }, 120_000);

  it("a key S3 will not take for one move of a review's: that one is left and said, the other made", async () => {
    // this server keeps no key segment over 200 bytes (S3 itself takes 1,024 bytes in all)
    const r = await relabelFromReview([suggestion('train/triangle/triangle-3.jpg', 'triangle', 'circle'), suggestion('train/triangle/triangle-4.jpg', 'triangle', 'c'.repeat(201))]);
    expect(r.stderr).toBe('transferline: 1 of the suggested moves was left (said above, with why)\n');
    expect(r.code).toBe(3);
    expect(r.stdout).toMatch(/^note: 1 of the images to move is left as it is:\n {2}s3:\/\/review-photos\/train\/triangle\/triangle-4\.jpg cannot be moved to s3:\/\/review-photos\/train\/c{201}\/triangle-4\.jpg: S3 refused s3:\/\/review-photos\/train\/c{201}\/triangle-4\.jpg: HTTP 400$/m);
    expect(r.stdout).toMatch(/^relabel noisy: 1 moved, 0 already there, 0 not found, 1 left \(see above\)/m);
    expect(await ctx.services.store.headObject(bucket, 'train/triangle/triangle-4.jpg')).toBeDefined();
    expect(await ctx.services.store.headObject(bucket, 'train/circle/triangle-3.jpg')).toBeDefined();
    // (moved back, as the tests below have it)
    expect((await runCli(['relabel', '-d', 'noisy', `s3://${bucket}/train/circle/triangle-3.jpg`, '--to', 'triangle'], stack.env)).code).toBe(0);
  }, 120_000);

  it('checks the objects before the first move: one gone from the bucket, or changed since it was ingested, moves nothing', async () => {
    const first = `s3://${bucket}/train/triangle/triangle-1.jpg`;
    const key = 'train/triangle/triangle-2.jpg';
    const bytes = await ctx.services.store.getObject(bucket, key);
    await ctx.services.store.deleteObject(bucket, key);
    try {
      const gone = await runCli(['relabel', '-d', 'noisy', first, `s3://${bucket}/${key}`, '--to', 'circle'], stack.env);
      expect(gone.code).toBe(1);
      expect(gone.stderr).toMatch(/nothing was moved: s3:\/\/review-photos\/train\/triangle\/triangle-2\.jpg is gone from the bucket \(deleted since it was ingested\?\): put it back, or ingest the prefix again/);
      // another image put at its key: copying it would record other bytes under this image's content hash
      await ctx.services.store.putObject(bucket, key, await renderSample('circle', 95, 21, 128));
      const changed = await runCli(['relabel', '-d', 'noisy', first, `s3://${bucket}/${key}`, '--to', 'circle'], stack.env);
      expect(changed.code).toBe(1);
      expect(changed.stderr).toMatch(/nothing was moved: s3:\/\/review-photos\/train\/triangle\/triangle-2\.jpg changed since it was ingested: ingest the prefix again first/);
      expect(await ctx.services.store.headObject(bucket, 'train/triangle/triangle-1.jpg')).toBeDefined();
      expect(await ctx.services.store.headObject(bucket, 'train/circle/triangle-1.jpg')).toBeUndefined();
    } finally {
      await ctx.services.store.putObject(bucket, key, bytes);
    }
  }, 120_000);

  it('recognises its own copy by content when S3 gave it another ETag (an object uploaded in parts)', async () => {
    const from = 'train/square/square-5.jpg';
    const to = 'train/circle/square-5.jpg';
    const [record] = await ctx.services.datasets.getItems('noisy', [`${bucket}/${from}`]);
    expect(record?.sha256).toBeDefined();
    // An object uploaded in parts has the ETag "<MD5 of the parts' MD5s>-<parts>", and S3 gives a
    // copy of it the plain MD5 of its bytes. This server stores every object under its plain MD5:
    // the old object is given the ETag S3 would have (in the server's own file for it), and the
    // dataset records it, as an ingest would have listed it.
    const multipart = await uploadedInParts(from);
    await ctx.services.datasets.putItems('noisy', [[`${bucket}/${from}`, { ...record!, etag: multipart }]]);
    // what a run cut short after copying left: the same bytes at the new key, under a plain MD5
    const bytes = await ctx.services.store.getObject(bucket, from);
    await ctx.services.store.putObject(bucket, to, bytes);
    expect((await ctx.services.store.headObject(bucket, to))?.etag).not.toBe(multipart);
    await expectMoved(from, to, 'circle', bytes);
    expect((await ctx.services.datasets.getItems('noisy', [`${bucket}/${to}`]))[0]).toMatchObject({ label: 'circle', sha256: record!.sha256 });
  }, 120_000);

  it('does not copy an object replaced after the checks (the copy asks S3 for the content ingested)', async () => {
    const first = `s3://${bucket}/train/circle/circle-5.jpg`;
    const second = 'train/circle/circle-6.jpg';
    const other = await renderSample('square', 94, 21, 128);
    // another upload lands on the second image's key once the first move is made and printed
    // (written straight into the server's files: it must happen before the next request)
    let printed = '';
    const out = {
      write: (text: string) => {
        printed += text;
        if (text.includes('moved s3://review-photos/train/circle/circle-5.jpg')) {
          writeFileSync(stored(second), other);
          writeFileSync(`${stored(second)}.md5`, createHash('md5').update(other).digest('hex'));
        }
        return true;
      },
    } as unknown as NodeJS.WritableStream;
    const own = await openCliContext(stack.config, out);
    try {
      await expect(relabelCommand(own, { dataset: 'noisy', keys: [first, `s3://${bucket}/${second}`], to: 'triangle' })).rejects.toThrow(/s3:\/\/review-photos\/train\/circle\/circle-6\.jpg changed after it was listed/);
    } finally {
      await own.close();
    }
    expect(printed).toMatch(/relabel noisy stopped after 1 of 2: 1 moved, 0 already there, 0 not found; s3:\/\/review-photos\/train\/circle\/circle-6\.jpg was replaced while relabel ran: ingest its prefix again, then the same command moves the rest/);
    expect(printed).not.toMatch(/the same command again finishes the rest/);
    expect(await ctx.services.store.headObject(bucket, 'train/triangle/circle-6.jpg')).toBeUndefined();
    expect((await ctx.services.store.getObject(bucket, second)).equals(other)).toBe(true);
    expect((await ctx.services.datasets.getItems('noisy', [`${bucket}/train/triangle/circle-6.jpg`]))[0]).toBeUndefined();
  }, 120_000);

  it('leaves an object written to the old key while it moved (the delete asks S3 for the content moved)', async () => {
    const from = 'train/circle/circle-8.jpg';
    const to = 'train/square/circle-8.jpg';
    const bytes = await ctx.services.store.getObject(bucket, from);
    const upload = await renderSample('triangle', 91, 21, 128);
    let printed = '';
    const own = await openCliContext(stack.config, { write: (t: string) => ((printed += t), true) } as unknown as NodeJS.WritableStream);
    try {
      // someone uploads to the old key between the copy (recorded) and the delete
      const record = own.services.datasets.putItems.bind(own.services.datasets);
      own.services.datasets.putItems = (async (...args: Parameters<typeof record>) => {
        const r = await record(...args);
        await own.services.store.putObject(bucket, from, upload);
        return r;
      }) as typeof record;
      await relabelCommand(own, { dataset: 'noisy', keys: [`s3://${bucket}/${from}`], to: 'square' });
    } finally {
      await own.close();
    }
    expect(printed).toMatch(/moved s3:\/\/review-photos\/train\/circle\/circle-8\.jpg → s3:\/\/review-photos\/train\/square\/circle-8\.jpg \(s3:\/\/review-photos\/train\/circle\/circle-8\.jpg was written again while it moved: the new object is left there, for the next ingest\)/);
    expect((await ctx.services.store.getObject(bucket, from)).equals(upload)).toBe(true);
    expect((await ctx.services.store.getObject(bucket, to)).equals(bytes)).toBe(true);
    const [old, moved] = await ctx.services.datasets.getItems('noisy', [`${bucket}/${from}`, `${bucket}/${to}`]);
    expect(old).toBeUndefined();
    expect(moved).toMatchObject({ label: 'square' });
  }, 120_000);

  it('a move cut short, recorded at the new key, whose old object was replaced since: refused', async () => {
    const from = 'train/circle/circle-7.jpg';
    const to = 'train/square/circle-7.jpg';
    const [record] = await ctx.services.datasets.getItems('noisy', [`${bucket}/${from}`]);
    const etag = await ctx.services.store.copyObject(bucket, from, to);
    await ctx.services.datasets.putItems('noisy', [[`${bucket}/${to}`, { ...record!, label: 'square', etag }]]);
    await ctx.services.store.putObject(bucket, from, await renderSample('triangle', 93, 21, 128));
    const r = await runCli(['relabel', '-d', 'noisy', `s3://${bucket}/${from}`, '--to', 'square'], stack.env);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/nothing was moved: s3:\/\/review-photos\/train\/circle\/circle-7\.jpg changed since it was ingested: ingest the prefix again first/);
    expect(await ctx.services.store.headObject(bucket, from)).toBeDefined();
  }, 120_000);

  describe('an image not preprocessed yet (no content hash), uploaded in parts, moved by a run cut short after recording the new key', () => {
    /** The state such a run leaves: the copy at the new key (another ETag), recorded there; the old object and record still there. */
    async function cutShort(name: string): Promise<{ from: string; to: string; bytes: Buffer }> {
      const from = `train/square/${name}.jpg`;
      const to = `train/circle/${name}.jpg`;
      const bytes = await renderSample('square', 92, 21, 128);
      await ctx.services.store.putObject(bucket, from, bytes);
      const etag = await uploadedInParts(from);
      await ctx.services.datasets.putItems('noisy', [[`${bucket}/${from}`, { label: 'square', etag, space: stack.space.id, state: 'queued' }]]);
      await ctx.services.store.putObject(bucket, to, bytes); // what S3's copy would be: the plain MD5
      const copied = (await ctx.services.store.headObject(bucket, to))!.etag;
      expect(copied).not.toBe(etag);
      await ctx.services.datasets.putItems('noisy', [[`${bucket}/${to}`, { label: 'circle', etag: copied, space: stack.space.id, state: 'queued' }]]);
      return { from, to, bytes };
    }

    it('is finished, known by its bytes against the old object', async () => {
      const { from, to, bytes } = await cutShort('parts-1');
      await expectMoved(from, to, 'circle', bytes);
      expect((await ctx.services.datasets.getItems('noisy', [`${bucket}/${from}`]))[0]).toBeUndefined();
    }, 120_000);

    it('with the old object replaced since: "changed", not "another image"', async () => {
      const { from } = await cutShort('parts-3');
      await ctx.services.store.putObject(bucket, from, await renderSample('triangle', 90, 21, 128));
      const r = await runCli(['relabel', '-d', 'noisy', `s3://${bucket}/${from}`, '--to', 'circle'], stack.env);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/nothing was moved: s3:\/\/review-photos\/train\/square\/parts-3\.jpg changed since it was ingested: ingest the prefix again first/);
    }, 120_000);

    it('with the old object gone as well (cut short after deleting it): nothing to compare with, said so, nothing deleted', async () => {
      const { from, to } = await cutShort('parts-2');
      await ctx.services.store.deleteObject(bucket, from);
      const r = await runCli(['relabel', '-d', 'noisy', `s3://${bucket}/${from}`, '--to', 'circle'], stack.env);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/cannot tell whether s3:\/\/review-photos\/train\/circle\/parts-2\.jpg holds the image of s3:\/\/review-photos\/train\/square\/parts-2\.jpg \(S3 gave it another ETag, and there is no content hash or old object to compare it with, or it is over TL_MAX_OBJECT_BYTES\): ingest the prefix again/);
      expect(await ctx.services.store.headObject(bucket, to)).toBeDefined();
    }, 120_000);
  });

  it('a review file with a line that is not a review line: relabel refuses it, the console shows the rest and names the line', async () => {
    const good = suggestion('train/triangle/triangle-5.jpg', 'triangle', 'circle');
    // newer than any review written so far: the console shows the newest
    const key = ctx.services.layout.review('noisy', '9999-12-31T00-00-00-000Z');
    // the broken line carries a terminal escape (set the window title): printed, it must not act
    const text = [JSON.stringify(good), 'oops \u001b]0;pwned\u0007 {"key":"s3://review-photos/train/circle/circle-7.jpg"', JSON.stringify({ ...good, pGiven: 'high' })].join('\n') + '\n';
    await ctx.services.store.putObject(stack.config.s3.bucket, key, text, 'application/x-ndjson');
    try {
      const r = await runCli(['relabel', '-d', 'noisy', '--from-review', `s3://${stack.config.s3.bucket}/${key}`], stack.env);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/is not a review file \(2 lines of 3 unreadable\); nothing was moved:\n  line 2: not JSON/);
      expect(r.stderr).toMatch(/line 3: pGiven: /);
      expect(r.stderr).not.toContain('\u001b');
      expect(r.stderr).toContain('"oops \\x1b]0;p');
      expect(await ctx.services.store.headObject(bucket, 'train/triangle/triangle-5.jpg')).toBeDefined();

      const web = await startConsole({ services: ctx.services, queues: ctx.queues, config: { ...stack.config, console: { ...stack.config.console, port: 0 } }, log: createLogger('console', 'warn') });
      try {
        const res = await fetch(`${web.url}datasets/noisy/review`);
        expect(res.status).toBe(200);
        const pageHtml = await res.text();
        expect(pageHtml).toContain(`data-key="${good.key}"`);
        expect(pageHtml).toMatch(/id="unreadable">2 lines of this file are not review lines and are left out \(line 2: not JSON/);
      } finally {
        await web.close();
      }
    } finally {
      await ctx.services.store.deleteObject(stack.config.s3.bucket, key);
    }
  }, 120_000);

  it('never overwrites another image: a destination in the bucket or the dataset, or two images bound for one key, moves nothing', async () => {
    // an object at the destination that is not this image (not ingested)
    await ctx.services.store.putObject(bucket, 'train/triangle/square-6.jpg', await renderSample('triangle', 99, 21, 128));
    const over = await runCli(['relabel', '-d', 'noisy', `s3://${bucket}/train/square/square-7.jpg`, `s3://${bucket}/train/square/square-6.jpg`, '--to', 'triangle'], stack.env);
    expect(over.code).toBe(1);
    expect(over.stderr).toMatch(/nothing was moved: s3:\/\/review-photos\/train\/square\/square-6\.jpg would overwrite s3:\/\/review-photos\/train\/triangle\/square-6\.jpg, an object in the bucket that is not this image/);
    expect(await ctx.services.store.headObject(bucket, 'train/square/square-7.jpg')).toBeDefined();
    // once ingested it is an image of the dataset: still not overwritten
    expect((await runCli(['ingest', `s3://${bucket}/train/`, '-d', 'noisy'], stack.env, 120_000)).code).toBe(0);
    const dataset = await runCli(['relabel', '-d', 'noisy', `s3://${bucket}/train/square/square-6.jpg`, '--to', 'triangle'], stack.env);
    expect(dataset.code).toBe(1);
    expect(dataset.stderr).toMatch(/would overwrite s3:\/\/review-photos\/train\/triangle\/square-6\.jpg, another image of noisy \(the same name in both folders: rename one, ingest again, then move it\)/);
    // a review's suggestions (file names repeat across folders): the move that would overwrite is
    // left and said, the other made; relabel of named keys above moved none
    const fromReview = await relabelFromReview(['square-6.jpg', 'square-7.jpg'].map((f) => suggestion(`train/square/${f}`, 'square', 'triangle')));
    expect(fromReview.stderr).toBe('transferline: 1 of the suggested moves was left (said above, with why)\n');
    expect(fromReview.code).toBe(3);
    expect(fromReview.stdout).toContain(`note: 1 of the images to move is left as it is:\n  s3://${bucket}/train/square/square-6.jpg would overwrite s3://${bucket}/train/triangle/square-6.jpg, another image of noisy`);
    expect(fromReview.stdout).toMatch(/^relabel noisy: 1 moved, 0 already there, 0 not found, 1 left \(see above\)/m);
    expect(await ctx.services.store.headObject(bucket, 'train/triangle/square-7.jpg')).toBeDefined();
    expect(await ctx.services.store.headObject(bucket, 'train/square/square-6.jpg')).toBeDefined();
    // (moved back, as the tests below have it)
    expect((await runCli(['relabel', '-d', 'noisy', `s3://${bucket}/train/triangle/square-7.jpg`, '--to', 'square'], stack.env)).code).toBe(0);
    // two images with one file name, bound for one folder
    await ctx.services.store.putObject(bucket, 'train/circle/twin.jpg', await renderSample('circle', 98, 21, 128));
    await ctx.services.store.putObject(bucket, 'train/square/twin.jpg', await renderSample('square', 98, 21, 128));
    expect((await runCli(['ingest', `s3://${bucket}/train/`, '-d', 'noisy'], stack.env, 120_000)).code).toBe(0);
    const twins = await runCli(['relabel', '-d', 'noisy', `s3://${bucket}/train/circle/twin.jpg`, `s3://${bucket}/train/square/twin.jpg`, '--to', 'triangle'], stack.env);
    expect(twins.code).toBe(1);
    expect(twins.stderr).toMatch(/would both move to s3:\/\/review-photos\/train\/triangle\/twin\.jpg/);
    expect(await ctx.services.store.headObject(bucket, 'train/triangle/twin.jpg')).toBeUndefined();
    // the same image named twice is moved once
    const twice = await runCli(['relabel', '-d', 'noisy', `s3://${bucket}/train/circle/twin.jpg`, `s3://${bucket}/train/circle/twin.jpg`, '--to', 'triangle'], stack.env);
    expect(twice.code).toBe(0);
    expect(twice.stdout).toMatch(/relabel noisy: 1 moved, 0 already there, 0 not found/);
  }, 300_000);

  it('finishes a move cut short after it deleted the old object (the old record still there)', async () => {
    const from = 'train/square/square-8.jpg';
    const to = 'train/circle/square-8.jpg';
    const [record] = await ctx.services.datasets.getItems('noisy', [`${bucket}/${from}`]);
    expect(record?.label).toBe('square');
    // what a run that stopped (Redis went away) between deleting the old object and removing its record left
    const etag = await ctx.services.store.copyObject(bucket, from, to);
    await ctx.services.datasets.putItems('noisy', [[`${bucket}/${to}`, { ...record!, label: 'circle', etag }]]);
    await ctx.services.store.deleteObject(bucket, from);
    const r = await runCli(['relabel', '-d', 'noisy', `s3://${bucket}/${from}`, '--to', 'circle'], stack.env);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/relabel noisy: 1 moved/);
    expect(await ctx.services.store.headObject(bucket, from)).toBeUndefined();
    expect(await ctx.services.store.headObject(bucket, to)).toBeDefined();
    const [gone, moved] = await ctx.services.datasets.getItems('noisy', [`${bucket}/${from}`, `${bucket}/${to}`]);
    expect(gone).toBeUndefined();
    expect(moved).toMatchObject({ label: 'circle', sha256: record!.sha256 });
  }, 120_000);

  it('never deletes the only copy: a move cut short whose new object is gone or replaced is refused', async () => {
    const from = 'train/square/square-9.jpg';
    const to = 'train/circle/square-9.jpg';
    const [record] = await ctx.services.datasets.getItems('noisy', [`${bucket}/${from}`]);
    const bytes = await ctx.services.store.getObject(bucket, from);
    const etag = await ctx.services.store.copyObject(bucket, from, to);
    await ctx.services.datasets.putItems('noisy', [[`${bucket}/${to}`, { ...record!, label: 'circle', etag }]]);
    // the new key's object was replaced by another image (not ingested yet): neither is touched
    await ctx.services.store.putObject(bucket, to, await renderSample('circle', 97, 21, 128));
    const replaced = await runCli(['relabel', '-d', 'noisy', `s3://${bucket}/${from}`, '--to', 'circle'], stack.env);
    expect(replaced.code).toBe(1);
    expect(replaced.stderr).toMatch(/s3:\/\/review-photos\/train\/circle\/square-9\.jpg holds another object than the one recorded for it/);
    expect(await ctx.services.store.headObject(bucket, from)).toBeDefined();
    // both objects gone: nothing to finish, and said so
    await ctx.services.store.deleteObject(bucket, to);
    await ctx.services.store.deleteObject(bucket, from);
    const gone = await runCli(['relabel', '-d', 'noisy', `s3://${bucket}/${from}`, '--to', 'circle'], stack.env);
    expect(gone.code).toBe(1);
    expect(gone.stderr).toMatch(/are both gone from the bucket/);
    await ctx.services.store.putObject(bucket, from, bytes);
  }, 120_000);

  it('refuses to move an image still on its way (listed by an ingest, its preprocess job not run yet): the job records the old key (a review: orphaned)', async () => {
    const from = 'train/square/onway.jpg';
    await ctx.services.store.putObject(bucket, from, await renderSample('square', 97, 21, 128));
    const { etag } = (await ctx.services.store.headObject(bucket, from))!;
    await ctx.services.datasets.putItems('noisy', [[`${bucket}/${from}`, { label: 'square', etag, space: stack.space.id, state: 'pending' }]]);
    const r = await runCli(['relabel', '-d', 'noisy', `s3://${bucket}/${from}`, '--to', 'circle'], stack.env);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/nothing was moved: s3:\/\/review-photos\/train\/square\/onway\.jpg is still on its way \(its ingest listed it; no preprocess worker has read it yet\): wait for it \(transferline status -d noisy; one it calls orphaned, its job lost, needs its prefix ingested again\), then relabel it/);
    expect(await ctx.services.store.headObject(bucket, from)).toBeDefined();
    expect(await ctx.services.store.headObject(bucket, 'train/circle/onway.jpg')).toBeUndefined();
    expect((await ctx.services.datasets.getItems('noisy', [`${bucket}/${from}`]))[0]).toMatchObject({ label: 'square', state: 'pending' });
    await ctx.services.datasets.removeItems('noisy', [`${bucket}/${from}`]);
    await ctx.services.store.deleteObject(bucket, from);
  }, 120_000);

  it('finishes a move cut short of an image not preprocessed yet (no content hash: known by its ETag)', async () => {
    const from = 'train/square/pending.jpg';
    const to = 'train/triangle/pending.jpg';
    await ctx.services.store.putObject(bucket, from, await renderSample('square', 96, 21, 128));
    const { etag } = (await ctx.services.store.headObject(bucket, from))!;
    // recorded by an ingest whose job has not run yet, then moved by a run cut short after recording the new key
    await ctx.services.datasets.putItems('noisy', [[`${bucket}/${from}`, { label: 'square', etag, space: stack.space.id, state: 'queued' }]]);
    const copied = await ctx.services.store.copyObject(bucket, from, to);
    await ctx.services.datasets.putItems('noisy', [[`${bucket}/${to}`, { label: 'triangle', etag: copied, space: stack.space.id, state: 'queued' }]]);
    const r = await runCli(['relabel', '-d', 'noisy', `s3://${bucket}/${from}`, '--to', 'triangle'], stack.env);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/relabel noisy: 1 moved/);
    expect(await ctx.services.store.headObject(bucket, from)).toBeUndefined();
    expect((await ctx.services.datasets.getItems('noisy', [`${bucket}/${to}`]))[0]).toMatchObject({ label: 'triangle' });
  }, 120_000);
});
describe('review of a dataset with copies of the same bytes', () => {
  it('counts copies once: four copies of an image score as one did, all alike, and the header says so', async () => {
    // 20 circles and 20 squares, and a circle's bytes in the square folder: once, then four times
    for (const kind of ['circle', 'square'] as const) {
      for (let i = 0; i < 20; i++) await ctx.services.store.putObject(bucket, `dups/${kind}/${kind}-${i}.jpg`, await renderSample(kind, i, 77, 128));
    }
    const copy = await renderSample('circle', 40, 77, 128);
    const copies = [0, 1, 2, 3].map((n) => `dups/square/copy-${n}.jpg`);
    type Line = { key: string; probabilities: Record<string, number> };
    /** ingest, then review: what it printed, and its lines as written to the bucket */
    const review = async () => {
      expect((await runCli(['ingest', `s3://${bucket}/dups/`, '-d', 'dups'], stack.env, 240_000)).code).toBe(0);
      const r = await runCli(['review', '-d', 'dups'], stack.env, 240_000);
      expect(r.code).toBe(0);
      const { bucket: at, key } = parseS3ObjectUrl(/^full list \(JSON Lines\): (\S+)$/m.exec(r.stdout)![1]!);
      const lines = (await ctx.services.store.getObject(at, key)).toString().trim().split('\n').map((l) => JSON.parse(l) as Line);
      return { stdout: r.stdout, lines };
    };
    const scores = (lines: Line[]) => copies.flatMap((key) => lines.filter((l) => l.key === `s3://${bucket}/${key}`).map((l) => l.probabilities));
    await ctx.services.store.putObject(bucket, copies[0]!, copy);
    const once = await review();
    expect(once.stdout).toMatch(/^review of dups: 41 embedded images, 5-fold/m);
    for (const key of copies.slice(1)) await ctx.services.store.putObject(bucket, key, copy);
    const four = await review();
    expect(four.lines).toHaveLength(44);
    expect(four.stdout).toMatch(/^review of dups: 44 embedded images, 41 distinct \(copies of the same bytes count once and share a fold\), 5-fold/m);
    // the copies share a fold and the heads fitted without them: each scores as the one copy did
    expect(scores(four.lines)).toHaveLength(4);
    for (const p of scores(four.lines)) for (const [label, v] of Object.entries(scores(once.lines)[0]!)) expect(p[label], label).toBeCloseTo(v, 6);
  }, 300_000);
});

describe('a label manifest instead of label folders', () => {
  it('labels images from a CSV, follows its edits without embedding again, and refuses a bad one whole', async () => {
    const put = (key: string, text: string) => ctx.services.store.putObject(bucket, key, Buffer.from(text));
    const status = async (dataset = 'listed') => (await runCli(['status', '-d', dataset], stack.env)).stdout;
    const record = async (key: string) => (await ctx.services.datasets.getItems('listed', [`${bucket}/${key}`]))[0];
    const forwardPasses = async () => (await scrape(stack.ports.embed)).get('tl_embed_batch_size_count') ?? 0;
    // 4 images a class in one flat folder, one more in another bucket; the manifest beside the
    // folder, with a header of its own names, a split column, and a row whose image is not there
    const rows: string[] = [];
    for (const kind of KINDS) {
      for (let i = 0; i < 4; i++) {
        await ctx.services.store.putObject(bucket, `flat/img/${kind}-${i}.jpg`, await renderSample(kind, i, 91, 128));
        rows.push(`${i === 0 ? 'test' : ''},img/${kind}-${i}.jpg,${kind}`);
      }
    }
    await ctx.services.store.ensureBucket('review-archive');
    await ctx.services.store.putObject('review-archive', 'old/circle-9.jpg', await renderSample('circle', 9, 91, 128));
    rows.push(',s3://review-archive/old/circle-9.jpg,circle');
    await put('flat/labels.csv', ['split,filename,class', ...rows, ',img/gone.jpg,circle'].join('\n'));
    const first = await runCli(['ingest', `s3://${bucket}/flat/labels.csv`, '-d', 'listed'], stack.env, 240_000);
    expect(first.stderr).not.toMatch(/transferline:/);
    expect(first.stdout).toMatch(/dataset listed: 13 of the 14 images named by the manifest found, 13 enqueued/);
    expect(first.stdout).toContain(`note: 1 of the images the manifest names is not in the bucket, so not ingested: s3://${bucket}/flat/img/gone.jpg`);
    expect(first.code).toBe(3); // an image it names is missing: a script's next step should know
    // every one embedded, the one in the other bucket too (its job reads its own bucket)
    expect(await status()).toMatch(/dataset listed: 13 images, 13 embedded \(.*\), 0 failed, 0 pending.*\n {2}labels: circle \(5\), square \(4\), triangle \(4\)/);
    expect(await record('flat/img/circle-0.jpg')).toMatchObject({ label: 'circle', split: 'test', manifest: `${bucket}/flat/labels.csv` });

    // its labels are the manifest's: relabel, which moves images between label folders, says so
    const relabel = await runCli(['relabel', '-d', 'listed', `s3://${bucket}/flat/img/circle-1.jpg`, '--to', 'square'], stack.env);
    expect(relabel.code).toBe(1);
    expect(relabel.stderr).toContain(`s3://${bucket}/flat/img/circle-1.jpg takes its label from the manifest s3://${bucket}/flat/labels.csv: change its row there`);

    // edited: two rows gone (and the missing image), a label changed, a split taken away: nothing
    // is embedded again, the rest are unchanged (the workers' writes kept where their labels came from)
    const passes = await forwardPasses();
    const edited = rows
      .filter((r) => !/(square|triangle)-3\.jpg/.test(r))
      .map((r) => r.replace('img/circle-1.jpg,circle', 'img/circle-1.jpg,square').replace('test,img/circle-0.jpg', ',img/circle-0.jpg'));
    await put('flat/labels.csv', ['split,filename,class', ...edited].join('\n'));
    const second = await runCli(['ingest', `s3://${bucket}/flat/labels.csv`, '-d', 'listed'], stack.env, 240_000);
    expect(second.code).toBe(0);
    expect(second.stdout).toMatch(/11 images named by the manifest, 0 enqueued, 0 added from the embedding cache \(no job\), 2 given a new label, split or manifest \(no job\), 9 unchanged, 2 removed from the dataset/);
    // (none of them found in the embedding cache: each was embedded by its own job, and a new label is no new embedding)
    expect(await status()).toMatch(/dataset listed: 11 images, 11 embedded \(0 of them already in the embedding cache: not computed again\).*\n {2}labels: circle \(4\), square \(4\), triangle \(3\)/);
    expect((await record('flat/img/circle-0.jpg'))?.split).toBeUndefined();
    // and once more: all as it was (a row's split, or its absence, is not taken for a change)
    expect((await runCli(['ingest', `s3://${bucket}/flat/labels.csv`, '-d', 'listed'], stack.env, 240_000)).stdout).toMatch(/11 images named by the manifest, 0 enqueued, 0 added from the embedding cache \(no job\), 11 unchanged/);

    // a manifest with a bad row changes nothing, and says which line
    await put('flat/labels.csv', ['split,filename,class', ...edited.slice(0, 5), ',img/circle-2.jpg,square', ...edited.slice(5)].join('\n'));
    const bad = await runCli(['ingest', `s3://${bucket}/flat/labels.csv`, '-d', 'listed'], stack.env, 60_000);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain(`transferline: the manifest s3://${bucket}/flat/labels.csv: a row cannot be read, so nothing of it was ingested\n  line 7: s3://${bucket}/flat/img/circle-2.jpg is listed again with label "square" (line 4: label "circle"): an image has one label`);
    expect(await status()).toMatch(/dataset listed: 11 images, 11 embedded.*\n {2}labels: circle \(4\), square \(4\), triangle \(3\)/);
    await put('flat/labels.csv', ['split,filename,class', ...edited].join('\n'));

    // a listing of the folder (its images are in img/, a "label" folder) leaves the manifest's
    // images as it labels them; the two it no longer names are the listing's
    await put('flat/img/sources.tsv', 'img/circle-0.jpg\tdrawn\n');
    // (as a listing before such files were left out had it: an image of label img that failed)
    const tsv = await ctx.services.store.headObject(bucket, 'flat/img/sources.tsv');
    await ctx.services.datasets.putItem('listed', `${bucket}/flat/img/sources.tsv`, { label: 'img', etag: tsv!.etag, state: 'failed', stage: 'preprocess', reason: 'not-an-image', detail: 'not an image (starts with text)', attempts: 1, failedAt: new Date().toISOString() });
    expect(await ctx.services.datasets.getItems('listed', [`${bucket}/flat/img/sources.tsv`])).toEqual([expect.objectContaining({ state: 'failed' })]);
    const prefix = await runCli(['ingest', `s3://${bucket}/flat/`, '-d', 'listed'], stack.env, 240_000);
    expect(prefix.code).toBe(0);
    // (the two rows dropped left their objects, whose bytes are known: no job, not read again)
    expect(prefix.stdout).toMatch(/12 objects listed, 0 enqueued, 2 added from the embedding cache \(no job\), 10 unchanged$/m);
    // the manifest beside them is none of the images (it was counted as an image outside a label
    // folder), nor is a table in a label folder (it was listed as an image of that label, and failed)
    // (the one the dataset held, as an image that failed, is taken out of it: not as "deleted from the bucket")
    expect(prefix.stdout).toContain(`note: s3://${bucket}/flat/img/sources.tsv, s3://${bucket}/flat/labels.csv are in a label manifest's format (.csv, .tsv, .jsonl, .ndjson), not images: left out of the listing (a manifest labels the dataset when ingested by its URL); 1 of them was in the dataset as an image that failed, and is taken out of it`);
    expect(prefix.stdout).not.toContain('removed from the dataset');
    expect(prefix.stdout).toContain(`note: 10 of the images under s3://${bucket}/flat/ take their labels in dataset listed from the label manifest s3://${bucket}/flat/labels.csv, not from their folders`);
    expect(await status()).toMatch(/dataset listed: 13 images, 13 embedded.*\n {2}labels: circle \(4\), img \(2\), square \(4\), triangle \(3\)/);
    expect(await forwardPasses()).toBe(passes);

    // review's advice to relabel says what relabel leaves; relabel --from-review moves the
    // others (circle-1, a circle the manifest calls a square, is among the images to move)
    const review = await runCli(['review', '-d', 'listed'], stack.env, 240_000);
    expect(review.code).toBe(0);
    expect(review.stdout).toContain(`  (images that the label manifest s3://${bucket}/flat/labels.csv labels are not moved by relabel: change their rows there and ingest it again)`);
    const reviewFile = /^full list \(JSON Lines\): (\S+)$/m.exec(review.stdout)![1]!;
    const fromReview = await runCli(['relabel', '-d', 'listed', '--from-review', reviewFile, '--dry-run'], stack.env);
    // each named, and counted as left: exit 3, as for any suggestion left (a trial: exit 0, none named)
    expect(fromReview.code).toBe(3);
    expect(fromReview.stderr).toMatch(/^transferline: \d+ of the suggested moves (was|were) left \(said above, with why\)\n$/);
    expect(fromReview.stdout).toMatch(new RegExp(`^note: \\d+ of the images to move takes? (its|their) labels? from the label manifest s3://${bucket}/flat/labels\\.csv: left as it labels them`, 'm'));
    const leftHere = Number(/^note: (\d+) of the images to move take/m.exec(fromReview.stdout)![1]);
    expect(fromReview.stdout.match(/^ {2}s3:\/\/\S+: suggested \S+$/gm)).toHaveLength(Math.min(leftHere, 10));
    expect(fromReview.stderr).toContain(`transferline: ${leftHere} of the suggested moves`);
    expect(fromReview.stdout).not.toContain('flat/img/circle-1.jpg →');

    // a manifest's image overwritten: a listing embeds its new bytes, under the manifest's label
    await ctx.services.store.putObject(bucket, 'flat/img/circle-2.jpg', await renderSample('circle', 2, 92, 128));
    const overwritten = await runCli(['ingest', `s3://${bucket}/flat/`, '-d', 'listed'], stack.env, 240_000);
    expect(overwritten.stdout).toMatch(/12 objects listed, 1 enqueued, 0 added from the embedding cache \(no job\), 11 unchanged/);
    expect(await record('flat/img/circle-2.jpg')).toMatchObject({ label: 'circle', manifest: `${bucket}/flat/labels.csv` });

    // another dataset, labelled by folders, may not move an image this manifest names
    expect((await runCli(['ingest', `s3://${bucket}/flat/`, '-d', 'folders'], stack.env, 240_000)).code).toBe(0);
    const elsewhere = await runCli(['relabel', '-d', 'folders', `s3://${bucket}/flat/img/circle-2.jpg`, '--to', 'circle', '--new-label'], stack.env);
    expect(elsewhere.code).toBe(1);
    expect(elsewhere.stderr).toContain(`s3://${bucket}/flat/img/circle-2.jpg is labelled in dataset listed by the manifest s3://${bucket}/flat/labels.csv, whose row would name a key that is gone`);
    expect(await ctx.services.store.headObject(bucket, 'flat/img/circle-2.jpg')).toBeDefined();

    // the manifest deleted: a listing labels its images by their folders again
    await ctx.services.store.deleteObject(bucket, 'flat/labels.csv');
    await ctx.services.store.deleteObject(bucket, 'flat/img/sources.tsv');
    const released = await runCli(['ingest', `s3://${bucket}/flat/`, '-d', 'listed'], stack.env, 240_000);
    expect(released.stdout).not.toContain('note: ');
    expect(await status()).toMatch(/\n {2}labels: circle \(1\), img \(12\)\n/);
  }, 300_000);

  it('names the rows to change for bytes it files under two labels, where train and review said relabel, which refuses them', async () => {
    // 3 images a class, and a copy of a circle's bytes that the manifest calls a square
    const rows = ['image,label'];
    for (const kind of ['circle', 'square'] as const) {
      for (let i = 0; i < 3; i++) {
        await ctx.services.store.putObject(bucket, `dup/img/${kind}-${i}.jpg`, await renderSample(kind, i, 93, 128));
        rows.push(`img/${kind}-${i}.jpg,${kind}`);
      }
    }
    await ctx.services.store.putObject(bucket, 'dup/img/copy.jpg', await ctx.services.store.getObject(bucket, 'dup/img/circle-0.jpg'));
    await ctx.services.store.putObject(bucket, 'dup/labels.csv', Buffer.from([...rows, 'img/copy.jpg,square'].join('\n')));
    expect((await runCli(['ingest', `s3://${bucket}/dup/labels.csv`, '-d', 'listed-dups'], stack.env, 240_000)).code).toBe(0);
    const manifest = `s3://${bucket}/dup/labels.csv`;
    const train = await runCli(['train', '-d', 'listed-dups', '--epochs', '3'], stack.env, 240_000);
    expect(train.code).toBe(0);
    expect(train.stdout).toContain(`left out: 1 image whose bytes are filed under more than one label (every copy; change the copies' rows in the label manifest ${manifest} and ingest it again)`);
    expect(train.stdout).toContain(`\n    s3://${bucket}/dup/img/circle-0.jpg (circle, labelled by ${manifest}), s3://${bucket}/dup/img/copy.jpg (square, labelled by ${manifest})\n`);
    const review = await runCli(['review', '-d', 'listed-dups'], stack.env, 240_000);
    expect(review.code).toBe(0);
    expect(review.stdout).toContain(`  1 of them is filed under more than one label: predicted, but fitted under none (change the copies' rows in the label manifest ${manifest} and ingest it again)\n`);
    // the images it flags are all the manifest's: its rows to change, not a relabel command that moves none of them
    expect(review.stdout).toMatch(/^[1-9]\d* images? looks? mislabelled/m);
    expect(review.stdout).toContain(`look at them; they take their labels from the label manifest ${manifest}: change the rows of those that are wrong there, and ingest it again (relabel moves label folders)\n`);
    expect(review.stdout).not.toContain('--from-review');
  }, 300_000);

  it('is sent by upload --manifest after its images, checked first and against the folder, where the README needed awscli', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'tl-upload-manifest-'));
    try {
      const local = path.join(dir, 'shop');
      await mkdir(path.join(local, 'img'), { recursive: true });
      const rows = ['file,label'];
      for (const kind of ['circle', 'square'] as const) {
        for (let i = 0; i < 2; i++) {
          await writeFile(path.join(local, 'img', `${kind}-${i}.jpg`), await renderSample(kind, i, 94, 128));
          rows.push(`img/${kind}-${i}.jpg,${kind}`);
        }
      }
      await writeFile(path.join(local, 'img', 'extra.jpg'), await renderSample('triangle', 0, 94, 128));
      await writeFile(path.join(local, 'notes.txt'), 'not an image');
      await mkdir(path.join(local, '.thumbs'));
      await writeFile(path.join(local, '.thumbs', 'circle-0.jpg'), await renderSample('circle', 0, 94, 64));
      await writeFile(path.join(local, 'labels.csv'), [...rows, 'img/gone.jpg,circle', 'notes.txt,square', '.thumbs/circle-0.jpg,circle'].join('\n'));
      // a manifest with a bad row (kept outside the folder: it would go beside it) sends nothing
      await writeFile(path.join(dir, 'bad.csv'), 'file,label\nimg/circle-0.jpg,\n');
      const bad = await runCli(['upload', local, `s3://${bucket}/up/`, '--manifest', path.join(dir, 'bad.csv')], stack.env);
      expect(bad.code).toBe(1);
      expect(bad.stderr).toContain(`transferline: the manifest ${path.join(dir, 'bad.csv')} (for s3://${bucket}/up/bad.csv): a row cannot be read, so nothing was uploaded\n  line 2: no label for img/circle-0.jpg`);
      const listed = async () => {
        const keys: string[] = [];
        for await (const o of ctx.services.store.listObjects(bucket, 'up/')) keys.push(o.key);
        return keys;
      };
      expect(await listed()).toEqual([]);
      // sent from the folder its keys do not start from: refused, with where they would point
      const misplaced = await runCli(['upload', path.join(local, 'img'), `s3://${bucket}/up/img/`, '--manifest', path.join(local, 'labels.csv')], stack.env);
      expect(misplaced.code).toBe(1);
      expect(misplaced.stderr).toContain(`transferline: none of the manifest's 7 rows under s3://${bucket}/up/img/ names a file under ${path.join(local, 'img')} or an object in the bucket (line 2: s3://${bucket}/up/img/img/circle-0.jpg), so nothing was uploaded: its keys are paths from the manifest's own folder, which would be s3://${bucket}/up/img/;`);
      expect(await listed()).toEqual([]);

      const up = await runCli(['upload', local, `s3://${bucket}/up/`, '--manifest', path.join(local, 'labels.csv')], stack.env);
      expect(up.stderr).not.toMatch(/transferline:/);
      expect(up.code).toBe(0);
      expect(up.stdout).toContain(`uploaded 5 files to s3://${bucket}/up/\n`);
      expect(up.stdout).toContain(`note: 3 of the manifest's rows name images that ingest will not find (it leaves them out): line 6: "img/gone.jpg" is neither in ${local} nor in the bucket; line 7: "notes.txt" was not sent (`);
      expect(up.stdout).toContain('; line 8: ".thumbs/circle-0.jpg" was not sent (upload leaves out files and folders whose names start with a dot)\n');
      expect(up.stdout).toContain('note: 1 of the folder\'s images is named by no row of the manifest (an ingest of it leaves it out): "img/extra.jpg"\n');
      expect(up.stdout).toContain(`uploaded the label manifest s3://${bucket}/up/labels.csv (it names 7 images); next: transferline ingest s3://${bucket}/up/labels.csv --dataset NAME\n`);
      // at its path under the folder, the images beside it as they are laid out, the text file not sent
      expect((await listed()).sort()).toEqual(['up/img/circle-0.jpg', 'up/img/circle-1.jpg', 'up/img/extra.jpg', 'up/img/square-0.jpg', 'up/img/square-1.jpg', 'up/labels.csv']);
      const ingest = await runCli(['ingest', `s3://${bucket}/up/labels.csv`, '-d', 'uploaded'], stack.env, 240_000);
      expect(ingest.stdout).toMatch(/dataset uploaded: 4 of the 7 images named by the manifest found, 4 enqueued/);
      expect(ingest.code).toBe(3); // the rows upload named
      // again: nothing sent twice
      const again = await runCli(['upload', local, `s3://${bucket}/up/`, '--manifest', path.join(local, 'labels.csv')], stack.env);
      expect(again.stdout).toContain(`uploaded 0 files to s3://${bucket}/up/ (5 more already there, the same bytes: not sent again)\n`);
      expect(again.stdout).toContain(`already there, the same bytes: the label manifest s3://${bucket}/up/labels.csv (it names 7 images)`);
      expect(again.stdout).toContain('note: 1 of the folder\'s images is named by no row');
      // a row written with a Windows path: said what to write instead (a trial: the key shown doubled, no hint)
      await writeFile(path.join(local, 'windows.csv'), 'img\\circle-0.jpg,circle\nimg/square-0.jpg,square\n');
      const windows = await runCli(['upload', local, `s3://${bucket}/up/`, '--manifest', path.join(local, 'windows.csv')], stack.env);
      expect(windows.stdout).toContain(`line 1: "img\\circle-0.jpg" is neither in ${local} nor in the bucket`);
      expect(windows.stdout).toContain("note: a key with a backslash (img\\circle-0.jpg) is a path written on Windows? S3 keys separate folders with / and take a backslash as part of a name: write the rows' paths with / (img/photo.jpg, not img\\photo.jpg)\n");
      // and when no row is found: the refusal says it too (a review: only the partly-found case did)
      await writeFile(path.join(local, 'all-windows.csv'), 'img\\circle-0.jpg,circle\nimg\\square-0.jpg,square\n');
      const none = await runCli(['upload', local, `s3://${bucket}/up2/`, '--manifest', path.join(local, 'all-windows.csv')], stack.env);
      expect(none.code).toBe(1);
      expect(none.stderr).toContain("; or: a key with a backslash (img\\circle-0.jpg) is a path written on Windows?");
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }, 300_000);

  it('reads a .tsv, names a first line it took for a row and a bucket that is not there, and says what a URL naming an image is', async () => {
    const rows: string[] = [];
    for (const kind of ['circle', 'square'] as const) {
      for (let i = 0; i < 2; i++) {
        await ctx.services.store.putObject(bucket, `tsv/img/${kind}-${i}.jpg`, await renderSample(kind, i, 95, 128));
        rows.push(`img/${kind}-${i}.jpg\t${kind}`);
      }
    }
    // a row in a bucket that does not exist is an image not there, not the end of the ingest
    await ctx.services.store.putObject(bucket, 'tsv/labels.tsv', Buffer.from(['file\tlabel', ...rows, 's3://no-such-bucket-tl/a.jpg\tcircle'].join('\n')));
    const tsv = await runCli(['ingest', `s3://${bucket}/tsv/labels.tsv`, '-d', 'tabbed'], stack.env, 240_000);
    expect(tsv.stderr).not.toMatch(/transferline:/);
    expect(tsv.code).toBe(3);
    expect(tsv.stdout).toContain('dataset tabbed: 4 of the 5 images named by the manifest found, 4 enqueued');
    expect(tsv.stdout).toContain('note: 1 of the images the manifest names is not in the bucket, so not ingested: s3://no-such-bucket-tl/a.jpg (bucket no-such-bucket-tl does not exist)');
    // a header of names it does not know is read as a row, whose "image" is not there: said so
    await ctx.services.store.putObject(bucket, 'tsv/names.csv', Buffer.from(['name,category', ...rows.map((r) => r.replace('\t', ','))].join('\n')));
    const names = await runCli(['ingest', `s3://${bucket}/tsv/names.csv`, '-d', 'named'], stack.env, 240_000);
    expect(names.code).toBe(3);
    expect(names.stdout).toContain(`note: 1 of the images the manifest names is not in the bucket, so not ingested: s3://${bucket}/tsv/name\n`);
    expect(names.stdout).toContain('note: its first line, "name,category", was read as a row: a header names the key\'s column (key, filename, image, path, …) and the label\'s (label or class)');
    // a manifest's name mistyped: the manifests beside it are named (it said a prefix ends in "/")
    const typo = await runCli(['ingest', `s3://${bucket}/tsv/label.tsv`, '-d', 'typo'], stack.env, 60_000);
    expect(typo.code).toBe(1);
    expect(typo.stderr).toContain(`transferline: the manifest s3://${bucket}/tsv/label.tsv does not exist; the label manifests in its folder: s3://${bucket}/tsv/labels.tsv, s3://${bucket}/tsv/names.csv\n`);
    // a URL naming one image: ingest takes a prefix or a manifest (it said "is the prefix right?")
    const image = await runCli(['ingest', `s3://${bucket}/tsv/img/circle-0.jpg`, '-d', 'one'], stack.env, 60_000);
    expect(image.stdout).toContain(`ingest s3://${bucket}/tsv/img/circle-0.jpg/: no objects there; s3://${bucket}/tsv/img/circle-0.jpg is an object: ingest takes a prefix, or a label manifest ending in .csv, .tsv, .jsonl or .ndjson`);
  }, 300_000);

  it('finds a few images of a large folder one by one once the listing has gone on far longer than the rows', async () => {
    // 1,100 other objects listed before the two the manifest names (keys sort after them): the
    // listing stops at 1,004 (2 × rows + 1,000) and the two are asked for by HEAD
    const filler = Array.from({ length: 1100 }, (_, i) => `big/a-${String(i).padStart(4, '0')}.txt`);
    await pMap(filler, (key) => ctx.services.store.putObject(bucket, key, Buffer.from('not an image')), { concurrency: 16 });
    await ctx.services.store.putObject(bucket, 'big/z-circle.jpg', await renderSample('circle', 5, 93, 128));
    await ctx.services.store.putObject(bucket, 'big/z-square.jpg', await renderSample('square', 5, 93, 128));
    await ctx.services.store.putObject(bucket, 'big/two.csv', Buffer.from('z-circle.jpg,circle\nz-square.jpg,square\nz-gone.jpg,square\n'));
    const r = await runCli(['ingest', `s3://${bucket}/big/two.csv`, '-d', 'two'], stack.env, 240_000);
    expect(r.stdout).toMatch(/dataset two: 2 of the 3 images named by the manifest found, 2 enqueued/);
    expect(r.stdout).toContain(`note: 1 of the images the manifest names is not in the bucket, so not ingested: s3://${bucket}/big/z-gone.jpg`);
    expect(r.code).toBe(3);
    expect((await runCli(['status', '-d', 'two'], stack.env)).stdout).toMatch(/dataset two: 2 images, 2 embedded.*\n {2}labels: circle \(1\), square \(1\)/);
    // a second manifest naming one of them: the one ingested last labels it, and says whose it was
    await ctx.services.store.putObject(bucket, 'big/one.jsonl', Buffer.from('{"key": "z-circle.jpg", "label": "square"}\n'));
    const other = await runCli(['ingest', `s3://${bucket}/big/one.jsonl`, '-d', 'two'], stack.env, 240_000);
    expect(other.code).toBe(0);
    expect(other.stdout).toContain(`note: 1 of the images this manifest names was labelled in dataset two by the label manifest s3://${bucket}/big/two.csv; this one labels it now`);
    expect((await runCli(['status', '-d', 'two'], stack.env)).stdout).toMatch(/\n {2}labels: square \(2\)\n/);
    // the manifests' folder ingested as a prefix (every object at its root: no label folder)
    // into their dataset: refused, naming the manifests that label it
    const flat = await runCli(['ingest', `s3://${bucket}/big/`, '-d', 'two'], stack.env, 60_000);
    expect(flat.code).toBe(1);
    expect(flat.stderr).toContain(`so nothing was added to dataset two (a prefix one level too deep? it is labelled by the label manifests s3://${bucket}/big/one.jsonl, s3://${bucket}/big/two.csv)`);
  }, 300_000);
});
