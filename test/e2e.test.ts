import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { copyFile, mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openCliContext, type CliContext } from '../apps/producer/src/cli-context.js';
import { ingestCommand } from '../apps/producer/src/commands/ingest.command.js';
import { trainCommand } from '../apps/producer/src/commands/train.command.js';
import { FEATURE_WORKER_NODE_FLAGS } from '../apps/producer/src/embedded/supervisor.js';
import { renderSample, writeSampleSet } from '../apps/producer/src/demo/sample-images.js';
import { loadHead } from '../apps/train-worker/src/head.store.js';
import { loadTfRuntime } from '../packages/shared/src/tf-runtime.js';
import { guardLeaks } from './support/leak-guard.js';
import { runCli, scrape, startTestStack, type TestStack } from './support/stack.js';

const execFileAsync = promisify(execFile);

guardLeaks();

const PER_CLASS = 22;
let stack: TestStack;
let ctx: CliContext;
let output = '';
const sink = { write: (s: string) => ((output += s), true) } as unknown as NodeJS.WritableStream;
const photos = 'photos-e2e';

beforeAll(async () => {
  stack = await startTestStack({ TL_EMBED_BATCH_SIZE: '8', TL_MODEL_WEIGHTS: 'random' });
  ctx = await openCliContext(stack.config, sink);
});
afterAll(async () => {
  await ctx?.close();
  await stack?.destroy();
});

/** awscli as the user who drops files; asynchronous, since the S3 server runs in this process. */
async function aws(args: string[]): Promise<string> {
  const { stdout } = await execFileAsync('aws', ['--endpoint-url', stack.config.s3.endpoint, ...args], {
    env: { PATH: process.env.PATH, HOME: stack.dataDir, AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER', AWS_DEFAULT_REGION: 'us-east-1' },
  });
  return stdout;
}

describe('a bucket of labelled images in, a trained classifier out', () => {
  const datasetEnv = () => stack.env;
  let distinct = 0;

  it('takes images dropped with awscli, and embeds each distinct image exactly once', async () => {
    const dir = path.join(stack.dataDir, 'photos');
    distinct = await writeSampleSet(dir, PER_CLASS, 5);
    // the same bytes under a second key (and a second label folder would be a conflict; same label here)
    await copyFile(path.join(dir, 'circle', 'circle-000.jpg'), path.join(dir, 'circle', 'copy of circle 0.jpg'));
    await mkdir(path.join(dir, 'ünïcode label'), { recursive: true });
    await writeFile(path.join(dir, 'ünïcode label', 'x.jpg'), await renderSample('circle', 999, 5));
    distinct++;
    await aws(['s3', 'mb', `s3://${photos}`]);
    await aws(['s3', 'cp', '--recursive', '--quiet', dir, `s3://${photos}/train/`]);
    await aws(['s3', 'cp', '--quiet', path.join(dir, 'circle', 'circle-001.jpg'), `s3://${photos}/train/at-the-root.jpg`]);

    const r = await ingestCommand(ctx, `s3://${photos}/train/`, { dataset: 'e2e', wait: true });
    expect(r.counts).toMatchObject({ listed: distinct + 2, unlabelled: 1, enqueued: distinct + 1 });
    expect(r.status).toMatchObject({ total: distinct + 1, embedded: distinct + 1, failed: 0, pending: 0 });
    // the copy of circle 0 finds its twin's embedding cached if embed got to the twin first
    expect(output).toMatch(new RegExp(`dataset e2e: ${distinct + 1} images, ${distinct + 1} embedded \\([01] of them already in the embedding cache: not computed again\\), 0 failed`));
    expect(r.status!.labels).toEqual([
      { label: 'circle', count: PER_CLASS + 1, ready: PER_CLASS + 1 },
      { label: 'square', count: PER_CLASS, ready: PER_CLASS },
      { label: 'triangle', count: PER_CLASS, ready: PER_CLASS },
      { label: 'ünïcode label', count: 1, ready: 1 },
    ]);

    // one cache entry per distinct content: the copies share their original's entry
    expect(await ctx.services.cache.size(stack.space.id)).toBe(distinct);
    let rows = 0;
    for await (const o of ctx.services.store.listObjects(stack.config.s3.bucket, `embeddings/${stack.space.id}/`)) {
      if (o.key.endsWith('.json')) rows += (await ctx.services.store.getJson<{ hashes: string[] }>(stack.config.s3.bucket, o.key))!.hashes.length;
    }
    expect(rows).toBe(distinct);
    const [a, b] = await ctx.services.datasets.getItems('e2e', [`${photos}/train/circle/circle-000.jpg`, `${photos}/train/circle/copy of circle 0.jpg`]);
    expect(a!.sha256).toBeDefined();
    expect(b!.sha256).toBe(a!.sha256);
    const embed = await scrape(stack.ports.embed);
    expect(embed.get('tl_images_total{stage="embed",outcome="embedded"}')).toBe(distinct);
  });

  it('a second ingest (the CLI, as a user runs it) enqueues no work and runs no forward pass', async () => {
    const before = await scrape(stack.ports.embed);
    const r = await runCli(['ingest', `s3://${photos}/train/`, '--dataset', 'e2e'], datasetEnv());
    expect(r.stderr).not.toMatch(/transferline:/);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/\b0 enqueued\b/);
    expect(r.stdout).toMatch(new RegExp(`${distinct + 1} embedded`));
    const after = await scrape(stack.ports.embed);
    expect(after.get('tl_embed_batch_size_count')).toBe(before.get('tl_embed_batch_size_count'));
    const counts = await ctx.queues.embed(stack.space.id).getJobCounts('waiting', 'active', 'delayed');
    expect(counts).toEqual({ waiting: 0, active: 0, delayed: 0 });
    // a new dataset over the same objects is filled from the cache: no download, no job
    const again = await ingestCommand(ctx, `s3://${photos}/train/`, { dataset: 'e2e-copy', wait: true });
    expect(again.counts.enqueued).toBe(0);
    expect(again.counts.fromCache).toBe(distinct + 1);
  });

  it('trains a head well above chance while /metrics shows the epochs go by, and writes a model that loads back', async () => {
    const seen: Map<string, number>[] = [];
    let scraping = true;
    const scraper = (async () => {
      while (scraping) {
        seen.push(await scrape(stack.ports.train));
        await new Promise((r) => setTimeout(r, 25));
      }
    })();
    const epochs = 60;
    const run = await trainCommand(ctx, { dataset: 'e2e', wait: true, epochs, batchSize: 4, patience: 0 });
    scraping = false;
    await scraper;

    const result = run.result!;
    expect(result.examples).toBe(distinct);
    // 4 classes, one of them a single image: chance is about 1/3 for the rest
    expect(result.validationAccuracy).toBeGreaterThan(0.7);

    const epochsSeen = new Set(seen.map((m) => m.get('tl_train_epoch{dataset="e2e"}')).filter((v) => v !== undefined));
    expect([...epochsSeen].some((e) => e! > 0 && e! < epochs)).toBe(true);
    expect(epochsSeen.size).toBeGreaterThanOrEqual(3);
    const last = seen.at(-1)!;
    expect(last.get('tl_train_epoch{dataset="e2e"}')).toBe(epochs);
    expect(last.get('tl_train_loss{dataset="e2e",split="validation"}')).toBeGreaterThanOrEqual(0);
    const history = (run.report as { history: { valAccuracy: number }[]; bestEpoch: number }).history;
    expect(last.get('tl_train_accuracy{dataset="e2e",split="validation"}')).toBeCloseTo(history.at(-1)!.valAccuracy, 6);
    // the saved model is the best validation-loss epoch's
    expect(result.validationAccuracy).toBeCloseTo(history[result.bestEpoch - 1]!.valAccuracy, 6);

    const bucket = stack.config.s3.bucket;
    for (const f of ['model.json', 'weights.bin', 'labels.json', 'report.json']) {
      expect(await ctx.services.store.headObject(bucket, `${result.modelPrefix}${f}`), f).toBeDefined();
    }
    expect(await ctx.services.store.getJson(bucket, 'models/e2e/latest.json')).toMatchObject({ runId: result.runId });
    const report = (await ctx.services.store.getJson<{ labels: string[]; validation: { confusionMatrix: number[][]; accuracy: number } }>(bucket, `${result.modelPrefix}report.json`))!;
    const labels = (await ctx.services.store.getJson<string[]>(bucket, `${result.modelPrefix}labels.json`))!;
    expect(labels).toEqual(report.labels);
    expect(report.validation.confusionMatrix.flat().reduce((x, y) => x + y)).toBe((run.report as { split: { validation: number } }).split.validation);

    // the saved head takes raw embeddings and classifies the training images as the report says
    const { tf } = await loadTfRuntime('wasm');
    const head = await loadHead(tf, ctx.services.store, bucket, result.modelPrefix);
    const items: { sha: string; label: string }[] = [];
    for await (const page of ctx.services.datasets.scan('e2e')) for (const [, r] of page) items.push({ sha: r.sha256!, label: r.label });
    const unique = [...new Map(items.map((i) => [i.sha, i])).values()];
    const x = await ctx.services.cache.load(stack.space.id, unique.map((u) => u.sha));
    const predicted = tf.tidy(() => (head.predict(tf.tensor2d(x.data, [x.rows, x.dim])) as import('@tensorflow/tfjs').Tensor).argMax(-1).arraySync() as number[]);
    const correct = predicted.filter((p, i) => labels[p] === unique[i]!.label).length;
    expect(correct / unique.length).toBeGreaterThan(0.8);
    head.dispose();
  });

  it('runs its feature workers with the Node flags of every deployment file', async () => {
    const workers = Object.entries(stack.supervisor.pids()).filter(([name]) => /^(preprocess|embed)#/.test(name));
    expect(workers.map(([name]) => name.split('#')[0]).sort()).toEqual(['embed', 'preprocess']);
    for (const [name, pid] of workers) {
      const argv = (await readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0');
      const script = argv.findIndex((a) => a.endsWith(path.join('feature-worker', 'dist', 'main.js')));
      expect(argv.slice(1, script), name).toEqual([...FEATURE_WORKER_NODE_FLAGS]);
    }
  });

  it('status shows every queue and the dataset', async () => {
    const r = await runCli(['status', '--json'], datasetEnv());
    expect(r.code).toBe(0);
    const s = JSON.parse(r.stdout) as {
      queues: Record<string, { workers: number; failed: number }>;
      spaces: { space: { id: string; resize: string }; workers: { backend: string; storage?: { bucket: string; prefix: string } }[]; cached: number }[];
      datasets: { dataset: string; embedded: number; space: string }[];
    };
    // in the pipeline's order, as the console lists them
    expect(Object.keys(s.queues)).toEqual(['preprocess', `embed.${stack.space.id}`, 'train', 'classify']);
    expect(s.queues[`embed.${stack.space.id}`]!.workers).toBe(1);
    expect(s.spaces).toHaveLength(1);
    expect(s.spaces[0]).toMatchObject({ space: { id: stack.space.id, resize: 'squash' }, cached: distinct });
    // ONNX Runtime is the CPU backend when no GPU package loads
    expect(s.spaces[0]!.workers.map((w) => w.backend)).toEqual(['onnx']);
    // and where it keeps embeddings and models, for a shell set up apart from it to be told
    expect(s.spaces[0]!.workers.map((w) => w.storage)).toEqual([{ bucket: stack.config.s3.bucket, prefix: stack.config.s3.prefix }]);
    expect(s.datasets.find((d) => d.dataset === 'e2e')?.space).toBe(stack.space.id);
    expect(s.datasets.find((d) => d.dataset === 'e2e')?.embedded).toBe(distinct + 1);
  });
});
