import { describe, expect, it } from 'vitest';
import { MicroBatcher } from './micro-batcher.js';

describe('MicroBatcher', () => {
  it('runs a full batch at once, without waiting', async () => {
    const batches: number[][] = [];
    const b = new MicroBatcher<number, number>(async (xs) => (batches.push(xs), xs.map((x) => x * 2)), 3, 60_000);
    const results = await Promise.all([1, 2, 3].map((x) => b.submit(x)));
    expect(results).toEqual([2, 4, 6]);
    expect(batches).toEqual([[1, 2, 3]]);
  });

  it('runs a partial batch after the wait', async () => {
    const batches: number[][] = [];
    const b = new MicroBatcher<number, number>(async (xs) => (batches.push(xs), xs), 8, 20);
    const started = Date.now();
    expect(await Promise.all([b.submit(1), b.submit(2)])).toEqual([1, 2]);
    expect(Date.now() - started).toBeGreaterThanOrEqual(15);
    expect(batches).toEqual([[1, 2]]);
  });

  it('splits an overfull burst into batches of at most maxSize, run one at a time', async () => {
    let running = 0;
    let maxRunning = 0;
    const sizes: number[] = [];
    const b = new MicroBatcher<number, number>(async (xs) => {
      running++;
      maxRunning = Math.max(maxRunning, running);
      await new Promise((r) => setTimeout(r, 5));
      running--;
      sizes.push(xs.length);
      return xs;
    }, 4, 10);
    await Promise.all(Array.from({ length: 10 }, (_, i) => b.submit(i)));
    expect(sizes).toEqual([4, 4, 2]);
    expect(maxRunning).toBe(1);
  });

  it('fails one item alone, and a whole batch when the run throws', async () => {
    const b = new MicroBatcher<number, number>(async (xs) => xs.map((x) => (x === 2 ? new Error('bad 2') : x)), 3, 5);
    const r = await Promise.allSettled([1, 2, 3].map((x) => b.submit(x)));
    expect(r.map((x) => x.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    const c = new MicroBatcher<number, number>(async () => {
      throw new Error('device lost');
    }, 2, 5);
    const r2 = await Promise.allSettled([c.submit(1), c.submit(2)]);
    expect(r2.every((x) => x.status === 'rejected' && /device lost/.test(String(x.reason)))).toBe(true);
    // the batcher still works after a failed batch
    const d = new MicroBatcher<number, number>(async (xs) => xs, 1, 5);
    await expect(d.submit(7)).resolves.toBe(7);
  });
});

describe('MicroBatcher with two batches in flight', () => {
  it('starts the next batch while one is still finishing, never more than two, in order', async () => {
    let running = 0;
    let maxRunning = 0;
    const started: number[] = [];
    const b = new MicroBatcher<number, number>(async (xs) => {
      started.push(xs[0]!);
      running++;
      maxRunning = Math.max(maxRunning, running);
      await new Promise((r) => setTimeout(r, 20));
      running--;
      return xs;
    }, 2, 5, 2);
    const all = Promise.all(Array.from({ length: 8 }, (_, i) => b.submit(i)));
    await b.drain();
    expect(await all).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    expect(maxRunning).toBe(2);
    expect(started).toEqual([0, 2, 4, 6]);
  });
});
