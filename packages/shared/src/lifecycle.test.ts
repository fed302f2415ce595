import { getEventListeners } from 'node:events';
import { describe, expect, it } from 'vitest';
import { sleep, stopAsks, type StopAsked } from './lifecycle.js';

/** The verdicts of one process asked to stop by each of `asks`, in order. */
const verdicts = (...asks: StopAsked[]) => {
  const ask = stopAsks();
  return asks.map((why) => ask(why));
};

describe('a process asked to stop more than once', () => {
  it("takes a group SIGTERM and up's stop message as one stop, in either order", () => {
    expect(verdicts('SIGTERM', 'up')).toEqual(['stop', 'again']);
    expect(verdicts('up', 'SIGTERM')).toEqual(['stop', 'again']);
  });

  it('exits at once on a second signal (the impatient), whatever came first', () => {
    expect(verdicts('SIGTERM', 'SIGTERM')).toEqual(['stop', 'exit']);
    expect(verdicts('up', 'SIGTERM', 'SIGTERM')).toEqual(['stop', 'again', 'exit']);
  });

  it('exits at once when up goes away while it stops, however the stop was asked', () => {
    // (a stop asked by up's message, then up SIGKILLed: its Redis and S3 are going, nothing in hand can finish)
    expect(verdicts('up', 'orphaned')).toEqual(['stop', 'exit']);
    expect(verdicts('SIGTERM', 'orphaned')).toEqual(['stop', 'exit']);
    expect(verdicts('orphaned')).toEqual(['stop']);
  });
});

describe('sleep with a signal', () => {
  it('leaves no listener on the signal once the time is up: a wait polls with one signal', async () => {
    const stop = new AbortController();
    const warnings: Error[] = [];
    const onWarning = (w: Error) => warnings.push(w);
    process.on('warning', onWarning);
    try {
      for (let i = 0; i < 20; i++) await sleep(1, stop.signal);
      expect(getEventListeners(stop.signal, 'abort')).toHaveLength(0);
      // the warning an ingest's wait printed after 11 looks (emitted on the next tick)
      await new Promise((r) => setImmediate(r));
      expect(warnings.map((w) => w.name)).not.toContain('MaxListenersExceededWarning');
    } finally {
      process.off('warning', onWarning);
    }
  });

  it('ends at once when the signal aborts, and at once when it has aborted already', async () => {
    const stop = new AbortController();
    const started = performance.now();
    const waiting = sleep(60_000, stop.signal);
    stop.abort();
    await waiting;
    await sleep(60_000, stop.signal);
    expect(performance.now() - started).toBeLessThan(5_000);
  });
});
