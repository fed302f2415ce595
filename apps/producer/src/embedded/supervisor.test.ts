import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import { fileURLToPath, pathToFileURL } from 'node:url';
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
  /**
   * A process that exits with `exitCode` at once (and at each restart); `then` runs after its
   * first exit. The events said by then, and how many times it exited.
   */
  const run = async (exitCode: number, then: (p: SupervisedProcess, events: string[]) => Promise<void>) => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'tl-supervised-'));
    const events: string[] = [];
    let exits = 0;
    let exited!: () => void;
    const first = new Promise<void>((r) => (exited = r));
    const p = new SupervisedProcess(
      { name: 's3', logFile: path.join(dir, 's3.log'), program: 'sh', args: ['-c', `exit ${exitCode}`], env: () => ({ PATH: process.env.PATH }), onExit: () => void (exits++, exited()) },
      (e) => events.push(e),
    );
    try {
      await first;
      await then(p, events);
      return { events, exits };
    } finally {
      await p.stop(5_000);
      await rm(dir, { recursive: true, force: true });
    }
  };
  const until = async (done: () => boolean) => {
    for (const deadline = Date.now() + 10_000; !done(); ) {
      if (Date.now() > deadline) throw new Error('not within 10 s');
      await new Promise((r) => setTimeout(r, 20));
    }
  };

  it('a crash: at once, with the restart to come', async () => {
    const { events } = await run(3, async (_, said) => until(() => said.length > 0));
    expect(events[0]).toMatch(/^s3 exited \(3\); restarting in 0\.5 s — see /);
  });

  it('a clean exit on a signal of its own while up stops (a process group sent SIGTERM): no restart, and none said', async () => {
    const { events, exits } = await run(0, async (p) => {
      // what the stack does first when it stops, before it stops the workers and then the servers
      p.holdRestarts();
      // past the restart delay (0.5 s): it would have been started again, and exited again
      await new Promise((r) => setTimeout(r, 1_500));
    });
    expect(events).toEqual([]);
    expect(exits).toBe(1);
  });

  it('a clean exit that up outlives: said when it restarts', async () => {
    const { events } = await run(0, async (_, said) => until(() => said.length > 0));
    expect(events[0]).toMatch(/^s3 exited \(0\); restarted 0\.5 s later — see /);
  });
});

describe("up's stop of a worker that is stopping already", () => {
  /**
   * A worker as the real ones stop (lifecycle.ts runUntilSignal, built): putting its jobs back
   * takes 600 ms; a second signal ends it at once (130). Its exit codes, after `act`.
   */
  const worker = async (act: (p: SupervisedProcess) => Promise<void>) => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'tl-stopping-'));
    const lifecycle = pathToFileURL(path.resolve(fileURLToPath(import.meta.url), '..', '..', '..', '..', '..', 'packages', 'shared', 'dist', 'lifecycle.js')).href;
    const script = path.join(dir, 'worker.mjs');
    await writeFile(
      script,
      `import { runUntilSignal } from ${JSON.stringify(lifecycle)};
const quiet = { info() {}, warn() {}, error() {}, debug() {} };
runUntilSignal(quiet, () => new Promise((r) => setTimeout(r, 600)));
process.send({ ready: true });
setInterval(() => {}, 1000);
`,
    );
    let ready!: () => void;
    const started = new Promise<void>((r) => (ready = r));
    const exits: (number | null)[] = [];
    const p = new SupervisedProcess(
      { name: 'embed#1', logFile: path.join(dir, 'embed.log'), node: { script }, args: [], env: () => ({ PATH: process.env.PATH }), onMessage: (m) => (m as { ready?: boolean }).ready && ready(), onExit: (code) => void exits.push(code) },
      () => undefined,
    );
    try {
      await started;
      p.holdRestarts();
      await act(p);
      return exits;
    } finally {
      await p.stop(1_000);
      await rm(dir, { recursive: true, force: true });
    }
  };

  it('a SIGTERM to the whole process group, then up stops it: one clean stop (a second SIGTERM ended it at once, 130)', async () => {
    expect(await worker(async (p) => (p.kill('SIGTERM'), await p.stop(5_000)))).toEqual([0]);
  });

  it("up's stop first, then the group's SIGTERM: still one clean stop", async () => {
    expect(
      await worker(async (p) => {
        const stopped = p.stop(5_000);
        await new Promise((r) => setTimeout(r, 100));
        p.kill('SIGTERM');
        await stopped;
      }),
    ).toEqual([0]);
  });

  it('a second Ctrl-C (stopNow) ends a stopping worker at once', async () => {
    expect(
      await worker(async (p) => {
        const stopped = p.stop(5_000);
        await new Promise((r) => setTimeout(r, 100));
        p.stopNow();
        await stopped;
      }),
    ).toEqual([130]);
  });
});
