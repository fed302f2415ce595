import { describe, expect, it } from 'vitest';
import { pollDelayMs } from './dataset-wait.js';

describe("a dataset wait's looks", () => {
  it('come less often for a large dataset, and take Redis at most a quarter of the time', () => {
    expect(pollDelayMs(100, 5)).toBe(501);
    expect(pollDelayMs(200_000, 600)).toBe(2_500);
    // a million items: a look takes about 8 s, then 24 s of rest (it was 10 s: Redis read for it 44% of the time)
    expect(pollDelayMs(1_000_000, 8_000)).toBe(24_000);
  });
});
