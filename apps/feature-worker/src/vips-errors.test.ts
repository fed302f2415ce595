import { describe, expect, it } from 'vitest';
import { VipsErrorAttribution } from './vips-errors.js';

/** A decode that settles when told to, counting how many ran at once while it was running. */
function gatedDecode(state: { inFlight: number }) {
  let finish!: (ok: boolean) => void;
  let calls = 0;
  let aloneOnRerun: boolean | undefined;
  const decode = () => {
    calls++;
    if (calls > 1) aloneOnRerun = state.inFlight === 0;
    state.inFlight++;
    return new Promise<string>((resolve, reject) => {
      finish = (ok) => {
        state.inFlight--;
        if (ok) resolve('pixels');
        else reject(new Error('boom'));
      };
    });
  };
  return { decode, finish: (ok: boolean) => finish(ok), calls: () => calls, aloneOnRerun: () => aloneOnRerun };
}

const tick = () => new Promise((r) => setTimeout(r, 5));
/** A promise's outcome, handled from the start (a rejection awaited later is not unhandled). */
const outcome = (p: Promise<string>) => p.then((v) => v, (err: Error) => `error: ${err.message}`);

describe('VipsErrorAttribution', () => {
  it('lets a failure stand when no decode beside it failed', async () => {
    const v = new VipsErrorAttribution();
    const state = { inFlight: 0 };
    const a = gatedDecode(state);
    const b = gatedDecode(state);
    const pa = v.run(a.decode);
    const pb = v.run(b.decode);
    a.finish(false);
    const failed = expect(pa).rejects.toThrow('boom'); // waits for b, which succeeds
    await tick();
    b.finish(true);
    await failed;
    await expect(pb).resolves.toBe('pixels');
    expect(a.calls()).toBe(1);
    expect(v.rerunsAlone).toBe(0);
  });

  it('runs again, each alone, two decodes that failed while both were in flight', async () => {
    const v = new VipsErrorAttribution();
    const state = { inFlight: 0 };
    const [a, b, c] = [gatedDecode(state), gatedDecode(state), gatedDecode(state)];
    const pa = outcome(v.run(a.decode));
    const pb = outcome(v.run(b.decode));
    const pc = v.run(c.decode); // overlaps both, succeeds late
    a.finish(false);
    b.finish(false);
    await tick();
    // nothing runs again while c is still decoding
    expect(a.calls() + b.calls()).toBe(2);
    // a decode that starts before the re-runs do is waited for like any other
    const d = gatedDecode(state);
    const pd = v.run(d.decode);
    c.finish(true);
    await expect(pc).resolves.toBe('pixels');
    await tick();
    expect(d.calls()).toBe(1);
    expect(a.calls() + b.calls()).toBe(2);
    d.finish(true);
    await expect(pd).resolves.toBe('pixels');
    for (let i = 0; i < 50 && a.calls() + b.calls() < 3; i++) await tick();
    // one re-run at a time, with nothing else decoding; a decode that starts now waits for both
    const first = a.calls() === 2 ? a : b;
    const second = first === a ? b : a;
    expect(first.aloneOnRerun()).toBe(true);
    expect(second.calls()).toBe(1);
    const e = gatedDecode(state);
    const pe = v.run(e.decode);
    first.finish(false);
    for (let i = 0; i < 50 && second.calls() < 2; i++) await tick();
    expect(second.aloneOnRerun()).toBe(true);
    expect(e.calls()).toBe(0);
    second.finish(true);
    expect(await (first === a ? pa : pb)).toBe('error: boom');
    expect(await (first === a ? pb : pa)).toBe('pixels');
    for (let i = 0; i < 50 && e.calls() < 1; i++) await tick();
    e.finish(true);
    await expect(pe).resolves.toBe('pixels');
    expect(v.rerunsAlone).toBe(2);
  });

  it('does not run again a failure the caller knows is its own', async () => {
    const v = new VipsErrorAttribution();
    const state = { inFlight: 0 };
    const [a, b] = [gatedDecode(state), gatedDecode(state)];
    const pa = v.run(a.decode, () => true);
    const pb = v.run(b.decode);
    a.finish(false);
    b.finish(false);
    await expect(pa).rejects.toThrow('boom');
    for (let i = 0; i < 50 && b.calls() < 2; i++) await tick();
    b.finish(false);
    await expect(pb).rejects.toThrow('boom');
    expect(a.calls()).toBe(1);
    expect(b.calls()).toBe(2); // b's error may still be a's lines: b runs again
  });
});
