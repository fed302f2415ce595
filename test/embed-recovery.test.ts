import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openCliContext, type CliContext } from '../apps/producer/src/cli-context.js';
import { ingestCommand } from '../apps/producer/src/commands/ingest.command.js';
import { waitForDataset } from '../apps/producer/src/dataset-wait.js';
import { renderSample } from '../apps/producer/src/demo/sample-images.js';
import { startEmbedRole } from '../apps/feature-worker/src/embed.worker.js';
import type { RunningRole } from '../packages/shared/src/index.js';
import { createLogger } from '../packages/shared/src/service-runtime.js';
import { guardLeaks } from './support/leak-guard.js';
import { startTestStack, type TestStack } from './support/stack.js';

guardLeaks();

let stack: TestStack;
let ctx: CliContext;
let embed: RunningRole | undefined;
const sink = { write: () => true } as unknown as NodeJS.WritableStream;

beforeAll(async () => {
  // no embed process: the test plays the part of pixels expiring before embed runs
  stack = await startTestStack({ TL_MODEL_WEIGHTS: 'random', TL_EMBED_BATCH_SIZE: '4' }, { embed: 0, train: 0 });
  ctx = await openCliContext(stack.config, sink);
  await ctx.services.store.ensureBucket('photos-rec');
  for (let i = 0; i < 4; i++) await ctx.services.store.putObject('photos-rec', `train/circle/${i}.jpg`, await renderSample('circle', i, 41));
});
afterAll(async () => {
  await embed?.stop();
  await ctx?.close();
  await stack?.destroy();
});

describe('an image whose embedding failed for good', () => {
  it('shows its reason, and a second ingest embeds it', async () => {
    await ingestCommand(ctx, 's3://photos-rec/train/', { dataset: 'rec', wait: false });
    while (((await ctx.queues.embed(stack.space.id).getJobCounts('waiting')).waiting ?? 0) < 4) await new Promise((r) => setTimeout(r, 50));
    // two images' pixels vanish from Redis (TTL passed, or evicted) before embed gets to them
    const items = (await ctx.services.datasets.getItems('rec', [0, 1].map((i) => `photos-rec/train/circle/${i}.jpg`))).map((r) => r!.sha256!);
    await ctx.services.tensors.delete(stack.space.id, items);

    embed = await startEmbedRole(stack.config, createLogger('embed', 'silent'));
    const first = await waitForDataset(ctx, 'rec', { space: stack.space.id, stallSeconds: 60 });
    expect(first).toMatchObject({ total: 4, embedded: 2, failed: 2, pending: 0 });
    expect(first.failures.map((f) => f.reason)).toEqual(['pixels-expired', 'pixels-expired']);
    // with when each failed (listings put the newest first), and its label
    for (const f of first.failures) expect({ label: f.label, recent: Date.now() - Date.parse(f.failedAt ?? '') < 120_000 }).toEqual({ label: 'circle', recent: true });
    // the reason is recorded before the job itself is moved to failed: give BullMQ a moment
    for (let i = 0; i < 50 && ((await ctx.queues.embed(stack.space.id).getJobCounts('failed')).failed ?? 0) < 2; i++) await new Promise((r) => setTimeout(r, 100));
    expect((await ctx.queues.embed(stack.space.id).getJobCounts('failed')).failed).toBe(2);

    const again = await ingestCommand(ctx, 's3://photos-rec/train/', { dataset: 'rec', wait: true });
    // the two that failed on expired pixels are tried again by the re-ingest itself
    expect(again.counts).toMatchObject({ enqueued: 0, retried: 2, unchanged: 2 });
    expect(again.status).toMatchObject({ total: 4, embedded: 4, failed: 0, pending: 0 });
    expect(await ctx.services.cache.size(stack.space.id)).toBe(4);
  }, 120_000);
});
