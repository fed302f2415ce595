import { randomBytes } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openCliContext, type CliContext } from '../apps/producer/src/cli-context.js';
import { consoleCommand } from '../apps/producer/src/commands/console.command.js';
import { startConsole, type ConsoleHandle } from '../apps/producer/src/console/console.server.js';
import { renderSample, type SampleClass } from '../apps/producer/src/demo/sample-images.js';
import { startEmbeddedRedis } from '../apps/producer/src/embedded/redis.server.js';
import { jobIds, ReportDoc, type DatasetStatus } from '../packages/shared/src/index.js';
import { closeQueues, createQueues, createServices } from '@transferline/shared';
import { startFaultyS3, type FaultProxy, type FaultyS3 } from './support/fault-proxy.js';
import { guardLeaks } from './support/leak-guard.js';
import { repoRoot, runCli, startTestStack, type TestStack } from './support/stack.js';

/**
 * The web console in a real browser (Debian's chromium, headless, through playwright-core),
 * against a real stack: an ingest where one object fails for good (its S3 GET answers 500 until
 * healed), a trained head, then our pages checked against inspector.status and report.json,
 * bull-board read-only without credentials, and the failed job retried from bull-board's own
 * Retry button by a signed-in user until the image ends embedded.
 */

guardLeaks();

const sink = { write: () => true } as unknown as NodeJS.WritableStream;
const photos = 'photos-console';
const dataset = 'shapes';
const runId = 'console-run';
const bad = 'train/circle/3.jpg';
const KINDS: SampleClass[] = ['circle', 'square'];
const USER = 'admin';
const PASSWORD = `pw-${randomBytes(8).toString('hex')}`;
const shots = path.join(repoRoot, 'test-results', 'console');
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];

let faulty: FaultyS3 | undefined;
let proxy: FaultProxy;
let stack: TestStack;
let ctx: CliContext;
let browser: Browser;
let con: ConsoleHandle;
let report: ReportDoc;
let failedJobId: string;

/** A browser context that reaches the console only (bull-board's web fonts and anything else external are refused). */
async function newContext(credentials?: { username: string; password: string }): Promise<BrowserContext> {
  const c = await browser.newContext({ viewport: { width: 1280, height: 900 }, ...(credentials && { httpCredentials: credentials }) });
  c.setDefaultTimeout(15_000);
  await c.route(
    (url) => !url.href.startsWith(con.url),
    (route) => route.abort(),
  );
  return c;
}

/** The number in a dataset page's count card. */
const card = async (page: Page, name: string) => Number(await page.locator(`[data-dataset="${dataset}"] [data-count="${name}"] b`).innerText());

async function waitForStatus(done: (s: DatasetStatus) => boolean, what: string, ms: number): Promise<DatasetStatus> {
  const deadline = Date.now() + ms;
  for (;;) {
    const s = await ctx.services.inspector.status(dataset);
    if (done(s)) return s;
    if (Date.now() > deadline) throw new Error(`gave up after ${ms / 1000} s waiting for ${what}: ${JSON.stringify({ ...s, failures: undefined })}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

beforeAll(async () => {
  await mkdir(shots, { recursive: true });
  faulty = await startFaultyS3();
  proxy = faulty.proxy;
  stack = await startTestStack({ TL_MODEL_WEIGHTS: 'random', TL_EMBED_BATCH_SIZE: '4', S3_ENDPOINT: proxy.url });
  ctx = await openCliContext(stack.config, sink);
  await ctx.services.store.ensureBucket(photos);
  for (const kind of KINDS) for (let i = 0; i < 8; i++) await ctx.services.store.putObject(photos, `train/${kind}/${i}.jpg`, await renderSample(kind, i, 23));
  browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: CHROMIUM_ARGS, timeout: 30_000 });
});

afterAll(async () => {
  await browser?.close();
  await con?.close();
  await ctx?.close();
  await stack?.destroy();
  await faulty?.stop();
});

/** What the page's Content-Security-Policy refused, but for bull-board's Google Fonts stylesheet (refused on purpose). */
function cspRefusals(page: Page): () => string[] {
  const refused: string[] = [];
  page.on('console', (m) => void (/Content Security Policy/i.test(m.text()) && !m.text().includes('fonts.googleapis.com') && refused.push(m.text())));
  return () => refused;
}

describe('the web console', () => {
  it('ingests with one object failing for good, and trains a head', async () => {
    proxy.inject(`/${photos}/${bad}`, { kind: 'status', status: 500 });
    const ingest = await runCli(['ingest', `s3://${photos}/train/`, '-d', dataset], stack.env, 90_000);
    expect(ingest.timedOut).toBe(false);
    expect(ingest.code).toBe(3);
    const s = await ctx.services.inspector.status(dataset);
    expect(s).toMatchObject({ total: 16, embedded: 15, failed: 1, pending: 0, orphaned: 0 });
    expect(s.failuresByReason).toEqual([{ stage: 'preprocess', reason: 'attempts-exhausted', count: 1 }]);
    const train = await runCli(['train', '-d', dataset, '--epochs', '12', '--run-id', runId], stack.env, 90_000);
    expect(train.code).toBe(0);
    report = (await ctx.services.store.getDocument(ReportDoc, stack.config.s3.bucket, ctx.services.layout.runFile(dataset, runId, 'report.json')))!;
    expect(report.labels).toEqual(['circle', 'square']);
    const [item] = await ctx.services.datasets.getItems(dataset, [`${photos}/${bad}`]);
    failedJobId = jobIds.preprocess({ dataset, bucket: photos, key: bad, etag: item!.etag, embedderId: stack.space.id });
    expect(await ctx.queues.preprocess.getJobState(failedJobId)).toBe('failed');

    con = await startConsole({ services: ctx.services, queues: ctx.queues, config: { ...stack.config, console: { host: '127.0.0.1', port: 0, user: USER, password: PASSWORD } } });
    expect(con.url).toBe(`http://127.0.0.1:${con.port}/`);
    expect(con.actionsEnabled).toBe(true);
  }, 150_000);

  it("shows each dataset's counts as inspector.status has them, and its runs", async () => {
    const status = await ctx.services.inspector.status(dataset);
    const c = await newContext();
    try {
      const page = await c.newPage();
      await page.goto(con.url);
      const row = page.locator(`#datasets tr[data-dataset="${dataset}"]`);
      for (const k of ['total', 'embedded', 'cached', 'pending', 'orphaned', 'failed'] as const) expect(Number(await row.locator(`[data-count="${k}"]`).innerText()), k).toBe(status[k]);
      await expect.poll(() => page.locator(`#runs tr[data-run="${runId}"]`).count()).toBe(1);
      await expect.poll(() => page.locator(`#queues tr[data-queue="embed.${stack.space.id}"]`).count()).toBe(1);
      // each queue's workers, as status counts them (a user scaling workers watches them come)
      const statusJson = JSON.parse((await runCli(['status', '--json'], stack.env)).stdout) as { queues: Record<string, { workers: number }>; deployment: Record<'redis' | 'queuePrefix' | 's3' | 'storage', string> };
      // which Redis, queue prefix, S3 and storage it reads, as status says them first
      const deployment = await page.locator('#deployment').innerText();
      for (const v of Object.values(statusJson.deployment)) expect(deployment).toContain(v);
      expect(deployment).toContain(`TL_QUEUE_PREFIX=${stack.config.redis.prefix}`);
      expect(deployment).toContain(proxy.url.replace(/\/$/, ''));
      const shown = Object.fromEntries(await Promise.all(Object.keys(statusJson.queues).map(async (q) => [q, Number(await page.locator(`#queues tr[data-queue="${q}"] [data-count="workers"]`).innerText())])));
      expect(shown).toEqual(Object.fromEntries(Object.entries(statusJson.queues).map(([q, r]) => [q, r.workers])));
      expect(shown[`embed.${stack.space.id}`]).toBe(1);

      await page.locator(`#datasets a[href="/datasets/${dataset}"]`).click();
      await page.waitForURL(`**/datasets/${dataset}`);
      for (const k of ['total', 'embedded', 'cached', 'pending', 'orphaned', 'failed'] as const) expect(await card(page, k), k).toBe(status[k]);
      expect(await page.locator('#space').innerText()).toBe(stack.space.id);
      const reason = page.locator('#failures-by-reason tr[data-reason="attempts-exhausted"][data-stage="preprocess"] [data-count="failures"]');
      expect(Number(await reason.innerText())).toBe(1);
      expect(await page.locator(`#failures tr[data-item="${photos}/${bad}"]`).innerText()).toMatch(/attempts-exhausted/);
      expect(Number(await page.locator(`#runs tr[data-run="${runId}"] [data-metric="validation-accuracy"]`).getAttribute('data-value'))).toBe(report.validation.accuracy);
      await page.screenshot({ path: path.join(shots, 'dataset.png'), fullPage: true });
    } finally {
      await c.close();
    }
  });

  it("shows a run's confusion matrix, per-class figures and training curves as report.json has them", async () => {
    const c = await newContext();
    try {
      const page = await c.newPage();
      await page.goto(new URL(`/datasets/${dataset}/runs/${runId}`, con.url).href);
      const v = report.validation;
      expect(await page.locator('#confusion th[scope="col"]').allInnerTexts()).toEqual(report.labels);
      expect(await page.locator('#confusion th[scope="row"]').allInnerTexts()).toEqual(report.labels);
      const cells = await page.locator('#confusion td[data-true]').evaluateAll((tds) => tds.map((td) => [Number(td.getAttribute('data-true')), Number(td.getAttribute('data-pred')), Number(td.textContent)]));
      const matrix = report.labels.map(() => report.labels.map(() => -1));
      for (const [i, j, n] of cells) matrix[i!]![j!] = n!;
      expect(matrix).toEqual(v.confusionMatrix);
      expect(cells).toHaveLength(report.labels.length ** 2);

      const rows = await page.locator('#per-class tr[data-label-index]').evaluateAll((trs) =>
        trs.map((tr) => ({
          label: tr.querySelector('td.label')?.textContent,
          ...Object.fromEntries([...tr.querySelectorAll('[data-metric]')].map((td) => [td.getAttribute('data-metric'), Number(td.getAttribute('data-value'))])),
        })),
      );
      expect(rows).toEqual(v.perClass.map((p) => ({ label: p.label, precision: p.precision, recall: p.recall, f1: p.f1, support: p.support })));
      expect(Number(await page.locator('.card[data-metric="validation-accuracy"]').getAttribute('data-value'))).toBe(v.accuracy);

      const n = String(report.history.length);
      for (const [chart, series] of [['curve-loss', 'loss'], ['curve-loss', 'valLoss'], ['curve-accuracy', 'accuracy'], ['curve-accuracy', 'valAccuracy']] as const) {
        expect(await page.locator(`svg#${chart} polyline[data-series="${series}"]`).getAttribute('data-points'), series).toBe(n);
      }
      await page.screenshot({ path: path.join(shots, 'run.png'), fullPage: true });
    } finally {
      await c.close();
    }
  });

  it("reads each run's report once across page loads, and shows a run that appears (and goes) at once", async () => {
    const { bucket } = stack.config.s3;
    const { store, layout } = ctx.services;
    const reads = () => proxy.hits.get('report.json') ?? 0;
    const runsShown = async (path: string) => [...(await (await fetch(new URL(path, con.url))).text()).matchAll(/<tr data-run="([^"]+)"/g)].map((m) => m[1]);
    // a fault that changes nothing, to count the requests for reports
    proxy.inject('report.json', { kind: 'slow', ms: 0 });
    try {
      await runsShown('/');
      const before = reads();
      for (let i = 0; i < 3; i++) expect(await runsShown('/')).toEqual([runId]);
      expect(await runsShown(`/datasets/${dataset}`)).toEqual([runId]);
      expect(reads()).toBe(before);
      // a new run's report is read when it appears, once
      const later = { ...report, runId: 'later-run', createdAt: new Date(Date.parse(report.createdAt) + 60_000).toISOString() };
      await store.putObject(bucket, layout.runFile(dataset, 'later-run', 'report.json'), JSON.stringify(later), 'application/json');
      const put = reads(); // (the proxy counts this PUT too)
      expect(put).toBe(before + 1);
      expect(await runsShown('/')).toEqual(['later-run', runId]);
      expect(await runsShown('/')).toEqual(['later-run', runId]);
      expect(reads()).toBe(put + 1);
      // a report written again under the same run id (another ETag) is read again
      await store.putObject(bucket, layout.runFile(dataset, 'later-run', 'report.json'), JSON.stringify({ ...later, validation: { ...later.validation, accuracy: 0.123 } }), 'application/json');
      const page = await (await fetch(con.url)).text();
      expect(page).toMatch(/<tr data-run="later-run"[^]*?data-metric="validation-accuracy" data-value="0.123"/);
      await store.deleteObject(bucket, layout.runFile(dataset, 'later-run', 'report.json'));
      expect(await runsShown('/')).toEqual([runId]);
    } finally {
      proxy.remove('report.json');
      await store.deleteObject(bucket, layout.runFile(dataset, 'later-run', 'report.json'));
    }
  });

  it('puts the embed queue of a space published later on the boards', async () => {
    const crop = { ...stack.space, id: stack.space.id.replace('squash', 'crop'), resize: 'crop' as const };
    await ctx.services.spaces.publish(crop);
    const c = await newContext();
    try {
      const page = await c.newPage();
      await page.goto(con.url); // our pages and the boards read the spaces again on each request
      await expect.poll(() => page.reload().then(() => page.locator(`#queues tr[data-queue="embed.${crop.id}"]`).count()), { timeout: 10_000, interval: 2_500 }).toBe(1);
      const board = (await (await fetch(new URL('/queues/api/queues', con.url))).json()) as { queues: { name: string; readOnlyMode: boolean }[] };
      expect(board.queues.map((q) => q.name)).toContain(`embed.${crop.id}`);
      expect(board.queues.every((q) => q.readOnlyMode)).toBe(true);
    } finally {
      await c.close();
      await ctx.services.redis.hdel(ctx.services.keys.spaces(), crop.id);
    }
  });

  it('is read-only without credentials: no action buttons, and changes are refused', async () => {
    const c = await newContext();
    try {
      const page = await c.newPage();
      // requests to another origin that the browser sent (it reports one it blocked as failed so)
      const elsewhere: string[] = [];
      page.on('requestfailed', (r) => void (new URL(r.url()).origin !== new URL(con.url).origin && !/csp/i.test(r.failure()?.errorText ?? '') && elsewhere.push(`${r.url()} ${r.failure()?.errorText}`)));
      page.on('requestfinished', (r) => void (new URL(r.url()).origin !== new URL(con.url).origin && elsewhere.push(r.url())));
      const refused = cspRefusals(page);
      await page.goto(new URL('/queues/queue/preprocess?status=failed', con.url).href);
      const job = page.locator(`a[href*="${failedJobId}"]`).first();
      await job.waitFor();
      // the board asks nothing of another origin (bull-board's page links Google Fonts), and the
      // policy that stops that refuses nothing of its own: the job's data and logs open
      expect(elsewhere).toEqual([]);
      await job.click();
      await page.getByText(/injected fault|InternalError|status code 500/).first().waitFor();
      expect(refused()).toEqual([]);
      // the job card's header (id link, then actions) has no action buttons
      expect(await job.locator('xpath=ancestor::div[2]').locator('button').count()).toBe(0);
      expect(await page.getByRole('button', { name: /retry all/i }).count()).toBe(0);
    } finally {
      await c.close();
    }
    const retry = (base: string, headers: Record<string, string> = {}) => fetch(new URL(`${base}/api/queues/preprocess/${failedJobId}/retry`, con.url), { method: 'PUT', headers });
    const auth = (user: string, pw: string) => ({ authorization: `Basic ${Buffer.from(`${user}:${pw}`).toString('base64')}` });
    expect((await retry('/queues')).status).toBe(405); // bull-board's read-only mode
    const anonymous = await retry('/admin/queues');
    expect(anonymous.status).toBe(401);
    expect(anonymous.headers.get('www-authenticate')).toMatch(/^Basic realm=/);
    expect((await retry('/admin/queues', auth(USER, `${PASSWORD}x`))).status).toBe(401);
    expect((await retry('/admin/queues', auth('root', PASSWORD))).status).toBe(401);
    // right credentials from a foreign page (a browser sends cached basic auth anywhere): refused
    expect((await retry('/admin/queues', { ...auth(USER, PASSWORD), origin: 'http://evil.example' })).status).toBe(403);
    expect(await ctx.queues.preprocess.getJobState(failedJobId)).toBe('failed');
  });

  it('the admin board refuses the actions that would leave images waiting for ever or jobs naming the wrong content', async () => {
    const headers = { authorization: `Basic ${Buffer.from(`${USER}:${PASSWORD}`).toString('base64')}`, 'content-type': 'application/json' };
    const put = (action: string, body: object = {}) => fetch(new URL(`/admin/queues/api/queues/preprocess/${action}`, con.url), { method: 'PUT', headers, body: JSON.stringify(body) });
    const counts = await ctx.queues.preprocess.getJobCounts();
    for (const [action, body, why] of [
      ['empty', {}, /images would wait for ever/],
      ['obliterate', { force: true }, /images would wait for ever/],
      ['clean/waiting', {}, /only completed and failed jobs can be cleaned/],
      ['concurrency', { concurrency: 1 }, /scale the worker processes instead/],
      ['rate-limit', { max: 1, duration: 1000 }, /scale the worker processes instead/],
      [`${failedJobId}/update-data`, { data: { key: 'elsewhere.jpg' } }, /wrong content/],
    ] as const) {
      const r = await put(action, body);
      expect(r.status, action).toBe(405);
      expect(((await r.json()) as { message: string }).message, action).toMatch(why);
    }
    // as bull-board's own routes match: any case, a trailing slash
    for (const action of ['EMPTY', 'empty/', 'clean/wait/', 'Clean/Waiting']) expect((await put(action)).status, action).toBe(405);
    const add = await fetch(new URL('/admin/queues/api/queues/preprocess/add', con.url), { method: 'POST', headers, body: JSON.stringify({ name: 'preprocess', data: {} }) });
    expect(add.status).toBe(405);
    // removing one job: refused while it waits (its image would wait for ever)
    const waiting = await ctx.queues.preprocess.add('preprocess', { note: 'a job that waits' }, { jobId: `waits-${Date.now()}`, delay: 3_600_000 });
    const remove = await put(`${waiting.id}/clean`);
    expect(remove.status).toBe(405);
    expect(((await remove.json()) as { message: string }).message).toMatch(/this job is delayed/);
    expect(await ctx.queues.preprocess.getJobState(waiting.id!)).toBe('delayed');
    await waiting.remove();
    // nothing changed: the same jobs, no queue-wide limit, the failed job as it was
    expect(await ctx.queues.preprocess.getJobCounts()).toEqual(counts);
    expect(await ctx.queues.preprocess.getGlobalConcurrency()).toBeNull();
    expect((await ctx.queues.preprocess.getJob(failedJobId))?.data.key).not.toBe('elsewhere.jpg');
    // what it does offer still works: pause and resume
    expect((await put('pause')).status).toBeLessThan(300);
    expect(await ctx.queues.preprocess.isPaused()).toBe(true);
    expect((await put('resume')).status).toBeLessThan(300);
    expect(await ctx.queues.preprocess.isPaused()).toBe(false);
  });

  it('answers only requests that name the loopback it listens on (a rebound DNS name gets 421)', async () => {
    const get = (host: string) =>
      new Promise<number>((resolve, reject) => {
        const u = new URL(con.url);
        http.get({ hostname: u.hostname, port: u.port, path: '/', headers: { host } }, (res) => (res.resume(), resolve(res.statusCode!))).on('error', reject);
      });
    expect(await get(`evil.example:${new URL(con.url).port}`)).toBe(421);
    expect(await get(`localhost:${new URL(con.url).port}`)).toBe(200);
    expect(await get(`127.0.0.1:${new URL(con.url).port}`)).toBe(200);
  });

  it('retries the failed job from bull-board as a signed-in user, and the image ends embedded', async () => {
    proxy.heal();
    const c = await newContext({ username: USER, password: PASSWORD });
    try {
      const page = await c.newPage();
      const refused = cspRefusals(page);
      await page.goto(new URL('/admin/queues/queue/preprocess?status=failed', con.url).href);
      const job = page.locator(`a[href*="${failedJobId}"]`).first();
      await job.waitFor();
      // bull-board shows why it failed (the worker's last error)
      await page.getByText(/injected fault|InternalError|status code 500/).first().waitFor();
      await page.screenshot({ path: path.join(shots, 'bull-board.png'), fullPage: true });
      // the job card's header: its id link, then its actions (Retry, Duplicate, Update Data, Clean)
      const first = job.locator('xpath=ancestor::div[2]').locator('button').first();
      await first.hover();
      await page.getByText('Retry', { exact: true }).waitFor(); // its tooltip says what it is
      await first.click();
      const confirm = page.getByRole('alertdialog');
      expect(await confirm.innerText()).toMatch(/retry this job/);
      const put = page.waitForResponse((r) => r.request().method() === 'PUT' && r.url().endsWith(`/admin/queues/api/queues/preprocess/${failedJobId}/retry`));
      await confirm.getByRole('button', { name: 'Confirm' }).click();
      expect((await put).status()).toBe(204);
      expect(refused()).toEqual([]);
      const s = await waitForStatus((x) => x.embedded === x.total, 'the retried image to be embedded', 60_000);
      expect(s).toMatchObject({ total: 16, embedded: 16, failed: 0, pending: 0, orphaned: 0 });
    } finally {
      await c.close();
    }
  }, 90_000);

  it('serves from the console command until its signal aborts, then closes every client it opened', async () => {
    const stop = new AbortController();
    let printed = '';
    const out = { write: (s: string) => ((printed += s), true) } as unknown as NodeJS.WritableStream;
    const serving = consoleCommand({ ...ctx, out, signal: stop.signal }, { port: 0 });
    const deadline = Date.now() + 15_000;
    while (!/Ctrl-C stops it/.test(printed)) {
      if (Date.now() > deadline) throw new Error(`the console command never said it was up: ${printed}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    const url = /console\s+(http:\/\/\S+)/.exec(printed)![1]!;
    expect(printed).toMatch(/queue actions {2}disabled: set TL_CONSOLE_PASSWORD/); // the stack's config has no password
    expect(printed).not.toContain(PASSWORD);
    const home = await fetch(url);
    expect(home.status).toBe(200);
    expect(await home.text()).toContain(`data-dataset="${dataset}"`);
    expect((await fetch(new URL('/admin/queues/', url))).status).toBe(403);
    stop.abort();
    await serving;
    await expect(fetch(url)).rejects.toThrow();
  });
  it('a dataset too large to count within a page shows its size, then its counts once read; a page S3 holds up says so', async () => {
    const big = 'many-items';
    for (let b = 0; b < 20_000; b += 5_000) {
      const items = Array.from({ length: 5_000 }, (_, k) => [`${photos}/bulk/l${k % 3}/${b + k}.jpg`, { label: `l${k % 3}`, etag: `e${b + k}`, state: 'pending' as const }] as [string, { label: string; etag: string; state: 'pending' }]);
      await ctx.services.datasets.putItems(big, items);
    }
    // its count (the real one) waits for the test's word: a count that takes longer than a page waits; every count of it is counted
    let bigCounts = 0;
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    const inspector = Object.create(ctx.services.inspector) as typeof ctx.services.inspector;
    inspector.status = async (d, ...rest) => {
      if (d === big) {
        bigCounts++;
        await released;
      }
      return ctx.services.inspector.status(d, ...rest);
    };
    const slow = await startConsole({ services: { ...ctx.services, inspector }, queues: ctx.queues, config: { ...stack.config, console: { host: '127.0.0.1', port: 0, user: USER, password: undefined } }, pageDeadlineMs: 5_000, countWaitMs: 1_000 });
    const rowOf = async () => {
      const home = await fetch(slow.url);
      expect(home.status).toBe(200);
      const text = await home.text();
      return { text, row: new RegExp(`<tr data-dataset="${big}">.*?</tr>`).exec(text)![0] };
    };
    try {
      // the front page comes in time: the small dataset counted, the large one by its size
      const first = await rowOf();
      expect(first.row).toContain('data-counting="20000">counting its 20000 images');
      expect(first.text).toMatch(new RegExp(`<tr data-dataset="${dataset}">.*?data-count="total">16<`));
      // pages meanwhile join the count under way
      expect((await rowOf()).row).toContain('data-counting="20000"');
      expect(bigCounts).toBe(1);
      release();
      // the count went on: a later page shows it, as inspector.status has it
      let counted = first;
      const deadline = Date.now() + 60_000;
      while (!counted.row.includes('data-count="orphaned"') && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 200));
        counted = await rowOf();
      }
      const status = await ctx.services.inspector.status(big, 0);
      expect(status.orphaned).toBe(20_000);
      for (const k of ['total', 'pending', 'orphaned'] as const) expect(counted.row, k).toContain(`data-count="${k}">${status[k]}<`);
      // a reload soon after, and the dataset's page, are served that count: it is not read again
      expect((await rowOf()).row).toContain('data-count="orphaned">20000<');
      const page = await (await fetch(new URL(`/datasets/${big}`, slow.url))).text();
      expect(page).toMatch(/data-count="orphaned"><b class="">20000<\/b>/);
      expect(bigCounts).toBe(1);

      // S3 answering slowly (the runs and reports are in the bucket) passes the deadline: said, with Redis not blamed
      proxy.inject(`/${stack.config.s3.bucket}`, { kind: 'slow', ms: 8_000 });
      const home = await fetch(slow.url);
      expect(home.status).toBe(503);
      expect(await home.text()).toMatch(/could not read the deployment: Redis or S3 did not answer within 5 s; Redis answers a PING, so the wait is likely on S3/);
    } finally {
      release();
      proxy.heal();
      await slow.close();
      await ctx.services.datasets.remove(big);
    }
  }, 120_000);

  it('the queue boards say Redis does not answer, at once, while it is down (a trial: their page and polls spun for ever)', async () => {
    const dir = path.join(stack.dataDir, 'console-redis-down');
    let redis = await startEmbeddedRedis({ directory: dir, port: 0, persist: false });
    const config = { ...stack.config, redis: { ...stack.config.redis, url: redis.url }, console: { host: '127.0.0.1', port: 0, user: USER, password: undefined } };
    // (connected as the console command connects: its Redis commands wait for Redis to come back)
    const services = createServices(config, 'worker');
    const queues = createQueues(services.redis, config);
    const board = await startConsole({ services, queues, config });
    try {
      expect((await fetch(new URL('/queues/', board.url))).status).toBe(200);
      await redis.stop();
      for (const at of ['/queues/', '/queues/api/queues?activeQueue=preprocess&page=1&jobsPerPage=10']) {
        // (before, no answer came at all: the abort fails the test)
        const r = await fetch(new URL(at, board.url), { signal: AbortSignal.timeout(30_000) });
        expect({ at, status: r.status }).toEqual({ at, status: 503 });
        expect(await r.text()).toContain(`Redis at ${redis.url} does not answer (stopped, unreachable, or refusing connections): the queues cannot be read now`);
      }
    } finally {
      // (Redis back on its port, so that every client closes as it would)
      redis = await startEmbeddedRedis({ directory: dir, port: Number(new URL(redis.url).port), persist: false });
      // (and the boards back with it: every client reconnected)
      const back = Date.now() + 30_000;
      while ((await fetch(new URL('/queues/api/queues?activeQueue=preprocess&page=1&jobsPerPage=10', board.url)).then((r) => r.status, () => 0)) !== 200 && Date.now() < back) await new Promise((r) => setTimeout(r, 200));
      await board.close();
      await closeQueues(queues);
      await services.close();
      await redis.stop();
    }
  }, 120_000);

  it("started with a TL_BUCKET that does not exist, says that setting, not an outage to wait out", async () => {
    const wrong = await startConsole({ services: ctx.services, queues: ctx.queues, config: { ...stack.config, s3: { ...stack.config.s3, bucket: 'not-the-workers' }, console: { host: '127.0.0.1', port: 0, user: USER, password: undefined } } });
    try {
      const home = await fetch(wrong.url);
      expect(home.status).toBe(503);
      expect(await home.text()).toContain(`could not read the deployment: bucket not-the-workers does not exist at ${stack.config.s3.endpoint}: it is this process&#39;s TL_BUCKET`);
    } finally {
      await wrong.close();
    }
  });
});
