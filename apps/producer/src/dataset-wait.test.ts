import { describe, expect, it } from 'vitest';
import type { CliContext } from './cli-context.js';
import { barCounter, connectedHint, pollDelayMs, stageBlocked, type UpRestarts } from './dataset-wait.js';

describe("a dataset wait's looks", () => {
  it('come less often for a large dataset, and take Redis at most a quarter of the time', () => {
    expect(pollDelayMs(100, 5)).toBe(501);
    expect(pollDelayMs(200_000, 600)).toBe(2_500);
    // a million items: a look takes about 8 s, then 24 s of rest (it was 10 s: Redis read for it 44% of the time)
    expect(pollDelayMs(1_000_000, 8_000)).toBe(24_000);
  });
});

describe("a dataset wait's bar", () => {
  const status = { total: 1_012, embedded: 1_003, cached: 0, failed: 2, pending: 7, orphaned: 0 };
  const ours = { count: 12, what: "this ingest's images" };
  /** the bar's figures at each of these looks of one wait */
  const looks = (o: Parameters<typeof barCounter>[0], ...statuses: (typeof status)[]) => {
    const count = barCounter(o);
    return statuses.map((s) => count(s));
  };

  it("counts a second ingest's own images, with the dataset's figures beside them", () => {
    // 1005 of 1012 done read as the new ingest's progress: 5 of its 12 are
    expect(looks(ours, status, { ...status, embedded: 1_010, pending: 0 })).toEqual([
      { value: 5, total: 12, detail: "of this ingest's images done (the dataset: 1005/1012 done, 1003 embedded (0 of them already in the cache), 2 failed)" },
      { value: 12, total: 12, detail: "of this ingest's images done (the dataset: 1012/1012 done, 1010 embedded (0 of them already in the cache), 2 failed)" },
    ]);
    // a narrowed wait (classify's prefix) names what the figures beside them are of
    expect(looks({ ...ours, whole: 'the prefix' }, status)[0]!.detail).toMatch(/^of this ingest's images done \(the prefix: 1005\/1012 done, /);
  });

  it("counts the whole dataset when the command's images are all of it, or none, and goes on so when images are added", () => {
    expect(looks(ours, { ...status, total: 12, embedded: 3, pending: 7 }, { ...status, total: 112, embedded: 3, pending: 107 })).toEqual([
      { value: 5, total: 12, detail: 'done: 3 embedded (0 of them already in the cache), 2 failed' },
      { value: 5, total: 112, detail: 'done: 3 embedded (0 of them already in the cache), 2 failed' },
    ]);
    expect(looks({ ...ours, count: 0 }, status)[0]).toMatchObject({ value: 1_005, total: 1_012 });
    expect(looks(undefined, status)[0]).toMatchObject({ value: 1_005, total: 1_012 });
  });

  it("counts another command's images on their way too, since the wait waits for them: never below none done", () => {
    // 20 pending at the first look, 12 of them ours: the other 8 are done first, then ours
    const other = { ...status, embedded: 990, pending: 20 };
    expect(looks(ours, other, { ...other, embedded: 998, pending: 12 }, { ...other, embedded: 1_010, pending: 0 })).toEqual([
      { value: 0, total: 20, detail: expect.stringMatching(/^of this ingest's images and 8 more done \(the dataset: 992\/1012 done, /) },
      { value: 8, total: 20, detail: expect.stringMatching(/^of this ingest's images and 8 more done \(the dataset: 1000\/1012 done, /) },
      { value: 20, total: 20, detail: expect.stringMatching(/^of this ingest's images and 8 more done \(the dataset: 1012\/1012 done, /) },
    ]);
  });

  it('takes the images it added from the cache for done from the start, whoever else has images on their way', () => {
    // 1000 embedded before; this ingest: 90 from the cache, 10 new; another client's 95 on their way
    const both = { total: 1_195, embedded: 1_090, cached: 90, failed: 0, pending: 105, orphaned: 0 };
    const figures = looks({ ...ours, count: 100, done: 90 }, both, { ...both, embedded: 1_195, pending: 0 });
    expect(figures.map((f) => `${f.value}/${f.total}`)).toEqual(['90/195', '195/195']);
    expect(figures[0]!.detail).toMatch(/^of this ingest's images and 95 more done /);
  });

  it('counts images added while it waits (another client classifying the same prefix), where it stood at none done of its own', () => {
    const classify = { count: 12, what: 'the images on their way', whole: 'the prefix' };
    const added = { ...status, total: 1_112, pending: 107 };
    const figures = looks(classify, status, added, { ...added, embedded: 1_053, pending: 57 }, { ...added, embedded: 1_103, failed: 9, pending: 0 });
    expect(figures.map((f) => `${f.value}/${f.total}`)).toEqual(['5/12', '5/112', '55/112', '112/112']);
    expect(figures[1]!.detail).toMatch(/^of the images on their way and 100 more done \(the prefix: 1005\/1112 done, /);
    // one that another replaced meanwhile is on its way again: one fewer done, of as many
    expect(looks(ours, status, { ...status, embedded: 1_002, pending: 8 }).map((f) => `${f.value}/${f.total}`)).toEqual(['5/12', '4/12']);
  });
});

describe('a stalled wait with workers connected', () => {
  it("after a hang up was waited for, says a worker is connected again and the hung one's jobs wait for their locks, not 'busy with other work?'", () => {
    const restarts: UpRestarts = new Map();
    expect(connectedHint(restarts)).toBe('workers are connected for every waiting stage (busy with other work?)');
    restarts.set('embed', { until: Date.now() + 60_000, hangMs: 60_000, workers: ['host:1:abc'] });
    expect(connectedHint(restarts)).toBe('embed has a worker connected again after the hang: the jobs the hung one held run again once their locks run out');
    restarts.set('preprocess', { until: Date.now() + 60_000, hangMs: 60_000, workers: ['host:2:def'] });
    expect(connectedHint(restarts)).toBe('embed and preprocess have workers connected again after the hang: the jobs the hung ones held run again once their locks run out');
  });
});

describe('a stage with no live worker', () => {
  const ctx = {} as unknown as CliContext;
  const queue = { name: 'embed.s', isPaused: async () => false } as unknown as Parameters<typeof stageBlocked>[3];
  const hung = { since: new Map(), atLeastMs: 0, restarts: new Map() };
  const gone = async () => ({ gone: 'no embed worker of s is live' });
  it('is not called blocked by a worker that went live between the count and the look for loading ones (a CI run gave up on it)', async () => {
    const counts = [0, 1];
    expect(await stageBlocked(ctx, 'embed', 2, queue, async () => counts.shift()!, gone, hung)).toBeUndefined();
    expect(await stageBlocked(ctx, 'embed', 2, queue, async () => 0, gone, hung)).toBe('2 images wait for embed and no embed worker of s is live');
  });
});
