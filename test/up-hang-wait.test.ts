import { describe, expect, it } from 'vitest';
import { renderSample } from '../apps/producer/src/demo/sample-images.js';
import { runCli, stackForFile, until } from './support/stack.js';

// A stack as `up` runs it, watching its workers' /healthz (12 s here; 60 by default), with short
// job locks so a waiting command finds a hang within seconds.
const file = stackForFile({ TL_UP_HANG_SECONDS: '12', TL_JOB_LOCK_MS: '2000', TL_MODEL_WEIGHTS: 'random' }, { preprocess: 1, embed: 1, train: 0 });
const photos = 'photos-hang';

describe('a worker that hangs under up while ingest waits on it', () => {
  it('is waited for while up restarts it, and said so, where ingest gave up telling the user to restart it', async () => {
    const { stack, ctx } = file;
    await ctx.services.store.ensureBucket(photos);
    for (const kind of ['circle', 'square'] as const) {
      for (let i = 0; i < 6; i++) await ctx.services.store.putObject(photos, `train/${kind}/${i}.jpg`, await renderSample(kind, i, 71));
    }
    await until('the preprocess worker to take jobs', async () => (await ctx.queues.preprocess.getWorkersCount()) === 1, 60);
    await until('an embed worker', async () => (await ctx.services.spaces.workersOf(stack.space.id)) === 1, 120);
    const healthz = () => fetch(`http://127.0.0.1:${stack.workerPorts['preprocess#1']}/healthz`, { signal: AbortSignal.timeout(1_000) }).then((res) => res.ok, () => false);
    await until('the preprocess worker to answer /healthz', healthz, 60);
    // up's watch starts once it has seen an answer (asked every 4 s here)
    await new Promise((r) => setTimeout(r, 5_000));
    const stopped = stack.supervisor.pids()['preprocess#1'];
    // connected, answering nothing: as SIGSTOP, or an event loop blocked, leaves it
    expect(stack.supervisor.signal('preprocess', 1, 'SIGSTOP')).toBe(true);
    const r = await runCli(['ingest', `s3://${photos}/train/`, '-d', 'restarted', '--stall-timeout', '2'], stack.env, 150_000, { merged: true });
    expect(r.timedOut).toBe(false);
    expect(r.code, r.stdout).toBe(0);
    expect(r.stdout).toMatch(/12 images wait for preprocess and its connected workers take none of the 12 jobs waiting in preprocess \(hung: [^)]*\); up, which watches it, restarts a worker whose \/healthz has gone unanswered for 12 s: waiting for that \(for \d+ s more at most\)/);
    expect(r.stdout).toMatch(/dataset restarted: 12 images, 12 embedded/);
    // the worker that hung was replaced, not woken
    expect(stack.supervisor.pids()['preprocess#1']).not.toBe(stopped);
    expect(stack.events.join('\n')).toMatch(/preprocess#1 has not answered http:\/\/127\.0\.0\.1:\d+\/healthz for \d+ s/);
  }, 180_000);
});
