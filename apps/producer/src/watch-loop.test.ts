import { describe, expect, it } from 'vitest';
import type { CliContext } from './cli-context.js';
import { watchRounds } from './watch-loop.js';

function context(): { ctx: CliContext; printed: string[] } {
  const printed: string[] = [];
  const out = { write: (s: string) => (printed.push(s), true) } as unknown as NodeJS.WritableStream;
  return { ctx: { out, config: { redis: { url: 'redis://127.0.0.1:1' } } } as unknown as CliContext, printed };
}

describe('watchRounds', () => {
  it('says a failure once per kind, whatever its figures, and says when a round goes through again', async () => {
    const { ctx, printed } = context();
    const failures: (string | undefined)[] = [undefined, 'stalled: 12 images have not moved for 30 s', 'stalled: 11 images have not moved for 30 s', 'bucket photos does not exist', 'bucket photos does not exist', undefined];
    await watchRounds(ctx, { intervalSeconds: 0.001, maxRounds: failures.length }, async (n) => {
      const failure = failures[n - 1];
      if (failure) throw new Error(failure);
    });
    expect(printed).toEqual([
      'watch: round 2 failed: stalled: 12 images have not moved for 30 s; trying again every 0.001 s (Ctrl-C to stop)\n',
      'watch: round 4 failed: bucket photos does not exist; trying again every 0.001 s (Ctrl-C to stop)\n',
      'watch: round 6 went through; 4 rounds since round 2 had failed\n',
    ]);
  });

  it("ends on the first round's failure", async () => {
    const { ctx } = context();
    await expect(watchRounds(ctx, { intervalSeconds: 0.001, maxRounds: 3 }, async () => Promise.reject(new Error('no such model')))).rejects.toThrow('no such model');
  });
});
