import { readFile } from 'node:fs/promises';
import path from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DatasetRepository } from '@transferline/shared';
import { openCliContext, type CliContext } from '../apps/producer/src/cli-context.js';
import { ingestCommand } from '../apps/producer/src/commands/ingest.command.js';
import { settledPreprocessFailures } from '../apps/producer/src/commands/status.command.js';
import { consoleDeps, loadOverview } from '../apps/producer/src/console/console-data.js';
import { waitForDataset } from '../apps/producer/src/dataset-wait.js';
import { tinyBmp } from './support/images.js';
import { guardLeaks } from './support/leak-guard.js';
import { runCli, scrape, startTestStack, type TestStack } from './support/stack.js';

/**
 * Bad input through the real stack (S3 server, Redis, BullMQ, worker processes): each bad object
 * fails alone, at once (no retry), with its own reason in `status` and in the metrics, and the
 * good images queued behind them are all embedded.
 */

guardLeaks();

const MAX_OBJECT_BYTES = 1_000_000;
const MAX_INPUT_PIXELS = 4_000_000;
const GOOD = 10;
const bucket = 'bad-input';

let stack: TestStack;
let ctx: CliContext;
const sink = { write: () => true } as unknown as NodeJS.WritableStream;

beforeAll(async () => {
  stack = await startTestStack(
    {
      TL_MODEL_WEIGHTS: 'random',
      TL_MAX_OBJECT_BYTES: String(MAX_OBJECT_BYTES),
      TL_MAX_INPUT_PIXELS: String(MAX_INPUT_PIXELS),
      TL_PREPROCESS_CONCURRENCY: '2',
      TL_EMBED_BATCH_SIZE: '8',
    },
    { train: 0 },
  );
  ctx = await openCliContext(stack.config, sink);
});
afterAll(async () => {
  await ctx?.close();
  await stack?.destroy();
});

const noise = (width: number, height: number) => sharp({ create: { width, height, channels: 3, background: '#808080', noise: { type: 'gaussian', mean: 128, sigma: 60 } } });

/** key (under train/cats/) → bytes and the reason it must fail with. */
async function badCorpus(): Promise<{ key: string; bytes: Buffer; reason: string }[]> {
  const jpeg = await noise(320, 240).jpeg().toBuffer();
  const png = await noise(64, 64).png().toBuffer();
  const bombHeader = Buffer.from(png);
  bombHeader.writeUInt32BE(30_000, 16); // IHDR width
  bombHeader.writeUInt32BE(30_000, 20); // IHDR height
  const corrupt = Buffer.from(png);
  for (let i = 200; i < 260; i++) corrupt[i]! ^= 0x55;
  const bmp = tinyBmp();
  // 9 megapixels of one colour: kilobytes that would decode to 27 MB
  const bombSolid = await sharp({ create: { width: 3000, height: 3000, channels: 3, background: '#336699' } }).png({ palette: true, compressionLevel: 9 }).toBuffer();
  const huge = await noise(700, 700).png({ compressionLevel: 0 }).toBuffer();
  // a JPEG with 64 bytes gone wrong inside: libjpeg decodes it all the same, with a grey band
  const halves = await sharp({ create: { width: 640, height: 480, channels: 3, background: '#336699' } })
    .composite([{ input: { create: { width: 320, height: 480, channels: 3, background: '#cc8833' } }, left: 0, top: 0 }])
    .jpeg()
    .toBuffer();
  const bitrot = Buffer.from(halves);
  let seed = 7;
  const from = Math.floor(halves.length * 0.4);
  for (let i = from; i < from + 64; i++) bitrot[i] = (seed = (seed * 1103515245 + 12345) % 2 ** 31) % 255;
  expect(bombSolid.length).toBeLessThan(50_000);
  expect(huge.length).toBeGreaterThan(MAX_OBJECT_BYTES);
  return [
    { key: '00-empty.jpg', bytes: Buffer.alloc(0), reason: 'empty' },
    { key: '01-truncated.jpg', bytes: jpeg.subarray(0, Math.floor(jpeg.length / 2)), reason: 'truncated' },
    { key: '02-text.jpg', bytes: Buffer.from('this is a text file with a .jpg name\n'), reason: 'not-an-image' },
    { key: '03-bitmap.bmp', bytes: bmp, reason: 'unsupported-format' },
    { key: '04-bomb-header.png', bytes: bombHeader, reason: 'too-many-pixels' },
    { key: '05-bomb-solid.png', bytes: bombSolid, reason: 'too-many-pixels' },
    // (its IDAT chunk fails its checksum: damage, named so)
    { key: '06-corrupt.png', bytes: corrupt, reason: 'corrupt' },
    { key: '07-huge.png', bytes: huge, reason: 'too-large' },
    { key: '08-deleted.jpg', bytes: jpeg, reason: 'not-found' },
    { key: '09-bitrot.jpg', bytes: bitrot, reason: 'corrupt' },
  ];
}

describe('bad input fails alone, with a reason', () => {
  it('each bad object ends failed with its reason, once, and the good ones behind them are embedded', async () => {
    const bad = await badCorpus();
    const store = ctx.services.store;
    await store.ensureBucket(bucket);
    for (const b of bad) await store.putObject(bucket, `train/cats/${b.key}`, b.bytes);
    for (let i = 0; i < GOOD; i++) {
      const good = await sharp({ create: { width: 96, height: 96, channels: 3, background: { r: 20 * i, g: 100, b: 255 - 20 * i } } }).jpeg().toBuffer();
      await store.putObject(bucket, `train/cats/50-good-${i}.jpg`, good, 'image/jpeg');
    }

    // Listed and enqueued while the queue is paused; one object is deleted before any job runs.
    await ctx.queues.preprocess.pause();
    const r = await ingestCommand(ctx, `s3://${bucket}/train/`, { dataset: 'bad', wait: false });
    expect(r.counts.enqueued).toBe(bad.length + GOOD);
    await store.deleteObject(bucket, 'train/cats/08-deleted.jpg');
    await ctx.queues.preprocess.resume();

    const status = await waitForDataset(ctx, 'bad', { space: stack.space.id, stallSeconds: 30 });
    expect(status).toMatchObject({ total: bad.length + GOOD, embedded: GOOD, failed: bad.length, pending: 0 });
    const expected = Object.fromEntries(bad.map((b) => [`${bucket}/train/cats/${b.key}`, b.reason]));
    expect(Object.fromEntries(status.failures.map((f) => [f.item, f.reason]))).toEqual(expected);
    expect(status.failures.find((f) => f.reason === 'too-large')?.detail).toMatch(/over the limit of 1000000/);

    // what a user sees: the label's count says how many of its images failed (train leaves them out)
    expect(status.labels).toEqual([{ label: 'cats', count: bad.length + GOOD, failed: bad.length, ready: GOOD }]);
    const text = await runCli(['status', '--dataset', 'bad'], stack.env);
    expect(text.stdout).toContain(`  labels: cats (${bad.length + GOOD}, ${bad.length} failed)\n`);
    // what to do of those that failed for their bytes (not of the one too large, nor the one not found)
    // (not the two too-many-pixels either: a higher TL_MAX_INPUT_PIXELS and retry --reason mend those)
    expect(text.stdout).toMatch(/^ {2}note: 6 failed for their own bytes \((?:[a-z-]+, ){4}[a-z-]+\), which fail again however often they run: replace each with an image that reads, or delete it, and run the same ingest again \(a replaced or deleted file's failure goes\)$/m);
    // an object listed and then not found: what may have happened, and what brings it back
    expect(text.stdout).toContain(`  note: 1 listed but not found by the workers: deleted since, or listed from another S3 than the workers read (this shell's S3_ENDPOINT is ${stack.config.s3.endpoint}). A re-ingest runs again each one put back since it failed\n`);
    const cli = await runCli(['status', '--json', '--dataset', 'bad'], stack.env);
    expect(cli.code).toBe(0);
    const shown = JSON.parse(cli.stdout) as { datasets: { failures: { item: string; reason: string }[] }[] };
    expect(Object.fromEntries(shown.datasets[0]!.failures.map((f) => [f.item, f.reason]))).toEqual(expected);
    // and listed, every one, by the failures command (filterable by reason)
    const listed = await runCli(['failures', '--dataset', 'bad', '--json'], stack.env);
    const listedJson = JSON.parse(listed.stdout) as { item: string; object: string; reason: string }[];
    expect(Object.fromEntries(listedJson.map((f) => [f.item, f.reason]))).toEqual(expected);
    // each with the object as a user names it, ready for awscli
    expect(listedJson.map((f) => f.object).sort()).toEqual(Object.keys(expected).map((id) => `s3://${id}`).sort());
    const bombs = await runCli(['failures', '--dataset', 'bad', '--reason', 'too-many-pixels'], stack.env);
    expect(bombs.stdout).toMatch(/^dataset bad: 2 failed with too-many-pixels \(too-many-pixels 2\)$/m);

    // what Prometheus sees
    const metrics = await scrape(stack.ports.preprocess);
    const byReason = new Map<string, number>();
    for (const b of bad) byReason.set(b.reason, (byReason.get(b.reason) ?? 0) + 1);
    for (const [reason, n] of byReason) expect(metrics.get(`tl_failures_total{stage="preprocess",reason="${reason}"}`), reason).toBe(n);
    expect(metrics.get('tl_images_total{stage="preprocess",outcome="failed"}')).toBe(bad.length);
    expect(metrics.get('tl_images_total{stage="preprocess",outcome="queued"}')).toBe(GOOD);
    // failed decodes that overlapped another (2 at a time here) ran again alone: counted, at most once per bad image decoded
    const reruns = ['rerun-alone', 'kept-first-error'].map((outcome) => metrics.get(`tl_decode_reruns_total{outcome="${outcome}"}`));
    expect(reruns.every((n) => n !== undefined)).toBe(true);
    expect(reruns.reduce((a, n) => a! + n!, 0)).toBeLessThanOrEqual(bad.length);

    // no retries: every failed job ran once; the worker never crashed
    const failed = await ctx.queues.preprocess.getFailed(0, 100);
    expect(failed).toHaveLength(bad.length);
    for (const job of failed) expect(job.attemptsMade, job.failedReason).toBe(1);
    expect(failed.map((j) => j.failedReason.split(':')[0]).sort()).toEqual(bad.map((b) => b.reason).sort());
    expect(stack.events.filter((e) => /exited/.test(e))).toEqual([]);

    // the worker's log names each object that failed for good, with its reason
    const lines = (await readFile(path.join(stack.dataDir, 'logs', 'preprocess.log'), 'utf8')).split('\n').filter((l) => l.includes('"failed for good"'));
    const logged = Object.fromEntries(lines.map((l) => JSON.parse(l) as { object: string; reason: string }).map((l) => [l.object.replace(/^s3:\/\//, ''), l.reason]));
    expect(logged).toEqual(expected);
    // with the attempt under the key the job's other lines use
    for (const l of lines) expect(JSON.parse(l)).toMatchObject({ attempt: 1 });
    // every line is plain JSON with no key twice (a log shipper keeps one of two, or refuses the line)
    for (const role of ['preprocess', 'embed']) {
      const all = (await readFile(path.join(stack.dataDir, 'logs', `${role}.log`), 'utf8')).split('\n').filter((l) => l.startsWith('{'));
      expect(all.length, role).toBeGreaterThan(1);
      for (const l of all) expect(JSON.stringify(JSON.parse(l)), role).toBe(l);
    }

    // The deleted object is put back (or was there all along, on the S3 the workers read, while the
    // shell listed another: a user's trial): a re-ingest that lists it runs it again, where it
    // stayed failed as "unchanged". Bad input stays failed.
    await store.putObject(bucket, 'train/cats/08-deleted.jpg', bad.find((b) => b.key === '08-deleted.jpg')!.bytes, 'image/jpeg');
    const again = await ingestCommand(ctx, `s3://${bucket}/train/`, { dataset: 'bad', wait: false });
    expect(again.counts).toMatchObject({ retried: 1 });
    const after = await waitForDataset(ctx, 'bad', { space: stack.space.id, stallSeconds: 30 });
    expect(after).toMatchObject({ total: bad.length + GOOD, embedded: GOOD + 1, failed: bad.length - 1, pending: 0 });
    expect(after.failures.map((f) => f.reason)).not.toContain('not-found');

    // A bad object replaced by a good one runs under its new etag; the old failed job stays in
    // BullMQ's failed set (the queue's failed count: status's table and the console say so), and
    // status says it needs nothing more, where before it read as a failure no dataset listed.
    const fixed = await noise(320, 240).jpeg().toBuffer();
    await store.putObject(bucket, 'train/cats/02-text.jpg', fixed, 'image/jpeg');
    await ingestCommand(ctx, `s3://${bucket}/train/`, { dataset: 'bad', wait: false });
    const mended = await waitForDataset(ctx, 'bad', { space: stack.space.id, stallSeconds: 30 });
    expect(mended).toMatchObject({ total: bad.length + GOOD, embedded: GOOD + 2, failed: bad.length - 2, pending: 0 });
    expect(await ctx.queues.preprocess.getFailedCount()).toBe(bad.length - 1);
    const table = await runCli(['status'], stack.env);
    expect(table.stdout).toMatch(new RegExp(`^preprocess +\\d+ +0 +0 +0 +${bad.length - 1}$`, 'm'));
    expect(table.stdout).toContain(`  preprocess: 1 of its ${bad.length - 1} failed jobs needs nothing more: its object was replaced, embedded or moved to another embedding space since, or left its dataset (a dataset's failures left to act on are listed with it)\n`);
    const json = JSON.parse((await runCli(['status', '--json'], stack.env)).stdout) as { queues: Record<string, { failedSettled?: unknown }> };
    expect(json.queues.preprocess!.failedSettled).toEqual({ settled: 1, of: bad.length - 1 });
    // A failure whose record was never written (the worker's write lost: the item stays pending,
    // orphaned, and a re-ingest runs that very job) still stands on its job: not settled.
    const orphan = DatasetRepository.itemId(bucket, 'train/cats/00-empty.jpg');
    const [record] = await ctx.services.datasets.getItems('bad', [orphan]);
    await ctx.services.datasets.putItem('bad', orphan, { label: record!.label, etag: record!.etag, space: record!.space!, state: 'pending' });
    expect((await settledPreprocessFailures(ctx)).settled).toBe(1);
    await ctx.services.datasets.putItem('bad', orphan, record!);
    // and the console's front page
    const overview = await loadOverview(consoleDeps({ services: ctx.services, queues: ctx.queues, config: stack.config }, 5_000));
    expect(overview.queues.find((q) => q.name === 'preprocess')).toMatchObject({ counts: { failed: bad.length - 1 }, settled: 1 });
    // retry says what mends each failure it leaves alone (a review: bytes and pixels were sent to --reason, which fails them again)
    const retry = await runCli(['retry', '-d', 'bad'], stack.env, 60_000);
    expect(retry.stdout).toContain(
      "; 8 other failures left alone (corrupt, empty, truncated, unsupported-format: the files' own bytes, which fail again: replace or delete them and run the same ingest again; " +
        "too-many-pixels: raise the preprocess workers' TL_MAX_INPUT_PIXELS (each failure names the limit of the worker that read it: start up again with it, and any worker started by hand) and retry with --reason too-many-pixels, or replace them; too-large: name one with --reason to retry those)\n",
    );

    // A new bad file among old failures: the ingest lists the newest failures first (a trial's
    // ingest listed 20 old ones and not the one it had just met); so does `failures`, with each
    // one's label and time, and filtered by label.
    await store.putObject(bucket, 'train/cats/10-late.jpg', Buffer.from('a late text file\n'));
    const late = await runCli(['ingest', `s3://${bucket}/train/`, '-d', 'bad'], stack.env, 120_000);
    expect(late.code).toBe(3);
    const failedLines = late.stdout.split('\n').filter((l) => l.startsWith('  failed '));
    expect(failedLines).toHaveLength(bad.length - 1);
    expect(failedLines[0]).toMatch(new RegExp(`^  failed s3://${bucket}/train/cats/10-late\\.jpg: preprocess not-an-image`));
    const all = JSON.parse((await runCli(['failures', '-d', 'bad', '--json'], stack.env)).stdout) as { object: string; label: string; failedAt?: string }[];
    expect(all).toHaveLength(bad.length - 1);
    expect(all[0]!.object).toBe(`s3://${bucket}/train/cats/10-late.jpg`);
    expect(all.every((f) => f.label === 'cats' && typeof f.failedAt === 'string')).toBe(true);
    const times = all.map((f) => Date.parse(f.failedAt!));
    expect(times).toEqual([...times].sort((a, b) => b - a));
    const ofCats = await runCli(['failures', '-d', 'bad', '--label', 'cats', '--reason', 'not-an-image'], stack.env);
    expect(ofCats.stdout.split('\n')[0]).toBe('dataset bad: 1 failed with not-an-image of label cats (not-an-image 1)');
    const ofDogs = await runCli(['failures', '-d', 'bad', '--label', 'dogs'], stack.env);
    expect(ofDogs.stdout).toBe('dataset bad: 0 failed of label dogs; it has no label dogs (its labels: cats)\n');
  });

  it("hidden files and folders that aws s3 sync copies (.DS_Store, a Finder's ._ files, .thumbnails/) are left out of a listing, and said so", async () => {
    const store = ctx.services.store;
    const good = async (i: number) => noise(64 + i, 64).jpeg().toBuffer();
    await store.putObject(bucket, 'hidden/dogs/a.jpg', await good(0), 'image/jpeg');
    await store.putObject(bucket, 'hidden/dogs/b.jpg', await good(1), 'image/jpeg');
    // (what a user's trial synced from a Mac: the Finder's files, and a thumbnail folder that became a label)
    await store.putObject(bucket, 'hidden/dogs/.DS_Store', Buffer.from('0000000142756431000010000000080000001000', 'hex'));
    await store.putObject(bucket, 'hidden/dogs/._a.jpg', Buffer.from('00051607000200004d6163204f532058', 'hex'));
    await store.putObject(bucket, 'hidden/.thumbnails/', Buffer.alloc(0));
    await store.putObject(bucket, 'hidden/.thumbnails/t.jpg', await good(2), 'image/jpeg');
    // a dataset ingested before such files were left out holds one, failed as no image
    const ds = DatasetRepository.itemId(bucket, 'hidden/dogs/.DS_Store');
    const head = await store.headObject(bucket, 'hidden/dogs/.DS_Store');
    await ctx.services.datasets.putItem('hidden', ds, { label: 'dogs', etag: head!.etag, state: 'failed', stage: 'preprocess', reason: 'not-an-image', detail: 'not an image', attempts: 1, failedAt: new Date().toISOString() });

    const r = await runCli(['ingest', `s3://${bucket}/hidden/`, '-d', 'hidden'], stack.env, 120_000);
    expect(r.stderr).not.toMatch(/transferline:/);
    // nothing failed: exit 0 (each hidden file failed as no image, exit 3, and .thumbnails was a label)
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/dataset hidden: 2 objects listed, 2 enqueued, 0 added from the embedding cache \(no job\), 0 unchanged$/m);
    expect(r.stdout).toContain(
      `note: 3 hidden files left out (a name that starts with a dot, or a folder's: .DS_Store, a Finder's ._ files, .thumbnails/; aws s3 sync copies them, upload does not): ` +
        `s3://${bucket}/hidden/.thumbnails/t.jpg, s3://${bucket}/hidden/dogs/.DS_Store, s3://${bucket}/hidden/dogs/._a.jpg; 1 of them was in the dataset, and is taken out of it\n`,
    );
    // (not as deleted from the bucket: it is there; nor is the hidden folder an empty one)
    expect(r.stdout).not.toContain('removed from the dataset');
    expect(r.stdout).not.toContain('empty folder');
    const status = await waitForDataset(ctx, 'hidden', { space: stack.space.id, stallSeconds: 30 });
    expect(status).toMatchObject({ total: 2, embedded: 2, failed: 0, pending: 0 });
    expect(status.labels).toEqual([{ label: 'dogs', count: 2, ready: 2 }]);
    // and again: nothing changed, nothing said as taken out
    const again = await runCli(['ingest', `s3://${bucket}/hidden/`, '-d', 'hidden'], stack.env, 120_000);
    expect(again.code).toBe(0);
    expect(again.stdout).toMatch(/2 objects listed, 0 enqueued, 0 added from the embedding cache \(no job\), 2 unchanged$/m);
    expect(again.stdout).toContain(`note: 3 hidden files left out (`);
    expect(again.stdout).not.toContain('taken out of it');

    // a file that is no image: what to do of it is said, and retry does not send the user to run the same bytes again
    await store.putObject(bucket, 'hidden/dogs/c.jpg', Buffer.from('not a photo\n'));
    const bad = await runCli(['ingest', `s3://${bucket}/hidden/`, '-d', 'hidden'], stack.env, 120_000);
    expect(bad.code).toBe(3);
    expect(bad.stdout).toContain(
      "  note: 1 failed for its own bytes (not-an-image), which fail again however often they run: replace each with an image that reads, or delete it, and run the same ingest again (a replaced or deleted file's failure goes)\n",
    );
    const retry = await runCli(['retry', '-d', 'hidden'], stack.env, 60_000);
    expect(retry.stdout).toContain("; 1 other failure left alone (not-an-image: the files' own bytes, which fail again: replace or delete it and run the same ingest again)\n");

    // a hidden image that a label manifest names is the manifest's: a listing leaves it be (a
    // review: each listing took it out, and each ingest of the manifest put it back)
    await store.putObject(bucket, 'hidden/labels.csv', 'split,filename,class\n,.thumbnails/t.jpg,dogs\n');
    await runCli(['ingest', `s3://${bucket}/hidden/labels.csv`, '-d', 'hidden'], stack.env, 120_000);
    const thumb = DatasetRepository.itemId(bucket, 'hidden/.thumbnails/t.jpg');
    expect((await ctx.services.datasets.getItems('hidden', [thumb]))[0]).toMatchObject({ label: 'dogs', manifest: `${bucket}/hidden/labels.csv` });
    const listing = await runCli(['ingest', `s3://${bucket}/hidden/`, '-d', 'hidden'], stack.env, 120_000);
    expect(listing.stdout).not.toContain('taken out of it');
    expect(listing.stdout).toContain('; 1 of them stays in the dataset: the label manifest that names it labels it\n');
    expect((await ctx.services.datasets.getItems('hidden', [thumb]))[0]).toMatchObject({ label: 'dogs', manifest: `${bucket}/hidden/labels.csv` });
  });
});
