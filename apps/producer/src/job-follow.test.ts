import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ProgressPace } from './job-follow.js';

describe('ProgressPace: when a followed run has been silent much longer than its pace', () => {
  beforeEach(() => vi.useFakeTimers({ now: 0 }));
  afterEach(() => vi.useRealTimers());
  const step = (pace: ProgressPace, ms: number, phase = 'training') => {
    vi.advanceTimersByTime(ms);
    pace.seen(phase);
  };

  it('is quiet until 15 s and 20 usual gaps have passed since the last training step, then says so until held', () => {
    const pace = new ProgressPace();
    for (let i = 0; i < 5; i++) step(pace, 100);
    vi.advanceTimersByTime(14_000);
    expect(pace.quiet()).toBeUndefined();
    vi.advanceTimersByTime(1_500);
    expect(pace.quiet()).toEqual({ silentMs: 15_500, everyMs: 100 });
    pace.hold();
    expect(pace.quiet()).toBeUndefined();
    // the run moves again: a new silence may be said
    step(pace, 0);
    vi.advanceTimersByTime(16_000);
    expect(pace.quiet()?.silentMs).toBe(16_000);
  });

  it('goes by slow epochs: 20 of them, not 15 s', () => {
    const pace = new ProgressPace();
    for (let i = 0; i < 4; i++) step(pace, 5_000);
    vi.advanceTimersByTime(60_000);
    expect(pace.quiet()).toBeUndefined();
    vi.advanceTimersByTime(41_000);
    expect(pace.quiet()?.everyMs).toBe(5_000);
  });

  it('has no pace to go by while a run loads (a new holder too) or saves', () => {
    const pace = new ProgressPace();
    for (let i = 0; i < 5; i++) step(pace, 100);
    // taken up again by another worker: it loads the dataset anew, for as long as that takes
    step(pace, 0, 'loading');
    vi.advanceTimersByTime(60_000);
    expect(pace.quiet()).toBeUndefined();
    for (let i = 0; i < 5; i++) step(pace, 100);
    step(pace, 0, 'saving');
    vi.advanceTimersByTime(60_000);
    expect(pace.quiet()).toBeUndefined();
  });

  it('counts silence from when Redis is back, not through the outage', () => {
    const pace = new ProgressPace();
    for (let i = 0; i < 5; i++) step(pace, 100);
    vi.advanceTimersByTime(40_000);
    pace.restart(); // a poll that found Redis away
    vi.advanceTimersByTime(5_000);
    expect(pace.quiet()).toBeUndefined();
  });
});
