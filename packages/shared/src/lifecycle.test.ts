import { describe, expect, it } from 'vitest';
import { stopAsks, type StopAsked } from './lifecycle.js';

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
