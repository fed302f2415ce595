import { readFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openCliContext, type CliContext } from '../apps/producer/src/cli-context.js';
import { retryCommand } from '../apps/producer/src/commands/retry.command.js';
import { statusCommand } from '../apps/producer/src/commands/status.command.js';
import { waitForDataset, workerIdOf } from '../apps/producer/src/dataset-wait.js';
import { ingestPrefix } from '../apps/producer/src/ingest.service.js';
import { renderSample, type SampleClass } from '../apps/producer/src/demo/sample-images.js';
import { JOBS, jobIds, ReportDoc } from '../packages/shared/src/index.js';
import { startFaultyS3, type FaultProxy, type FaultyS3 } from './support/fault-proxy.js';
import { guardLeaks } from './support/leak-guard.js';
import { runCli, scrape, startTestStack, until, type TestStack } from './support/stack.js';

/**
 * Every item reaches an end (embedded, or failed with a reason), and no command waits for ever:
 * transient faults that outlast the attempts, lost jobs, missing workers, a flushed Redis,
 * retries racing, pending images at training time. The workers read S3 through a
 * fault-injecting proxy; the CLI runs as a user runs it (a child process with a deadline).
 */

guardLeaks();

let faulty: FaultyS3 | undefined;
let proxy: FaultProxy;
let stack: TestStack;
let ctx: CliContext;
const sink = { write: () => true } as unknown as NodeJS.WritableStream;
const photos = 'photos-ts';
const KINDS: SampleClass[] = ['circle', 'square'];
const BACKOFF_SCALE = 0.1;

beforeAll(async () => {
  faulty = await startFaultyS3();
  proxy = faulty.proxy;
  // retries 10× sooner than by default: what is tested is where they end, not how long they wait
  // and a request S3 does not answer is given up after 2 s without a byte (30 by default)
  stack = await startTestStack({ TL_MODEL_WEIGHTS: 'random', TL_EMBED_BATCH_SIZE: '4', S3_ENDPOINT: proxy.url, TL_RETRY_BACKOFF_SCALE: String(BACKOFF_SCALE), TL_S3_IDLE_TIMEOUT_MS: '2000' });
  ctx = await openCliContext(stack.config, sink);
  await ctx.services.store.ensureBucket(photos);
  for (const kind of KINDS) for (let i = 0; i < 6; i++) await ctx.services.store.putObject(photos, `train/${kind}/${i}.jpg`, await renderSample(kind, i, 17));
});
afterAll(async () => {
  await ctx?.close();
  await stack?.destroy();
  await faulty?.stop();
});

const cli = (args: string[], deadlineMs = 120_000) => runCli(args, stack.env, deadlineMs);

/** Until the preprocess worker is connected: a test that stops it must find it started. */
async function preprocessConnected(): Promise<void> {
  const deadline = Date.now() + 60_000;
  while ((await ctx.queues.preprocess.getWorkersCount()) === 0) {
    if (Date.now() > deadline) throw new Error('the preprocess worker never connected');
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe('transient faults that outlast the attempts', () => {
  it('end the item failed with attempts-exhausted (exit 3); retry, and re-ingest, embed it once the fault clears', async () => {
    const bad = 'train/circle/3.jpg';
    proxy.inject(`/${photos}/${bad}`, { kind: 'status', status: 500 });
    const [first, again] = await Promise.all([cli(['ingest', `s3://${photos}/train/`, '-d', 'faulty']), cli(['ingest', `s3://${photos}/train/`, '-d', 'faulty2'])]);
    expect(first.timedOut).toBe(false);
    expect(first.code).toBe(3);
    expect(first.stdout).toMatch(/dataset faulty: 12 images, 11 embedded .*, 1 failed, 0 pending/);
    expect(first.stdout).toContain(`failed s3://${photos}/${bad}: preprocess attempts-exhausted`);
    expect(again.code).toBe(3);
    const [item] = await ctx.services.datasets.getItems('faulty', [`${photos}/${bad}`]);
    expect(item).toMatchObject({ state: 'failed', stage: 'preprocess', reason: 'attempts-exhausted', attempts: 5 });
    expect(item!.detail).toMatch(/500|InternalError|injected fault/);
    // the worker says so on /metrics: failed once for good, retried before that
    const m = await scrape(stack.ports.preprocess);
    expect(m.get('tl_failures_total{stage="preprocess",reason="attempts-exhausted"}')).toBe(2);
    expect(m.get('tl_jobs_total{queue="preprocess",outcome="failed"}')).toBe(2);
    expect(m.get('tl_jobs_total{queue="preprocess",outcome="retried"}')).toBe(8);
    // and so do its images: the last attempt's error is a failure, not one more retry
    expect(m.get('tl_images_total{stage="preprocess",outcome="failed"}')).toBe(2);
    expect(m.get('tl_images_total{stage="preprocess",outcome="retried"}')).toBe(8);
    // the bucket itself answered all along: nothing was taken for an outage
    expect(m.get('tl_dependency_up{dependency="s3"}')).toBe(1);

    const failures = await cli(['failures', '-d', 'faulty']);
    expect(failures.stdout).toMatch(/preprocess attempts-exhausted after 5 attempts/);
    // a reason nothing failed with retries nothing, and says which reasons there are (a code no
    // image can fail with is bad usage: cli-errors)
    const none = await cli(['retry', '-d', 'faulty', '--reason', 'truncated']);
    expect(none.code).toBe(0);
    expect(none.stdout).toMatch(/retrying 0 failed images of faulty with reason truncated; 1 other failure left alone \(attempts-exhausted: name one with --reason to retry those\)/);
    // the reason named, but not its stage: the stage is what left it alone
    const wrongStage = await cli(['retry', '-d', 'faulty', '--reason', 'attempts-exhausted', '--stage', 'embed']);
    expect(wrongStage.stdout).toContain('retrying 0 failed images of faulty with reason attempts-exhausted in embed; 1 other failure left alone (preprocess attempts-exhausted: name one with --reason and its stage with --stage to retry those)\n');
    const noSuch = await cli(['failures', '-d', 'faulty', '--reason', 'truncated']);
    expect(noSuch.stdout).toBe('dataset faulty: 0 failed with truncated; its 1 failed with preprocess attempts-exhausted 1\n');

    proxy.heal();
    const retried = await cli(['retry', '-d', 'faulty']);
    expect(retried.stderr).not.toMatch(/transferline:/);
    expect(retried.code).toBe(0);
    expect(retried.stdout).toMatch(/retrying 1 failed image of faulty/);
    expect(retried.stdout).toMatch(/dataset faulty: 12 images, 12 embedded/);
    // a re-ingest of the other dataset retries its transient failure by itself
    const reingest = await cli(['ingest', `s3://${photos}/train/`, '-d', 'faulty2']);
    expect(reingest.code).toBe(0);
    expect(reingest.stdout).toMatch(/0 enqueued, 1 added from the embedding cache \(no job\), 11 unchanged/);
    expect(reingest.stdout).toMatch(/dataset faulty2: 12 images, 12 embedded/);
  }, 240_000);
});

describe('embed failing for good', () => {
  it('frees the pixels of its images (a fault that fails every embed cannot fill Redis), and retry embeds them once the fault clears', async () => {
    // S3 refuses the shard writes (a read-only key, say) but answers the bucket: no outage, every attempt is spent
    const shards = `/${stack.config.s3.bucket}/embeddings/`;
    proxy.inject(shards, { kind: 'status', status: 403 });
    const keys = ['nowrite/circle/a.jpg', 'nowrite/square/b.jpg'];
    try {
      for (const [i, k] of keys.entries()) await ctx.services.store.putObject(photos, k, await renderSample(KINDS[i]!, 40 + i, 23));
      const r = await cli(['ingest', `s3://${photos}/nowrite/`, '-d', 'nowrite'], 180_000);
      expect(r.timedOut).toBe(false);
      expect(r.code).toBe(3);
      expect(r.stdout).toMatch(/dataset nowrite: 2 images, 0 embedded .*, 2 failed/);
      for (const k of keys) expect(r.stdout).toContain(`failed s3://${photos}/${k}: embed attempts-exhausted`);
      const items = await ctx.services.datasets.getItems('nowrite', keys.map((k) => `${photos}/${k}`));
      // the failure is recorded before the pixels go: by now both are done
      for (const item of items) expect(await ctx.services.redis.exists(ctx.services.keys.tensor(stack.space.id, item!.sha256!))).toBe(0);
      // the embed worker counts them as failed images, as preprocess counts its own
      const m = await scrape(stack.ports.embed);
      expect(m.get('tl_failures_total{stage="embed",reason="attempts-exhausted"}')).toBe(2);
      expect(m.get('tl_images_total{stage="embed",outcome="failed"}')).toBe(2);
    } finally {
      proxy.remove(shards);
    }
    const retried = await cli(['retry', '-d', 'nowrite']);
    expect(retried.code).toBe(0);
    expect(retried.stdout).toMatch(/dataset nowrite: 2 images, 2 embedded/);
  }, 240_000);
});

describe('an S3 outage longer than the retries would last', () => {
  it('is waited out: the workers pause and resume, no image fails, no attempt is spent', async () => {
    stack.supervisor.signal('preprocess', 1, 'SIGSTOP');
    try {
      for (let i = 0; i < 6; i++) await ctx.services.store.putObject(photos, `outage/${KINDS[i % 2]}/${i}.jpg`, await renderSample(KINDS[i % 2]!, 300 + i, 8));
      const listed = await cli(['ingest', `s3://${photos}/outage/`, '-d', 'outage', '--no-wait']);
      expect(listed.stdout).toMatch(/6 enqueued/);
      proxy.inject('', { kind: 'drop' }); // S3 goes away for every request
    } finally {
      stack.supervisor.signal('preprocess', 1, 'SIGCONT');
    }
    const before = await scrape(stack.ports.preprocess);
    let sawDown = false;
    const deadline = Date.now() + 25_000;
    while (!sawDown && Date.now() < deadline) {
      sawDown = (await scrape(stack.ports.preprocess)).get('tl_dependency_up{dependency="s3"}') === 0;
      if (!sawDown) await new Promise((r) => setTimeout(r, 250));
    }
    expect(sawDown).toBe(true);
    // then three times as long as five attempts' backoffs could last (1 + 2 + 4 + 8 times the base; jitter only shortens them)
    const { attempts, backoffMs } = JOBS.preprocess;
    await new Promise((r) => setTimeout(r, 3 * backoffMs * BACKOFF_SCALE * (2 ** (attempts - 1) - 1)));
    // A command that waits for these images, on a machine that reaches S3 (the CLI's own S3 is
    // not the workers'): it says the worker is paused and why, and ends instead of waiting for
    // ever on a worker that is connected but moves nothing.
    const direct = { ...stack.env, S3_ENDPOINT: faulty!.s3.endpoint };
    const waiting = await runCli(['train', '-d', 'outage', '--stall-timeout', '3'], direct, 90_000);
    expect(waiting.timedOut).toBe(false);
    expect(waiting.code).toBe(4);
    expect(waiting.stderr).toMatch(/no progress for 3 s: 6 images wait for preprocess and its worker is paused: S3 at \S+ is unreachable \(for \d+ s\); they resume by themselves when that is mended\. Nothing is lost meanwhile: the images stay queued, and the same command run again waits for them where they are\n/);
    // a train that gave up its wait says that it queued no run (a user's trial read the workers going on as the run)
    expect(waiting.stderr).toMatch(/\nno run was queued: train again once the images are in \(or now, on those embedded, with --partial\)\n$/);
    const status = await runCli(['status', '-d', 'outage'], direct);
    expect(status.stdout).toMatch(/^ {2}preprocess: 1 worker paused: S3 at \S+ is unreachable/m);
    // alive for a liveness probe: restarting it would not bring S3 back
    expect((await fetch(`http://127.0.0.1:${stack.ports.preprocess}/healthz`)).status).toBe(200);
    // but not ready, saying why (a readiness probe, `kubectl get pods`), and ready again once S3 is back
    const readyz = async () => { const r = await fetch(`http://127.0.0.1:${stack.ports.preprocess}/readyz`); return `${r.status} ${await r.text()}`; };
    expect(await readyz()).toBe('503 not ready: s3 unreachable (tl_dependency_up 0; the log says which address)\n');
    proxy.heal();
    const done = await cli(['ingest', `s3://${photos}/outage/`, '-d', 'outage']);
    expect(done.code).toBe(0);
    expect(await readyz()).toBe('200 ready\n');
    expect(done.stdout).toMatch(/dataset outage: 6 images, 6 embedded .*, 0 failed, 0 pending/);
    const after = await scrape(stack.ports.preprocess);
    const delta = (k: string) => (after.get(k) ?? 0) - (before.get(k) ?? 0);
    expect(delta('tl_jobs_total{queue="preprocess",outcome="failed"}')).toBe(0);
    expect(delta('tl_jobs_total{queue="preprocess",outcome="deferred"}')).toBeGreaterThan(0);
    expect(after.get('tl_dependency_up{dependency="s3"}')).toBe(1);
    const log = await readFile(stack.supervisor.logFile('preprocess'), 'utf8');
    expect(log).toMatch(/S3 at \S+ is unreachable: pausing work that needs it/);
    expect(log).toMatch(/S3 at \S+ is back: resuming/);
    // and no longer listed as paused
    expect((await runCli(['status', '-d', 'outage'], stack.env)).stdout).not.toMatch(/paused/);
  }, 180_000);
});

describe('an S3 that takes connections and never answers (stopped, wedged)', () => {
  it('is an outage: the workers give its requests up, pause and say so, and a wait ends, where all of them waited for ever', async () => {
    await preprocessConnected();
    stack.supervisor.signal('preprocess', 1, 'SIGSTOP');
    try {
      for (let i = 0; i < 2; i++) await ctx.services.store.putObject(photos, `mute/${KINDS[i]}/${i}.jpg`, await renderSample(KINDS[i]!, 320 + i, 8));
      expect((await cli(['ingest', `s3://${photos}/mute/`, '-d', 'mute', '--no-wait'])).stdout).toMatch(/2 enqueued/);
      proxy.inject('', { kind: 'mute' }); // every request to S3 is taken and never answered
    } finally {
      stack.supervisor.signal('preprocess', 1, 'SIGCONT');
    }
    try {
      // a command on a machine whose S3 answers: told why nothing moves, and ended
      const direct = { ...stack.env, S3_ENDPOINT: faulty!.s3.endpoint };
      const waiting = await runCli(['train', '-d', 'mute', '--stall-timeout', '3'], direct, 150_000);
      expect(waiting.timedOut).toBe(false);
      expect(waiting.code).toBe(4);
      expect(waiting.stderr).toMatch(/no progress for 3 s: 2 images wait for preprocess and its worker is paused: S3 at \S+ is unreachable/);
      expect((await scrape(stack.ports.preprocess)).get('tl_dependency_up{dependency="s3"}')).toBe(0);
    } finally {
      proxy.heal();
    }
    const done = await cli(['ingest', `s3://${photos}/mute/`, '-d', 'mute']);
    expect(done.code).toBe(0);
    expect(done.stdout).toMatch(/dataset mute: 2 images, 2 embedded .*, 0 failed, 0 pending/);
  }, 240_000);
});

describe('lost jobs', () => {
  it('an item whose job was removed from Redis shows as orphaned, and a re-ingest enqueues it again', async () => {
    // preprocess is held back so the jobs wait; one of them is removed by hand
    stack.supervisor.signal('preprocess', 1, 'SIGSTOP');
    try {
      await ctx.services.store.putObject(photos, 'lost/square/a.jpg', await renderSample('square', 40, 5));
      await ctx.services.store.putObject(photos, 'lost/circle/b.jpg', await renderSample('circle', 41, 5));
      const r = await cli(['ingest', `s3://${photos}/lost/`, '-d', 'lost', '--no-wait']);
      expect(r.stdout).toMatch(/2 enqueued/);
      const [rec] = await ctx.services.datasets.getItems('lost', [`${photos}/lost/square/a.jpg`]);
      const id = jobIds.preprocess({ dataset: 'lost', bucket: photos, key: 'lost/square/a.jpg', etag: rec!.etag, embedderId: stack.space.id });
      expect(await ctx.queues.preprocess.remove(id)).toBe(1);
      const s = await ctx.services.inspector.status('lost');
      expect(s).toMatchObject({ total: 2, pending: 1, orphaned: 1 });
      const status = await cli(['status', '-d', 'lost']);
      expect(status.stdout).toMatch(/1 pending, 1 orphaned \(their job was lost: run the same ingest again\)/);
    } finally {
      stack.supervisor.signal('preprocess', 1, 'SIGCONT');
    }
    const again = await cli(['ingest', `s3://${photos}/lost/`, '-d', 'lost']);
    expect(again.code).toBe(0);
    expect(again.stdout).toMatch(/1 tried again/);
    expect(again.stdout).toMatch(/dataset lost: 2 images, 2 embedded/);
  }, 120_000);
});

describe('two retries at once', () => {
  it('embed each item once', async () => {
    // four images whose pixels vanish before embed: they fail with pixels-expired
    stack.supervisor.signal('embed', 1, 'SIGSTOP');
    const keys = [0, 1, 2, 3].map((i) => `race/${KINDS[i % 2]}/${i}.jpg`);
    try {
      for (const [i, k] of keys.entries()) await ctx.services.store.putObject(photos, k, await renderSample(KINDS[i % 2]!, 60 + i, 9));
      await cli(['ingest', `s3://${photos}/race/`, '-d', 'race', '--no-wait']);
      const deadline = Date.now() + 30_000;
      while ((await ctx.services.inspector.status('race')).pendingByStage.embed < 4) {
        if (Date.now() > deadline) throw new Error('the images never reached embed');
        await new Promise((r) => setTimeout(r, 100));
      }
      const items = await ctx.services.datasets.getItems('race', keys.map((k) => `${photos}/${k}`));
      await ctx.services.tensors.delete(stack.space.id, items.map((r) => r!.sha256!));
    } finally {
      stack.supervisor.signal('embed', 1, 'SIGCONT');
    }
    const deadline = Date.now() + 30_000;
    while ((await ctx.services.inspector.status('race')).failed < 4) {
      if (Date.now() > deadline) throw new Error('the expired images never failed');
      await new Promise((r) => setTimeout(r, 100));
    }
    const before = (await scrape(stack.ports.embed)).get('tl_images_total{stage="embed",outcome="embedded"}') ?? 0;
    // two clients, each with its own connections, scan and resubmit at the same moment
    const other = await openCliContext(stack.config, sink);
    try {
      const [a, b] = await Promise.all([retryCommand(ctx, { dataset: 'race', wait: false }), retryCommand(other, { dataset: 'race', wait: false })]);
      expect([a.retried, b.retried]).toEqual([4, 4]); // both saw the four failures: they really raced
    } finally {
      await other.close();
    }
    const done = await waitForDataset(ctx, 'race', { space: stack.space.id, stallSeconds: 30 });
    expect(done).toMatchObject({ total: 4, embedded: 4, failed: 0, pending: 0, orphaned: 0 });
    // and a third retry, from the CLI, finds nothing left to do
    const third = await cli(['retry', '-d', 'race']);
    expect(third.code).toBe(0);
    expect(third.stdout).toMatch(/retrying 0 failed images of race/);
    const after = (await scrape(stack.ports.embed)).get('tl_images_total{stage="embed",outcome="embedded"}') ?? 0;
    expect(after - before).toBe(4);
    // each hash is in the index once and in the shards once
    const shas = (await ctx.services.datasets.getItems('race', keys.map((k) => `${photos}/${k}`))).map((r) => r!.sha256!);
    const rows = new Map<string, number>();
    for (const s of await ctx.services.cache.listShards(stack.space.id)) for (const h of s.hashes) rows.set(h, (rows.get(h) ?? 0) + 1);
    for (const sha of shas) expect(rows.get(sha)).toBe(1);
  }, 120_000);
});

/**
 * The embed worker hung (SIGSTOPped once it beats) with two new images under `prefix` for it,
 * and its last beat set `silentMs` back (told to Redis rather than waited out); SIGCONT after `body`.
 */
async function withEmbedHung(prefix: string, seeds: [number, number], silentMs: number, body: (redisSeconds: number) => Promise<void>): Promise<void> {
  const live = Date.now() + 60_000;
  while ((await ctx.services.spaces.workersOf(stack.space.id)) === 0) {
    if (Date.now() > live) throw new Error('the embed worker never beat');
    await new Promise((r) => setTimeout(r, 100));
  }
  stack.supervisor.signal('embed', 1, 'SIGSTOP'); // hung: its heartbeat stops, so it is not live
  try {
    await ctx.services.store.putObject(photos, `${prefix}/circle/x.jpg`, await renderSample('circle', seeds[0], 3));
    await ctx.services.store.putObject(photos, `${prefix}/square/y.jpg`, await renderSample('square', seeds[1], 3));
    await new Promise((r) => setTimeout(r, 300)); // a beat already on its way lands first
    const { redis, keys, spaces } = ctx.services;
    const [seconds] = await redis.time();
    for (const id of await redis.zrange(keys.embedWorkers(), 0, -1)) await redis.zadd(keys.embedWorkers(), Number(seconds) * 1000 - silentMs, id);
    expect(await spaces.workersOf(stack.space.id)).toBe(0);
    await body(Number(seconds));
  } finally {
    stack.supervisor.signal('embed', 1, 'SIGCONT');
  }
}

describe('a command never waits for ever', () => {
  it('ingest with no embed worker says which stage is missing and exits 4', async () => {
    // its heartbeat stale: 20 s without a beat
    await withEmbedHung('stall', [77, 78], 20_000, async () => {
      const r = await cli(['ingest', `s3://${photos}/stall/`, '-d', 'stall', '--stall-timeout', '3'], 90_000);
      expect(r.timedOut).toBe(false);
      expect(r.code).toBe(4);
      expect(r.stdout).toMatch(/no embed worker is live for it now/);
      // naming the worker that went silent, and that up restarts a hung one
      expect(r.stderr).toMatch(/no progress for 3 s: 2 images wait for embed and no embed worker of \S+ is live: its worker \S+ last beat \d+ s ago \(stopped, hung, or cut off from Redis\?\); restart it, or start one with that space's settings: TL_MODEL_WEIGHTS=random \(under up, a worker that is stopped or blocked is restarted once its \/healthz has gone unanswered for TL_UP_HANG_SECONDS\)/);
    });
    const done = await cli(['ingest', `s3://${photos}/stall/`, '-d', 'stall']);
    expect(done.code).toBe(0);
    expect(done.stdout).toMatch(/dataset stall: 2 images, 2 embedded/);
  }, 120_000);

  it('ingest and status name an embed worker hung for longer than its registry names silent ones: it is still connected', async () => {
    // its last beat 10 minutes ago, as if SIGSTOPped then: past the four TTLs the registry names a silent worker for
    await withEmbedHung('stall-long', [87, 88], 600_000, async (seconds) => {
      expect(await ctx.services.spaces.silentWorkers(stack.space.id)).toEqual([]);
      const r = await cli(['ingest', `s3://${photos}/stall-long/`, '-d', 'stall-long', '--stall-timeout', '3'], 90_000);
      expect(r.code).toBe(4);
      expect(r.stderr).toMatch(/no embed worker of \S+ is live: its worker \S+ is connected to its queue but beats no more \(hung: SIGSTOPped, its event loop blocked, or cut off from Redis\?\); restart it/);
      // its jobs waiting for 10 minutes too, past the two stalled-job checks status waits before it calls the workers hung
      const queue = ctx.queues.embed(stack.space.id);
      for (const job of await queue.getJobs(['waiting'])) await ctx.services.redis.hset(queue.toKey(job.id!), 'timestamp', String(seconds * 1000 - 600_000));
      const status = await cli(['status']);
      expect(status.stdout).toMatch(/^embed\.\S+ +0 +2 /m);
      expect(status.stdout).toMatch(/^ {2}embed\.\S+: 2 jobs wait, the oldest for \d+ s, and the worker connected to it beats no more \(counted 0 above\) and takes none \(hung: SIGSTOPped, its event loop blocked, or cut off from Redis\?\); restart it$/m);
    });
    const done = await cli(['ingest', `s3://${photos}/stall-long/`, '-d', 'stall-long']);
    expect(done.code).toBe(0);
    expect(done.stdout).toMatch(/dataset stall-long: 2 images, 2 embedded/);
  }, 120_000);

  it("status tells a run whose job went back to the queue while its worker trains on from a hung worker (a trial: it said to restart the worker, which would throw the run's epochs away)", async () => {
    await until('the train worker to connect', async () => (await ctx.queues.train.getWorkers()).length === 1, 60);
    const workers = await ctx.queues.train.getWorkers();
    const worker = workerIdOf(workers[0]!) ?? '';
    expect(worker).not.toBe('');
    // connected and taking no job, as a worker busy with the run whose lock it lost is
    expect(stack.supervisor.signal('train', 1, 'SIGSTOP')).toBe(true);
    const job = await ctx.queues.train.add('train', { runId: 'lost-lock', dataset: 'shapes', epochs: 80 }, { jobId: jobIds.train({ runId: 'lost-lock' }), timestamp: Date.now() - 10 * 60_000 });
    const said = async () => {
      let out = '';
      await statusCommand({ ...ctx, out: { write: (t: string) => ((out += t), true) } as unknown as NodeJS.WritableStream }, {});
      return out;
    };
    try {
      // the preprocess worker exports the train queue's depth too: seen while the train worker
      // answers no scrape (an operator's trial: no series of it then, so no alert could see it)
      expect((await scrape(stack.ports.preprocess)).get('tl_queue_jobs{queue="train",state="waiting"}')).toBe(1);
      // its worker's progress, reported just now: trained on, not hung
      await job.updateProgress({ phase: 'training', epoch: 7, epochs: 80, by: worker, at: Date.now() });
      const trained = await said();
      const line = new RegExp(`^ {2}train: run lost-lock of shapes waits in the queue \\(for \\d+ s\\) while train worker ${worker.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}, which lost its lock on it \\(cut off from Redis for longer than the lock\\), still trains it and is at epoch 7 of at most 80: nothing to do\\. It saves the run, then takes the job again and finds the run written \\(restarting the worker would throw its epochs away\\)$`, 'm');
      expect(trained).toMatch(line);
      expect(trained).not.toMatch(/^ {2}train: .*restart it$/m);
      // its progress as old as a hung worker's: restart it, as before
      await job.updateProgress({ phase: 'training', epoch: 7, epochs: 80, by: worker, at: Date.now() - 10 * 60_000 });
      expect(await said()).toMatch(/^ {2}train: 1 job waits, the oldest for \d+ s, and its connected worker takes none \(hung: SIGSTOPped, its event loop blocked, or cut off from Redis\?\); restart it$/m);
    } finally {
      await job.remove();
      stack.supervisor.signal('train', 1, 'SIGCONT');
    }
  });

  it('ingest whose only preprocess worker hangs says it moves nothing and exits 4, though it is connected', async () => {
    // hung before it took any of them: connected (its connection stays open), taking none
    await ctx.services.store.putObject(photos, 'hung/circle/a.jpg', await renderSample('circle', 85, 3));
    await preprocessConnected();
    stack.supervisor.signal('preprocess', 1, 'SIGSTOP');
    try {
      const r = await cli(['ingest', `s3://${photos}/hung/`, '-d', 'hung', '--stall-timeout', '3'], 90_000);
      expect(r.timedOut).toBe(false);
      expect(r.code).toBe(4);
      expect(r.stderr).toMatch(/no progress for 3 s: 1 images wait for preprocess and its connected workers take none of the 1 jobs waiting in \S+ \(hung: SIGSTOPped, its event loop blocked, or cut off from Redis\?\); restart them/);
      // and status says so too, where it showed a worker and a waiting job as if all were well (a user's trial)
      let said = '';
      await statusCommand({ ...ctx, out: { write: (t: string) => ((said += t), true) } as unknown as NodeJS.WritableStream }, {});
      expect(said).toMatch(/^ {2}preprocess: 1 job waits, the oldest for \d+ s, and its connected worker takes none \(hung: SIGSTOPped, its event loop blocked, or cut off from Redis\?\); restart it$/m);
    } finally {
      stack.supervisor.signal('preprocess', 1, 'SIGCONT');
    }
    expect((await cli(['ingest', `s3://${photos}/hung/`, '-d', 'hung'])).stdout).toMatch(/dataset hung: 1 image, 1 embedded/);

    // hung while it holds a job: the job's lock runs out, and nothing takes it up
    await ctx.services.store.putObject(photos, 'hung/square/b.jpg', await renderSample('square', 86, 3));
    // its GET answered slowly, so the worker holds the job when it is stopped
    proxy.inject('hung/square/b.jpg', { kind: 'slow', ms: 3_000 });
    try {
      expect((await cli(['ingest', `s3://${photos}/hung/`, '-d', 'hung', '--no-wait'])).code).toBe(0);
      const deadline = Date.now() + 30_000;
      while ((await ctx.queues.preprocess.getActiveCount()) === 0) {
        if (Date.now() > deadline) throw new Error('the job never became active');
        await new Promise((r) => setTimeout(r, 50));
      }
      stack.supervisor.signal('preprocess', 1, 'SIGSTOP');
    } finally {
      proxy.remove('hung/square/b.jpg');
    }
    try {
      const r = await cli(['ingest', `s3://${photos}/hung/`, '-d', 'hung', '--stall-timeout', '3'], 90_000);
      expect(r.timedOut).toBe(false);
      expect(r.code).toBe(4);
      expect(r.stderr).toMatch(/no progress for 3 s: 1 images wait for preprocess and the job its workers hold lost its lock: worker \S+ stopped renewing it \(hung: SIGSTOPped, its event loop blocked, or cut off from Redis\?\), and no other worker took it up; restart it/);
    } finally {
      stack.supervisor.signal('preprocess', 1, 'SIGCONT');
    }
    // woken, it goes on: every image ends embedded
    expect((await cli(['ingest', `s3://${photos}/hung/`, '-d', 'hung'])).stdout).toMatch(/dataset hung: 2 images, 2 embedded .*, 0 failed, 0 pending/);
  }, 240_000);

  it('ingest into a paused queue says the queue is paused and exits 4, though its workers are connected', async () => {
    await ctx.queues.preprocess.pause();
    try {
      await ctx.services.store.putObject(photos, 'paused/circle/p.jpg', await renderSample('circle', 81, 3));
      const r = await cli(['ingest', `s3://${photos}/paused/`, '-d', 'paused', '--stall-timeout', '3'], 90_000);
      expect(r.timedOut).toBe(false);
      expect(r.code).toBe(4);
      expect(r.stderr).toMatch(/no progress for 3 s: 1 images wait for preprocess and the \S+ queue is paused/);
    } finally {
      await ctx.queues.preprocess.resume();
    }
    const done = await cli(['ingest', `s3://${photos}/paused/`, '-d', 'paused']);
    expect(done.code).toBe(0);
  }, 120_000);

  it('says the dataset vanished when Redis loses its data mid-wait, and exits 5', async () => {
    stack.supervisor.signal('preprocess', 1, 'SIGSTOP');
    try {
      await ctx.services.store.putObject(photos, 'flush/circle/z.jpg', await renderSample('circle', 90, 4));
      const waiting = cli(['ingest', `s3://${photos}/flush/`, '-d', 'flushed'], 60_000);
      const deadline = Date.now() + 20_000;
      while (!(await ctx.services.datasets.exists('flushed'))) {
        if (Date.now() > deadline) throw new Error('the ingest never started');
        await new Promise((r) => setTimeout(r, 50));
      }
      await new Promise((r) => setTimeout(r, 1_000));
      await ctx.services.redis.flushall();
      const r = await waiting;
      expect(r.code).toBe(5);
      expect(r.stderr).toMatch(/dataset flushed vanished from Redis while waiting/);
    } finally {
      stack.supervisor.signal('preprocess', 1, 'SIGCONT');
    }
    // the stack's space is gone with the flush; the embed worker's heartbeat publishes it again
    const republished = async () => {
      const deadline = Date.now() + 20_000;
      while (!(await ctx.services.spaces.get(stack.space.id))) {
        if (Date.now() > deadline) throw new Error('the space was not published again');
        await new Promise((r) => setTimeout(r, 200));
      }
    };
    await republished();

    // The flush landing just before the wait reads the status (the race the wait had when it
    // checked existence first): the status then says nothing is pending, which must end as
    // vanished, not as done.
    await ctx.services.store.putObject(photos, 'flush/square/w.jpg', await renderSample('square', 91, 4));
    stack.supervisor.signal('preprocess', 1, 'SIGSTOP');
    try {
      const space = stack.space;
      expect((await ingestPrefix({ bucket: photos, prefix: 'flush/', dataset: 'flushed-mid-read', space }, ctx)).enqueued).toBe(2);
      const inspector = ctx.services.inspector;
      let flushes = 0;
      const mid = Object.create(inspector) as typeof inspector;
      mid.status = async (d: string) => {
        if (flushes++ === 0) await ctx.services.redis.flushall();
        return inspector.status(d);
      };
      const flushing = { ...ctx, services: { ...ctx.services, inspector: mid } } as CliContext;
      await expect(waitForDataset(flushing, 'flushed-mid-read', { space: space.id, stallSeconds: 30 })).rejects.toMatchObject({ code: 5 });
      expect(flushes).toBe(1);
    } finally {
      stack.supervisor.signal('preprocess', 1, 'SIGCONT');
    }
    await republished();
  }, 90_000);
});

describe('train on a dataset with images still pending', () => {
  it('waits for them, or trains on what is embedded with --partial and says so in the report', async () => {
    const r0 = await cli(['ingest', `s3://${photos}/train/`, '-d', 'grow']);
    expect(r0.code).toBe(0);
    stack.supervisor.signal('preprocess', 1, 'SIGSTOP');
    let waiting: ReturnType<typeof cli> | undefined;
    try {
      for (let i = 0; i < 3; i++) await ctx.services.store.putObject(photos, `train/square/late-${i}.jpg`, await renderSample('square', 100 + i, 17));
      await cli(['ingest', `s3://${photos}/train/`, '-d', 'grow', '--no-wait']);
      const partial = await cli(['train', '-d', 'grow', '--partial', '--epochs', '5', '--run-id', 'grow-partial']);
      expect(partial.code).toBe(0);
      expect(partial.stdout).toMatch(/training on the 12 embedded images of 15 \(--partial\)/);
      expect(partial.stdout).toMatch(/partial: trained on 12 of 15 images \(3 pending, 0 failed\)/);
      const report = await ctx.services.store.getDocument(ReportDoc, stack.config.s3.bucket, ctx.services.layout.runFile('grow', 'grow-partial', 'report.json'));
      expect(report!.coverage).toEqual({ total: 15, embedded: 12, pending: 3, failed: 0, partial: true });
      expect(report!.params.partial).toBe(true);

      const same = await cli(['train', '-d', 'grow', '--run-id', 'grow-partial']);
      expect(same.code).toBe(2);
      expect(same.stderr).toMatch(/run grow-partial exists already/);

      // held until it has said it waits (a fixed pause let a slow start, three test files at a
      // time, look only once preprocess was let go: nothing left to wait for)
      let said = '';
      waiting = runCli(['train', '-d', 'grow', '--epochs', '5', '--run-id', 'grow-full'], stack.env, 120_000, { onOutput: (c) => (said += c) });
      await until('train to say it waits for the pending images', () => said.includes('not embedded yet; waiting for them'), 60);
    } finally {
      stack.supervisor.signal('preprocess', 1, 'SIGCONT');
    }
    const full = await waiting!;
    expect(full.code).toBe(0);
    expect(full.stdout).toMatch(/3 of 15 images of grow are not embedded yet; waiting for them/);
    expect(full.stdout).toMatch(/run grow-full: validation accuracy/);
    const report = await ctx.services.store.getDocument(ReportDoc, stack.config.s3.bucket, ctx.services.layout.runFile('grow', 'grow-full', 'report.json'));
    expect(report!.coverage).toEqual({ total: 15, embedded: 15, pending: 0, failed: 0, partial: false });
    // following a finished run prints its report and exits
    const follow = await cli(['train', '--follow', 'grow-full']);
    expect(follow.code).toBe(0);
    expect(follow.stdout).toMatch(/run grow-full: validation accuracy/);
  }, 180_000);

  it('a run queued before new images came waits for them when it starts, and gives up naming what holds them when they stop moving', async () => {
    for (const kind of KINDS) for (let i = 0; i < 3; i++) await ctx.services.store.putObject(photos, `later/${kind}/${i}.jpg`, await renderSample(kind, 120 + i, 17));
    expect((await cli(['ingest', `s3://${photos}/later/`, '-d', 'later'])).code).toBe(0);
    // (another dataset of the same images, whose run goes first while one of later waits)
    expect((await cli(['ingest', `s3://${photos}/later/`, '-d', 'beside'])).code).toBe(0);
    const report = (runId: string) => ctx.services.store.getDocument(ReportDoc, stack.config.s3.bucket, ctx.services.layout.runFile('later', runId, 'report.json'));
    const runState = async (runId: string) => (await ctx.queues.train.getJob(`train-${runId}`))?.getState();
    /** queues a run while the dataset is whole (the train queue paused: the train worker busy before), runs `meanwhile`, then lets the run start */
    const queuedBefore = async (runId: string, stall: string, meanwhile: () => Promise<void>) => {
      await ctx.queues.train.pause();
      try {
        expect((await cli(['train', '-d', 'later', '--epochs', '5', '--run-id', runId, '--no-wait', '--stall-timeout', stall])).code).toBe(0);
        await meanwhile();
      } finally {
        await ctx.queues.train.resume();
      }
    };
    // An ingest puts new images on their way before the run starts: it waits for them, saying so,
    // and trains on them too, where it failed at once (images-pending). Its preprocess worker is
    // stopped (connected, moving nothing) past the run's stall timeout: a busy stage is waited for.
    stack.supervisor.signal('preprocess', 1, 'SIGSTOP');
    let following: ReturnType<typeof cli> | undefined;
    try {
      await queuedBefore('later-1', '2', async () => {
        for (let i = 0; i < 2; i++) await ctx.services.store.putObject(photos, `later/square/new-${i}.jpg`, await renderSample('square', 130 + i, 17));
        expect((await cli(['ingest', `s3://${photos}/later/`, '-d', 'later', '--no-wait'])).code).toBe(0);
      });
      let said = '';
      following = runCli(['train', '--follow', 'later-1'], stack.env, 120_000, { onOutput: (c) => (said += c) });
      await until('the run to say it waits for the new images', () => said.includes('waiting for 2 images of later on their way (put on their way since the run was queued)'), 60);
      // status says what the run does
      // (in the queue between its looks, or on a train worker while it looks)
      expect((await cli(['status'])).stdout).toMatch(
        /^ {2}train: run later-1 of later waits (in the queue for its images on their way before it trains \(at its last look, 2 images of later on their way \(put on their way since the run was queued\)\); it looks again when a train worker is free|on train worker \S+ for 2 images of later on their way \(put on their way since the run was queued\) before it trains) \(follow it: transferline train --follow later-1\)$/m,
      );
      // the run waits in the queue, not on the train worker: a run of another dataset goes first
      const other = await cli(['train', '-d', 'beside', '--epochs', '3', '--run-id', 'beside-1']);
      expect(other.code).toBe(0);
      await new Promise((r) => setTimeout(r, 3_000)); // past its stall timeout of 2 s
      expect(await runState('later-1')).not.toBe('failed');
    } finally {
      stack.supervisor.signal('preprocess', 1, 'SIGCONT');
    }
    const r1 = await following!;
    expect(r1.code).toBe(0);
    expect(r1.stdout).toMatch(/run later-1: validation accuracy/);
    expect((await report('later-1'))!.coverage).toEqual({ total: 8, embedded: 8, pending: 0, failed: 0, partial: false });

    /** a new image ingested with the preprocess queue paused: on its way, and held there */
    const heldOnItsWay = async (key: string, seed: number) => {
      await ctx.queues.preprocess.pause();
      await ctx.services.store.putObject(photos, key, await renderSample('circle', seed, 17));
      expect((await cli(['ingest', `s3://${photos}/later/`, '-d', 'later', '--no-wait'])).code).toBe(0);
    };
    // Images that stop moving (the preprocess queue paused) end the wait after the run's stall
    // timeout (the command's --stall-timeout), naming what holds them: nothing waits for ever.
    try {
      await queuedBefore('later-2', '3', async () => {
        await heldOnItsWay('later/circle/new-0.jpg', 140);
      });
      const r2 = await cli(['train', '--follow', 'later-2'], 90_000);
      expect(r2.timedOut).toBe(false);
      expect(r2.code).not.toBe(0);
      expect(r2.stderr).toMatch(/1 of 9 images of later are not embedded in \S+ yet: none done for \d+ s, and the preprocess queue is paused \(resume it: the console's queue board\); train again once they are in \(or now, on the embedded ones, with --partial\)\n$/);
      expect(await report('later-2')).toBeUndefined();

      // An image whose job is lost (removed from Redis) is not waited for: the run says at once
      // what puts it on its way again.
      await ctx.queues.preprocess.resume();
      expect((await cli(['ingest', `s3://${photos}/later/`, '-d', 'later'])).stdout).toMatch(/dataset later: 9 images, 9 embedded/);
      await queuedBefore('later-3', '600', async () => {
        await heldOnItsWay('later/circle/new-1.jpg', 141);
        const [rec] = await ctx.services.datasets.getItems('later', [`${photos}/later/circle/new-1.jpg`]);
        expect(await ctx.queues.preprocess.remove(jobIds.preprocess({ dataset: 'later', bucket: photos, key: 'later/circle/new-1.jpg', etag: rec!.etag, embedderId: stack.space.id }))).toBe(1);
      });
      const r3 = await cli(['train', '--follow', 'later-3'], 90_000);
      // (at once: not after its stall timeout of 600 s)
      expect(r3.timedOut).toBe(false);
      expect(r3.stderr).toMatch(/1 of 10 images of later are not embedded in \S+ yet: 1 of them has no job to move it on \(run the same ingest again to put it on its way again\); train again once they are in/);

      // train --cancel stops a run while it waits, and its wait is forgotten
      await ctx.queues.preprocess.resume();
      expect((await cli(['ingest', `s3://${photos}/later/`, '-d', 'later'])).stdout).toMatch(/dataset later: 10 images, 10 embedded/);
      await queuedBefore('later-4', '600', async () => {
        await heldOnItsWay('later/circle/new-2.jpg', 142);
      });
      let said4 = '';
      const following4 = runCli(['train', '--follow', 'later-4'], stack.env, 90_000, { onOutput: (c) => (said4 += c) });
      await until('the run to say it waits', () => said4.includes('waiting for 1 image of later on its way'), 60);
      const cancel = await cli(['train', '--cancel', 'later-4'], 90_000);
      expect(cancel.code).toBe(0);
      // (removed from the queue between two looks, or stopped by its worker during one)
      expect(cancel.stdout).toMatch(/run later-4 cancelled: removed from the queue where it waited for images on their way|run later-4 was cancelled \(transferline train --cancel\) while it waited for its images/);
      const r4 = await following4;
      expect(r4.timedOut).toBe(false);
      expect(r4.stderr).toMatch(/run later-4 was cancelled \(transferline train --cancel( later-4)?\) while it waited for (images on their way|its images)/);
      expect(await ctx.services.redis.exists(ctx.services.keys.trainWaiting('later-4'))).toBe(0);
    } finally {
      await ctx.queues.preprocess.resume();
    }
  }, 240_000);
});
