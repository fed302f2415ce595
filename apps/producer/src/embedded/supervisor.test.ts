import { describe, expect, it } from 'vitest';
import { nextRestart } from './supervisor.js';

describe('restarting a worker that exited', () => {
  it('waits 0.5 s, doubling for each exit within a minute of its start, and 0.5 s again after one that ran longer', () => {
    let restarts = 0;
    const delays: number[] = [];
    for (let i = 0; i < 8; i++) {
      const next = nextRestart(restarts, 1_000);
      restarts = next.restarts;
      delays.push(next.delayMs);
    }
    expect(delays).toEqual([500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000]);
    // one that ran for more than a minute: its first restart again (it was 0.25 s, "restarting in 0.3 s")
    expect(nextRestart(restarts, 61_000)).toEqual({ restarts: 1, delayMs: 500 });
    expect(nextRestart(0, 61_000)).toEqual({ restarts: 1, delayMs: 500 });
  });
});
