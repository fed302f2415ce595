import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createRedis, PausedWorkers, PROCESS_NAME, redisKeys, type Redis } from '../packages/shared/src/index.js';
import { openCliContext, type CliContext } from '../apps/producer/src/cli-context.js';
import { allPaused } from '../apps/producer/src/dataset-wait.js';
import { guardLeaks } from './support/leak-guard.js';
import { startTestStack, type TestStack } from './support/stack.js';

/**
 * The entries a worker paused by an outage keeps in Redis, as the CLI reads them: how long it has
 * been paused is measured on Redis's clock (workers and the CLI run on machines whose clocks may
 * disagree), and an entry removed right after it was made stays removed. Real Redis.
 */

guardLeaks();

let stack: TestStack;
let ctx: CliContext;
const clients: Redis[] = [];

beforeAll(async () => {
  stack = await startTestStack({}, { preprocess: 0, embed: 0, train: 0 });
  ctx = await openCliContext(stack.config, { write: () => true } as unknown as NodeJS.WritableStream);
}, 120_000);

afterAll(async () => {
  for (const c of clients) c.disconnect();
  await ctx?.close();
  await stack?.destroy();
});

function registry(): PausedWorkers {
  const redis = createRedis(stack.config.redis.url, 'oneshot');
  clients.push(redis);
  return new PausedWorkers(redis, redisKeys(stack.config.redis.prefix));
}

const outage = { dependency: 's3', describe: () => ({ reason: 'S3 at http://s3.example:9000 is unreachable', remedy: 'they resume by themselves when it is back' }) };

describe('paused workers', () => {
  it('a worker whose clock runs an hour late is shown paused for seconds, not an hour', async () => {
    const queue = `clock-${Date.now()}`;
    const late = Date.now() - 3_600_000;
    const clock = vi.spyOn(Date, 'now').mockImplementation(() => late);
    let unmark: () => Promise<void>;
    try {
      unmark = registry().mark(queue, outage);
      await vi.waitFor(async () => expect(await ctx.services.paused.list(queue)).toHaveLength(1), { timeout: 5_000 });
    } finally {
      clock.mockRestore();
    }
    const [entry] = await ctx.services.paused.list(queue);
    expect(entry!.worker).toBe(PROCESS_NAME);
    expect(entry!.pausedSeconds).toBeLessThan(10);
    // what a waiting CLI prints when this is the stage's only worker
    expect(await allPaused(ctx, queue, 1)).toMatch(/^its worker is paused: S3 at http:\/\/s3\.example:9000 is unreachable \(for \d s\); they resume/);
    await unmark();
    expect(await ctx.services.paused.list(queue)).toEqual([]);
  });

  it('a pause ended right after it began leaves no entry behind', async () => {
    const queue = `brief-${Date.now()}`;
    const unmark = registry().mark(queue, outage);
    await unmark();
    // the first write had not landed when unmark ran; it must not land after it
    await new Promise((r) => setTimeout(r, 500));
    expect(await ctx.services.paused.list(queue)).toEqual([]);
  });
});
