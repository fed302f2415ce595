import { describe, expect, it } from 'vitest';
import type { CliContext } from './cli-context.js';
import { watchRounds, WatchEnded } from './watch-loop.js';

function context(): { ctx: CliContext; printed: string[] } {
  const printed: string[] = [];
  const out = { write: (s: string) => (printed.push(s), true) } as unknown as NodeJS.WritableStream;
  return { ctx: { out, config: { redis: { url: 'redis://127.0.0.1:1' }, s3: { endpoint: 'http://127.0.0.1:9' } } } as unknown as CliContext, printed };
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

  it('names the server a refused connection went to: S3 by its host and port, else Redis', async () => {
    const refused = (port: number) => Object.assign(new Error(`connect ECONNREFUSED 127.0.0.1:${port}`), { code: 'ECONNREFUSED', address: '127.0.0.1', port });
    const { ctx, printed } = context();
    const failures = [undefined, refused(9), refused(1), undefined];
    await watchRounds(ctx, { intervalSeconds: 0.001, maxRounds: failures.length }, async (n) => {
      const failure = failures[n - 1];
      if (failure) throw new Error('the listing failed', { cause: failure }); // as the SDK wraps it
    });
    expect(printed[0]).toBe('watch: round 2 failed: cannot reach S3 at http://127.0.0.1:9: connection refused. Is it running? (set S3_ENDPOINT or TL_S3_PORT, or run "transferline up"); trying again every 0.001 s (Ctrl-C to stop)\n');
    expect(printed[1]).toBe('watch: round 3 failed: the listing failed; trying again every 0.001 s (Ctrl-C to stop)\n');
  });

  it("names a refused manifest's rows, as ingest does, and says them again when other rows are wrong (it said the first line only)", async () => {
    const { ctx, printed } = context();
    const refusal = (line: number) => new Error(`transferline: the manifest s3://p/l.csv: a row cannot be read, so nothing of it was ingested\n  line ${line}: no label for a.jpg`);
    const failures = [undefined, refusal(7), refusal(7), refusal(9), undefined];
    await watchRounds(ctx, { intervalSeconds: 0.001, maxRounds: failures.length }, async (n) => {
      const failure = failures[n - 1];
      if (failure) throw failure;
    });
    expect(printed).toEqual([
      'watch: round 2 failed: the manifest s3://p/l.csv: a row cannot be read, so nothing of it was ingested; trying again every 0.001 s (Ctrl-C to stop)\n  line 7: no label for a.jpg\n',
      'watch: round 4 failed: the manifest s3://p/l.csv: a row cannot be read, so nothing of it was ingested; trying again every 0.001 s (Ctrl-C to stop)\n  line 9: no label for a.jpg\n',
      'watch: round 5 went through; 3 rounds since round 2 had failed\n',
    ]);
  });

  it('ends on a later round that finds what it watches gone (WatchEnded), where other failures are tried again', async () => {
    const { ctx, printed } = context();
    let rounds = 0;
    const gone = new WatchEnded(5, 'transferline: dataset d is gone');
    await expect(
      watchRounds(ctx, { intervalSeconds: 0.001, maxRounds: 6 }, async (n) => {
        rounds = n;
        if (n === 2) throw new Error('cannot list');
        if (n === 3) throw gone;
      }),
    ).rejects.toBe(gone);
    expect(rounds).toBe(3);
    expect(printed).toEqual(['watch: round 2 failed: cannot list; trying again every 0.001 s (Ctrl-C to stop)\n']);
  });

  it("ends on the first round's failure", async () => {
    const { ctx } = context();
    await expect(watchRounds(ctx, { intervalSeconds: 0.001, maxRounds: 3 }, async () => Promise.reject(new Error('no such model')))).rejects.toThrow('no such model');
  });
});
