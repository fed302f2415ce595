import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { healthz, healthzSays, NO_WORKERS, stackForFile, stackReport, until } from './support/stack.js';

// up's liveness watch, with a short hang time (the default is 60 s, as in the k8s manifests)
const file = stackForFile({ TL_UP_HANG_SECONDS: '6' }, { ...NO_WORKERS, preprocess: 2 });

/** Each preprocess worker's /healthz and log, for a wait on them that failed. */
const workersSay = async () => {
  const { stack } = file;
  const ports = [stack.workerPorts['preprocess#1']!, stack.workerPorts['preprocess#2']!];
  return `/healthz: ${(await Promise.all(ports.map(healthzSays))).join(', ')}\n${stackReport(stack, /^preprocess/)}`;
};

/** The state letter of /proc/PID/stat (R, S, T for stopped…), or `gone`. */
function processState(pid: number): string {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0]!;
  } catch {
    return 'gone';
  }
}

describe('up watches its workers', () => {
  it('kills and starts again a worker that stopped answering /healthz, and leaves the others alone', async () => {
    const { stack } = file;
    const [one, two] = [stack.workerPorts['preprocess#1']!, stack.workerPorts['preprocess#2']!];
    await until('both preprocess workers answer /healthz', async () => (await healthz(one)) && (await healthz(two)), 60, 100, workersSay);
    const before = stack.supervisor.pids();
    const stopped = before['preprocess#1']!;
    // give the watch time to see both healthy, then freeze one (as SIGSTOP, or a blocked event loop, would)
    await new Promise((r) => setTimeout(r, 2_500));
    expect(stack.supervisor.signal('preprocess', 1, 'SIGSTOP')).toBe(true);
    await until('the worker is stopped', () => processState(stopped) === 'T', 5);
    const frozenAt = Date.now();

    await until('the stopped worker is killed', () => processState(stopped) === 'gone', 20);
    const killedAfter = (Date.now() - frozenAt) / 1000;
    // not before the hang time, counted from its last answer (at most a probe period, 2 s here,
    // before it froze): one missed answer is not a hang
    expect(killedAfter).toBeGreaterThanOrEqual(3.5);
    const said = /preprocess#1 has not answered http:\/\/127\.0\.0\.1:\d+\/healthz for (\d+) s \(stopped, or its event loop is blocked\): killing it to start it again/.exec(stack.events.join('\n'));
    expect(said).not.toBeNull();
    // as long as the hang time since its last answer: not at its first missed probe
    expect(Number(said![1])).toBeGreaterThanOrEqual(6);

    // started again, on its port, and healthy
    await until('preprocess#1 runs again', () => {
      const pid = stack.supervisor.pids()['preprocess#1'];
      return pid !== undefined && pid !== stopped;
    }, 20);
    await until('the new preprocess#1 answers /healthz', () => healthz(one), 60, 100, workersSay);
    // BullMQ lists a worker once its connection has named itself, which may come just after /healthz
    await until('both preprocess workers take jobs', async () => (await file.ctx.queues.preprocess.getWorkersCount()) === 2, 20);
    // the worker that kept answering was never touched
    expect(stack.supervisor.pids()['preprocess#2']).toBe(before['preprocess#2']);
    expect(stack.events.filter((e) => e.includes('has not answered'))).toHaveLength(1);
  }, 150_000);

  it('kills and starts again its S3 server when it stops answering, and the stack reads and writes again', async () => {
    const { stack, ctx } = file;
    const s3 = stack.servers.s3!;
    const stopped = s3.pid!;
    await ctx.services.store.ensureBucket('kept');
    await ctx.services.store.putObject('kept', 'before.txt', 'written before the hang');
    // answered a probe before it froze (a probe period is 2 s here)
    await new Promise((r) => setTimeout(r, 2_500));
    expect(s3.kill('SIGSTOP')).toBe(true);
    await until('the stopped S3 server is killed', () => processState(stopped) === 'gone', 30);
    expect(stack.events.join('\n')).toMatch(/s3 has not answered http:\/\/127\.0\.0\.1:\d+\/minio\/health\/live for \d+ s \(stopped, or its event loop is blocked\): killing it to start it again/);
    await until('S3 serves again', async () => (await ctx.services.store.getObject('kept', 'before.txt')).toString() === 'written before the hang', 30, 250);
    expect(s3.pid).not.toBe(stopped);
    await ctx.services.store.putObject('kept', 'after.txt', 'written after');
    expect((await ctx.services.store.getObject('kept', 'after.txt')).toString()).toBe('written after');
  }, 90_000);

  it('kills and starts again its Redis when it stops answering PING, with its data, and the workers go on', async () => {
    const { stack, ctx } = file;
    const redis = stack.servers.redis!;
    const stopped = redis.pid!;
    await ctx.services.redis.set('tl-test:kept', 'written before the hang');
    // in the AOF (fsynced every second), and answered a probe before it froze (a period is 2 s here)
    await new Promise((r) => setTimeout(r, 2_500));
    expect(redis.kill('SIGSTOP')).toBe(true);
    // (left stopped, it would hold the file's teardown too)
    await until('the stopped Redis is killed', () => processState(stopped) === 'gone', 30).catch((err: unknown) => {
      if (processState(stopped) === 'T') process.kill(stopped, 'SIGCONT');
      throw err;
    });
    expect(stack.events.join('\n')).toMatch(/redis has not answered redis:\/\/127\.0\.0\.1:\d+ for \d+ s \(stopped, or its event loop is blocked\): killing it to start it again/);
    await until('Redis answers again, with its data', async () => (await ctx.services.redis.get('tl-test:kept')) === 'written before the hang', 30, 250);
    expect(redis.pid).not.toBe(stopped);
    // the workers reconnect by themselves: each answers /healthz again
    await until('both preprocess workers answer /healthz again', async () => (await healthz(stack.workerPorts['preprocess#1']!)) && (await healthz(stack.workerPorts['preprocess#2']!)), 60, 100, workersSay);
  }, 90_000);
});
