import { describe, expect, it } from 'vitest';
import { connectedHint, pollDelayMs, progressOf, type UpRestarts } from './dataset-wait.js';

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

  it("counts a second ingest's own images, with the dataset's figures beside them", () => {
    // 1005 of 1012 done read as the new ingest's progress: 5 of its 12 are
    expect(progressOf(status, ours)).toEqual({ value: 5, total: 12, detail: "of this ingest's images done (the dataset: 1005/1012 done, 1003 embedded (0 of them already in the cache), 2 failed)" });
    expect(progressOf({ ...status, embedded: 1_010, pending: 0 }, ours)).toMatchObject({ value: 12, total: 12 });
    // a narrowed wait (classify's prefix) names what the figures beside them are of
    expect(progressOf(status, { ...ours, whole: 'the prefix' }).detail).toMatch(/^of this ingest's images done \(the prefix: 1005\/1012 done, /);
  });

  it("counts the whole dataset when the command's images are all of it, or none", () => {
    expect(progressOf({ ...status, total: 12, embedded: 3, pending: 7 }, ours)).toEqual({ value: 5, total: 12, detail: 'done: 3 embedded (0 of them already in the cache), 2 failed' });
    expect(progressOf(status, { ...ours, count: 0 })).toMatchObject({ value: 1_005, total: 1_012 });
    expect(progressOf(status)).toMatchObject({ value: 1_005, total: 1_012 });
  });

  it('never goes below none done when images of another command are pending too', () => {
    expect(progressOf({ ...status, embedded: 990, pending: 20 }, ours)).toMatchObject({ value: 0, total: 12 });
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
