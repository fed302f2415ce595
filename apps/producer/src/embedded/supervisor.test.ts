import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { nextRestart, SupervisedProcess } from './supervisor.js';

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

describe('what up says when a process it keeps exits', () => {
  const run = async (exitCode: number, stopAfterMs: number) => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'tl-supervised-'));
    const events: string[] = [];
    const p = new SupervisedProcess({ name: 's3', logFile: path.join(dir, 's3.log'), program: 'sh', args: ['-c', `exit ${exitCode}`], env: () => ({ PATH: process.env.PATH }) }, (e) => events.push(e));
    try {
      await new Promise((r) => setTimeout(r, stopAfterMs));
      await p.stop(5_000);
      return events;
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  };

  it('a crash: at once, with the restart to come', async () => {
    expect((await run(3, 200))[0]).toMatch(/^s3 exited \(3\); restarting in 0\.5 s — see /);
  });

  it('a clean exit on a signal of its own, while up stops too (a process group sent SIGTERM): no restart said', async () => {
    expect(await run(0, 200)).toEqual([]);
  });

  it('a clean exit that up outlives: said when it restarts', async () => {
    expect((await run(0, 800))[0]).toMatch(/^s3 exited \(0\), stopped by a signal of its own; restarted — see /);
  });
});
