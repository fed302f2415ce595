import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openCliContext, type CliContext } from '../apps/producer/src/cli-context.js';
import { enqueue, jobIds, type EmbedJob } from '../packages/shared/src/index.js';
import { guardLeaks } from './support/leak-guard.js';
import { scrape, startTestStack, type TestStack } from './support/stack.js';

/**
 * The forward pass runs off the embed worker's event loop: during a batch that takes seconds,
 * /healthz answers at once and job locks are renewed, so no job is taken for stalled. The wasm
 * backend makes the batch long (about 3 s for 32 images on 2 cores); the lock lasts 1 s, so a
 * blocked event loop would let every lock expire in the middle of the batch.
 */

guardLeaks();

const BATCH = 32;
let stack: TestStack;
let ctx: CliContext;

beforeAll(async () => {
  stack = await startTestStack(
    { TL_MODEL_WEIGHTS: 'random', TL_BACKEND: 'wasm', TL_EMBED_BATCH_SIZE: String(BATCH), TL_EMBED_BATCH_WAIT_MS: '2000', TL_JOB_LOCK_MS: '1000' },
    { preprocess: 0, train: 0 },
  );
  ctx = await openCliContext(stack.config, { write: () => true } as unknown as NodeJS.WritableStream);
});
afterAll(async () => {
  await ctx?.close();
  await stack?.destroy();
});

describe('a long forward pass', () => {
  it('leaves /healthz answering and the locks renewed: every job runs once', async () => {
    const deadline = Date.now() + 60_000;
    while ((await ctx.services.spaces.workersOf(stack.space.id)) === 0) {
      if (Date.now() > deadline) throw new Error('the embed worker never came up');
      await new Promise((r) => setTimeout(r, 200));
    }
    const jobs: { id: string; payload: EmbedJob }[] = [];
    for (let i = 0; i < 2 * BATCH; i++) {
      const sha256 = randomBytes(32).toString('hex');
      await ctx.services.tensors.put(stack.space.id, sha256, randomBytes(224 * 224 * 3));
      const payload = { sha256, embedderId: stack.space.id };
      jobs.push({ id: jobIds.embed(payload), payload });
    }
    await enqueue(ctx.queues.embed(stack.space.id), 'embed', jobs);
    let slowest = 0;
    let probes = 0;
    while ((await ctx.services.cache.size(stack.space.id)) < jobs.length) {
      if (Date.now() > deadline + 60_000) throw new Error('the jobs were never all embedded');
      const t = performance.now();
      const res = await fetch(`http://127.0.0.1:${stack.ports.embed}/healthz`, { signal: AbortSignal.timeout(10_000) });
      slowest = Math.max(slowest, performance.now() - t);
      probes++;
      expect(res.status).toBe(200);
      await new Promise((r) => setTimeout(r, 100));
    }
    // the index is written before the pixels are freed and the jobs complete: counted a moment later
    let m = await scrape(stack.ports.embed);
    const counted = Date.now() + 10_000;
    while (m.get(`tl_jobs_total{queue="embed",space="${stack.space.id}",outcome="completed"}`) !== jobs.length && Date.now() < counted) {
      await new Promise((r) => setTimeout(r, 100));
      m = await scrape(stack.ports.embed);
    }
    const forwardSeconds = m.get('tl_embed_forward_seconds_sum')! / m.get('tl_embed_forward_seconds_count')!;
    expect(forwardSeconds).toBeGreaterThan(1.5); // the batches really were long
    expect(probes).toBeGreaterThan(10);
    expect(slowest).toBeLessThan(300);
    // each job embedded once: none was taken for stalled and run again (that would show as cached or retried)
    expect(m.get('tl_images_total{stage="embed",outcome="embedded"}')).toBe(jobs.length);
    expect(m.get('tl_images_total{stage="embed",outcome="cached"}') ?? 0).toBe(0);
    // (counted under the worker's embedding space, as its queue's depth is)
    expect(m.get(`tl_jobs_total{queue="embed",space="${stack.space.id}",outcome="completed"}`)).toBe(jobs.length);
    expect(m.get(`tl_jobs_total{queue="embed",space="${stack.space.id}",outcome="retried"}`)).toBe(0);
    expect(await readFile(stack.supervisor.logFile('embed'), 'utf8')).not.toMatch(/stalled|lock/i);
  }, 150_000);
});
