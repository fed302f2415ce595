import { readFile } from 'node:fs/promises';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openCliContext, type CliContext } from '../apps/producer/src/cli-context.js';
import { ingestCommand } from '../apps/producer/src/commands/ingest.command.js';
import { waitForDataset } from '../apps/producer/src/dataset-wait.js';
import { guardLeaks } from './support/leak-guard.js';
import { scrape, startTestStack, type TestStack } from './support/stack.js';

/**
 * Backpressure: with no embed worker, two preprocess processes (2 jobs in hand each) store at
 * most TL_MAX_PENDING_TENSORS tensors however many images are queued; once embed starts,
 * everything completes and the bound still holds.
 */

guardLeaks();

const BOUND = 6;
const IMAGES = 3 * BOUND;
const bucket = 'backpressure';

let stack: TestStack;
let ctx: CliContext;
const sink = { write: () => true } as unknown as NodeJS.WritableStream;

beforeAll(async () => {
  stack = await startTestStack(
    { TL_MODEL_WEIGHTS: 'random', TL_MAX_PENDING_TENSORS: String(BOUND), TL_PREPROCESS_CONCURRENCY: '2', TL_EMBED_BATCH_SIZE: '4' },
    { embed: 0, train: 0, preprocess: 2 },
  );
  ctx = await openCliContext(stack.config, sink);
});
afterAll(async () => {
  await ctx?.close();
  await stack?.destroy();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** A worker's metrics, or none while its process is still starting. */
const metricsOf = (port: number) => scrape(port).catch(() => new Map<string, number>());

describe('backpressure', () => {
  it('holds the tensors waiting for embed at the bound, and everything completes once embed runs', async () => {
    await ctx.services.store.ensureBucket(bucket);
    for (let i = 0; i < IMAGES; i++) {
      const jpeg = await sharp({ create: { width: 120, height: 90, channels: 3, background: { r: 10 * i, g: 200 - 10 * i, b: 90 } } }).jpeg().toBuffer();
      await ctx.services.store.putObject(bucket, `train/${i % 2 ? 'odd' : 'even'}/${i}.jpg`, jpeg, 'image/jpeg');
    }

    // Sample what Redis holds for the whole test.
    let maxTensors = 0;
    let maxBacklog = 0;
    let sampling = true;
    const embedQueue = ctx.queues.embed(stack.space.id);
    const sampler = (async () => {
      while (sampling && ctx.services.redis.status === 'ready') {
        const [tensors, c] = await Promise.all([ctx.services.tensors.count(), embedQueue.getJobCounts('waiting', 'active', 'delayed', 'prioritized')]);
        maxTensors = Math.max(maxTensors, tensors);
        maxBacklog = Math.max(maxBacklog, Object.values(c).reduce((a, b) => a + b, 0));
        await sleep(20);
      }
    })();

    try {
      const r = await ingestCommand(ctx, `s3://${bucket}/train/`, { dataset: 'bp', wait: false });
      expect(r.counts.enqueued).toBe(IMAGES);

      // Preprocess fills the backlog to the bound, then holds: the rest stays in its queue.
      const deadline = Date.now() + 30_000;
      let held = 0;
      for (;;) {
        const [pp, tensors] = await Promise.all([ctx.queues.preprocess.getJobCounts('waiting', 'active'), ctx.services.tensors.count()]);
        const metrics = await Promise.all([metricsOf(stack.workerPorts['preprocess#1']!), metricsOf(stack.workerPorts['preprocess#2']!)]);
        held = metrics.reduce((n, m) => n + (m.get('tl_queue_jobs{queue="preprocess",state="held"}') ?? 0), 0);
        // both processes' 2 slots are holding pixels: nothing more can be taken
        if (tensors === BOUND && held === 4 && (pp.waiting ?? 0) + (pp.active ?? 0) === IMAGES - BOUND) break;
        if (Date.now() > deadline) throw new Error(`preprocess never settled at the bound: ${JSON.stringify({ pp, tensors, held })}`);
        await sleep(100);
      }
      await sleep(1_000); // and it stays there
      expect(await ctx.services.tensors.count()).toBe(BOUND);
      const backlog = await scrape(stack.workerPorts['preprocess#1']!);
      expect(backlog.get(`tl_queue_jobs{queue="embed",space="${stack.space.id}",state="backlog"}`)).toBe(BOUND);
      // and BullMQ's own counts, read on the scrape: the rest wait in the preprocess queue
      expect(backlog.get('tl_queue_jobs{queue="preprocess",state="waiting"}')).toBe(IMAGES - BOUND - 4);
      expect(backlog.get(`tl_queue_jobs{queue="embed",space="${stack.space.id}",state="waiting"}`)).toBe(BOUND);

      // A preprocess process stopped (Ctrl-C, a restart, a scale-down) while its jobs wait for
      // room puts them back without spending an attempt (not left active in a process that is
      // gone, to be taken for stalled later: twice fails them as 'stalled'); the supervisor
      // starts it again.
      const held4 = await ctx.queues.preprocess.getJobs(['active']);
      expect(held4).toHaveLength(4);
      const stopped = stack.supervisor.pids()['preprocess#1'];
      stack.supervisor.signal('preprocess', 1, 'SIGTERM');
      const back = Date.now() + 30_000;
      while (stack.supervisor.pids()['preprocess#1'] === stopped || (await metricsOf(stack.workerPorts['preprocess#1']!)).get('tl_queue_jobs{queue="preprocess",state="held"}') !== 2) {
        if (Date.now() > back) throw new Error('the stopped preprocess process did not come back to hold its jobs');
        await sleep(200);
      }
      for (const j of held4) expect(await ctx.queues.preprocess.getJob(j.id!)).toMatchObject({ attemptsMade: 0, stalledCounter: 0 });
      // and its log says it stopped, not that preprocess resumed (an operator's trial read that between "stopping" and "stopped")
      const said = (await readFile(stack.supervisor.logFile('preprocess', 1), 'utf8')).split('\n').filter((l) => l.includes(`"pid":${stopped}`));
      expect(said.some((l) => l.includes('"msg":"stopped"'))).toBe(true);
      expect(said.filter((l) => l.includes('preprocess resumed'))).toEqual([]);

      // Now embed starts, in its own process, and drains the backlog; preprocess resumes.
      await stack.supervisor.start([{ role: 'embed', replica: 1, metricsPort: 0, env: stack.env }]);
      const status = await waitForDataset(ctx, 'bp', { space: stack.space.id, stallSeconds: 60 });
      sampling = false;
      await sampler;

      expect(status).toMatchObject({ total: IMAGES, embedded: IMAGES, failed: 0, pending: 0 });
      expect(maxTensors).toBe(BOUND);
      expect(maxBacklog).toBeLessThanOrEqual(BOUND);
      expect(await ctx.services.tensors.count()).toBe(0);
      const failed = await ctx.queues.preprocess.getJobCounts('failed');
      expect(failed.failed).toBe(0);
      // the backlog on preprocess's metrics says what status says now: empty
      const after = await scrape(stack.workerPorts['preprocess#1']!);
      expect(after.get(`tl_queue_jobs{queue="embed",space="${stack.space.id}",state="backlog"}`)).toBe(0);
      expect(after.get('tl_queue_jobs{queue="preprocess",state="held"}')).toBe(0);
      // jobs put back to wait for room are no failed attempts
      expect(after.get('tl_images_total{stage="preprocess",outcome="retried"}')).toBe(0);
    } finally {
      sampling = false;
      await sampler;
    }
  });
});
