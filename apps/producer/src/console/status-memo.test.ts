import type { DatasetStatus } from '@transferline/shared';
import { describe, expect, it } from 'vitest';
import { StatusMemo } from './status-memo.js';

/** A read the test ends by hand, on a clock the test moves. */
function harness() {
  let clock = 0;
  const reads: { dataset: string; end: (total: number) => void; fail: (err: Error) => void }[] = [];
  const memo = new StatusMemo(
    (dataset) =>
      new Promise<DatasetStatus>((resolve, reject) => {
        reads.push({ dataset, end: (total) => resolve({ dataset, total } as DatasetStatus), fail: reject });
      }),
    () => clock,
  );
  const tick = () => new Promise((r) => setImmediate(r));
  return { memo, reads, advance: (ms: number) => (clock += ms), tick };
}

describe('StatusMemo', () => {
  it('shares one read among pages asking at once, and reuses it for three times its duration', async () => {
    const { memo, reads, advance } = harness();
    const a = memo.get('big', 1_000);
    const b = memo.get('big', 1_000);
    expect(reads).toHaveLength(1);
    advance(2_000);
    reads[0]!.end(5);
    const [ra, rb] = await Promise.all([a, b]);
    expect(ra).toEqual({ status: { dataset: 'big', total: 5 }, readAt: 0, tookMs: 2_000 });
    expect(rb).toBe(ra);
    // a read of 2 s is reused for 6 s after it ended …
    advance(5_900);
    expect(await memo.get('big', 1_000)).toBe(ra);
    expect(reads).toHaveLength(1);
    // … then read again
    advance(200);
    const c = memo.get('big', 1_000);
    expect(reads).toHaveLength(2);
    reads[1]!.end(6);
    expect((await c)!.status.total).toBe(6);
  });

  it('reads a small dataset afresh for every page', async () => {
    const { memo, reads, advance } = harness();
    const a = memo.get('small', 1_000);
    advance(3);
    reads[0]!.end(1);
    await a;
    advance(10);
    const b = memo.get('small', 1_000);
    expect(reads).toHaveLength(2);
    reads[1]!.end(2);
    expect((await b)!.status.total).toBe(2);
  });

  it('answers within the wait: nothing before a first read ends, the last count while a new read goes on; the next page gets what the read found', async () => {
    const { memo, reads, advance } = harness();
    expect(await memo.get('big', 20)).toBeUndefined();
    expect(reads).toHaveLength(1);
    // the read went on without a page waiting for it
    advance(30_000);
    reads[0]!.end(7);
    await new Promise((r) => setImmediate(r));
    const first = await memo.get('big', 20);
    expect(first!.status.total).toBe(7);
    advance(100_000);
    expect(await memo.get('big', 20)).toBe(first);
    expect(reads).toHaveLength(2);
    // a page meanwhile joins the read under way, it does not start another
    expect(await memo.get('big', 20)).toBe(first);
    expect(reads).toHaveLength(2);
    reads[1]!.end(8);
    await new Promise((r) => setImmediate(r));
    expect((await memo.get('big', 20))!.status.total).toBe(8);
  });

  it('a read that fails after an earlier one ended shows the earlier counts (with their age), and the next page reads again', async () => {
    const { memo, reads, advance } = harness();
    const a = memo.get('d', 1_000);
    reads[0]!.end(3);
    const first = await a;
    advance(60_000);
    const b = memo.get('d', 1_000);
    reads[1]!.fail(new Error('LOADING Redis is loading the dataset in memory'));
    expect(await b).toBe(first);
    void memo.get('d', 1_000);
    expect(reads).toHaveLength(3);
  });

  it('a failed read fails the pages waiting for it, and the next page reads again; one failing unwatched leaves no rejection', async () => {
    const { memo, reads, tick } = harness();
    const a = memo.get('d', 1_000);
    reads[0]!.fail(new Error('Redis is gone'));
    await expect(a).rejects.toThrow('Redis is gone');
    const b = memo.get('d', 1_000);
    expect(reads).toHaveLength(2);
    reads[1]!.end(3);
    expect((await b)!.status.total).toBe(3);
    // nobody waits for this one when it fails (vitest fails the test on an unhandled rejection)
    expect(await memo.get('e', 1)).toBeUndefined();
    reads[2]!.fail(new Error('later'));
    await tick();
  });

  it('forgets a dataset no longer listed, and a read under way for it keeps nothing', async () => {
    const { memo, reads, advance } = harness();
    const a = memo.get('gone', 1_000);
    advance(10_000);
    reads[0]!.end(4);
    await a;
    memo.keepOnly([]);
    const b = memo.get('gone', 1);
    expect(reads).toHaveLength(2);
    expect(await b).toBeUndefined();
    memo.keepOnly([]);
    reads[1]!.end(5);
    await new Promise((r) => setImmediate(r));
    // the read ended after the dataset was forgotten: the next page reads again
    void memo.get('gone', 1);
    expect(reads).toHaveLength(3);
  });
});
