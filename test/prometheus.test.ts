import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openCliContext, type CliContext } from '../apps/producer/src/cli-context.js';
import { ingestCommand } from '../apps/producer/src/commands/ingest.command.js';
import { trainCommand } from '../apps/producer/src/commands/train.command.js';
import { freePort } from '../apps/producer/src/embedded/redis.server.js';
import { enqueue, jobIds, TrainJob } from '../packages/shared/src/index.js';
import { renderSample, SAMPLE_CLASSES, type SampleClass } from '../apps/producer/src/demo/sample-images.js';
import { guardLeaks } from './support/leak-guard.js';
import { repoRoot, startTestStack, type TestStack } from './support/stack.js';

guardLeaks();

let stack: TestStack;
let ctx: CliContext;
let prometheus: ChildProcess;
let promUrl: string;
const sink = { write: () => true } as unknown as NodeJS.WritableStream;

/** Debian's prometheus, scraping every worker of the stack every 100 ms, as a user's would (faster). */
async function startPrometheus(dir: string, targets: Record<string, number>): Promise<void> {
  const port = await freePort();
  const config = [
    'global:',
    '  scrape_interval: 100ms',
    '  scrape_timeout: 90ms',
    'scrape_configs:',
    ...Object.entries(targets).flatMap(([job, p]) => [`  - job_name: ${job}`, '    static_configs:', `      - targets: ['127.0.0.1:${p}']`]),
  ].join('\n');
  await mkdir(path.join(dir, 'prom'), { recursive: true });
  await writeFile(path.join(dir, 'prom', 'prometheus.yml'), config);
  prometheus = spawn('prometheus', [`--config.file=${path.join(dir, 'prom', 'prometheus.yml')}`, `--storage.tsdb.path=${path.join(dir, 'prom', 'data')}`, `--web.listen-address=127.0.0.1:${port}`], { stdio: 'ignore' });
  promUrl = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 100; i++) {
    if (await fetch(`${promUrl}/-/ready`).then((r) => r.ok, () => false)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('prometheus did not become ready (is Debian\'s prometheus installed? apt-get install prometheus)');
}

async function query(q: string, start: number, end: number): Promise<{ metric: Record<string, string>; values: [number, string][] }[]> {
  const url = `${promUrl}/api/v1/query_range?query=${encodeURIComponent(q)}&start=${start}&end=${end}&step=0.1`;
  const body = (await (await fetch(url)).json()) as { status: string; data: { result: { metric: Record<string, string>; values: [number, string][] }[] } };
  expect(body.status).toBe('success');
  return body.data.result;
}

beforeAll(async () => {
  stack = await startTestStack({ TL_EMBED_BATCH_SIZE: '8', TL_MODEL_WEIGHTS: 'random' });
  ctx = await openCliContext(stack.config, sink);
  await startPrometheus(stack.dataDir, { 'tl-train': stack.ports.train, 'tl-embed': stack.ports.embed, 'tl-preprocess': stack.ports.preprocess, 'tl-producer': stack.ports.producer });
  await ctx.services.store.ensureBucket('photos-prom');
  for (const kind of Object.keys(SAMPLE_CLASSES) as SampleClass[]) {
    for (let i = 0; i < 12; i++) await ctx.services.store.putObject('photos-prom', `train/${kind}/${i}.jpg`, await renderSample(kind, i, 31));
  }
  await ingestCommand(ctx, 's3://photos-prom/train/', { dataset: 'watched', wait: true });
});
afterAll(async () => {
  if (prometheus && prometheus.exitCode === null) {
    const exited = new Promise((r) => prometheus.once('exit', r));
    prometheus.kill('SIGTERM');
    await exited;
  }
  await ctx?.close();
  await stack?.destroy();
});

/** What `read` gives once `done` holds of it, or after 10 s (the last read: the test's expectation then says what it got). */
async function eventually<T>(read: () => Promise<T>, done: (value: T) => boolean): Promise<T> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const value = await read();
    if (done(value) || Date.now() > deadline) return value;
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** The queries of the dashboard's panel of that title, as Grafana sends them (its variables still in, but the deployment: All, as with one deployment). */
async function panelQueries(title: string): Promise<string[]> {
  const dashboard = JSON.parse(await readFile(path.join(repoRoot, 'infra', 'grafana', 'dashboards', 'transferline.json'), 'utf8')) as { panels: { title?: string; targets?: { expr: string }[] }[] };
  return dashboard.panels.find((p) => p.title === title)!.targets!.map((t) => t.expr.replaceAll('$deployment', '.*'));
}

// about 7 s of training on a 2-core machine (about 9 ms an epoch), some 70 scrapes at 100 ms;
// ten times faster, still some 7
const EPOCHS = 800;

describe('Prometheus watching a training run', () => {
  it('scrapes the per-epoch gauges while the run goes, and every worker is up', async () => {
    const start = Date.now() / 1000;
    // Enough epochs to span many scrapes (a softmax head on 36 images runs some 10 epochs between
    // two scrapes), and a learning rate low enough that the loss still falls
    // after the first scrape (at 1e-3 it has settled by then, and the last value can be above it).
    await trainCommand(ctx, { dataset: 'watched', wait: true, epochs: EPOCHS, batchSize: 2, learningRate: 1e-4, patience: 0 });
    await new Promise((r) => setTimeout(r, 600)); // one more scrape after the end
    const end = Date.now() / 1000;

    const epochs = await query('tl_train_epoch{dataset="watched"}', start, end);
    expect(epochs).toHaveLength(1);
    expect(epochs[0]!.metric).toMatchObject({ role: 'train', job: 'tl-train' });
    const values = [...new Set(epochs[0]!.values.map(([, v]) => Number(v)))];
    expect(values.filter((v) => v > 0 && v < EPOCHS).length).toBeGreaterThanOrEqual(2);
    expect(Math.max(...values)).toBe(EPOCHS);

    const loss = await query('tl_train_loss{dataset="watched"}', start, end);
    expect(loss.map((s) => s.metric.split).sort()).toEqual(['train', 'validation']);
    const trainLoss = loss.find((s) => s.metric.split === 'train')!.values.map(([, v]) => Number(v));
    expect(trainLoss.at(-1)!).toBeLessThan(trainLoss[0]!);

    const up = await query('up', end - 1, end);
    expect(up.map((s) => [s.metric.job, s.values.at(-1)![1]]).sort()).toEqual([
      ['tl-embed', '1'],
      ['tl-preprocess', '1'],
      ['tl-producer', '1'],
      ['tl-train', '1'],
    ]);
    const model = await query('tl_model_info', end - 1, end);
    expect(model[0]!.metric).toMatchObject({ weights: 'random', backend: 'onnx' });
    // the dataset's first run counted by increase(), as the alerts and the dashboard count it
    const runs = await query('increase(tl_train_runs_total{dataset="watched",outcome="completed"}[1h])', end - 1, end);
    expect(Number(runs[0]?.values.at(-1)?.[1])).toBeGreaterThan(0);
  });

  it("sees a stage's first failure with rate() and increase(), as the dashboard's failure panels do", async () => {
    const start = Date.now() / 1000;
    // before any: the series are there at 0, from each worker's start
    const zero = await query('tl_failures_total{role="preprocess",reason="not-an-image"}', start - 1, start);
    expect(zero.map((s) => s.values.at(-1)![1])).toEqual(['0']);
    const held = await query('tl_queue_jobs{role="preprocess",queue="preprocess",state="held"}', start - 1, start);
    expect(held.map((s) => s.values.at(-1)![1])).toEqual(['0']);
    await ctx.services.store.putObject('photos-prom', 'more/circle/notes.jpg', 'meeting notes, not a photo');
    await ingestCommand(ctx, 's3://photos-prom/more/', { dataset: 'first-failure', wait: true });
    await new Promise((r) => setTimeout(r, 600)); // a few more scrapes
    const end = Date.now() / 1000;
    const increase = await query('increase(tl_failures_total{stage="preprocess",reason="not-an-image"}[1h])', end - 1, end);
    expect(Number(increase[0]?.values.at(-1)?.[1])).toBeGreaterThan(0);
    const failed = await query('increase(tl_images_total{stage="preprocess",outcome="failed"}[1h])', end - 1, end);
    expect(Number(failed[0]?.values.at(-1)?.[1])).toBeGreaterThan(0);
  });

  it("the dashboard shows each process's images per second, and that each reaches Redis and S3 and is ready (what a user who scales out looks for)", async () => {
    // every worker's counters scraped (at 0 or more) before the images go through
    const deadline = Date.now() + 10_000;
    for (;;) {
      const now = Date.now() / 1000;
      const roles = new Set((await query('tl_images_total{stage=~"preprocess|embed"}', now - 0.5, now)).map((s) => s.metric.role));
      if (roles.size === 2) break;
      if (Date.now() > deadline) throw new Error(`only ${[...roles].join(', ') || 'none'} scraped`);
      await new Promise((r) => setTimeout(r, 200));
    }
    for (let i = 0; i < 4; i++) await ctx.services.store.putObject('photos-prom', `busy/${i % 2 ? 'circle' : 'square'}/${i}.jpg`, await renderSample(i % 2 ? 'circle' : 'square', 90 + i, 31));
    await ingestCommand(ctx, 's3://photos-prom/busy/', { dataset: 'busy', wait: true });
    const [perProcess] = await panelQueries('Images per second by process');
    // as scrapes come in (a loaded machine may miss one)
    const busy = await eventually(async () => {
      const now = Date.now() / 1000;
      const rates = await query(perProcess!.replaceAll('$__rate_interval', '1m'), now - 0.5, now);
      return rates.filter((s) => Number(s.values.at(-1)![1]) > 0).map((s) => s.metric.role!).sort();
    }, (roles) => roles.length === 2);
    expect(busy).toEqual(['embed', 'preprocess']);
    const end = Date.now() / 1000;
    const [reachable, ready] = await panelQueries('Dependencies reachable, and ready, by process');
    const up = await query(reachable!, end - 0.5, end);
    expect(up.map((s) => `${s.metric.role} ${s.metric.dependency} ${s.values.at(-1)![1]}`).sort()).toEqual(['embed redis 1', 'embed s3 1', 'preprocess redis 1', 'preprocess s3 1', 'train redis 1', 'train s3 1']);
    const readyNow = await query(ready!, end - 0.5, end);
    expect(readyNow.map((s) => `${s.metric.role} ${s.values.at(-1)![1]}`).sort()).toEqual(['embed 1', 'preprocess 1', 'producer 1', 'train 1']);
  });

  it("counts a run that ends before it is scraped: a dataset's run counters are there at 0 before its first run, and the dashboard's panel counts it", async () => {
    // images that all fail: a run of them fails at once (no-data), often between two scrapes
    // (train refuses such a dataset: the run is queued as another client could queue it)
    for (const label of ['a', 'b']) await ctx.services.store.putObject('photos-prom', `lonely/${label}/notes.jpg`, 'not an image at all');
    await ingestCommand(ctx, 's3://photos-prom/lonely/', { dataset: 'lonely', wait: true });
    // scraped at 0 before any run
    const deadline = Date.now() + 10_000;
    let before: { values: [number, string][] }[] = [];
    while (Date.now() < deadline) {
      const now = Date.now() / 1000;
      before = await query('tl_train_runs_total{dataset="lonely",outcome="failed"}', now - 0.5, now);
      if (before.length) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    expect(before.map((s) => s.values.at(-1)![1])).toEqual(['0']);
    await expect(trainCommand(ctx, { dataset: 'lonely', wait: true, epochs: 5 })).rejects.toThrow(/has nothing to learn from/);
    const payload = TrainJob.parse({ dataset: 'lonely', runId: 'lonely-anyway', embedderId: (await ctx.services.datasets.space('lonely'))!, partial: false, epochs: 5, stallSeconds: 60 });
    await enqueue(ctx.queues.train, 'train', [{ id: jobIds.train({ runId: payload.runId }), payload }]);
    // the panel's own query, as scrapes come in (a loaded machine may miss one)
    const expr = (await panelQueries('Training runs in the time range'))[0]!.replaceAll('$__range', '1h').replaceAll('$dataset', 'lonely');
    const runs = await eventually(async () => {
      const now = Date.now() / 1000;
      return (await query(expr, now - 0.5, now)).map((s) => [s.metric.outcome, Math.round(Number(s.values.at(-1)![1]))]);
    }, (r) => r.length > 0);
    expect(runs).toEqual([['failed', 1]]);
  });
});
