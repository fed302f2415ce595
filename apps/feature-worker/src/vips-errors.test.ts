import { describe, expect, it } from 'vitest';
import { VipsErrorAttribution } from './vips-errors.js';

/** Decodes that settle when told to; `inFlight` counts those running, `log` what each call saw. */
function decodes() {
  const state = { inFlight: 0 };
  const make = (name: string) => {
    const finishers: ((ok: boolean) => void)[] = [];
    const calls: { aloneAtStart: boolean }[] = [];
    const decode = () => {
      calls.push({ aloneAtStart: state.inFlight === 0 });
      state.inFlight++;
      return new Promise<string>((resolve, reject) => {
        finishers.push((ok) => {
          state.inFlight--;
          if (ok) resolve(`${name}: pixels`);
          else reject(new Error(`${name}: call ${calls.length}`));
        });
      });
    };
    /** settles the latest call */
    const finish = (ok: boolean) => finishers.at(-1)!(ok);
    return { decode, finish, calls };
  };
  return { make, state };
}

const tick = (ms = 5) => new Promise((r) => setTimeout(r, ms));
async function until(cond: () => boolean) {
  for (let i = 0; i < 200 && !cond(); i++) await tick();
  expect(cond()).toBe(true);
}
/** A promise's outcome, handled from the start (a rejection awaited later is not unhandled). */
const outcome = (p: Promise<string>) => p.then((v) => v, (err: Error) => `error: ${err.message}`);

describe('VipsErrorAttribution', () => {
  it('lets a failure stand when no other decode was in flight with it', async () => {
    const v = new VipsErrorAttribution();
    const { make } = decodes();
    const a = make('a');
    const pa = outcome(v.run(a.decode));
    a.finish(false);
    expect(await pa).toBe('error: a: call 1');
    // and a later decode, which never overlapped it, is not touched either
    const b = make('b');
    const pb = outcome(v.run(b.decode));
    b.finish(true);
    expect(await pb).toBe('b: pixels');
    expect(v.counts).toEqual({ rerunAlone: 0, keptFirstError: 0 });
  });

  it('runs a failure that overlapped a successful decode again, alone, once the others finished', async () => {
    // sharp clears the shared buffer after every image: a neighbour that succeeds can wipe it
    const v = new VipsErrorAttribution();
    const { make } = decodes();
    const [a, b] = [make('a'), make('b')];
    const pa = outcome(v.run(a.decode));
    const pb = outcome(v.run(b.decode));
    a.finish(false);
    await tick();
    expect(a.calls).toHaveLength(1); // b still decodes
    const c = make('c');
    const pc = outcome(v.run(c.decode)); // starts after the failure: waits for the re-run
    await tick();
    expect(c.calls).toHaveLength(0);
    b.finish(true);
    expect(await pb).toBe('b: pixels');
    await until(() => a.calls.length === 2);
    expect(a.calls[1]!.aloneAtStart).toBe(true);
    expect(c.calls).toHaveLength(0);
    a.finish(false);
    expect(await pa).toBe('error: a: call 2'); // the second run's error is the one that counts
    await until(() => c.calls.length === 1);
    c.finish(true);
    expect(await pc).toBe('c: pixels');
    expect(v.counts).toEqual({ rerunAlone: 1, keptFirstError: 0 });
  });

  it('runs two failures that overlapped each other again one at a time', async () => {
    const v = new VipsErrorAttribution();
    const { make, state } = decodes();
    const [a, b] = [make('a'), make('b')];
    const pa = outcome(v.run(a.decode));
    const pb = outcome(v.run(b.decode));
    a.finish(false);
    b.finish(false);
    await until(() => a.calls.length + b.calls.length === 3);
    const [first, second] = a.calls.length === 2 ? [a, b] : [b, a];
    expect(first.calls[1]!.aloneAtStart).toBe(true);
    first.finish(true); // the first error was not its own: it decodes after all
    await until(() => second.calls.length === 2);
    expect(second.calls[1]!.aloneAtStart).toBe(true);
    second.finish(false);
    expect([await pa, await pb].sort()).toEqual([`${first === a ? 'a' : 'b'}: pixels`, `error: ${second === a ? 'a' : 'b'}: call 2`].sort());
    expect(state.inFlight).toBe(0);
    expect(v.counts.rerunAlone).toBe(2);
  });

  it('does not run again a failure the caller knows is its own', async () => {
    const v = new VipsErrorAttribution();
    const { make } = decodes();
    const [a, b] = [make('a'), make('b')];
    const pa = outcome(v.run(a.decode, () => true));
    const pb = outcome(v.run(b.decode));
    a.finish(false);
    expect(await pa).toBe('error: a: call 1');
    b.finish(true);
    expect(await pb).toBe('b: pixels');
    expect(a.calls).toHaveLength(1);
  });

  it('keeps the first error when the others do not finish in time, or the re-run takes too long', async () => {
    const v = new VipsErrorAttribution({ drainMs: 50, rerunMs: 50 });
    const told: string[] = [];
    v.onOutcome = (o) => told.push(o);
    const { make } = decodes();
    // a neighbour that never finishes (a decode wedged in a native call): nothing waits on it for ever
    const [stuck, a] = [make('stuck'), make('a')];
    void outcome(v.run(stuck.decode));
    const pa = outcome(v.run(a.decode));
    a.finish(false);
    expect(await pa).toBe('error: a: call 1');
    expect(a.calls).toHaveLength(1);
    const b = make('b');
    const pb = outcome(v.run(b.decode)); // decodes go on
    b.finish(true);
    expect(await pb).toBe('b: pixels');
    expect(v.counts).toEqual({ rerunAlone: 0, keptFirstError: 1 });
    stuck.finish(true);

    // a re-run that never ends: the first error stands, and the run still counts as in flight
    const [c, d] = [make('c'), make('d')];
    const pc = outcome(v.run(c.decode));
    const pd = outcome(v.run(d.decode));
    c.finish(false);
    d.finish(true);
    expect(await pd).toBe('d: pixels');
    await until(() => c.calls.length === 2);
    expect(await pc).toBe('error: c: call 1');
    const [e, f] = [make('e'), make('f')];
    const pe = outcome(v.run(e.decode)); // overlaps c's re-run, still going
    e.finish(false);
    await until(() => e.calls.length === 1);
    c.finish(true);
    await until(() => e.calls.length === 2);
    e.finish(false);
    expect(await pe).toBe('error: e: call 2');
    const pf = outcome(v.run(f.decode));
    f.finish(true);
    expect(await pf).toBe('f: pixels');
    expect(v.counts).toEqual({ rerunAlone: 2, keptFirstError: 2 });
    expect(told).toEqual(['kept-first-error', 'rerun-alone', 'kept-first-error', 'rerun-alone']);
  });
});
