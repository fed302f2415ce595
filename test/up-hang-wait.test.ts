import { describe, expect, it } from 'vitest';
import { renderSample } from '../apps/producer/src/demo/sample-images.js';
import { jobIds } from '../packages/shared/src/index.js';
import { healthz, runCli, stackForFile, until, type CliRun } from './support/stack.js';

// A stack as `up` runs it, watching its workers' /healthz (30 s here, asked every 10 s; 60 by
// default), with short job locks so a waiting command finds a hang within seconds. (30 s is well
// past an embed worker's heartbeat TTL, 15 s, as the default is: its beat goes silent, and a wait
// looks, before up acts: at least 25 s after the freeze, two failed probes past 30 s without an answer.)
const file = stackForFile({ TL_UP_HANG_SECONDS: '30', TL_JOB_LOCK_MS: '2000', TL_TRAIN_JOB_LOCK_MS: '8000', TL_MODEL_WEIGHTS: 'random' }, { preprocess: 1, embed: 1, train: 1 });

/**
 * Stops a worker of the stack (SIGSTOP: connected, answering nothing) once up's watch has seen it
 * answer, and `busy` has given it work; its pid.
 */
async function freeze(role: 'preprocess' | 'embed' | 'train', busy?: () => Promise<void>): Promise<number> {
  const { stack } = file;
  await until(`the ${role} worker to answer /healthz`, () => healthz(stack.workerPorts[`${role}#1`]!), 120);
  // up's watch starts once it has seen an answer (asked every 10 s here)
  await new Promise((r) => setTimeout(r, 10_500));
  await busy?.();
  const pid = stack.supervisor.pids()[`${role}#1`]!;
  expect(stack.supervisor.signal(role, 1, 'SIGSTOP')).toBe(true);
  return pid;
}

async function photosUnder(prefix: string, n: number): Promise<void> {
  const { ctx } = file;
  await ctx.services.store.ensureBucket(photos);
  for (const kind of ['circle', 'square'] as const) {
    for (let i = 0; i < n; i++) await ctx.services.store.putObject(photos, `${prefix}/${kind}/${i}.jpg`, await renderSample(kind, i, prefix.length * 7));
  }
}
const photos = 'photos-hang';

describe('a worker that hangs under up while ingest waits on it', () => {
  it('is waited for while up restarts it, and said so, where ingest gave up telling the user to restart it', async () => {
    const { stack, ctx } = file;
    await photosUnder('train', 6);
    await until('the preprocess worker to take jobs', async () => (await ctx.queues.preprocess.getWorkersCount()) === 1, 60);
    await until('an embed worker', async () => (await ctx.services.spaces.workersOf(stack.space.id)) === 1, 120);
    const stopped = await freeze('preprocess');
    const r = await runCli(['ingest', `s3://${photos}/train/`, '-d', 'restarted', '--stall-timeout', '2'], stack.env, 150_000, { merged: true });
    expect(r.timedOut).toBe(false);
    expect(r.code, r.stdout).toBe(0);
    expect(r.stdout).toMatch(/12 images wait for preprocess and its connected workers take none of the 12 jobs waiting in preprocess \(hung: [^)]*\); up, which watches it, restarts a worker whose \/healthz has gone unanswered for 30 s: waiting for that \(for \d+ s more at most\)/);
    expect(r.stdout).toMatch(/dataset restarted: 12 images, 12 embedded/);
    // the worker that hung was replaced, not woken
    expect(stack.supervisor.pids()['preprocess#1']).not.toBe(stopped);
    expect(stack.events.join('\n')).toMatch(/preprocess#1 has not answered http:\/\/127\.0\.0\.1:\d+\/healthz for \d+ s/);
  }, 180_000);

  it('an embed worker whose heartbeat went silent is waited for while up restarts it, where ingest said to restart it', async () => {
    const { stack } = file;
    await photosUnder('more', 2);
    const stopped = await freeze('embed');
    // a stall timeout past the beat's TTL (15 s), as the default (30 s) is: the wait first looks
    // when the worker is no longer live
    const r = await runCli(['ingest', `s3://${photos}/more/`, '-d', 'restarted-embed', '--stall-timeout', '16'], stack.env, 150_000, { merged: true });
    expect(r.timedOut).toBe(false);
    expect(r.code, r.stdout).toBe(0);
    // its beat silent past its TTL: no embed worker live, and the one that beat last is up's to restart
    expect(r.stdout).toMatch(/no embed worker of \S+ is live: its worker \S+ last beat \d+ s ago \(stopped, hung, or cut off from Redis\?\); up, which watches it, restarts a worker whose \/healthz has gone unanswered for 30 s: waiting for that/);
    expect(r.stdout).toMatch(/dataset restarted-embed: 4 images, 4 embedded/);
    expect(stack.supervisor.pids()['embed#1']).not.toBe(stopped);
  }, 180_000);

  it('a training run whose train worker hangs is followed while up restarts it, and ends with its report, where train said to restart it', async () => {
    const { stack } = file;
    const runId = 'hung-under-up';
    const { stopped, holder } = await freezeMidRun(runId);
    const r = await runCli(['train', '--follow', runId, '--stall-timeout', '3'], stack.env, 170_000, { merged: true });
    expect(r.timedOut).toBe(false);
    expect(r.code, r.stdout).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`run ${runId}: its train worker \\(${holder}\\) stopped renewing its lock \\(hung: [^)]*\\), and no other train worker is connected to take it up; up, which watches it, restarts a worker whose /healthz has gone unanswered for 30 s: waiting for that \\(for \\d+ s more at most\\)`));
    expect(r.stdout).toMatch(new RegExp(`^run ${runId}: validation accuracy`, 'm'));
    expect(stack.supervisor.pids()['train#1']).not.toBe(stopped);
  }, 240_000);

  it('a followed run whose hung worker up kills before the follower saw it hang (locks longer than the hang time, as by default) is waited for until the new worker takes it', async () => {
    const { stack } = file;
    const runId = 'killed-under-up';
    // followed from before the hang, as a user follows a run; this shell's train lock (60 s, the
    // default) is longer than up's hang time: the follower sees no lapse before up kills the
    // worker, and then none connected
    let follow: Promise<CliRun> | undefined;
    const { stopped, holder } = await freezeMidRun(runId, async () => {
      let out = '';
      follow = runCli(['train', '--follow', runId, '--stall-timeout', '1'], { ...stack.env, TL_TRAIN_JOB_LOCK_MS: '60000' }, 170_000, { merged: true, onOutput: (c) => (out += c) });
      await until('the follower to show epochs', () => /training restarted: \d+/.test(out), 30, 50);
      await new Promise((r) => setTimeout(r, 1_000));
    }, 5000);
    const r = await follow!;
    expect(r.timedOut).toBe(false);
    expect(r.code, r.stdout).toBe(0);
    // silence, long past the pace of its epochs, is said before any lock runs out
    expect(r.stdout).toMatch(new RegExp(`run ${runId}: no progress for \\d+ s, where it came several times a second: its train worker \\(${holder}\\) may be hung \\(SIGSTOPped, its event loop blocked, or cut off from Redis\\?\\); up, which watches it, restarts a worker whose /healthz has gone unanswered for 30 s; waiting`));
    expect(r.stdout).toContain(`run ${runId}: its train worker (${holder}), which up watches, is gone and none is connected: up starts it again; waiting for that`);
    expect(r.stdout).toMatch(new RegExp(`^run ${runId}: validation accuracy`, 'm'));
    expect(stack.supervisor.pids()['train#1']).not.toBe(stopped);
  }, 240_000);
});

/**
 * A training run (of the first test's dataset, 12 images) started, and its train worker stopped
 * mid-run (after `beforeFreeze`); the worker's pid and name.
 */
async function freezeMidRun(runId: string, beforeFreeze?: () => Promise<void>, epochs = 3000): Promise<{ stopped: number; holder: string }> {
  const { stack, ctx } = file;
  let holder: string | undefined;
  const stopped = await freeze('train', async () => {
    expect((await runCli(['train', '-d', 'restarted', '--epochs', String(epochs), '--patience', '0', '--run-id', runId, '--no-wait'], stack.env)).code).toBe(0);
    await until(
      'the run to train',
      async () => {
        const job = await ctx.queues.train.getJob(jobIds.train({ runId }));
        if (job?.processedBy && ((job.progress as { epoch?: number } | undefined)?.epoch ?? 0) >= 1) holder = job.processedBy;
        return holder !== undefined;
      },
      60,
      50,
    );
    await beforeFreeze?.();
  });
  return { stopped, holder: holder! };
}
