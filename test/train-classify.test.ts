import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, symlink } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { openCliContext, type CliContext } from '../apps/producer/src/cli-context.js';
import { classifyCommand, resolveModel } from '../apps/producer/src/commands/classify.command.js';
import { latestRun } from '../apps/producer/src/commands/models.command.js';
import { classifyImages } from '../apps/train-worker/src/classify-images.job.js';
import { loadTfRuntime } from '../packages/shared/src/tf-runtime.js';
import type { JobContext } from '../packages/shared/src/index.js';
import { ingestCommand, watchIngest, type IngestOutcome } from '../apps/producer/src/commands/ingest.command.js';
import { trainCommand } from '../apps/producer/src/commands/train.command.js';
import { deleteDatasetCommand, deleteRunCommand } from '../apps/producer/src/commands/delete.command.js';
import { CliExit, EXIT } from '../apps/producer/src/exit-codes.js';
import { holdModel, modelUsers } from '../apps/producer/src/model-lease.js';
import { statusCommand } from '../apps/producer/src/commands/status.command.js';
import { demoTrain } from '../apps/producer/src/commands/up.command.js';
import { renderSample, SAMPLE_CLASSES, type SampleClass } from '../apps/producer/src/demo/sample-images.js';
import { contentHash, decodeNpyFloat32, encodeNpyFloat32, classifyDatasetName, enqueue, jobIds, jobLock, STOP_DEADLINE_MS, LatestDoc, parseS3ObjectUrl, PromotedDoc, ReportDoc, RunDoc, spaceFromConfig, loadConfig, TrainJob, deploymentOf } from '../packages/shared/src/index.js';
import { ingestManifest, ingestPrefix } from '../apps/producer/src/ingest.service.js';
import { restoreLostIndex } from '../apps/producer/src/data-loss.js';
import { consoleDeps, loadDataset, loadOverview } from '../apps/producer/src/console/console-data.js';
import { startFaultProxy } from './support/fault-proxy.js';
import { guardLeaks } from './support/leak-guard.js';
import { cliPath, runCli, scrape, startTestStack, until, type CliRun, type TestStack } from './support/stack.js';

guardLeaks();

let stack: TestStack;
let ctx: CliContext;
const sink = { write: () => true } as unknown as NodeJS.WritableStream;
const photos = 'photos-tc';
const kinds = Object.keys(SAMPLE_CLASSES) as SampleClass[];

beforeAll(async () => {
  // a train lock of 15 s, not a minute: the killed run below is taken up again that much sooner;
  // a finished run's gauges linger 15 s, not a minute
  stack = await startTestStack({ TL_EMBED_BATCH_SIZE: '8', TL_MODEL_WEIGHTS: 'random', TL_TRAIN_JOB_LOCK_MS: '15000', TL_TRAIN_GAUGES_LINGER_SECONDS: '15' });
  ctx = await openCliContext(stack.config, sink);
  await ctx.services.store.ensureBucket(photos);
  // the bucket's own split folders: train/ and val/ below the prefix
  for (const kind of kinds) {
    for (let i = 0; i < 16; i++) await ctx.services.store.putObject(photos, `set/train/${kind}/${i}.jpg`, await renderSample(kind, i, 21));
    for (let i = 16; i < 22; i++) await ctx.services.store.putObject(photos, `set/val/${kind}/${i}.jpg`, await renderSample(kind, i, 21));
  }
  const r = await ingestCommand(ctx, `s3://${photos}/set/`, { dataset: 'shapes', wait: true });
  expect(r.status).toMatchObject({ total: 66, embedded: 66, failed: 0 });
});
afterAll(async () => {
  await ctx?.close();
  await stack?.destroy();
});

/** Runs the CLI on a pseudo-terminal (util-linux `script`), typing `answer` once it asks `prompt`. */
function answerOnTerminal(args: string[], prompt: string, answer: string): Promise<{ code: number | null; output: string }> {
  const command = [process.execPath, cliPath, ...args].map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');
  return new Promise((resolve, reject) => {
    const child = spawn('script', ['-qec', command, '/dev/null'], { env: { ...stack.env, AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true' }, stdio: ['pipe', 'pipe', 'inherit'] });
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    let output = '';
    let answered = false;
    child.stdout.on('data', (d: Buffer) => {
      output += d.toString();
      if (!answered && output.includes(prompt)) {
        answered = true;
        child.stdin.write(`${answer}\n`);
      }
    });
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      // as a user reads it: without readline's cursor moves and the terminal's carriage returns
      resolve({ code, output: output.replace(/\x1b\[[0-9;]*[A-Za-z]/g, '').replace(/\r/g, '') });
    });
  });
}

/** A run's job as a follower sees it: the worker holding it, its state, the epoch it reached. */
async function runProgress(runId: string): Promise<{ holder?: string; state?: string; epoch: number }> {
  const job = await ctx.queues.train.getJob(jobIds.train({ runId }));
  return { holder: job?.processedBy, state: await job?.getState(), epoch: (job?.progress as { epoch?: number } | undefined)?.epoch ?? 0 };
}

/** The worker holding a run once it has trained `epochs` epochs (within a minute). */
async function holderAtEpoch(runId: string, epochs: number): Promise<string> {
  let holder: string | undefined;
  await until(`run ${runId} to train ${epochs} epochs`, async () => {
    const p = await runProgress(runId);
    holder = p.epoch >= epochs ? p.holder : undefined;
    return holder !== undefined;
  }, 60, 20);
  return holder!;
}

type Report = { split: { train: number; validation: number; test: number; explicit: boolean }; history: unknown[]; validation: { accuracy: number; confusionMatrix: number[][] }; createdAt: string; runId: string; params: { epochs: number; hiddenUnits: number }; bestEpoch: number };

describe('training runs and classification', () => {
  let first: Report;

  it('uses the bucket’s train/ and val/ folders, and the same seed gives the same report', async () => {
    const seen: number[] = [];
    let scraping = true;
    const scraper = (async () => {
      while (scraping) {
        const m = await scrape(stack.ports.train);
        const e = m.get('tl_train_epoch{dataset="shapes"}');
        if (e !== undefined && e !== seen.at(-1)) seen.push(e);
        await new Promise((r) => setTimeout(r, 10));
      }
    })();
    const a = await trainCommand(ctx, { dataset: 'shapes', wait: true, seed: 5, epochs: 40, batchSize: 8, patience: 0 });
    scraping = false;
    await scraper;
    first = a.report as Report;
    expect(first.split).toEqual({ train: 48, validation: 18, test: 0, explicit: true, heldOut: { validation: { folders: kinds, fraction: [] }, test: { folders: [], fraction: [] } }, conflictsLeftOut: 0 });
    expect(first.validation.accuracy).toBeGreaterThan(0.8);
    // the gauges moved epoch by epoch while it ran
    expect(seen.filter((e) => e > 0 && e < 40).length).toBeGreaterThanOrEqual(2);
    const m = await scrape(stack.ports.train);
    for (const g of ['tl_train_learning_rate', 'tl_train_examples_per_second', 'tl_train_best_validation_loss']) expect(m.get(`${g}{dataset="shapes"}`)).toBeGreaterThan(0);
    // the saved model's validation accuracy (its best epoch's), not the last epoch's
    expect(m.get('tl_train_best_validation_accuracy{dataset="shapes"}')).toBeCloseTo(first.validation.accuracy, 6);
    expect(m.get('tl_train_runs_total{dataset="shapes",outcome="completed"}')).toBe(1);

    const b = (await trainCommand(ctx, { dataset: 'shapes', wait: true, seed: 5, epochs: 40, batchSize: 8, patience: 0 })).report as Report;
    const strip = (r: Report) => ({ ...r, createdAt: '', runId: '', history: (r.history as { examplesPerSecond: number }[]).map(({ examplesPerSecond: _, ...h }) => h) });
    expect(strip(b)).toEqual(strip(first));
    // the finished runs' gauges go once they have lingered (TL_TRAIN_GAUGES_LINGER_SECONDS): a
    // dashboard shows no run in progress; the runs counted stay
    await until('the per-run gauges of the finished runs to go', async () => (await scrape(stack.ports.train)).get('tl_train_epoch{dataset="shapes"}') === undefined, 60, 500);
    const after = await scrape(stack.ports.train);
    expect([...after.keys()].filter((k) => /^tl_train_(loss|accuracy|learning_rate|examples_per_second|best_validation_loss)\{dataset="shapes"/.test(k))).toEqual([]);
    expect(after.get('tl_train_runs_total{dataset="shapes",outcome="completed"}')).toBe(2);
  });

  it('a finished run retried from the queue board returns it as it is, not trained again over it', async () => {
    const job = (await ctx.queues.train.getJob(jobIds.train({ runId: first.runId })))!;
    const { bucket } = stack.config.s3;
    const reportKey = ctx.services.layout.runFile('shapes', first.runId, 'report.json');
    const latestKey = ctx.services.layout.latest('shapes');
    const before = await ctx.services.store.getDocument(ReportDoc, bucket, reportKey);
    const pointer = (await ctx.services.store.getDocument(LatestDoc, bucket, latestKey))!;
    const newer = pointer.runId;
    expect(newer).not.toBe(first.runId); // the second run of the first test is the latest
    expect(pointer.setBy).toBe('train'); // what moved it, as serve's follow loop says
    const retried = async () => {
      await job.retry('completed');
      const deadline = Date.now() + 60_000;
      while ((await job.getState()) !== 'completed') {
        if (Date.now() > deadline) throw new Error('the retried run did not complete');
        await new Promise((r) => setTimeout(r, 100));
      }
      return (await ctx.queues.train.getJob(job.id!))!.returnvalue as unknown;
    };
    const completed = async () => (await scrape(stack.ports.train)).get('tl_train_runs_total{dataset="shapes",outcome="completed"}');
    const counted = await completed();
    expect(await retried()).toMatchObject({ runId: first.runId, validationAccuracy: first.validation.accuracy, replayed: true });
    // not counted again as a completed run (a review: the dashboard's runs panel overcounted)
    expect(await completed()).toBe(counted);
    // the same report, to the millisecond of its making (training again would stamp a new one)
    expect((await ctx.services.store.getDocument(ReportDoc, bucket, reportKey))?.createdAt).toBe(before?.createdAt);
    // and the newer run stays the latest
    expect((await ctx.services.store.getJson<{ runId: string }>(bucket, latestKey))?.runId).toBe(newer);
    // a run whose last write (the pointer) was lost is made the latest when it runs again
    await ctx.services.store.deleteObject(bucket, latestKey);
    await retried();
    expect((await ctx.services.store.getJson<{ runId: string }>(bucket, latestKey))?.runId).toBe(first.runId);
    await ctx.services.store.putJson(bucket, latestKey, { runId: newer, modelPrefix: ctx.services.layout.run('shapes', newer) });
  });

  it('lists the runs with their accuracy', async () => {
    const r = await runCli(['models', '--json'], stack.env);
    expect(r.code).toBe(0);
    const runs = JSON.parse(r.stdout) as { dataset: string; runId: string; validationAccuracy: number; latest: boolean; params: { epochs: number; hiddenUnits: number }; bestEpoch: number }[];
    expect(runs.filter((x) => x.dataset === 'shapes')).toHaveLength(2);
    expect(runs.filter((x) => x.latest)).toHaveLength(1);
    expect(runs[0]!.validationAccuracy).toBeCloseTo(first.validation.accuracy, 6);
    // each with how it was made, to compare runs by (a user's trial could tell runs apart only by their time)
    expect(runs[0]!.params).toMatchObject({ epochs: first.params.epochs, hiddenUnits: first.params.hiddenUnits });
    expect(runs[0]!.bestEpoch).toBe(first.bestEpoch);
    // a softmax head drops nothing, and its settings say so (they said 0.2, the hidden layer's default)
    const softmax = (runs as { params: { hiddenUnits: number; dropout?: number } }[]).filter((x) => x.params.hiddenUnits === 0);
    expect(softmax.length).toBeGreaterThan(0);
    for (const x of softmax) expect(x.params.dropout).toBe(0);
    const table = await runCli(['models'], stack.env);
    // (the best epoch of the most allowed: a user's trial read "epochs 13/100" as epochs run)
    expect(table.stdout).toMatch(/^dataset +run +val acc +test acc +classes +head +best\/max +embeddings$/m);
    expect(table.stdout).toMatch(new RegExp(`^${runs[0]!.dataset}\\s+${runs[0]!.runId}.*\\s${first.params.hiddenUnits > 0 ? `hidden ${first.params.hiddenUnits}` : 'softmax'}\\s+${first.bestEpoch}/${first.params.epochs}\\s`, 'm'));
  });

  it('classifies new images into JSON Lines in the bucket, keeps them out of the training set, and watches for more', async () => {
    for (const [i, kind] of kinds.entries()) await ctx.services.store.putObject(photos, `incoming/${kind}-new.jpg`, await renderSample(kind, 100 + i, 99));
    // a label manifest beside them is no image to classify (it was one more, failed as not an image)
    await ctx.services.store.putObject(photos, 'incoming/labels.csv', Buffer.from('circle-new.jpg,circle\n'));
    const before = await ctx.services.inspector.status('shapes');

    let rounds = 0;
    const dropLater = (async () => {
      // while it watches, a user drops one more image
      while (rounds === 0) await new Promise((r) => setTimeout(r, 50));
      await ctx.services.store.putObject(photos, 'incoming/late-circle.jpg', await renderSample('circle', 200, 99));
    })();
    let said = '';
    const sinkWithCount = { write: (s: string) => ((said += s), s.startsWith('classified') && rounds++, true) } as unknown as NodeJS.WritableStream;
    // (its progress goes to stderr, as a user's terminal shows it)
    const stderr = vi.spyOn(process.stderr, 'write');
    let written = '';
    const results = await classifyCommand({ ...ctx, out: sinkWithCount }, `s3://${photos}/incoming/`, { model: 'shapes', watch: true, intervalSeconds: 1, maxRounds: 2 }).finally(() => {
      written = stderr.mock.calls.map((c) => String(c[0])).join('');
      stderr.mockRestore();
    });
    await dropLater;
    // the second round's progress counts its one new image, not the prefix's four
    const progress = written.split('\n').filter((l) => l.startsWith(`embedding ${classifyDatasetName('shapes')}: `));
    expect(progress.join('\n')).toMatch(/: 1\/1 of the images on their way done \(the prefix: 4\/4 done, 4 embedded /);
    expect(progress.filter((l) => /^[^:]+: \d+\/4 /.test(l))).toEqual([]);
    // after its first round it says it goes on watching
    expect(said).toContain(`watching s3://${photos}/incoming/: listing it every 1 s for new images to classify (Ctrl-C to stop)\n`);

    expect(results[0]).toMatchObject({ classified: 3, failed: 0 });
    expect(results[1]).toMatchObject({ classified: 1, skipped: 3 });
    await ctx.services.store.deleteObject(photos, 'incoming/labels.csv');
    const lines = (await ctx.services.store.getObject(stack.config.s3.bucket, results[0]!.outputKey)).toString().trim().split('\n').map((l) => JSON.parse(l) as { key: string; label: string; probabilities: Record<string, number>; model: { dataset: string } });
    expect(lines).toHaveLength(3);
    const right = lines.filter((l) => l.key.endsWith(`/${l.label}-new.jpg`)).length;
    expect(right).toBeGreaterThanOrEqual(2);
    for (const l of lines) {
      expect(Object.values(l.probabilities).reduce((a, b) => a + b)).toBeCloseTo(1, 5);
      expect(l.model.dataset).toBe('shapes');
    }
    // the same job run again (at-least-once delivery) writes the same file, whatever ran since
    const { tf } = await loadTfRuntime('wasm');
    const { runId } = await resolveModel(ctx, 'shapes');
    const file = async (key: string) => (await ctx.services.store.getObject(stack.config.s3.bucket, key)).toString();
    const firstFile = await file(results[0]!.outputKey);
    const log = { info: () => {}, warn: () => {} } as unknown as JobContext['log'];
    const rerun = await classifyImages(
      { dataset: classifyDatasetName('shapes'), model: 'shapes', runId, embedderId: stack.space.id, bucket: photos, prefix: 'incoming/', outputKey: results[0]!.outputKey },
      { tf, services: ctx.services, bucket: stack.config.s3.bucket },
      { log, progress: async () => {}, attempt: 2, stopping: () => false },
    );
    expect(rerun).toMatchObject({ classified: 3, skipped: 1 });
    expect(await file(results[0]!.outputKey)).toBe(firstFile);

    // classified images are in their own set, never in the training dataset
    expect(await ctx.services.inspector.status('shapes')).toEqual(before);
    expect((await ctx.services.inspector.status(classifyDatasetName('shapes'))).total).toBe(4);
  });

  it("download brings classify's results to this machine: a file, stdout, or every file of a prefix, each once (a user's trial: no command read them)", async () => {
    for (const kind of ['circle', 'square'] as const) await ctx.services.store.putObject(photos, `fetched/${kind}-1.jpg`, await renderSample(kind, 970, 5));
    const classify = await runCli(['classify', `s3://${photos}/fetched/`, '-m', 'shapes'], stack.env);
    expect(classify.code, classify.stderr).toBe(0);
    // classify says how to read them, and that command does
    const { runId } = await resolveModel(ctx, 'shapes');
    const runResults = ctx.services.layout.results('shapes', runId);
    expect(classify.stdout).toContain(`  to read them here: transferline download s3://${stack.config.s3.bucket}/${runResults} ./results\n`);
    const resultsUrl = `s3://${stack.config.s3.bucket}/${ctx.services.layout.results('shapes')}`;
    const keys: string[] = [];
    for await (const o of ctx.services.store.listObjects(stack.config.s3.bucket, ctx.services.layout.results('shapes'))) keys.push(o.key);
    expect(keys.length).toBeGreaterThan(0);
    const inBucket = async (key: string) => (await ctx.services.store.getObject(stack.config.s3.bucket, key)).toString();
    const dir = await mkdtemp(path.join(os.tmpdir(), 'tl-download-'));
    try {
      const said = await runCli(['download', `s3://${stack.config.s3.bucket}/${runResults}`, path.join(dir, 'results')], stack.env);
      expect(said.code, said.stderr).toBe(0);
      const files = await readdir(path.join(dir, 'results'));
      const text = (await Promise.all(files.map((f) => readFile(path.join(dir, 'results', f), 'utf8')))).join('');
      for (const kind of ['circle', 'square']) expect(text).toContain(`fetched/${kind}-1.jpg`);
      // one file: to stdout (nothing else there), and into a folder
      const one = `s3://${stack.config.s3.bucket}/${keys[0]}`;
      const toStdout = await runCli(['download', one, '-'], stack.env);
      expect(toStdout.code, toStdout.stderr).toBe(0);
      expect(toStdout.stdout).toBe(await inBucket(keys[0]!));
      const toFolder = await runCli(['download', one, `${dir}/`], stack.env);
      expect(toFolder.stdout).toMatch(/^downloaded s3:\/\/\S+ to \S+ \(\d+ (bytes|KB)\)\n$/);
      expect(await readFile(path.join(dir, path.basename(keys[0]!)), 'utf8')).toBe(await inBucket(keys[0]!));
      // the whole prefix, at each file's path under it; again: nothing written twice
      const all = await runCli(['download', resultsUrl, path.join(dir, 'all')], stack.env);
      expect(all.code, all.stderr).toBe(0);
      expect(all.stdout).toContain(`downloaded ${keys.length} file${keys.length === 1 ? '' : 's'} (`);
      for (const key of keys) expect(await readFile(path.join(dir, 'all', key.slice(ctx.services.layout.results('shapes').length)), 'utf8')).toBe(await inBucket(key));
      const again = await runCli(['download', resultsUrl.replace(/\/$/, ''), path.join(dir, 'all')], stack.env);
      expect(again.stdout).toContain(`downloaded 0 files (0 bytes) from ${resultsUrl} to ${path.join(dir, 'all')}/; ${keys.length} there already with the same bytes, left as they are\n`);
      // what it cannot do: exit 1, saying why
      const none = await runCli(['download', `s3://${stack.config.s3.bucket}/results/nothing-here/`, dir], stack.env);
      expect({ code: none.code, stderr: none.stderr }).toEqual({ code: 1, stderr: `transferline: no objects under s3://${stack.config.s3.bucket}/results/nothing-here/\n` });
      const many = await runCli(['download', resultsUrl, '-'], stack.env);
      expect(many.code).toBe(1);
      expect(many.stderr).toContain(`- writes one object to stdout, and ${resultsUrl} holds ${keys.length}`);
      // a key that is also the folder of others is skipped and named, and a file where the folder
      // would go is refused: said, where both ended in a raw ENOTDIR or EISDIR part-way (a review)
      for (const [key, body] of [['dlx/a', 'a'], ['dlx/a/b', 'b'], ['dlx/c', 'c']] as const) await ctx.services.store.putObject(photos, key, body);
      const mixed = await runCli(['download', `s3://${photos}/dlx/`, path.join(dir, 'mixed')], stack.env);
      expect(mixed.code, mixed.stderr).toBe(0);
      expect(mixed.stdout).toContain(`downloaded 2 files (2 bytes) from s3://${photos}/dlx/ to ${path.join(dir, 'mixed')}/\n`);
      expect(mixed.stdout).toContain('skipped 1 object whose key can be no file under the folder: a .. or empty part, or the folder of other keys too ("dlx/a")\n');
      expect(await readFile(path.join(dir, 'mixed', 'a', 'b'), 'utf8')).toBe('b');
      const onFile = await runCli(['download', `s3://${photos}/dlx/`, path.join(dir, 'mixed', 'c')], stack.env);
      expect(onFile.code).toBe(1);
      expect(onFile.stderr).toBe(`transferline: ${path.join(dir, 'mixed', 'c')} is a file: name a folder to write the 3 objects under s3://${photos}/dlx/ in\n`);
      // a folder in the way that is a link out of the folder: nothing is written through it (a security trial wrote outside)
      const outside = path.join(dir, 'outside');
      await mkdir(outside);
      await mkdir(path.join(dir, 'linked'));
      await symlink(outside, path.join(dir, 'linked', 'a'));
      // (and a key two folders under the link: none of them is made outside either, a review)
      for (const [key, body] of [['dlx2/a/b', 'b'], ['dlx2/a/x/y', 'y'], ['dlx2/c', 'c']] as const) await ctx.services.store.putObject(photos, key, body);
      const linked = await runCli(['download', `s3://${photos}/dlx2/`, path.join(dir, 'linked')], stack.env);
      expect(linked.code, linked.stderr).toBe(0);
      expect(linked.stdout).toContain(`downloaded 1 file (1 bytes) from s3://${photos}/dlx2/ to ${path.join(dir, 'linked')}/\n`);
      expect(linked.stdout).toContain(`skipped 2 objects whose folder in ${path.join(dir, 'linked')} is a link that leads out of it ("dlx2/a/b", "dlx2/a/x/y"): nothing is written through it\n`);
      expect(await readdir(outside)).toEqual([]);
      expect(await readFile(path.join(dir, 'linked', 'c'), 'utf8')).toBe('c');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('trains two classes whose validation holds one of them (the val/ folder is of one, the other has one image to hold out): no threshold from it, and the run stays readable', async () => {
    // A one-class validation set has no ROC curve (NaN, which JSON wrote as null and the schema
    // refused) and no threshold worth the name (any cutoff "separates" one class): the run decides
    // by the most probable label.
    // (a class with more images outside the val/ folder has its validation cut from them)
    for (let i = 0; i < 6; i++) await ctx.services.store.putObject(photos, `duo/train/circle/${i}.jpg`, await renderSample('circle', 300 + i, 5));
    await ctx.services.store.putObject(photos, 'duo/train/square/0.jpg', await renderSample('square', 300, 5));
    for (let i = 6; i < 9; i++) await ctx.services.store.putObject(photos, `duo/val/circle/${i}.jpg`, await renderSample('circle', 300 + i, 5));
    // and a copy of a val/ image in train/: held out, and said (a trial: training lost it without a word)
    await ctx.services.store.putObject(photos, 'duo/train/circle/copy-of-6.jpg', await renderSample('circle', 306, 5));
    const ingest = await runCli(['ingest', `s3://${photos}/duo/`, '-d', 'duo'], stack.env);
    expect(ingest.code).toBe(0);
    const train = await runCli(['train', '-d', 'duo', '--epochs', '5', '--run-id', 'one-class-val'], stack.env);
    expect(train.stderr).not.toMatch(/transferline:/);
    expect(train.code).toBe(0);
    expect(train.stdout).not.toMatch(/threshold chosen on validation/);
    expect(train.stdout).toContain('  no threshold: validation held only "circle", so classify and serve take the most probable label');
    // square has no validation image: nothing measures its recall there (n/a, not 0.000)
    expect(train.stdout).toMatch(/^ {2}square +(n\/a|\d\.\d{3}) {2} {2}n\/a {2} {2}n\/a {2}0$/m);
    expect(train.stdout).toContain('  n/a: "square" has no image in validation, so its recall and F1 are not measured (a label with fewer than 2 images outside the val/ and test/ folders: none could be held out for validation)\n');
    expect(train.stdout).toContain('  split: validation from the given split for circle, none for square; no test split (none given: no test/ folder, nor test rows in a label manifest)\n');
    expect(train.stdout).toContain(`  note: 1 image held out in val/ or test/ (or by a manifest's split) also has a copy (the same bytes) where it would be trained on (train/, or no split): every copy is held out, so it is not trained on; delete the copy you did not mean\n    s3://${photos}/duo/val/circle/6.jpg = s3://${photos}/duo/train/circle/copy-of-6.jpg\n`);
    const report = await ctx.services.store.getDocument(ReportDoc, stack.config.s3.bucket, ctx.services.layout.runFile('duo', 'one-class-val', 'report.json'));
    expect(report?.split).toMatchObject({ copiesHeldOut: 1, heldOutCopies: [[`s3://${photos}/duo/val/circle/6.jpg`, `s3://${photos}/duo/train/circle/copy-of-6.jpg`]] });
    expect(report?.validation.binary).toBeUndefined();
    const models = await runCli(['models', '--json'], stack.env);
    expect(models.code).toBe(0);
    expect((JSON.parse(models.stdout) as { dataset: string; runId: string }[]).some((m) => m.dataset === 'duo' && m.runId === 'one-class-val')).toBe(true);
  });

  it('trains a bucket that ships train/ and test/ folders only: validation is cut from train/, and train says so (a review: it failed, too-small)', async () => {
    for (const kind of ['circle', 'square'] as const) {
      for (let i = 0; i < 8; i++) await ctx.services.store.putObject(photos, `tt/train/${kind}/${i}.jpg`, await renderSample(kind, 400 + i, 5));
      for (let i = 8; i < 10; i++) await ctx.services.store.putObject(photos, `tt/test/${kind}/${i}.jpg`, await renderSample(kind, 400 + i, 5));
    }
    expect((await runCli(['ingest', `s3://${photos}/tt/`, '-d', 'tt'], stack.env)).code).toBe(0);
    const train = await runCli(['train', '-d', 'tt', '--epochs', '5', '--run-id', 'tt-1'], stack.env);
    expect(train.code, train.stdout + train.stderr).toBe(0);
    expect(train.stdout).toContain('(20 images: 12 train, 4 validation, 4 test; ');
    expect(train.stdout).toContain('  split: validation cut by --validation-fraction; test from the given split\n');
    const report = await ctx.services.store.getDocument(ReportDoc, stack.config.s3.bucket, ctx.services.layout.runFile('tt', 'tt-1', 'report.json'));
    expect(report?.split.heldOut).toEqual({ validation: { folders: [], fraction: ['circle', 'square'] }, test: { folders: ['circle', 'square'], fraction: [] } });
    // a run whose save was cut short before its report: its id is named as taken, with what to do, not "see models" (which lists none of it)
    await ctx.services.store.deleteObject(stack.config.s3.bucket, ctx.services.layout.runFile('tt', 'tt-1', 'report.json'));
    const again = await runCli(['train', '-d', 'tt', '--run-id', 'tt-1'], stack.env);
    expect(again.code).toBe(2);
    expect(again.stderr).toContain(`transferline: run tt-1 exists already: its files are in s3://${stack.config.s3.bucket}/${ctx.services.layout.run('tt', 'tt-1')} without a report.json (a save cut short), which "transferline models" does not list; transferline delete run tt@tt-1 deletes them: choose another --run-id`);
    expect((await runCli(['delete', 'run', 'tt@tt-1', '--yes'], stack.env)).code).toBe(0);
  });

  /**
   * A dataset of 3 new circles and 3 new squares ingested with the preprocess queue paused, so that
   * a train command of it waits for its images while `run` goes on; resumed after, whatever `run` did.
   */
  async function heldBack(dataset: string, seed: number, run: (resume: () => Promise<void>) => Promise<void>): Promise<void> {
    for (const kind of ['circle', 'square'] as const) for (let i = 0; i < 3; i++) await ctx.services.store.putObject(photos, `${dataset}/train/${kind}/${i}.jpg`, await renderSample(kind, seed + i, 5));
    const preprocess = ctx.queues.preprocess;
    await preprocess.pause();
    try {
      expect((await runCli(['ingest', `s3://${photos}/${dataset}/`, '-d', dataset, '--no-wait'], stack.env)).code).toBe(0);
      await run(() => preprocess.resume());
    } finally {
      await preprocess.resume();
    }
  }

  it('two train commands given the same --run-id at once: one run, and the other says the id was taken, not the run of another dataset (a review)', async () => {
    // the first command looks at the id, then waits for its images (held back), while the second queues the same id
    await heldBack('race', 500, async (resume) => {
      let said = '';
      const first = runCli(['train', '-d', 'race', '--run-id', 'race-1', '--epochs', '2'], stack.env, 120_000, { onOutput: (c) => (said += c) });
      await until('the first command to wait for its images', () => said.includes('are not embedded yet; waiting'), 60);
      const second = await runCli(['train', '-d', 'tt', '--run-id', 'race-1', '--epochs', '2'], stack.env);
      expect(second.code, second.stderr).toBe(0);
      await resume();
      const r = await first;
      // (before: exit 0, following and reporting tt's run as its own)
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(/\ntransferline: run id race-1 was taken meanwhile by another train command \(of dataset tt\): nothing queued; choose another --run-id, or leave it out for a new one\n$/);
      expect(r.stdout).not.toContain('model: s3://');
    });
  });

  it('two train commands asking for the same run (--run-id, dataset, settings) with another --stall-timeout each: one run, both follow it', async () => {
    await heldBack('stalls', 600, async (resume) => {
      const said = ['', ''];
      const commands = [120, 90].map((stall, i) =>
        runCli(['train', '-d', 'stalls', '--run-id', 'stalls-1', '--epochs', '2', '--stall-timeout', String(stall)], stack.env, 120_000, { onOutput: (c) => (said[i] += c) }),
      );
      await until('both commands to wait for the images', () => said.every((s) => s.includes('are not embedded yet; waiting')), 60);
      await resume();
      const [a, b] = (await Promise.all(commands)) as [CliRun, CliRun];
      // (before: the one that queued second exited 2, "run id stalls-1 was taken meanwhile by another train command (of stalls, with other settings)")
      for (const r of [a, b]) {
        expect(r.code, r.stderr).toBe(0);
        expect(r.stdout).toContain('model: s3://');
      }
      // the one run: both name its model
      const model = (out: string) => out.match(/model: (s3:\/\/\S+)/)?.[1];
      expect(model(a.stdout)).toContain('/stalls-1/');
      expect(model(b.stdout)).toBe(model(a.stdout));
    });
  });

  it('a run stopped early shows the epochs it ran, against the total it was shown with', async () => {
    const train = await runCli(['train', '-d', 'duo', '--epochs', '300', '--patience', '1', '--run-id', 'early'], stack.env);
    expect(train.code).toBe(0);
    const report = (await ctx.services.store.getDocument(ReportDoc, stack.config.s3.bucket, ctx.services.layout.runFile('duo', 'early', 'report.json')))!;
    expect(report.stoppedEarly).toBe(true);
    const ran = report.history.length;
    expect(ran).toBeLessThan(300);
    // the progress line (a plain line when stderr is not a terminal)
    expect(train.stderr).toContain(`training duo: ${ran}/300 saving (stopped early: ${ran} of 300 epochs, validation loss no longer improving)`);
    expect(train.stderr).not.toContain('300/300');
    // the total does not change mid-run (it used to read 1/300 … and then 5/5)
    const totals = new Set([...train.stderr.matchAll(/^training duo: \d+\/(\d+) /gm)].map((m) => m[1]));
    expect([...totals]).toEqual(['300']);
  });

  it('says how many images it left out because their bytes are filed under two labels', async () => {
    const bytes = await ctx.services.store.getObject(photos, 'duo/train/circle/0.jpg');
    await ctx.services.store.putObject(photos, 'duo/train/square/copy-of-circle-0.jpg', bytes);
    // and a plain duplicate: the same bytes twice under one label
    await ctx.services.store.putObject(photos, 'duo/train/circle/copy-of-circle-1.jpg', await ctx.services.store.getObject(photos, 'duo/train/circle/1.jpg'));
    expect((await runCli(['ingest', `s3://${photos}/duo/`, '-d', 'duo'], stack.env)).code).toBe(0);
    const train = await runCli(['train', '-d', 'duo', '--epochs', '3', '--run-id', 'conflict'], stack.env);
    expect(train.code).toBe(0);
    expect(train.stdout).toContain('left out: 1 image whose bytes are filed under more than one label (every copy; move the copies to their label with transferline relabel); copies under one label count once');
    // named, each copy with the label it is filed under, so the user knows what to move
    expect(train.stdout).toContain(`\n    s3://${photos}/duo/train/circle/0.jpg (circle), s3://${photos}/duo/train/square/copy-of-circle-0.jpg (square)\n`);
    const report = (await ctx.services.store.getDocument(ReportDoc, stack.config.s3.bucket, ctx.services.layout.runFile('duo', 'conflict', 'report.json')))!;
    expect(report.split.conflictsLeftOut).toBe(1);
    expect(report.split.conflicting).toEqual([
      [
        { object: `s3://${photos}/duo/train/circle/0.jpg`, label: 'circle' },
        { object: `s3://${photos}/duo/train/square/copy-of-circle-0.jpg`, label: 'square' },
      ],
    ]);
    expect(report.split.conflictsLabelledBy).toEqual({ manifests: [], folders: true });
    // the images trained on, and why fewer than embedded: both copies of the conflicting bytes out,
    // the duplicate once, and the copy of a val/ image in train/ (the one-class-val test's) once
    const distinct = report.split.train + report.split.validation + report.split.test;
    expect(report.coverage.embedded - distinct).toBe(4);
    // the distinct bytes are those used and the conflicting ones (one distinct image, left out)
    expect(train.stdout).toContain(`  ${report.coverage.embedded} embedded images, ${distinct + 1} distinct (copies of the same bytes count once), ${distinct} used: bytes filed under two labels are left out (below)\n`);
  });

  it('says of a label that looks like another misspelt, at ingest and at train, and of a class too small to learn', async () => {
    // (a user's trial: a folder "natrue" beside "nature" trained as a class of its own, unsaid)
    for (const kind of ['circle', 'square'] as const) for (let i = 0; i < 8; i++) await ctx.services.store.putObject(photos, `typo/${kind}/${i}.jpg`, await renderSample(kind, 800 + i, 43));
    await ctx.services.store.putObject(photos, 'typo/sqaure/0.jpg', await renderSample('square', 900, 43));
    const note = '  note: labels sqaure (1 image) and square (8) differ by two letters swapped: a misspelt label? Its images make a class of their own; move them into the right folder and ingest again (nothing is embedded again), or move them with transferline relabel; for images a label manifest labels, mend their rows there and ingest it again\n';
    const ingest = await runCli(['ingest', `s3://${photos}/typo/`, '-d', 'typo'], stack.env);
    expect(ingest.code).toBe(0);
    expect(ingest.stdout).toContain(note);
    const train = await runCli(['train', '-d', 'typo', '--epochs', '3', '--run-id', 'typo'], stack.env);
    expect(train.code).toBe(0);
    expect(train.stdout).toContain(note);
    expect(train.stdout).toMatch(/^ {2}note: sqaure has 1 training image, the other classes \d+( to \d+)?: too few to learn it, and --class-weights balanced makes it count \d+\.\d times as much as an image of a class of average size$/m);

    // up --demo's training, on these: nothing changed since the latest run, so not trained again
    // (every npm start trained another identical demo run); a change, and it trains
    const quiet = { write: () => true } as unknown as NodeJS.WritableStream;
    const said: string[] = [];
    const url = `s3://${photos}/typo/`;
    const same = await ingestCommand({ ...ctx, out: quiet }, url, { dataset: 'typo', wait: true });
    await demoTrain({ ...ctx, out: quiet }, { dataset: 'typo', url, counts: same.counts }, (l) => said.push(l));
    expect(said).toEqual([expect.stringMatching(new RegExp(`^\\ndemo: nothing changed in ${url} since run typo \\(validation accuracy \\d+\\.\\d%\\), the latest of typo: not trained again \\(another run: npx transferline train --dataset typo\\)$`))]);
    expect((await latestRun(ctx, 'typo'))?.runId).toBe('typo');
    await ctx.services.store.putObject(photos, 'typo/circle/8.jpg', await renderSample('circle', 808, 43));
    const changed = await ingestCommand({ ...ctx, out: quiet }, url, { dataset: 'typo', wait: true });
    await demoTrain({ ...ctx, out: quiet }, { dataset: 'typo', url, counts: changed.counts }, (l) => said.push(l));
    expect(said).toHaveLength(1);
    expect((await latestRun(ctx, 'typo'))?.runId).not.toBe('typo');
  });

  it('refuses bad training settings with exit 2 before it waits or enqueues anything', async () => {
    const r = await runCli(['train', '-d', 'shapes', '--validation-fraction', '0.6', '--run-id', 'never'], stack.env);
    expect(r.code).toBe(2);
    // named as the user gave it: the option, not the field of the job; as it is parsed, by the job's own bounds
    expect(r.stderr.split('\n')[0]).toBe("error: option '--validation-fraction <x>' argument '0.6' is invalid. --validation-fraction must be a number, at most 0.5");
    const several = await runCli(['train', '-d', 'shapes', '--epochs', '100000', '--learning-rate', '20', '--run-id', 'never'], stack.env);
    expect({ code: several.code, stderr: several.stderr.split('\n')[0] }).toEqual({ code: 2, stderr: "error: option '--epochs <n>' argument '100000' is invalid. --epochs must be a whole number, at most 10000" });
    // the command's own check, for a caller that is not the CLI's parser (up's demo): every bad setting named, with what was given
    const direct = await trainCommand({ ...ctx, out: { write: () => true } as unknown as NodeJS.WritableStream }, { dataset: 'shapes', runId: 'never', epochs: 100000, learningRate: 20, wait: false }).catch((err: unknown) => err);
    expect(direct).toBeInstanceOf(CliExit);
    expect({ code: (direct as CliExit).code, message: (direct as CliExit).message }).toEqual({ code: EXIT.usage, message: 'transferline: bad training settings: --epochs: at most 10000 (got 100000); --learning-rate: at most 10 (got 20)' });
    // dropout with no hidden layer to apply it to
    const dropout = await runCli(['train', '-d', 'shapes', '--dropout', '0.5', '--run-id', 'never'], stack.env);
    expect({ code: dropout.code, stderr: dropout.stderr }).toEqual({ code: 2, stderr: 'transferline: bad training settings: --dropout: the softmax head has no hidden layer to drop units of (add --hidden-units N, or leave --dropout out)\n' });
    expect(await ctx.queues.train.getJob(jobIds.train({ runId: 'never' }))).toBeUndefined();
    // --partial with nothing embedded yet: said, rather than a run queued to fail (no-data) and counted as a failed run
    await ctx.services.datasets.putItem('nothing-yet', `${photos}/nothing-yet/a/1.jpg`, { label: 'a', etag: 'e', space: stack.space.id, state: 'pending' });
    await ctx.services.redis.hset(ctx.services.keys.datasetMeta('nothing-yet'), 'space', stack.space.id);
    const empty = await runCli(['train', '-d', 'nothing-yet', '--partial', '--run-id', 'never'], stack.env);
    expect({ code: empty.code, stderr: empty.stderr }).toEqual({ code: 1, stderr: 'transferline: --partial trains on the embedded images of nothing-yet, and none of its 1 is embedded yet (1 on their way, 0 failed): wait for them (transferline status -d nothing-yet), or train without --partial to wait here\n' });
    expect(await ctx.queues.train.getJob(jobIds.train({ runId: 'never' }))).toBeUndefined();
    await ctx.services.redis.del(ctx.services.keys.datasetItems('nothing-yet'), ctx.services.keys.datasetMeta('nothing-yet'));
    await ctx.services.redis.srem(ctx.services.keys.datasets(), 'nothing-yet');
    // a run id that would name another folder of the bucket (`..`), or none, is refused before anything is asked of S3
    for (const id of ['..', '.', '../x', 'x/y']) {
      const bad = await runCli(['train', '-d', 'shapes', '--run-id', id], stack.env);
      expect({ id, code: bad.code, stderr: bad.stderr }).toEqual({ id, code: 2, stderr: `transferline: bad training settings: --run-id: letters, digits, _, . and - (at most 80), starting with a letter or digit (got ${id})\n` });
    }
    // a run id another dataset's run holds is refused, saying whose
    const taken = await runCli(['train', '-d', 'shapes', '--run-id', 'one-class-val'], stack.env);
    expect(taken.code).toBe(2); // an option refused, as the bad settings above
    expect(taken.stderr).toMatch(/run id one-class-val is taken by a run of dataset duo/);
    // following a run while naming another dataset is refused, not answered with the other dataset's run
    const other = await runCli(['train', '--follow', 'one-class-val', '-d', 'shapes'], stack.env);
    expect(other.code).toBe(2);
    expect(other.stderr).toMatch(/run one-class-val trains dataset duo, not shapes/);
    expect(other.stdout).not.toMatch(/validation accuracy/);
    const same = await runCli(['train', '--follow', 'one-class-val', '-d', 'duo'], stack.env);
    expect(same.stderr).toBe('');
    expect(same.stdout).toMatch(/^run one-class-val: validation accuracy/m);
  });

  it('classify waits for the images an interrupted round left on their way, instead of leaving them out', async () => {
    for (const [i, kind] of kinds.entries()) await ctx.services.store.putObject(photos, `later/${kind}.jpg`, await renderSample(kind, 400 + i, 31));
    const model = await resolveModel(ctx, 'shapes');
    stack.supervisor.signal('embed', 1, 'SIGSTOP');
    let classifying: Promise<unknown> | undefined;
    try {
      // the round that was cut short: its images were enqueued, then Ctrl-C
      const first = await ingestPrefix({ bucket: photos, prefix: 'later/', dataset: classifyDatasetName('shapes'), space: model.space, labels: 'none' }, { services: ctx.services, queues: ctx.queues });
      expect(first.enqueued).toBe(kinds.length);
      classifying = classifyCommand(ctx, `s3://${photos}/later/`, { model: 'shapes', watch: false, intervalSeconds: 1 });
      await new Promise((r) => setTimeout(r, 1_500));
    } finally {
      stack.supervisor.signal('embed', 1, 'SIGCONT');
    }
    const [round] = (await classifying) as Awaited<ReturnType<typeof classifyCommand>>;
    expect(round).toMatchObject({ classified: kinds.length, failed: 0 });

    // an image of another prefix classified with the same model has lost its job: not this prefix's to wait for
    await ctx.services.store.putObject(photos, 'elsewhere/x.jpg', await renderSample('circle', 500, 31));
    stack.supervisor.signal('preprocess', 1, 'SIGSTOP');
    try {
      await ingestPrefix({ bucket: photos, prefix: 'elsewhere/', dataset: classifyDatasetName('shapes'), space: model.space, labels: 'none' }, { services: ctx.services, queues: ctx.queues });
      for (const j of await ctx.queues.preprocess.getJobs(['waiting', 'prioritized', 'delayed'])) if ((j.data as { key: string }).key === 'elsewhere/x.jpg') await j.remove();
    } finally {
      stack.supervisor.signal('preprocess', 1, 'SIGCONT');
    }
    expect((await ctx.services.inspector.status(classifyDatasetName('shapes'))).orphaned).toBe(1);
    // what brings it back: classify again (its dataset cannot be ingested into)
    const orphanSaid = await runCli(['status', '-d', classifyDatasetName('shapes')], stack.env);
    expect(orphanSaid.stdout).toMatch(/, 1 orphaned \(their job was lost: run the same classify again\)/);
    let said = '';
    const out = { write: (s: string) => ((said += s), true) } as unknown as NodeJS.WritableStream;
    const [again] = await classifyCommand({ ...ctx, out }, `s3://${photos}/later/`, { model: 'shapes', watch: false, intervalSeconds: 1, stallSeconds: 2 });
    // done by the round above: no empty file, and it says where their labels are
    expect(again).toMatchObject({ classified: 0, skipped: kinds.length, failed: 0, skippedFailed: 0, earlierFiles: [round!.outputKey] });
    expect(said).toMatch(new RegExp(`, ${kinds.length} already done: nothing new to write$`, 'm'));
    expect(said).toContain(`  the ${kinds.length} already done are labelled in: s3://${stack.config.s3.bucket}/${round!.outputKey}\n`);
    await expect(ctx.services.store.getObject(stack.config.s3.bucket, again!.outputKey)).rejects.toThrow();
    expect((await ctx.services.store.getObject(stack.config.s3.bucket, round!.outputKey)).toString().trim().split('\n')).toHaveLength(kinds.length);

    // old results pruned: the file that held those labels is deleted. The next run labels them
    // again (not "already done", pointing at a file that is gone), and says why
    await ctx.services.store.deleteObject(stack.config.s3.bucket, round!.outputKey);
    said = '';
    const [redone] = await classifyCommand({ ...ctx, out }, `s3://${photos}/later/`, { model: 'shapes', watch: false, intervalSeconds: 1, stallSeconds: 2 });
    expect(redone).toMatchObject({ classified: kinds.length, skipped: 0, failed: 0, again: kinds.length, filesGone: [round!.outputKey] });
    expect(said).toContain(`  ${kinds.length} of them had been labelled in results file(s) deleted since (s3://${stack.config.s3.bucket}/${round!.outputKey}): labelled again in this one\n`);
    const lines = (await ctx.services.store.getObject(stack.config.s3.bucket, redone!.outputKey)).toString().trim().split('\n').map((l) => JSON.parse(l) as { key: string; label?: string });
    expect(lines.map((l) => l.key).sort()).toEqual(kinds.map((k) => `s3://${photos}/later/${k}.jpg`).sort());
    expect(lines.every((l) => l.label)).toBe(true);
    // and the run after points at the new file
    const [after] = await classifyCommand(ctx, `s3://${photos}/later/`, { model: 'shapes', watch: false, intervalSeconds: 1, stallSeconds: 2 });
    expect(after).toMatchObject({ classified: 0, skipped: kinds.length, earlierFiles: [redone!.outputKey] });
    expect(after!.again).toBeUndefined();
  });

  it("classifies in the model's own embedding space, whatever the CLI's environment says", async () => {
    // a laptop whose settings differ from the workers': the model and the cluster decide, not this environment
    const r = await runCli(['classify', `s3://${photos}/incoming/`, '--model', 'shapes'], { ...stack.env, TL_RESIZE: 'crop', TL_MODEL_WEIGHTS: 'imagenet' });
    expect(r.stderr).not.toMatch(/transferline:/);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`embedding space ${stack.space.id.replace(/\./g, '\\.')}`));
    expect(r.stdout).toMatch(/classified \d+ image\(s\)/);
  });

  it("a run asked for from a shell with another TL_BUCKET, or another TL_QUEUE_PREFIX, is refused before anything is queued, naming the setting (two teams on one Redis and bucket: such a shell used the other's data)", async () => {
    const bucket = stack.config.s3.bucket;
    const r = await runCli(['train', '-d', 'shapes', '--epochs', '1', '--run-id', 'other-shell', '--no-promote'], { ...stack.env, TL_BUCKET: 'not-the-workers', TL_PREFIX: 'not/theirs/' });
    expect({ code: r.code, stdout: r.stdout }).toEqual({ code: 1, stdout: '' });
    expect(r.stderr).toMatch(new RegExp(`^transferline: this deployment \\(TL_QUEUE_PREFIX=${stack.config.redis.prefix} on its Redis\\) keeps its embeddings and models in s3://${bucket}/${stack.config.s3.prefix}, as recorded by its first process \\(`));
    expect(r.stderr).toContain(`; this shell has s3://not-the-workers/not/theirs/, which is not this deployment's: set TL_BUCKET=${bucket} and `);
    expect(r.stderr.endsWith(' Nothing was done.\n')).toBe(true);
    expect(await ctx.queues.train.getJob(jobIds.train({ runId: 'other-shell' }))).toBeUndefined();
    // a shell with another TL_QUEUE_PREFIX sees none of the workers' datasets: told the setting, not "Redis lost its data"
    const wrongPrefix = new RegExp(
      `^transferline: s3://${bucket}/${stack.config.s3.prefix} is where the deployment under TL_QUEUE_PREFIX=${stack.config.redis.prefix} on this Redis keeps its embeddings and models \\(recorded by its first process, [^)]+\\), and this shell's TL_QUEUE_PREFIX=not-the-workers has no deployment recorded: set TL_QUEUE_PREFIX=${stack.config.redis.prefix} as its workers have it, or another TL_BUCKET or TL_PREFIX for a deployment of its own\\. Nothing was done\\.\n$`,
    );
    for (const args of [['train', '-d', 'shapes', '--epochs', '1'], ['classify', `s3://${bucket}/nowhere/`, '-m', 'shapes']]) {
      const other = await runCli(args, { ...stack.env, TL_QUEUE_PREFIX: 'not-the-workers' });
      expect({ args, code: other.code, stderr: other.stderr }).toEqual({ args, code: 1, stderr: expect.stringMatching(wrongPrefix) });
    }
  });

  it('a round of --watch that finds nothing new writes no results file', async () => {
    const quiet = { write: () => true } as unknown as NodeJS.WritableStream;
    const listed = async () => {
      let n = 0;
      // the run's results folder: a results key without its file name
      const folder = ctx.services.layout.classifyResults('shapes', (await resolveModel(ctx, 'shapes')).runId, '').replace(/\.jsonl$/, '');
      for await (const _ of ctx.services.store.listObjects(stack.config.s3.bucket, folder)) n++;
      return n;
    };
    const before = await listed();
    const results = await classifyCommand({ ...ctx, out: quiet }, `s3://${photos}/incoming/`, { model: 'shapes', watch: true, intervalSeconds: 1, maxRounds: 3 });
    expect(results).toHaveLength(1); // the first round runs; the next two found nothing new
    // and the first found every image labelled by an earlier command: no (empty) file, it names theirs
    expect(results[0]).toMatchObject({ classified: 0, failed: 0 });
    expect(results[0]!.earlierFiles!.length).toBeGreaterThan(0);
    expect(await listed()).toBe(before);
    // a prefix with nothing under it (mistyped, say) is said so, not "nothing new", and fails as
    // ingest's does (a script's next step would read no results)
    const empty = await runCli(['classify', `s3://${photos}/no-such-prefix/`, '--model', 'shapes'], stack.env);
    expect({ code: empty.code, stderr: empty.stderr }).toEqual({ code: 1, stderr: `transferline: nothing to classify under s3://${photos}/no-such-prefix/: no objects there (is the prefix right?)\n` });
    expect(empty.stdout).not.toMatch(/classified/);
    // one object named (a label manifest, meant for ingest): said so
    await ctx.services.store.putObject(photos, 'lists/new.csv', Buffer.from('a.jpg,circle\n'));
    const object = await runCli(['classify', `s3://${photos}/lists/new.csv`, '--model', 'shapes'], stack.env);
    expect({ code: object.code, stderr: object.stderr }).toEqual({
      code: 1,
      stderr: `transferline: nothing to classify under s3://${photos}/lists/new.csv/: no objects there; s3://${photos}/lists/new.csv is an object: classify takes a prefix (a label manifest is for ingest)\n`,
    });
  });

  it('ingest --watch speaks only for a round that found something new', async () => {
    for (const kind of kinds) for (let i = 0; i < 2; i++) await ctx.services.store.putObject(photos, `watched/${kind}/${i}.jpg`, await renderSample(kind, 600 + i, 41));
    const late = await renderSample('circle', 700, 41);
    let text = '';
    let dropped: Promise<unknown> | undefined;
    const out = {
      write: (chunk: string) => {
        text += chunk;
        // a user drops one more image while the prefix is watched (one PUT, well within the interval)
        if (!dropped && /^watching /m.test(text)) dropped = ctx.services.store.putObject(photos, `watched/circle/late.jpg`, late);
        return true;
      },
    } as unknown as NodeJS.WritableStream;
    const rounds: IngestOutcome[] = [];
    await watchIngest({ ...ctx, out }, `s3://${photos}/watched/`, { dataset: 'watched', wait: true, intervalSeconds: 2, maxRounds: 4, onRound: (r) => rounds.push(r) });
    await dropped;
    expect(rounds.map((r) => r.counts.enqueued)).toEqual([2 * kinds.length, 1, 0, 0]);
    expect(rounds.map((r) => r.quiet ?? false)).toEqual([false, false, true, true]);
    expect(rounds[1]!.status).toMatchObject({ total: 2 * kinds.length + 1, embedded: 2 * kinds.length + 1 });
    // two rounds reported (the first and the one with the new image), each with its summary; the quiet ones said nothing
    expect(text.match(/^ingest s3:\/\/photos-tc\/watched\/ → dataset watched:/gm)).toHaveLength(2);
    expect(text.match(/^dataset watched: /gm)).toHaveLength(2);
    expect(text.match(/^watching /gm)).toHaveLength(1);
    // which embedding space, said by those two rounds only
    expect(text.match(/^embedding space /gm)).toHaveLength(2);
  });

  it('ingest --watch stops, exit 5, when its dataset is deleted, rather than ingest it all again (a review: the next round made it anew)', async () => {
    for (const kind of kinds) await ctx.services.store.putObject(photos, `gonewatch/${kind}/0.jpg`, await renderSample(kind, 650, 43));
    const quiet = { write: () => true } as unknown as NodeJS.WritableStream;
    let deleted: Promise<boolean> | undefined;
    const out = {
      write: (chunk: string) => {
        if (!deleted && /^watching /m.test(chunk)) deleted = deleteDatasetCommand({ ...ctx, out: quiet }, 'gonewatch', { yes: true });
        return true;
      },
    } as unknown as NodeJS.WritableStream;
    const rounds: IngestOutcome[] = [];
    const watch = watchIngest({ ...ctx, out }, `s3://${photos}/gonewatch/`, { dataset: 'gonewatch', wait: true, intervalSeconds: 1, maxRounds: 5, onRound: (r) => rounds.push(r) });
    await expect(watch).rejects.toMatchObject({ code: EXIT.vanished, message: expect.stringContaining('dataset gonewatch was deleted (or Redis lost its data) since it was last ingested by this command: stopped before writing to it; this watch stops') });
    expect(await deleted).toBe(true);
    expect(rounds).toHaveLength(1);
    expect(await ctx.services.datasets.exists('gonewatch')).toBe(false);
  });

  it.each([1, 3])('an ingest whose dataset is deleted while it lists (after page %i of 3) stops, rather than make a dataset of the rest alone (a review)', async (at) => {
    const name = `paged${at}`;
    for (const kind of kinds) for (let i = 0; i < 2; i++) await ctx.services.store.putObject(photos, `${name}/${kind}/${i}.jpg`, await renderSample(kind, 660 + i, 44));
    const quiet = { write: () => true } as unknown as NodeJS.WritableStream;
    const { space } = await ctx.services.spaces.resolve();
    let pages = 0;
    let deleted: boolean | undefined;
    const ingest = ingestPrefix({ bucket: photos, prefix: `${name}/`, dataset: name, space }, { services: ctx.services, queues: ctx.queues, pageSize: 2 }, async () => {
      // the dataset is deleted meanwhile, and a page's write lands after the deletion (it lists
      // the dataset again, without its space or sources)
      if (++pages !== at) return;
      deleted = await deleteDatasetCommand({ ...ctx, out: quiet }, name, { yes: true });
      await ctx.services.datasets.putItems(name, [[`${photos}/${name}/late.jpg`, { label: 'circle', etag: 'e', space: space.id, state: 'pending' }]]);
      expect(await ctx.services.datasets.exists(name)).toBe(true);
    });
    await expect(ingest).rejects.toMatchObject({ code: EXIT.vanished, message: expect.stringContaining(`dataset ${name} was deleted (or Redis lost its data) while this ingest wrote it`) });
    expect(deleted).toBe(true);
    // (after the last page: the end of the listing, which would mark the prefix listed to the end)
    expect(pages).toBe(at);
    // what the page written after the deletion made is gone with it (its name would keep another watch going)
    expect(await ctx.services.datasets.exists(name)).toBe(false);
  });

  it('a later round of a watch whose dataset was deleted before its first page stops before writing, rather than make it anew (a review)', async () => {
    for (const kind of kinds) await ctx.services.store.putObject(photos, `gap/${kind}/0.jpg`, await renderSample(kind, 690, 44));
    const { space } = await ctx.services.spaces.resolve();
    for (const manifest of [false, true]) {
      const ingest = manifest
        ? (await ctx.services.store.putObject(photos, 'gap/labels.csv', Buffer.from(kinds.map((k) => `${k}/0.jpg,${k}\n`).join(''))), ingestManifest({ bucket: photos, key: 'gap/labels.csv', format: 'csv', dataset: 'gap', space, existing: true }, { services: ctx.services, queues: ctx.queues }))
        : ingestPrefix({ bucket: photos, prefix: 'gap/', dataset: 'gap', space, existing: true }, { services: ctx.services, queues: ctx.queues });
      await expect(ingest).rejects.toMatchObject({ code: EXIT.vanished, message: expect.stringContaining('dataset gap was deleted (or Redis lost its data) since it was last ingested by this command') });
      expect(await ctx.services.datasets.exists('gap')).toBe(false);
    }
  });

  it('an ingest whose dataset is deleted and made anew by another ingest of other images stops all the same, and leaves that one be', async () => {
    for (const kind of kinds) for (let i = 0; i < 2; i++) await ctx.services.store.putObject(photos, `remade/${kind}/${i}.jpg`, await renderSample(kind, 670 + i, 44));
    await ctx.services.store.putObject(photos, 'remade-other/circle/0.jpg', await renderSample('circle', 680, 44));
    const quiet = { write: () => true } as unknown as NodeJS.WritableStream;
    const { space } = await ctx.services.spaces.resolve();
    let pages = 0;
    const ingest = ingestPrefix({ bucket: photos, prefix: 'remade/', dataset: 'remade', space }, { services: ctx.services, queues: ctx.queues, pageSize: 2 }, async () => {
      if (++pages !== 1) return;
      await deleteDatasetCommand({ ...ctx, out: quiet }, 'remade', { yes: true });
      await ingestPrefix({ bucket: photos, prefix: 'remade-other/', dataset: 'remade', space }, { services: ctx.services, queues: ctx.queues });
    });
    await expect(ingest).rejects.toMatchObject({ code: EXIT.vanished, message: expect.stringContaining('dataset remade was deleted (or Redis lost its data) while this ingest wrote it') });
    expect(await ctx.services.datasets.sources('remade')).toEqual([`${photos}/remade-other/`]);
    expect(await ctx.services.datasets.size('remade')).toBe(1);
    await ctx.services.datasets.remove('remade');
  });

  it('delete run is refused while a classify uses the run (a trial: deleted while classify embedded, which then failed at its end); a watch whose run goes from the bucket all the same stops, exit 1', async () => {
    const quiet = { write: () => true } as unknown as NodeJS.WritableStream;
    await trainCommand({ ...ctx, out: quiet }, { dataset: 'shapes', runId: 'watch-gone', epochs: 2, promote: false, wait: true });
    let refused: Promise<unknown> | undefined;
    const runFiles = async () => {
      const keys: string[] = [];
      for await (const o of ctx.services.store.listObjects(stack.config.s3.bucket, ctx.services.layout.run('shapes', 'watch-gone'))) keys.push(o.key);
      return keys;
    };
    const out = {
      write: (chunk: string) => {
        if (!refused && /^watching /m.test(chunk)) {
          refused = deleteRunCommand({ ...ctx, out: quiet }, 'shapes@watch-gone', { yes: true }).then(
            () => 'deleted',
            async (err: unknown) => {
              // the run's files removed by hand (aws s3 rm): the watch finds its run gone
              for (const key of await runFiles()) await ctx.services.store.deleteObject(stack.config.s3.bucket, key);
              return err;
            },
          );
        }
        return true;
      },
    } as unknown as NodeJS.WritableStream;
    const url = `s3://${photos}/incoming/`;
    const watch = classifyCommand({ ...ctx, out }, url, { model: 'shapes@watch-gone', watch: true, intervalSeconds: 1, maxRounds: 5 });
    await expect(watch).rejects.toMatchObject({ code: EXIT.error, message: expect.stringContaining('model shapes@watch-gone is gone from the bucket since this watch began') });
    const err = (await refused) as CliExit;
    expect(err).toBeInstanceOf(CliExit);
    expect(err.message).toMatch(new RegExp(`^transferline: nothing deleted: a command uses shapes@watch-gone; let it end \\(or stop it: Ctrl-C\\) and delete again \\(a command killed without its end lets go within 90 s\\):\n  classify ${url.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} --watch with shapes@watch-gone \\(\\S+, since \\S+\\)$`));
    // ended: it lets go of the run, and the run's records go with delete run
    expect(await modelUsers(ctx, 'shapes')).toEqual([]);
    // while a classify holds a run: delete dataset --runs is refused too, and the images classify keeps (_classify.shapes) are not held (a review)
    const held = await holdModel(ctx, 'shapes', 'r1', 'classify s3://somewhere/');
    try {
      await expect(deleteDatasetCommand({ ...ctx, out: quiet }, 'shapes', { runs: true, dryRun: true })).rejects.toThrow(/^transferline: nothing deleted: a command uses runs of shapes; /);
      // (its plan printed, nothing deleted: --dry-run)
      expect(await deleteDatasetCommand({ ...ctx, out: quiet }, classifyDatasetName('shapes'), { dryRun: true })).toBe(false);
    } finally {
      await held.release();
    }
    expect(await deleteRunCommand({ ...ctx, out: quiet }, 'shapes@watch-gone', { yes: true })).toBe(true);
  });

  it('classify --watch: a round whose classify job did not go through is made good by the next, with the job it queued (a review)', async () => {
    const ofPrefix = async () => (await ctx.queues.classify.getJobs(['completed', 'waiting', 'active', 'failed'], 0, 999)).filter((j) => (j?.data as { prefix?: string } | undefined)?.prefix === 'owed/');
    expect(await ofPrefix()).toHaveLength(0);
    await ctx.services.store.putObject(photos, 'owed/a.jpg', await renderSample('circle', 710, 45));
    let text = '';
    let paused: Promise<unknown> | undefined;
    let resumed: Promise<unknown> | undefined;
    const out = {
      write: (chunk: string) => {
        text += chunk;
        // after the first round, the classify queue is paused (its job waits; the round gives up) and an image comes
        if (!paused && /^watching /m.test(text)) paused = ctx.queues.classify.pause().then(async () => ctx.services.store.putObject(photos, 'owed/b.jpg', await renderSample('square', 711, 45)));
        // the queue resumed, and another image comes: the next round finds it beside the job left queued
        if (!resumed && /^watch: round \d+ failed: /m.test(text)) resumed = ctx.queues.classify.resume().then(async () => ctx.services.store.putObject(photos, 'owed/c.jpg', await renderSample('triangle', 712, 45)));
        return true;
      },
    } as unknown as NodeJS.WritableStream;
    const results = await classifyCommand({ ...ctx, out }, `s3://${photos}/owed/`, { model: 'shapes', watch: true, intervalSeconds: 1, maxRounds: 5, stallSeconds: 3 }).finally(async () => {
      await Promise.all([paused, resumed]);
      await ctx.queues.classify.resume();
    });
    expect(text).toMatch(/^watch: round \d failed: .*the classify queue is paused/m);
    // the image of the round that gave up is classified by the job that round queued (followed to
    // its end, not queued again: two at once would label it twice), and the next image by a job of
    // its own (that job ran before it was embedded: a review)
    expect(results[0]!.classified).toBe(1);
    expect(results.slice(1).reduce((n, r) => n + r.classified, 0)).toBe(2);
    // (no round's line that it classified nothing)
    expect(results.slice(1).every((r) => r.classified > 0)).toBe(true);
    expect((await ofPrefix()).length).toBeLessThanOrEqual(3);
  });

  it('ingest --watch goes on through an S3 outage, and keeps its space when workers of another start', async () => {
    for (const kind of kinds) await ctx.services.store.putObject(photos, `outage/${kind}/0.jpg`, await renderSample(kind, 800, 51));
    // the CLI reaches S3 through a proxy that can fail it; the workers reach S3 directly
    const proxy = await startFaultProxy(stack.config.s3.endpoint);
    let text = '';
    let other: { stop: () => Promise<void> } | undefined;
    let healing: Promise<unknown> | undefined;
    const started: Promise<unknown>[] = [];
    const out = {
      write: (chunk: string) => {
        text += chunk;
        if (/^watching /m.test(chunk)) {
          // after the first round: S3 answers 503 to everything, and an embed worker of another space is live
          proxy.inject('', { kind: 'status', status: 503 });
          const crop = spaceFromConfig(loadConfig({ ...stack.env, TL_RESIZE: 'crop' }));
          started.push(ctx.services.spaces.startHeartbeat(crop, 'test', () => undefined).then((h) => (other = h)));
        }
        if (!healing && /^watch: round \d+ failed: /m.test(text)) {
          // a round or two later S3 is back, and a user drops one more image
          healing = new Promise((r) => setTimeout(r, 2_500)).then(async () => {
            proxy.heal();
            await ctx.services.store.putObject(photos, 'outage/circle/late.jpg', await renderSample('circle', 801, 51));
          });
        }
        return true;
      },
    } as unknown as NodeJS.WritableStream;
    const watchCtx = await openCliContext({ ...stack.config, s3: { ...stack.config.s3, endpoint: proxy.url } }, out);
    const rounds: IngestOutcome[] = [];
    try {
      await watchIngest(watchCtx, `s3://${photos}/outage/`, { dataset: 'outage', wait: true, intervalSeconds: 1, maxRounds: 9, onRound: (r) => rounds.push(r) });
      await healing;
      await Promise.all(started);
    } finally {
      await other?.stop();
      await watchCtx.close();
      await proxy.close();
    }
    // one line for the outage (not one per round), one when it went through again
    expect(text.match(/^watch: round \d+ failed: .*; trying again every 1 s \(Ctrl-C to stop\)$/gm)).toHaveLength(1);
    expect(text).toMatch(/^watch: round \d+ went through; \d+ rounds? since round \d+ had failed$/m);
    expect(text).not.toMatch(/embedding spaces are live/);
    // the image dropped during the outage was ingested, into the watch's own space
    expect(rounds.map((r) => r.counts.enqueued)).toContain(1);
    expect(rounds.every((r) => r.space === stack.space.id)).toBe(true);
    expect(await ctx.services.inspector.status('outage')).toMatchObject({ total: kinds.length + 1, embedded: kinds.length + 1 });
  });

  it('a dataset of one label (the others all failed, or none): train refuses before it queues a run, which would only fail and count as a failed run (a trial)', async () => {
    for (let i = 0; i < 3; i++) await ctx.services.store.putObject(photos, `solo/cat/${i}.jpg`, await renderSample('circle', 950 + i, 5));
    await ctx.services.store.putObject(photos, 'solo/dog/notes.jpg', 'not an image at all');
    expect((await runCli(['ingest', `s3://${photos}/solo/`, '-d', 'solo'], stack.env)).code).toBe(3);
    const r = await runCli(['train', '-d', 'solo', '--epochs', '1'], stack.env);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(
      'transferline: dataset solo has images of one label only (cat, 3 images; dog: all 1 failed): a classifier needs two or more: ' +
        'add the images of another label (a folder per label under the prefix, or rows of a label manifest) and ingest again. No run was queued\n',
    );
    expect(r.stdout).not.toMatch(/queued for dataset solo/);
    // --partial learns from what is embedded now: another label's image that is not is not there
    // (here one whose job is lost: an ingest brings it back; one on its way would be waited for)
    await ctx.services.datasets.putItem('solo', `${photos}/solo/dog/later.jpg`, { label: 'dog', etag: 'e', space: stack.space.id, state: 'pending' });
    /** train --partial's refusal of solo, as it names dog's images and what to do */
    const partialRefusal = async (dog: string, next: string) => {
      const r = await runCli(['train', '-d', 'solo', '--partial', '--epochs', '1'], stack.env);
      expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 1, stderr: `transferline: --partial trains on the embedded images of solo, and they are images of one label only (cat, 3 images; dog: none embedded (${dog})): a classifier needs two or more: ${next}. No run was queued\n` });
    };
    await partialRefusal('1 failed, 1 with no job, or in another space', 'add the images of another label (a folder per label under the prefix, or rows of a label manifest) and ingest again');
    const labels = JSON.parse((await runCli(['status', '-d', 'solo', '--json'], stack.env)).stdout) as { datasets: { labels: unknown[] }[] };
    expect(labels.datasets[0]!.labels).toEqual([{ label: 'cat', count: 3, ready: 3 }, { label: 'dog', count: 2, failed: 1, ready: 0 }]);
    // and one on its way (its job held back for an hour): waited for, if asked
    const later = jobIds.preprocess({ dataset: 'solo', bucket: photos, key: 'solo/dog/later.jpg', etag: 'e', embedderId: stack.space.id });
    const held = await ctx.queues.preprocess.add('preprocess', { dataset: 'solo', bucket: photos, key: 'solo/dog/later.jpg', etag: 'e', label: 'dog', embedderId: stack.space.id }, { jobId: later, delay: 3_600_000 });
    try {
      await partialRefusal('1 on their way, 1 failed', 'wait for the images of the other labels (transferline status -d solo), or train without --partial to wait here');
    } finally {
      await held.remove();
    }
    const status = JSON.parse((await runCli(['status', '--json'], stack.env)).stdout) as { queues: Record<string, { failedRuns?: { dataset: string }[] }> };
    expect((status.queues.train!.failedRuns ?? []).filter((f) => f.dataset === 'solo')).toEqual([]);
    expect((await runCli(['delete', 'dataset', 'solo', '--yes'], stack.env)).code).toBe(0);
  });

  it('a dataset whose every image failed: train refuses it, not to ingest it first; a run of it queued all the same fails, and status names it', async () => {
    for (const kind of ['a', 'b']) await ctx.services.store.putObject(photos, `allbad/${kind}/notes.jpg`, 'not an image at all');
    expect((await runCli(['ingest', `s3://${photos}/allbad/`, '-d', 'allbad'], stack.env)).stdout).toContain('2 failed');
    const r = await runCli(['train', '-d', 'allbad', '--epochs', '1'], stack.env);
    expect({ code: r.code, stderr: r.stderr }).toEqual({
      code: 1,
      stderr: 'transferline: dataset allbad has nothing to learn from: all 2 of its images failed (see "transferline failures -d allbad"): mend or replace them and ingest again. No run was queued\n',
    });
    expect(r.stdout).not.toMatch(/queued for dataset allbad/);
    // a run queued all the same (by another client, or before its images failed) fails, saying why
    const payload = TrainJob.parse({ dataset: 'allbad', runId: 'allbad-anyway', embedderId: stack.space.id, partial: false, epochs: 1, stallSeconds: 60 });
    await enqueue(ctx.queues.train, 'train', [{ id: jobIds.train({ runId: payload.runId }), payload }]);
    const queued = async () => (await ctx.queues.train.getJob(jobIds.train({ runId: payload.runId })))!;
    await until('the run of allbad to fail', async () => (await (await queued()).getState()) === 'failed', 60);
    expect((await queued()).failedReason).toContain(`dataset allbad has no embedded images in ${stack.space.id}: all 2 of its images failed (see "transferline failures -d allbad")`);
    // status names the failed run and why, where it counted a failed train job and said nothing more
    const named = new RegExp(`^ {2}train: run \\S+ of allbad failed \\d+ s ago \\(no-data\\): dataset allbad has no embedded images in ${stack.space.id.replace(/\./g, '\\.')}: all 2 of its images failed`, 'm');
    expect((await runCli(['status'], stack.env)).stdout).toMatch(named);
    const failedRunsOf = async (args: string[]) =>
      (JSON.parse((await runCli(['status', '--json', ...args], stack.env)).stdout) as { queues: Record<string, { failedRuns?: { dataset: string; reason: string }[] }> }).queues.train!.failedRuns ?? [];
    expect(await failedRunsOf([])).toContainEqual(expect.objectContaining({ dataset: 'allbad', reason: 'no-data' }));
    // status of another dataset does not name it
    const other = await runCli(['status', '-d', 'shapes'], stack.env);
    expect(other.code).toBe(0);
    expect(other.stdout).not.toMatch(/of allbad failed/);
    // once a run of allbad has completed, its failure is behind it: status names it no more
    for (const [i, kind] of (['circle', 'square'] as const).entries()) for (let j = 0; j < 3; j++) await ctx.services.store.putObject(photos, `allbad/${'ab'[i]}/${kind}-${j}.jpg`, await renderSample(kind, 900 + j, 61));
    await runCli(['ingest', `s3://${photos}/allbad/`, '-d', 'allbad'], stack.env);
    expect((await runCli(['train', '-d', 'allbad', '--epochs', '1'], stack.env)).code).toBe(0);
    const after = await runCli(['status', '-d', 'allbad'], stack.env);
    expect(after.stdout).not.toMatch(/of allbad failed/);
    // only counted: the failed column still has it
    expect(after.stdout).toMatch(/^ {2}train: 1 other failed run needs nothing more: of a dataset deleted since, or followed by a run of it that completed$/m);
    expect((await failedRunsOf([])).filter((f) => f.dataset === 'allbad')).toEqual([]);
    const json = JSON.parse((await runCli(['status', '--json', '-d', 'allbad'], stack.env)).stdout) as { queues: Record<string, { failedRuns?: unknown[]; failedRunsSettled?: number }> };
    expect(json.queues.train).toMatchObject({ failedRuns: [], failedRunsSettled: 1 });
    // the completed run is known by its model in the bucket, not by the jobs the train queue
    // keeps (its newest 1,000): with its job gone, its failure is still behind it
    const completed = (await ctx.queues.train.getCompleted(0, -1)).filter((j) => j?.data.dataset === 'allbad');
    expect(completed).toHaveLength(1);
    for (const j of completed) await j!.remove();
    expect((await runCli(['status', '-d', 'allbad'], stack.env)).stdout).not.toMatch(/of allbad failed/);
  });

  it('a dataset whose cached embeddings are NaN (made by a damaged model, before embed workers refused one) fails its run saying so, where the run hung its worker for ever', async () => {
    const hashes: string[] = [];
    for (const [i, kind] of (['circle', 'square'] as const).entries()) {
      for (let j = 0; j < 3; j++) {
        const bytes = await renderSample(kind, 1700 + 10 * i + j, 61);
        hashes.push(contentHash(bytes));
        await ctx.services.store.putObject(photos, `spoilt/${kind}/${j}.jpg`, bytes);
      }
    }
    expect((await runCli(['ingest', `s3://${photos}/spoilt/`, '-d', 'spoilt'], stack.env)).stdout).toContain('6 embedded');
    // their rows in the cache made NaN, as the damaged graph of a trial made them
    const { store, layout, redis, keys } = ctx.services;
    const bucket = stack.config.s3.bucket;
    const located = await redis.hmget(keys.embeddingIndex(stack.space.id), ...hashes);
    const rowsOf = new Map<string, number[]>();
    for (const at of located) {
      const [shard, row] = at!.split(' ');
      rowsOf.set(shard!, [...(rowsOf.get(shard!) ?? []), Number(row)]);
    }
    for (const [shard, rows] of rowsOf) {
      const key = layout.shard(stack.space.id, shard, 'npy');
      const npy = decodeNpyFloat32(new Uint8Array(await store.getObject(bucket, key)));
      for (const row of rows) npy.data.fill(Number.NaN, row * npy.cols, (row + 1) * npy.cols);
      await store.putObject(bucket, key, encodeNpyFloat32(npy.data, npy.rows, npy.cols));
    }
    const r = await runCli(['train', '-d', 'spoilt', '--epochs', '2', '--run-id', 'spoilt-1'], stack.env, 90_000);
    expect(r.timedOut).toBe(false);
    expect(r.code).not.toBe(0);
    expect(r.stdout + r.stderr).toContain(`6 of the cached embeddings this run would train on (space ${stack.space.id}) are not finite numbers (NaN or Infinity): an embed worker whose model was damaged made them`);
    const job = (await ctx.queues.train.getJob(jobIds.train({ runId: 'spoilt-1' })))!;
    expect(await job.getState()).toBe('failed');
    expect(job.failedReason).toContain('not finite numbers');
    expect(await store.headObject(bucket, layout.runFile('spoilt', 'spoilt-1', 'run.json'))).toBeUndefined();
    // the way out it names: their entries are gone from the index, an ingest embeds them anew, and a run trains
    expect(job.failedReason).toContain(`They are dropped from the cache's index: ingest the dataset again (transferline ingest s3://${photos}/spoilt/ -d spoilt) to embed those images anew, then train`);
    expect(await redis.hmget(keys.embeddingIndex(stack.space.id), ...hashes)).toEqual(hashes.map(() => null));
    expect((await runCli(['ingest', `s3://${photos}/spoilt/`, '-d', 'spoilt'], stack.env)).stdout).toContain('6 embedded');
    const again = await runCli(['train', '-d', 'spoilt', '--epochs', '2', '--run-id', 'spoilt-2'], stack.env, 90_000);
    expect(again.code).toBe(0);
    expect(again.stdout).toMatch(/trained spoilt|spoilt-2/);
  });

  it('says which images it could not classify and why, and failures lists them for its dataset', async () => {
    await ctx.services.store.putObject(photos, 'broken/circle-1.jpg', await renderSample('circle', 300, 99));
    await ctx.services.store.putObject(photos, 'broken/notes.jpg', 'meeting notes, not a photo');
    const r = await runCli(['classify', `s3://${photos}/broken/`, '--model', 'shapes'], stack.env);
    expect(r.stdout).toMatch(/classified 1 image\(s\) .*, 1 failed/);
    expect(r.stdout).toMatch(new RegExp(`failed s3://${photos}/broken/notes\\.jpg: preprocess not-an-image`));
    // its line in the results file: the reason code and its message, as failures gives them
    const { bucket: at, key } = parseS3ObjectUrl(/(s3:\/\/\S+\.jsonl)/.exec(r.stdout)![1]!);
    const lines = (await ctx.services.store.getObject(at, key)).toString().trim().split('\n').map((l) => JSON.parse(l) as { key: string; error?: string; detail?: string });
    expect(lines.find((l) => l.key === `s3://${photos}/broken/notes.jpg`)).toMatchObject({ error: 'not-an-image', detail: expect.stringMatching(/^not an image \(starts with text/) });
    expect(r.code).toBe(3);
    // classified again: the failure is not written again into a new file, but it is still a
    // failed image under the prefix: said apart from the labelled one, listed, and exit 3 again
    const again = await runCli(['classify', `s3://${photos}/broken/`, '--model', 'shapes'], stack.env);
    expect(again.stdout).toMatch(/2 already done \(1 of them failed\): nothing new to write/);
    expect(again.stdout).toContain(`  the 2 already done (1 labelled, 1 failed) are in: s3://${at}/${key}\n`);
    expect(again.stdout).toMatch(new RegExp(`failed s3://${photos}/broken/notes\\.jpg: preprocess not-an-image`));
    expect(again.code).toBe(3);
    const failures = await runCli(['failures', '-d', classifyDatasetName('shapes')], stack.env);
    expect(failures.stderr).toBe('');
    expect(failures.code).toBe(0);
    expect(failures.stdout).toMatch(new RegExp(`s3://${photos}/broken/notes\\.jpg  preprocess not-an-image`));
    // its images have no label: status says so, not "?" (and how many of them failed: notes.jpg at least)
    const status = await runCli(['status', '-d', classifyDatasetName('shapes')], stack.env);
    expect(status.stdout).toMatch(/^ {2}labels: \(unlabelled\) \(\d+, [1-9]\d* failed\)$/m);
    // what to do of a file that is no image: classify again (an ingest would not reach these images: a review)
    expect(status.stdout).toMatch(/^ {2}note: \d+ failed for (its|their) own bytes \([a-z, -]+\), which fail again however often they run: replace each with an image that reads, or delete it, and run the same classify again \(/m);
    // and so does its JSON, where "?" alone could be a folder named so
    const json = JSON.parse((await runCli(['status', '-d', classifyDatasetName('shapes'), '--json'], stack.env)).stdout) as { datasets: { labels: { label: string; unlabelled?: boolean }[] }[] };
    expect(json.datasets[0]!.labels).toEqual([expect.objectContaining({ unlabelled: true })]);
    // a name not found lists the datasets a user names, not the sets classify keeps (a user's trial:
    // "known: _classify.fruit, …", a name review then refused); asked for one, those are listed
    const missing = await runCli(['status', '-d', 'nosuch'], stack.env);
    expect(missing.stderr).toMatch(/^transferline: no dataset named nosuch; known: .*\bshapes\b/);
    expect(missing.stderr).not.toContain(classifyDatasetName('shapes'));
    expect((await runCli(['status', '-d', classifyDatasetName('nosuch')], stack.env)).stderr).toContain(classifyDatasetName('shapes'));
  });

  it("a latest run deleted from the bucket: models, classify and export use the newest run left, and say so", async () => {
    const before = (await runCli(['models', '-d', 'shapes', '--json'], stack.env)).stdout;
    const previous = (JSON.parse(before) as { runId: string; latest: boolean }[]).find((r) => r.latest)!.runId;
    await trainCommand(ctx, { dataset: 'shapes', wait: true, epochs: 2, runId: 'shapes-pruned' });
    // a team prunes runs by hand: the newest, which latest.json names, goes
    const { store, layout } = ctx.services;
    const bucket = stack.config.s3.bucket;
    for await (const o of store.listObjects(bucket, layout.run('shapes', 'shapes-pruned'))) await store.deleteObject(bucket, o.key);
    const models = await runCli(['models', '-d', 'shapes'], stack.env);
    expect(models.code).toBe(0);
    expect(models.stdout).toMatch(new RegExp(`^shapes\\s+${previous} \\*`, 'm'));
    expect(models.stdout).toContain(`note: the latest run of shapes, shapes-pruned, is no longer in the bucket: its newest run left, ${previous}, is used instead\n`);
    const classify = await runCli(['classify', `s3://${photos}/incoming/`, '--model', 'shapes'], stack.env);
    expect(classify.stderr).toBe('');
    expect(classify.code).toBe(0);
    expect(classify.stdout).toContain(`note: the latest run of shapes, shapes-pruned, is no longer in the bucket: using its newest run left, ${previous}\n`);
    expect(classify.stdout).toMatch(new RegExp(`^model shapes@${previous},`, 'm'));
    // training again makes the new run the latest, as ever
    const again = await trainCommand(ctx, { dataset: 'shapes', wait: true, epochs: 2, runId: 'shapes-after-prune' });
    expect(again.runId).toBe('shapes-after-prune');
    expect((await runCli(['models', '-d', 'shapes'], stack.env)).stdout).not.toContain('note:');
  });

  it('train --cancel: a queued run is removed, a run in training stops after its epoch, and neither writes a model', async () => {
    const { store, layout, redis, keys } = ctx.services;
    const bucket = stack.config.s3.bucket;
    // a run far too long, and one queued behind it (one run at a time per train worker)
    await trainCommand(ctx, { dataset: 'shapes', wait: false, epochs: 10_000, patience: 0, runId: 'endless' });
    const job = (await ctx.queues.train.getJob(jobIds.train({ runId: 'endless' })))!;
    await until('the long run to train', async () => (((await ctx.queues.train.getJob(job.id!))?.progress as { epoch?: number } | undefined)?.epoch ?? 0) >= 1, 60);
    await trainCommand(ctx, { dataset: 'shapes', wait: false, epochs: 5, runId: 'queued-behind' });
    expect(await (await ctx.queues.train.getJob(jobIds.train({ runId: 'queued-behind' })))!.getState()).toBe('waiting');
    // the same command again while that run waits: it joins it, not a copy queued behind it; other
    // settings are another run (a user's trial: two identical train commands both ran)
    const waitingRuns = async () => (await ctx.queues.train.getJobs(['waiting'])).map((j) => (j.data as { runId: string }).runId).sort();
    const same = await runCli(['train', '-d', 'shapes', '--epochs', '5', '--no-wait'], stack.env);
    expect({ code: same.code, stderr: same.stderr }).toEqual({ code: 0, stderr: '' });
    expect(same.stdout).toBe('run queued-behind of shapes, with these same settings, is queued, not running now: it trains on what the dataset holds when it starts, so this joins it rather than queue a copy (--run-id ID queues another)\n');
    expect(await waitingRuns()).toEqual(['queued-behind']);
    const other = await runCli(['train', '-d', 'shapes', '--epochs', '6', '--no-wait'], stack.env);
    const otherRun = /^run (\S+) queued for dataset shapes/m.exec(other.stdout)?.[1];
    expect(otherRun, other.stdout).toBeDefined();
    await ctx.queues.train.remove(jobIds.train({ runId: otherRun! }));
    expect(await waitingRuns()).toEqual(['queued-behind']);
    // the same command twice at once (a script's parallel steps): one run queued, the other joins it
    const [first, second] = await Promise.all([1, 2].map(() => trainCommand(ctx, { dataset: 'shapes', wait: false, epochs: 7 })));
    expect(second!.runId).toBe(first!.runId);
    await ctx.queues.train.remove(jobIds.train({ runId: first!.runId }));
    expect(await waitingRuns()).toEqual(['queued-behind']);
    // a job added after it by a client whose clock is an hour behind waits behind it all the same
    await ctx.queues.train.add('train', { runId: 'skewed-clock' }, { jobId: 'skewed-clock', timestamp: Date.now() - 3_600_000 });

    // someone follows the queued run; it is cancelled: the follower says so (not "lost")
    let followerSaid = '';
    const follower = runCli(['train', '--follow', 'queued-behind'], stack.env, 60_000, { onOutput: (c) => (followerSaid += c) });
    await until('the follower to say what the run waits for', () => followerSaid.includes('queued behind'), 30);
    const queued = await runCli(['train', '--cancel', 'queued-behind'], stack.env);
    expect({ code: queued.code, stderr: queued.stderr }).toEqual({ code: 0, stderr: '' });
    expect(queued.stdout).toBe('run queued-behind cancelled: removed from the queue before any worker started it\n');
    expect(await ctx.queues.train.getJob(jobIds.train({ runId: 'queued-behind' }))).toBeUndefined();
    const followed = await follower;
    expect({ code: followed.code, timedOut: followed.timedOut }).toEqual({ code: 1, timedOut: false });
    expect(followed.stderr).toContain('run queued-behind was cancelled (transferline train --cancel queued-behind) before it started');
    // while it waited, the follower said what it waited for (not silence)
    expect(followed.stdout).toContain('run queued-behind: queued behind 1 job of the train queue (1 running: endless; 0 waiting before it); it starts when the train worker is free\n');
    await ctx.queues.train.remove('skewed-clock');
    expect((await runCli(['train', '--cancel', 'queued-behind'], stack.env)).stdout).toBe('run queued-behind had been cancelled already: nothing to cancel\n');
    // the id of the run cancelled while queued, used again: a new run, not a cancelled one. Followed
    // while queued, it says that it started before its first progress line (stderr merged, as on a terminal).
    await trainCommand(ctx, { dataset: 'shapes', wait: false, epochs: 2, runId: 'queued-behind' });
    let reusedSaid = '';
    const reused = runCli(['train', '--follow', 'queued-behind'], stack.env, 150_000, { merged: true, onOutput: (c) => (reusedSaid += c) });
    await until('the follower of the reused id to say what it waits for', () => reusedSaid.includes('queued behind'), 30);

    // someone follows the run in training; the cancel says when the run stopped, once, and the
    // follower hears that it was cancelled, not that it failed
    const trainingFollower = runCli(['train', '--follow', 'endless'], stack.env, 150_000);
    const runsOf = async (outcome: string) => (await scrape(stack.ports.train)).get(`tl_train_runs_total{dataset="shapes",outcome="${outcome}"}`) ?? 0;
    const [failedBefore, cancelledBefore] = [await runsOf('failed'), await runsOf('cancelled')];
    const long = await runCli(['train', '--cancel', 'endless'], stack.env, 150_000);
    expect({ code: long.code, stderr: long.stderr }).toEqual({ code: 0, stderr: '' });
    expect(long.stdout).toMatch(/^run endless is training: it stops at the end of an epoch, within about a second…\nrun endless was cancelled \(transferline train --cancel\) after epoch \d+ of 10000\n$/);
    const trainingFollowed = await trainingFollower;
    expect({ code: trainingFollowed.code, timedOut: trainingFollowed.timedOut }).toEqual({ code: 1, timedOut: false });
    // (its progress lines go to stderr too when it is not a terminal)
    expect(trainingFollowed.stderr).toMatch(/(^|\n)run endless was cancelled \(transferline train --cancel\) after epoch \d+ of 10000\n$/);
    expect(trainingFollowed.stderr.match(/cancelled/g)).toHaveLength(1);
    expect(trainingFollowed.stderr).not.toContain('failed');
    expect(await (await ctx.queues.train.getJob(job.id!))!.getState()).toBe('failed');
    // the train worker counts it as cancelled, not failed (an alert on failed runs stays quiet)
    await until('the cancelled run to be counted', async () => (await runsOf('cancelled')) === cancelledBefore + 1, 10);
    expect(await runsOf('failed')).toBe(failedBefore);
    // status counts it among the train queue's failed jobs (BullMQ's state), and says it was a cancel
    const status = await runCli(['status'], stack.env);
    expect(status.stdout).toMatch(/^ {2}train: (1 of its failed jobs is a run|\d+ of its failed jobs are runs) stopped with train --cancel, not (a failure|failures)$/m);
    for (const file of ['run.json', 'report.json'] as const) expect(await store.headObject(bucket, layout.runFile('shapes', 'endless', file))).toBeUndefined();
    expect(await redis.exists(keys.trainCancel('endless'))).toBe(0);
    // asked again: it says so, and changes nothing
    const again = await runCli(['train', '--cancel', 'endless'], stack.env);
    expect(again.stdout).toBe('run endless had been cancelled already: nothing to cancel\n');
    // with its dataset, as --follow takes it (an operator's trial was refused): a check, and another dataset is bad usage
    expect((await runCli(['train', '--cancel', 'endless', '-d', 'shapes'], stack.env)).stdout).toBe('run endless had been cancelled already: nothing to cancel\n');
    const cancelOther = await runCli(['train', '--cancel', 'endless', '-d', 'circles'], stack.env);
    expect({ code: cancelOther.code, stderr: cancelOther.stderr }).toEqual({ code: 2, stderr: 'transferline: run endless trains dataset shapes, not circles: nothing was cancelled\n' });
    expect((await runCli(['train', '--cancel', 'endless', '--epochs', '3'], stack.env)).stderr).toMatch(/--cancel takes the run id alone \(and --dataset, to check it is that dataset's\): --epochs cannot go with it/);
    // a finished run cannot be cancelled: exit 1, saying it has a model
    const done = await runCli(['train', '--cancel', 'shapes-after-prune'], stack.env);
    expect(done.code).toBe(1);
    expect(done.stderr).toContain('run shapes-after-prune ended before it could be cancelled: its model is in the bucket');
    // the id of a run cancelled in training (no model written) is free for a new run, of any
    // dataset (run ids are unique across datasets), which says so
    const reuse = await runCli(['train', '-d', 'duo', '--epochs', '1', '--run-id', 'endless', '--no-promote'], stack.env);
    expect({ code: reuse.code, stderr: reuse.stderr.replace(/^training duo.*\n/gm, '') }).toEqual({ code: 0, stderr: '' });
    expect(reuse.stdout).toMatch(/^run endless ended without a model \(cancelled\): this run takes its id\nrun endless queued for dataset duo/m);
    expect(await store.headObject(bucket, layout.runFile('duo', 'endless', 'report.json'))).toBeDefined();
    // one with a model is still refused, in its dataset and in another
    expect((await runCli(['train', '-d', 'duo', '--epochs', '1', '--run-id', 'endless'], stack.env)).code).toBe(2);
    const otherDataset = await runCli(['train', '-d', 'shapes', '--epochs', '1', '--run-id', 'endless'], stack.env);
    expect(otherDataset.code).toBe(2);
    expect(otherDataset.stderr).toMatch(/run id endless is taken by a run of dataset duo/);
    expect((await runCli(['delete', 'run', 'duo@endless', '--yes'], stack.env)).code).toBe(0);
    const followedReused = await reused;
    expect({ code: followedReused.code, timedOut: followedReused.timedOut }).toEqual({ code: 0, timedOut: false });
    const out = followedReused.stdout;
    expect(out).toContain('run queued-behind: queued behind 1 job of the train queue (1 running: endless; 0 waiting before it)');
    expect(out).toMatch(/^run queued-behind: validation accuracy/m);
    // not a terminal: its own lines come without a blank line before them
    expect(out).not.toMatch(/\n\nrun queued-behind:/);
    const startedAt = out.indexOf('\nrun queued-behind: started\n');
    expect(startedAt).toBeGreaterThan(out.indexOf('queued behind'));
    expect(startedAt).toBeLessThan(out.indexOf('training shapes:'));
  }, 200_000);

  it('delete run and delete dataset: say what goes and what stays, delete only when told, and leave the rest working', async () => {
    const { store, layout, redis, keys, datasets } = ctx.services;
    const bucket = stack.config.s3.bucket;
    const listed = async (folder: string) => {
      const found: string[] = [];
      for await (const o of store.listObjects(bucket, folder)) found.push(o.key);
      return found;
    };
    for (const kind of kinds) {
      for (let i = 0; i < 5; i++) await store.putObject(photos, `doomed/${kind}/${i}.jpg`, await renderSample(kind, 300 + i, 41));
      await store.putObject(photos, `doomed-in/${kind}.jpg`, await renderSample(kind, 400, 41));
    }
    expect((await runCli(['ingest', `s3://${photos}/doomed/`, '-d', 'doomed'], stack.env)).code).toBe(0);
    await trainCommand(ctx, { dataset: 'doomed', wait: true, epochs: 2, runId: 'doomed-old' });
    await trainCommand(ctx, { dataset: 'doomed', wait: true, epochs: 2, runId: 'doomed-new' });
    expect((await runCli(['classify', `s3://${photos}/doomed-in/`, '--model', 'doomed'], stack.env)).code).toBe(0);
    // a candidate trained after it, not promoted: deleting the latest must not make it the latest
    await trainCommand(ctx, { dataset: 'doomed', wait: true, epochs: 2, runId: 'doomed-candidate', promote: false });
    // a dataset whose name starts the same, and its classify record: untouched by all of this
    await datasets.putItem('doomed.x', `${photos}/elsewhere/a.jpg`, { label: 'a', etag: 'e', space: stack.space.id, state: 'pending' });
    await redis.hset(keys.classified('doomed.x', 'r1'), `${photos}/elsewhere/a.jpg`, 'e sha key');
    const runFolder = layout.run('doomed', 'doomed-new');
    const runFiles = await listed(runFolder);
    const resultsFolder = layout.results('doomed', 'doomed-new');
    expect(await listed(resultsFolder)).toHaveLength(1);
    expect(await redis.hlen(keys.classified('doomed', 'doomed-new'))).toBe(3);

    // not on a terminal and without --yes: the plan, exit 2, nothing deleted; --dry-run: the plan, exit 0
    const plan = [
      `  run doomed@doomed-new: ${runFiles.length} files in s3://${bucket}/${runFolder}`,
      `  classify's record of the 3 images it classified (Redis)`,
      `  it is the latest run of doomed: doomed-old, the newest run left (not counting --no-promote runs never promoted), becomes the latest`,
      `kept:`,
      `  its classify results: 1 file in s3://${bucket}/${resultsFolder} (add --results to delete them too)`,
    ].join('\n');
    // the plan says first which deployment it is of, as status does
    const deployment = `deployment: ${deploymentOf(loadConfig(stack.env)).words}\n`;
    expect(deployment).toContain(`(TL_QUEUE_PREFIX=${stack.config.redis.prefix})`);
    const asked = await runCli(['delete', 'run', 'doomed@doomed-new'], stack.env);
    expect(asked.code).toBe(2);
    expect(asked.stdout).toBe(`${deployment}would delete:\n${plan}\n`);
    expect(asked.stderr).toBe('transferline: nothing deleted: add --yes to delete (on a terminal it asks instead)\n');
    const dry = await runCli(['delete', 'run', 'doomed@doomed-new', '--dry-run'], stack.env);
    expect({ code: dry.code, stdout: dry.stdout }).toEqual({ code: 0, stdout: `${deployment}would delete:\n${plan}\nnothing deleted (--dry-run)\n` });
    expect(await listed(runFolder)).toEqual(runFiles);
    // on a terminal it asks; anything but y keeps the run
    const onTerminal = await answerOnTerminal(['delete', 'run', 'doomed@doomed-new'], 'delete? [y/N] ', 'n');
    expect(onTerminal.code).toBe(0);
    expect(onTerminal.output).toBe(`${deployment}would delete:\n${plan}\ndelete? [y/N] n\nnothing deleted\n`);
    expect(await listed(runFolder)).toEqual(runFiles);

    const gone = await runCli(['delete', 'run', 'doomed@doomed-new', '--yes'], stack.env);
    expect({ code: gone.code, stderr: gone.stderr }).toEqual({ code: 0, stderr: '' });
    expect(gone.stdout).toBe(`${deployment}deleting:\n${plan}\ndeleted run doomed@doomed-new\n`);
    expect(await listed(runFolder)).toEqual([]);
    expect(await redis.exists(keys.classified('doomed', 'doomed-new'))).toBe(0);
    expect(await listed(resultsFolder)).toHaveLength(1);
    // its finished job is gone too: the id is free again
    expect(await ctx.queues.train.getJob(jobIds.train({ runId: 'doomed-new' }))).toBeUndefined();
    // the run left is the latest, with no note: the pointer was moved, not left naming a deleted run
    expect(await store.getDocument(LatestDoc, bucket, layout.latest('doomed'))).toMatchObject({ runId: 'doomed-old', setBy: 'delete' });
    const models = await runCli(['models', '-d', 'doomed'], stack.env);
    expect(models.stdout).toMatch(/^doomed\s+doomed-old \*/m);
    expect(models.stdout).toMatch(/^doomed\s+doomed-candidate .*\(--no-promote\)$/m);
    expect(models.stdout).not.toMatch(/doomed-new|note:/);
    // twice: no such run, exit 1, nothing else touched
    const twice = await runCli(['delete', 'run', 'doomed@doomed-new', '--yes'], stack.env);
    expect(twice.code).toBe(1);
    expect(twice.stderr).toContain(`no run doomed-new of doomed in s3://${bucket}/${layout.models('doomed')}; its classify results are still in s3://${bucket}/${resultsFolder}: add --results to delete them: nothing deleted`);
    expect((await runCli(['delete', 'run', 'doomed', '--yes'], stack.env)).code).toBe(2);

    // a dataset with a run in training is not deleted: it says which run to cancel
    await trainCommand(ctx, { dataset: 'doomed', wait: false, epochs: 10_000, patience: 0, runId: 'doomed-long' });
    const refused = await runCli(['delete', 'dataset', 'doomed', '--yes'], stack.env);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/nothing deleted: a run of doomed trains on what is deleted; cancel it first .*\n {2}run doomed-long is (training|queued): transferline train --cancel doomed-long\n/);
    expect(await datasets.size('doomed')).toBe(15);
    expect((await runCli(['train', '--cancel', 'doomed-long'], stack.env, 150_000)).code).toBe(0);

    // the dataset alone: its records go; its run stays, and classify goes on using it
    const item = `${photos}/doomed/circle/0.jpg`;
    expect(await datasets.knownHashes([item])).not.toEqual([undefined]);
    const ds = await runCli(['delete', 'dataset', 'doomed', '--yes'], stack.env);
    expect({ code: ds.code, stderr: ds.stderr }).toEqual({ code: 0, stderr: '' });
    expect(ds.stdout).toContain('  dataset doomed: 15 images (their records, sources and embedding space, in Redis)\n');
    expect(ds.stdout).toContain(`  its 2 trained runs in s3://${bucket}/${layout.models('doomed')} (classify, serve and export go on using them; add --runs to delete them too)\n`);
    // the cancelled run's job goes with its dataset: the train queue counts it no more
    expect(ds.stdout).toContain("  the jobs of 1 failed or cancelled train run of doomed (in Redis; status and the console count them among the train queue's failures)\n");
    expect(await ctx.queues.train.getJob(jobIds.train({ runId: 'doomed-long' }))).toBeUndefined();
    expect(await datasets.list()).not.toContain('doomed');
    expect(await redis.exists(keys.datasetItems('doomed'), keys.datasetMeta('doomed'), keys.datasetSources('doomed'), keys.datasetListed('doomed'))).toBe(0);
    expect(await datasets.knownHashes([item])).toEqual([undefined]);
    expect((await runCli(['status'], stack.env)).stdout).not.toMatch(/^dataset doomed:/m);
    // the console's page of it says where its runs are, not only that it is gone
    expect(await loadDataset(consoleDeps(ctx, 60_000), 'doomed')).toEqual({ deletedWithRuns: 2 });
    expect(await loadDataset(consoleDeps(ctx, 60_000), 'never-was')).toBeUndefined();
    const after = await runCli(['classify', `s3://${photos}/doomed-in/`, '--model', 'doomed'], stack.env);
    expect(after.code).toBe(0);
    expect(after.stdout).toMatch(/^model doomed@doomed-old,/m);

    // the latest deleted with only a --no-promote run left: no latest run, and classify says how to name or promote one
    const lone = await runCli(['delete', 'run', 'doomed@doomed-old', '--yes'], stack.env);
    expect(lone.stdout).toContain('  it is the latest run of doomed, and no other run of it can take its place: doomed is left with no latest run (transferline promote names one)\n');
    const none = await runCli(['classify', `s3://${photos}/doomed-in/`, '--model', 'doomed'], stack.env);
    expect(none.code).toBe(1);
    expect(none.stderr).toContain('doomed has no latest run (its 1 run was trained with --no-promote, or the latest was deleted): name one, -m doomed@doomed-candidate, or make one the latest: transferline promote doomed@doomed-candidate\n');
    expect((await runCli(['models', '-d', 'doomed'], stack.env)).stdout).toContain('note: doomed has no latest run: make one the latest with transferline promote doomed@RUN\n');

    // with its records gone, what is left of it in the bucket is named with the option that deletes it (a review: results went unnamed)
    const leftOnly = await runCli(['delete', 'dataset', 'doomed', '--yes'], stack.env);
    expect(leftOnly.code).toBe(1);
    expect(leftOnly.stderr).toBe('transferline: no dataset named doomed; its 1 trained run is still in the bucket: add --runs to delete it; 2 files of its classify results are still in the bucket: add --results to delete them: nothing deleted (see "transferline status")\n');

    // then everything of it: runs, what classify kept and recorded for them, results; the plan
    // names the latest pointer that goes with its run (a review: it went unsaid)
    expect((await runCli(['promote', 'doomed@doomed-candidate'], stack.env)).code).toBe(0);
    const all = await runCli(['delete', 'dataset', 'doomed', '--runs', '--results', '--yes'], stack.env);
    expect({ code: all.code, stderr: all.stderr }).toEqual({ code: 0, stderr: '' });
    expect(all.stdout).toContain(`  the pointer to its latest run (doomed-candidate), s3://${bucket}/${layout.latest('doomed')}\n`);
    expect(await ctx.services.store.headObject(bucket, layout.latest('doomed'))).toBeUndefined();
    expect(all.stdout).toContain(`  dataset ${classifyDatasetName('doomed')}: the 3 images classify kept for its runs\n`);
    expect(all.stdout).toContain(`  2 files of classify results in s3://${bucket}/${layout.results('doomed')}\n`);
    expect(await listed(layout.models('doomed'))).toEqual([]);
    expect(await listed(layout.results('doomed'))).toEqual([]);
    expect(await datasets.exists(classifyDatasetName('doomed'))).toBe(false);
    expect(await redis.keys(`${keys.classified('doomed', '')}*`)).toEqual([]);
    expect(await datasets.size('doomed.x')).toBe(1);
    expect(await redis.hlen(keys.classified('doomed.x', 'r1'))).toBe(1);
    await datasets.remove('doomed.x');
    await redis.del(keys.classified('doomed.x', 'r1'));
    expect((await runCli(['models', '-d', 'doomed'], stack.env)).code).toBe(1);
    expect((await runCli(['delete', 'dataset', 'doomed', '--yes'], stack.env)).stderr).toContain('no dataset named doomed: nothing deleted');
    // the images and their embeddings stay: ingested again, every one comes from the cache
    const back = await ingestCommand(ctx, `s3://${photos}/doomed/`, { dataset: 'doomed', wait: true });
    expect(back.status).toMatchObject({ total: 15, embedded: 15, cached: 15, failed: 0 });
    // and the other datasets are as they were
    expect((await ctx.services.inspector.status('shapes')).embedded).toBeGreaterThan(0);
  }, 240_000);

  it('after Redis lost its data: status says so and how to come back; ingest restores the cache index and embeds nothing again', async () => {
    const { redis, keys, datasets, store, layout, cache } = ctx.services;
    const bucket = stack.config.s3.bucket;
    const space = stack.space.id;
    // a run records the prefixes its dataset came from
    const latest = (await latestRun(ctx, 'shapes'))!.runId;
    expect((await store.getDocument(RunDoc, bucket, layout.runFile('shapes', latest, 'run.json')))?.sources).toEqual([`s3://${photos}/set/`]);
    // a second trained dataset, from two prefixes (its images all cached), and a space no worker
    // publishes now (an older embedder's, say) whose shards are in the bucket
    expect((await runCli(['ingest', `s3://${photos}/set/`, '-d', 'twin'], stack.env)).code).toBe(0);
    expect((await runCli(['ingest', `s3://${photos}/doomed/`, '-d', 'twin'], stack.env)).code).toBe(0);
    expect((await runCli(['train', '-d', 'twin', '--epochs', '2', '--run-id', 'twin-run'], stack.env)).code).toBe(0);
    const ghost = 'ghost-space';
    const shardJson = (await (async () => {
      for await (const o of store.listObjects(bucket, layout.embeddings(space))) if (o.key.endsWith('.json')) return o.key;
      return undefined;
    })())!;
    const ghostShard = layout.parseShardKey(shardJson)!.shardId;
    for (const ext of ['json', 'npy'] as const) await store.copyObject(bucket, layout.shard(space, ghostShard, ext), layout.shard(ghost, ghostShard, ext));
    // Redis loses the cache index and the datasets' records, as a restart without persistence
    // would, and no worker has published its space again yet
    const indexed = await cache.size(space);
    await redis.del(keys.embeddingIndex(space), keys.spaces());
    await datasets.remove('shapes');
    await datasets.remove('twin');
    const lostLine = (id: string) => `warning: the embedding index of ${id} is empty while its shards are in s3://${bucket}/${layout.embeddings(id)} (Redis lost its data?): the next ingest or classify in it restores it, or now: transferline cache rebuild-index --embedder ${id}\n`;
    const reingest = (d: string, prefixes: string[]) => prefixes.map((p) => `transferline ingest s3://${photos}/${p} -d ${d} --embedder ${space}`).join('; ');
    const prefixesOf = (d: string) => (d === 'twin' ? ['doomed/', 'set/'] : ['set/']);
    const datasetLine = (d: string) => `warning: dataset ${d} has trained runs but lost its records with Redis's data; ingest it again (its images come from the cache once the index is back): ${reingest(d, prefixesOf(d))}\n`;
    const status = await runCli(['status'], stack.env);
    expect(status.code).toBe(0);
    expect(status.stdout).toContain(lostLine(space));
    expect(status.stdout).toContain(lostLine(ghost));
    expect(status.stdout).toContain(datasetLine('shapes'));
    expect(status.stdout).toContain(datasetLine('twin'));
    // the console's front page says the same
    const overview = await loadOverview(consoleDeps(ctx, 60_000));
    for (const line of [lostLine(space), datasetLine('shapes'), datasetLine('twin')]) expect(overview.warnings).toContain(line.replace(/^warning: |\n$/g, ''));
    await until('the embed worker to publish its space again', async () => (await ctx.services.spaces.list()).some((x) => x.space.id === space), 30);

    // train says the same, rather than "no dataset"
    const train = await runCli(['train', '-d', 'shapes'], stack.env);
    expect(train.code).toBe(1);
    expect(train.stderr).toContain(`no dataset named shapes in Redis, though it has trained runs (it was deleted, or Redis lost its data); ingest it again, as its runs recorded: transferline ingest s3://${photos}/set/ -d shapes --embedder ${space}\n`);

    // as it says: the ingest restores the index first, and no image is embedded again
    const embedded = async () => (await scrape(stack.ports.embed)).get('tl_images_total{stage="embed",outcome="embedded"}') ?? 0;
    const embeddedBefore = await embedded();
    const again = await runCli(['ingest', `s3://${photos}/set/`, '-d', 'shapes'], stack.env);
    expect(again.code).toBe(0);
    expect(again.stdout).toContain(
      `note: the embedding index of ${space} is empty while its shards are in s3://${bucket}/${layout.embeddings(space)} (Redis lost its data?): restoring it from them…\nnote: restored the embedding index of ${space}: ${indexed} images, which are not embedded again\n`,
    );
    // the listing cannot know the bytes (their hashes went with Redis), the jobs find them cached
    expect(again.stdout).toContain('66 enqueued, 0 added from the embedding cache (no job)');
    expect(again.stdout).toContain('dataset shapes: 66 images, 66 embedded (66 of them already in the embedding cache: not computed again), 0 failed, 0 pending');
    expect(await cache.size(space)).toBe(indexed);
    expect(await ctx.services.inspector.status('shapes')).toMatchObject({ total: 66, embedded: 66, cached: 66, failed: 0 });
    expect(await embedded()).toBe(embeddedBefore);
    // the index is back, and the other dataset is still named until it is ingested again
    const between = (await runCli(['status'], stack.env)).stdout;
    expect(between).not.toContain(lostLine(space));
    expect(between).not.toContain(datasetLine('shapes'));
    expect(between).toContain(datasetLine('twin'));
    expect(between).toContain(lostLine(ghost));
    // one of its two prefixes ingested again: status and train name the other one only
    expect((await runCli(['ingest', `s3://${photos}/set/`, '-d', 'twin'], stack.env)).code).toBe(0);
    const half = `dataset twin lost its records with Redis's data and is not ingested again to the end yet (an ingest cut short, or prefixes left)`;
    expect((await runCli(['status'], stack.env)).stdout).toContain(`warning: ${half}: ${reingest('twin', ['doomed/'])}\n`);
    const halfTrain = await runCli(['train', '-d', 'twin', '--epochs', '1'], stack.env);
    expect({ code: halfTrain.code, stderr: halfTrain.stderr }).toEqual({ code: 1, stderr: `transferline: ${half}: ${reingest('twin', ['doomed/'])}. A run now would learn from part of it: ingest again first, or train with --partial on what it has\n` });
    // trained on that part all the same (--partial; the run becomes the latest and records only
    // the prefix it had): the other prefix is still named
    const partRun = await runCli(['train', '-d', 'twin', '--epochs', '1', '--partial', '--run-id', 'twin-part'], stack.env);
    expect(partRun.code, partRun.stderr).toBe(0);
    expect(partRun.stdout).toContain(`--partial: ${half}: ${reingest('twin', ['doomed/'])}. Training on what it has, and the report records what it left out; the run becomes the latest (--no-promote keeps the one there).\n`);
    expect(partRun.stdout).toMatch(new RegExp(`^  partial: trained on \\d+ of \\d+ images \\(0 pending, 0 failed\\); not ingested again to the end after Redis lost its data, so left out: s3://${photos}/doomed/$`, 'm'));
    expect((await store.getDocument(ReportDoc, bucket, layout.runFile('twin', 'twin-part', 'report.json')))?.coverage.notIngestedAgain).toEqual([`s3://${photos}/doomed/`]);
    // (in the coverage only, not among the run's settings)
    expect((await store.getJson<{ params: object }>(bucket, layout.runFile('twin', 'twin-part', 'run.json')))?.params).not.toHaveProperty('notIngestedAgain');
    expect((await latestRun(ctx, 'twin'))?.runId).toBe('twin-part');
    expect((await store.getDocument(RunDoc, bucket, layout.runFile('twin', 'twin-part', 'run.json')))?.sources).toEqual([`s3://${photos}/set/`]);
    expect((await runCli(['status'], stack.env)).stdout).toContain(`warning: ${half}: ${reingest('twin', ['doomed/'])}\n`);
    // the other way to settle it: deleting the lost dataset (its runs stay unless --runs); status
    // does not name it again while an index is still empty (the ghost's)
    const settled = await runCli(['delete', 'dataset', 'twin', '--yes'], stack.env);
    expect({ code: settled.code, stderr: settled.stderr }).toEqual({ code: 0, stderr: '' });
    expect(settled.stdout).toContain("  dataset twin: its records were lost with Redis's data; status stops naming it as one to ingest again\n");
    const settledStatus = (await runCli(['status'], stack.env)).stdout;
    expect(settledStatus).toContain(lostLine(ghost));
    expect(settledStatus).not.toContain('dataset twin');
    expect((await runCli(['cache', 'rebuild-index', '--embedder', ghost], stack.env)).code).toBe(0);
    const after = (await runCli(['status'], stack.env)).stdout;
    expect(after).not.toContain('Redis lost its data');
    expect(after).not.toContain('lost its records');
    for (const ext of ['json', 'npy'] as const) await store.deleteObject(bucket, layout.shard(ghost, ghostShard, ext));
    await redis.del(keys.embeddingIndex(ghost));
    expect((await runCli(['delete', 'dataset', 'twin', '--runs', '--yes'], stack.env)).code).toBe(0);
    // a later loss is a loss again: named as the first was
    await redis.del(keys.embeddingIndex(space));
    await datasets.remove('shapes');
    const second = (await runCli(['status'], stack.env)).stdout;
    expect(second).toContain(lostLine(space));
    expect(second).toContain(datasetLine('shapes'));
    // an ingest cut short before its listing ended (here: after its one page was written, as a
    // crash after the first of many pages would leave it): the dataset has items and its prefix,
    // but is not back, and status goes on naming it. The index restored first, as ingest does, so
    // that its jobs embed nothing again.
    await restoreLostIndex(ctx, space);
    const cut = new Error('ingest cut short');
    const onPage = () => {
      throw cut;
    };
    await expect(ingestPrefix({ bucket: photos, prefix: 'set/', dataset: 'shapes', space: stack.space }, ctx, onPage)).rejects.toBe(cut);
    expect(await datasets.exists('shapes')).toBe(true);
    expect((await runCli(['status'], stack.env)).stdout).toContain(
      `warning: dataset shapes lost its records with Redis's data and is not ingested again to the end yet (an ingest cut short, or prefixes left): transferline ingest s3://${photos}/set/ -d shapes --embedder ${space}\n`,
    );
    // train does not learn from the part that is back without being told (--partial: the two-prefix case above)
    const again2 = reingest('shapes', ['set/']);
    const refused = await runCli(['train', '-d', 'shapes', '--epochs', '1', '--run-id', 'shapes-part'], stack.env);
    expect({ code: refused.code, stdout: refused.stdout }).toEqual({ code: 1, stdout: '' });
    expect(refused.stderr).toBe(`transferline: dataset shapes lost its records with Redis's data and is not ingested again to the end yet (an ingest cut short, or prefixes left): ${again2}. A run now would learn from part of it: ingest again first, or train with --partial on what it has\n`);
    expect((await runCli(['ingest', `s3://${photos}/set/`, '-d', 'shapes'], stack.env)).code).toBe(0);
    expect((await runCli(['status'], stack.env)).stdout).not.toContain('lost its records');
  }, 180_000);

  it('cache rebuild-index of a lost index records the loss first, as ingest does: the datasets it took stay named', async () => {
    // a loss nothing recorded (status does not, in a Redis no embed worker has sent a heartbeat
    // to since: a FLUSHALL while the workers were stopped), then the index rebuilt by hand
    const { redis, keys, datasets, cache } = ctx.services;
    const space = stack.space.id;
    await redis.del(keys.embeddingIndex(space), keys.dataLossRecorded(), keys.datasetsLost(), keys.datasetsLostSources());
    await datasets.remove('typo');
    expect(await cache.indexLost(space)).toBe(true);
    expect((await runCli(['cache', 'rebuild-index', '--embedder', space], stack.env)).code).toBe(0);
    expect(await cache.indexLost(space)).toBe(false);
    const status = await runCli(['status'], stack.env);
    expect(status.stdout).toContain(`warning: dataset typo has trained runs but lost its records with Redis's data; ingest it again (its images come from the cache once the index is back): transferline ingest s3://${photos}/typo/ -d typo --embedder ${space}\n`);
    expect((await runCli(['delete', 'dataset', 'typo', '--yes'], stack.env)).code).toBe(0);
  });

  it('train --no-promote leaves the latest run as it was; promote makes a run the latest, or rolls back to an older one', async () => {
    const latestOf = async () => (await latestRun(ctx, 'shapes'))?.runId;
    const before = await latestOf();
    const r = await runCli(['train', '-d', 'shapes', '--epochs', '2', '--run-id', 'shapes-candidate', '--no-promote'], stack.env);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('  not made the latest run of shapes (--no-promote): classify, serve and export use it as -m shapes@shapes-candidate; make it the latest with: transferline promote shapes@shapes-candidate\n');
    expect(await latestOf()).toBe(before);
    expect((await runCli(['models', '-d', 'shapes'], stack.env)).stdout).toMatch(new RegExp(`^shapes\\s+${before} \\*`, 'm'));

    const promoted = await runCli(['promote', 'shapes@shapes-candidate'], stack.env);
    expect(promoted.stdout).toBe(`shapes@shapes-candidate is now the latest run of shapes (it was ${before}): classify, serve and export use it without @run\n`);
    expect(await latestOf()).toBe('shapes-candidate');
    expect((await runCli(['promote', 'shapes@shapes-candidate'], stack.env)).stdout).toBe('shapes@shapes-candidate is the latest run of shapes already\n');
    // rolled back
    expect((await runCli(['promote', `shapes@${before}`], stack.env)).code).toBe(0);
    expect(await latestOf()).toBe(before);
    // a run made the latest that does worse than the one it replaced (a user's trial: serve followed
    // an experiment of lower accuracy, unsaid): train says so, and how to go back, which works
    const poor = await runCli(['train', '-d', 'shapes', '--epochs', '1', '--patience', '0', '--learning-rate', '0.000001', '--run-id', 'shapes-poor'], stack.env);
    expect(poor.code).toBe(0);
    const accuracyOf = async (run: string) => (await ctx.services.store.getDocument(ReportDoc, stack.config.s3.bucket, ctx.services.layout.runFile('shapes', run, 'report.json')))!.validation.accuracy;
    expect(await accuracyOf('shapes-poor')).toBeLessThan(await accuracyOf(before!));
    expect(poor.stdout).toMatch(new RegExp(`^ {2}note: it replaced run ${before} \\(validation accuracy [\\d.]+%, against [\\d.]+%\\) as the latest of shapes, which classify, serve and export use; to go back: transferline promote shapes@${before} \\(train with --no-promote to try settings without this\\)$`, 'm'));
    expect((await runCli(['promote', `shapes@${before}`], stack.env)).code).toBe(0);
    expect(await latestOf()).toBe(before);
    expect((await runCli(['delete', 'run', 'shapes@shapes-poor', '--yes'], stack.env)).code).toBe(0);
    // promoted once, a --no-promote run is a run like the others: no mark, not a candidate
    const listed = await runCli(['models', '-d', 'shapes'], stack.env);
    expect(listed.stdout).toMatch(/^shapes\s+shapes-candidate\s/m);
    expect(listed.stdout).not.toContain('(--no-promote)');
    const candidate = (JSON.parse((await runCli(['models', '-d', 'shapes', '--json'], stack.env)).stdout) as { runId: string; candidate: boolean }[]).find((x) => x.runId === 'shapes-candidate');
    expect(candidate?.candidate).toBe(false);
    // its marker goes with it; one left behind (a deletion cut short) does not count for a later
    // --no-promote run of the same id
    const markerKey = ctx.services.layout.runFile('shapes', 'shapes-candidate', 'promoted.json');
    const marker = await ctx.services.store.getDocument(PromotedDoc, stack.config.s3.bucket, markerKey);
    expect(marker).toBeDefined();
    expect((await runCli(['delete', 'run', 'shapes@shapes-candidate', '--yes'], stack.env)).code).toBe(0);
    expect(await ctx.services.store.headObject(stack.config.s3.bucket, markerKey)).toBeUndefined();
    await ctx.services.store.putJson(stack.config.s3.bucket, markerKey, marker);
    expect((await runCli(['train', '-d', 'shapes', '--epochs', '2', '--run-id', 'shapes-candidate', '--no-promote'], stack.env)).code).toBe(0);
    expect((await runCli(['models', '-d', 'shapes'], stack.env)).stdout).toMatch(/^shapes\s+shapes-candidate .*\(--no-promote\)$/m);
    // a rollback to an older run stands when the newer run's job runs again (retried from the board)
    const runs = JSON.parse((await runCli(['models', '-d', 'shapes', '--json'], stack.env)).stdout) as { runId: string; candidate: boolean; createdAt: string }[];
    const beforeAt = runs.find((r) => r.runId === before)!.createdAt;
    const older = runs.find((r) => r.createdAt < beforeAt && !r.candidate)!.runId;
    expect((await runCli(['promote', `shapes@${older}`], stack.env)).code).toBe(0);
    const job = (await ctx.queues.train.getJob(jobIds.train({ runId: before! })))!;
    await job.retry('completed');
    await until('the retried run to complete', async () => (await job.getState()) === 'completed', 60);
    expect(await latestOf()).toBe(older);
    expect((await runCli(['promote', `shapes@${before}`], stack.env)).code).toBe(0);
    // a run of shapes on its way, which makes itself the latest when it ends: promote says so
    await trainCommand(ctx, { dataset: 'shapes', wait: false, epochs: 10_000, patience: 0, runId: 'shapes-coming' });
    const warned = await runCli(['promote', `shapes@${older}`], stack.env);
    expect(warned.code).toBe(0);
    expect(warned.stdout).toMatch(new RegExp(`^note: run shapes-coming of shapes is (training|queued) and becomes the latest when it ends \\(it was not started with --no-promote\\): to keep ${older}, cancel it \\(transferline train --cancel shapes-coming\\) or promote ${older} again after it$`, 'm'));
    expect((await runCli(['train', '--cancel', 'shapes-coming'], stack.env, 150_000)).code).toBe(0);
    expect((await runCli(['promote', `shapes@${before}`], stack.env)).stdout).not.toContain('note:');
    const missing = await runCli(['promote', 'shapes@no-such-run'], stack.env);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain('no run no-such-run of shapes');
    expect((await runCli(['promote', 'shapes'], stack.env)).code).toBe(2);
  }, 180_000);

  it('Ctrl-C while train follows its run: exit 130, the run goes on, and it says how to follow it again', async () => {
    const runId = 'interrupted-run';
    // long enough (about 5 s here) that it is still training when Ctrl-C lands; 150 epochs once ended first under CI load
    const child = spawn(process.execPath, [cliPath, 'train', '-d', 'shapes', '--epochs', '1000', '--patience', '0', '--batch-size', '8', '--run-id', runId], { env: { AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true', ...stack.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let said = '';
    child.stdout.on('data', (d: Buffer) => (said += d.toString()));
    child.stderr.on('data', (d: Buffer) => (said += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
    const deadline = Date.now() + 60_000;
    while (!/training shapes: [1-9]/.test(said)) {
      if (Date.now() > deadline) throw new Error(`the run never showed an epoch: ${said}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    child.kill('SIGINT');
    expect(await exited).toBe(130);
    expect(said).toContain(`interrupted; run ${runId} goes on in the train worker (follow it again: transferline train --follow ${runId}; stop it: transferline train --cancel ${runId})`);
    const again = await runCli(['train', '--follow', runId], stack.env);
    expect(again.code).toBe(0);
    expect(again.stdout).toMatch(new RegExp(`^run ${runId}: validation accuracy`, 'm'));
  });

  it('Ctrl-C while train waits for its images: exit 130, and it says no run was queued (a user\'s trial read the workers going on as the run)', async () => {
    // images listed and not yet read (their jobs on their way): train waits for them
    await ctx.services.datasets.setSpace('waitint', stack.space.id);
    await ctx.services.datasets.putItems('waitint', (['circle', 'square'] as const).map((label) => [`${photos}/waitint/${label}/0.jpg`, { label, etag: 'e', space: stack.space.id, state: 'pending' }]));
    const child = spawn(process.execPath, [cliPath, 'train', '-d', 'waitint'], { env: { AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true', ...stack.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let said = '';
    child.stdout.on('data', (d: Buffer) => (said += d.toString()));
    child.stderr.on('data', (d: Buffer) => (said += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
    const deadline = Date.now() + 60_000;
    while (!/not embedded yet; waiting for them/.test(said)) {
      if (Date.now() > deadline) throw new Error(`train never said it waits: ${said}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    child.kill('SIGINT');
    expect(await exited).toBe(130);
    expect(said).toContain('interrupted while waiting for its images: no run was queued. The images on their way go on (see "transferline status -d waitint"); train again once they are in');
    expect((await ctx.queues.train.getJobs(['waiting', 'active', 'delayed', 'prioritized'])).filter((j) => (j?.data as { dataset?: string }).dataset === 'waitint')).toEqual([]);
    await ctx.services.datasets.remove('waitint');
  });

  it('a run whose only train worker hangs: train --follow says its lock ran out and gives up, where it waited for ever', async () => {
    const runId = 'hung-mid-run';
    expect((await runCli(['train', '-d', 'shapes', '--epochs', '10000', '--patience', '0', '--run-id', runId, '--no-wait'], stack.env)).code).toBe(0);
    const holder = await holderAtEpoch(runId, 1);
    // status names the run in training, and how far it has got
    expect((await runCli(['status'], stack.env)).stdout).toMatch(new RegExp(`^ {2}train: run ${runId} of shapes is training on train worker [^ ,]+:\\d+:[0-9a-f]+, epoch \\d+ of at most 10000 \\(follow it: transferline train --follow ${runId}\\)$`, 'm'));
    // stopped: its connection stays open, so it is still a connected train worker
    expect(stack.supervisor.signal('train', 1, 'SIGSTOP')).toBe(true);
    try {
      // (a shell with shorter train locks than the workers' 15 s waits out fewer intervals: the
      // lapse itself comes within the workers' lock)
      const r = await runCli(['train', '--follow', runId, '--stall-timeout', '3'], { ...stack.env, TL_TRAIN_JOB_LOCK_MS: '5000' }, 90_000);
      expect(r.timedOut).toBe(false);
      expect(r.code).toBe(4);
      expect(r.stderr).toContain(`run ${runId} has not moved for 3 s: its train worker (${holder}) stopped renewing its lock (hung: SIGSTOPped, its event loop blocked, or cut off from Redis?), and no other train worker is connected to take it up: restart it`);
    } finally {
      stack.supervisor.signal('train', 1, 'SIGCONT');
    }
    // woken, the run is stopped as any other, and the worker is free for the next
    expect((await runCli(['train', '--cancel', runId], stack.env, 150_000)).code).toBe(0);
  }, 240_000);

  it('a train worker asked to stop (SIGTERM, a scale-down) puts its run back at once: another takes it up within seconds, not after the stop deadline and the lock', async () => {
    const runId = 'stopped-mid-run';
    await trainCommand(ctx, { dataset: 'shapes', wait: false, epochs: 10_000, patience: 0, batchSize: 8, runId });
    const holder = await holderAtEpoch(runId, 1);
    // someone follows it: told why its bar starts again from 0 (a user's trial saw 18/400, then 0/400, unexplained)
    let followed = '';
    const follower = runCli(['train', '--follow', runId], stack.env, 120_000, { onOutput: (c) => (followed += c) });
    await until('the follower to show the run training', () => /training shapes: \d+\/10000 loss/.test(followed), 30);
    const asked = Date.now();
    expect(stack.supervisor.signal('train', 1, 'SIGTERM')).toBe(true);
    // Before: the worker trained on until its stop deadline (45 s), exited, and the run waited
    // for its lock to run out (15 s here, a minute by default) before it started again.
    let again: { holder?: string; epoch: number } | undefined;
    await until('another train worker to take the run up', async () => {
      const p = await runProgress(runId);
      if (p.state === 'active' && p.holder !== holder && p.epoch >= 1) again = p;
      return again !== undefined;
    }, 40, 200);
    expect((Date.now() - asked) / 1000).toBeLessThan(STOP_DEADLINE_MS / 1000);
    // the stopped worker exited cleanly (0): it did not wait out its deadline (exit 1)
    expect(stack.events.some((e) => /^train#1 exited \(0\); restarted/.test(e))).toBe(true);
    expect(stack.events.some((e) => /train#1 exited \(1\)/.test(e))).toBe(false);
    const log = readFileSync(path.join(stack.dataDir, 'logs', 'train.log'), 'utf8');
    expect(log).toMatch(new RegExp(`stopping: run ${runId} goes back to the queue after epoch \\d+ of 10000, for another train worker to start again`));
    expect((await runCli(['train', '--cancel', runId], stack.env, 150_000)).code).toBe(0);
    const said = await follower;
    expect(said.stdout).toMatch(new RegExp(`^run ${runId} goes back to the queue after epoch \\d+ of 10000: its train worker is stopping \\(after epoch \\d+ of 10000\\); a train worker starts it again from its first epoch$`, 'm'));
  }, 180_000);

  it('a train worker asked to stop finishes a run whose epochs left fit its stop deadline, instead of putting it back to start again', async () => {
    const runId = 'nearly-done';
    await trainCommand(ctx, { dataset: 'shapes', wait: false, epochs: 200, patience: 0, batchSize: 8, runId });
    const id = jobIds.train({ runId });
    const holder = await holderAtEpoch(runId, 5);
    expect(stack.supervisor.signal('train', 1, 'SIGTERM')).toBe(true);
    await until('the run to complete', async () => (await ctx.queues.train.getJobState(id)) === 'completed', 60);
    // finished by the worker that was stopping, not put back for another to start again
    expect((await ctx.queues.train.getJob(id))?.processedBy).toBe(holder);
    const log = readFileSync(path.join(stack.dataDir, 'logs', 'train.log'), 'utf8');
    expect(log).not.toContain(`run ${runId} goes back to the queue`);
    expect(await ctx.services.store.headObject(stack.config.s3.bucket, ctx.services.layout.runFile('shapes', runId, 'report.json'))).toBeDefined();
    await until('the train worker to be back', async () => (await ctx.queues.train.getWorkersCount()) >= 1, 60);
  }, 180_000);

  it('a run whose train worker is killed: train says the worker is gone, which worker takes it up again, and ends with the report', async () => {
    // Last in this file: the killed run's lock (TL_TRAIN_JOB_LOCK_MS) holds the train worker's slot until it runs out.
    const runId = 'killed-mid-run';
    const train = runCli(['train', '-d', 'shapes', '--epochs', '150', '--patience', '0', '--batch-size', '8', '--seed', '3', '--run-id', runId], stack.env, 300_000);
    const holder = await holderAtEpoch(runId, 1);
    expect(stack.supervisor.signal('train', 1, 'SIGKILL')).toBe(true);
    // status says the run's worker is gone while its lock holds it, where it said "is training"
    let said = '';
    const out = { write: (s: string) => ((said += s), true) } as unknown as NodeJS.WritableStream;
    await until("status to say the run's worker is gone", async () => {
      said = '';
      await statusCommand({ ...ctx, out }, { dataset: 'shapes' });
      return !said.includes(`run ${runId} of shapes is training`);
    }, 15, 250);
    expect(said).toMatch(new RegExp(`^  train: run ${runId} of shapes reached epoch \\d+ of at most 150 on train worker ${holder.replace(/[.]/g, '\\.')}, which is stopping or gone \\(a train worker that stops puts the run back at the end of its epoch; if it was killed, a train worker starts the run again once its lock has run out, about 23 s after\\)`, 'm'));
    const lock = jobLock('train', stack.config);
    const within = Math.ceil((lock.lockMs + lock.stalledIntervalMs) / 1000);
    expect(within).toBe(23);
    const r = await train;
    expect(r.code).toBe(0);
    const gone = new RegExp(`^run ${runId}: its train worker \\(${holder.replace(/[.]/g, '\\.')}\\) is stopping or gone; one that stops puts the run back at the end of its epoch, or finishes it first if it can within its stop deadline; if it was killed, another train worker takes it up again when its lock runs out, within about ${within} s$`, 'm');
    expect(r.stdout).toMatch(gone);
    const again = /^run killed-mid-run started again on train worker (\S+)$/m.exec(r.stdout);
    expect(again?.[1]).toBeDefined();
    expect(again![1]).not.toBe(holder);
    // said once each, the notice before the restart, and the report after both
    expect(r.stdout.match(/is stopping or gone; /g)).toHaveLength(1);
    // its silence until then is the worker's going, said: not then a worker that "may be hung"
    expect(r.stdout).not.toMatch(/may be hung/);
    expect(r.stdout.indexOf('stopping or gone')).toBeLessThan(r.stdout.indexOf('started again'));
    expect(r.stdout.indexOf('started again')).toBeLessThan(r.stdout.indexOf(`run ${runId}: validation accuracy`));
    expect(stack.events.some((e) => /train#1 exited \(SIGKILL\)/.test(e))).toBe(true);
  }, 300_000);
});
