import { afterAll, describe, expect, it, vi } from 'vitest';
import { createRedis, PausedWorkers, PROCESS_NAME, redisKeys, type Redis } from '../packages/shared/src/index.js';
import { guardLeaks } from './support/leak-guard.js';
import { NO_WORKERS, stackForFile } from './support/stack.js';

/**
 * The entries a worker paused by an outage keeps in Redis, as the CLI reads them: how long it has
 * been paused is measured on Redis's clock (workers and the CLI run on machines whose clocks may
 * disagree), and an entry removed right after it was made stays removed. Real Redis.
 */

guardLeaks();

const file = stackForFile({}, NO_WORKERS);
const clients: Redis[] = [];

afterAll(() => {
  for (const c of clients) c.disconnect();
});

function registry(): PausedWorkers {
  const { config } = file.stack;
  const redis = createRedis(config.redis.url, 'oneshot');
  clients.push(redis);
  return new PausedWorkers(redis, redisKeys(config.redis.prefix));
}

const outage = { dependency: 's3', describe: () => ({ reason: 'S3 at http://s3.example:9000 is unreachable', remedy: 'they resume by themselves when it is back' }) };

describe('paused workers', () => {
  it('a worker whose clock runs an hour late is shown paused for seconds, not an hour', async () => {
    const { ctx } = file;
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
    expect(await ctx.services.paused.allPaused(queue, 1)).toMatch(/^its worker is paused: S3 at http:\/\/s3\.example:9000 is unreachable \(for \d s\); they resume/);
    // a waiting run counts the stage blocked only once the pause has lasted its stall timeout:
    // one of a few seconds (an outage just ending) is not (a review)
    expect(await ctx.services.paused.allPaused(queue, 1, 600)).toBeUndefined();
    expect(await ctx.services.paused.allPaused(queue, 2)).toBeUndefined(); // one of two workers paused: the other moves them
    await unmark();
    expect(await ctx.services.paused.list(queue)).toEqual([]);
  });

  it('a pause ended right after it began leaves no entry behind', async () => {
    const { ctx } = file;
    const queue = `brief-${Date.now()}`;
    const unmark = registry().mark(queue, outage);
    await unmark();
    // the first write had not landed when unmark ran; it must not land after it
    await new Promise((r) => setTimeout(r, 500));
    expect(await ctx.services.paused.list(queue)).toEqual([]);
  });
});
