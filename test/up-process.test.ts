import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { renderSample } from '../apps/producer/src/demo/sample-images.js';
import { freePort } from '../apps/producer/src/embedded/redis.server.js';
import { leftToUp } from '../packages/shared/src/lifecycle.js';
import { cliPath, freeRun, healthz, isRunning, processesWithEnv, processState, repoRoot, runCli, until } from './support/stack.js';
import { guardLeaks } from './support/leak-guard.js';

guardLeaks();

/**
 * `transferline up` as a process, the way a user runs it in a terminal: what its banner shows
 * (no secret of the user's own, loopback-only metrics), what happens when its Redis is killed
 * (one line, a restart, the state kept, no stack traces), and when `up` itself is killed with
 * SIGKILL (no orphan keeps a port, so the next `up` starts).
 */

const secret = `tl-test-secret-${randomBytes(6).toString('hex')}`;
let dataDir: string;
let env: NodeJS.ProcessEnv;
let base: number;
const running: ChildProcess[] = [];

/** Each thread of a process with the kernel function it sleeps in (/proc/…/wchan). */
function whereWaiting(p: { pid: number; cmd: string }): string {
  try {
    const threads = readdirSync(`/proc/${p.pid}/task`).map((t) => {
      const read = (f: string) => readFileSync(`/proc/${p.pid}/task/${t}/${f}`, 'utf8').trim();
      return `${t} ${read('comm')} ${read('wchan')}`;
    });
    return `${p.pid} threads: ${threads.join(', ')}`;
  } catch {
    return `${p.pid}: gone while looked at`;
  }
}

/** The last lines of every worker log of the stack. */
function logTails(dir: string): string {
  const logs = path.join(dir, 'logs');
  try {
    return readdirSync(logs)
      .map((f) => `--- ${f}\n${readFileSync(path.join(logs, f), 'utf8').trimEnd().split('\n').slice(-8).join('\n')}`)
      .join('\n');
  } catch {
    return `(no logs in ${logs})`;
  }
}

/** Every process below `pid` (children, grandchildren…), from /proc. */
function descendants(pid: number): { pid: number; cmd: string }[] {
  const parentOf = new Map<number, number>();
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
      parentOf.set(Number(d), Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]));
    } catch {
      // gone meanwhile
    }
  }
  const out: { pid: number; cmd: string }[] = [];
  const walk = (p: number) => {
    for (const [child, parent] of parentOf) {
      if (parent !== p) continue;
      let cmd = '';
      try {
        cmd = readFileSync(`/proc/${child}/cmdline`, 'utf8').replace(/\0/g, ' ');
      } catch {
        // gone meanwhile
      }
      out.push({ pid: child, cmd });
      walk(child);
    }
  };
  walk(pid);
  return out;
}



/** Starts `transferline up` and resolves once its banner is out. */
/**
 * `up` in a pseudo-terminal (python3's pty: a session of its own, with the terminal as its
 * controlling one): prints BANNER once up has shown its banner, closes the terminal when a line
 * comes on its stdin, and prints EXIT and up's exit status.
 */
const PTY_UP = `
import json, os, pty, select, sys, time
node, cli, base, env = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
pid, fd = pty.fork()
if pid == 0:
    os.execve(node, [node, cli, 'up', '--metrics-port', base], env)
seen = b''
deadline = time.time() + 140
while b'Ctrl-C stops everything' not in seen and time.time() < deadline:
    if select.select([fd], [], [], 1)[0]:
        try:
            seen += os.read(fd, 65536)
        except OSError:
            break
print('BANNER' if b'Ctrl-C stops everything' in seen else 'NO BANNER: ' + seen.decode('utf8', 'replace')[-2000:], flush=True)
sys.stdin.readline()
os.close(fd)
_, status = os.waitpid(pid, 0)
print('EXIT', os.waitstatus_to_exitcode(status), flush=True)
`;

async function startUp(): Promise<{ child: ChildProcess; output: () => string }> {
  // a process group of its own, as a shell runs a job: Ctrl-C in a terminal signals the whole group
  const child = spawn(process.execPath, [cliPath, 'up', '--metrics-port', String(base)], { env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  running.push(child);
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  await until('the banner of up', () => out.includes('Ctrl-C stops everything') || child.exitCode !== null, 120);
  if (child.exitCode !== null) throw new Error(`up exited ${child.exitCode}:\n${out}`);
  return { child, output: () => out };
}

/** processes a failed run may leave that afterAll cannot find otherwise */
const stray: number[] = [];

afterAll(async () => {
  for (const c of running) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  for (const pid of stray) if (isRunning(pid)) process.kill(pid, 'SIGKILL');
  // whatever a failed run left behind must not outlive the test
  if (dataDir) for (const p of processesWithEnv('TL_DATA_DIR', dataDir)) process.kill(p.pid, 'SIGKILL');
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
});

describe('transferline up, as a process', () => {
  it('hides secrets, keeps metrics on loopback, restarts its Redis, and leaves no orphans when killed', async () => {
    dataDir = await mkdtemp(path.join(os.tmpdir(), 'tl-up-'));
    await mkdir(dataDir, { recursive: true });
    base = await freeRun(4);
    env = {
      PATH: process.env.PATH,
      HOME: process.env.HOME,
      TL_DATA_DIR: dataDir,
      TL_REDIS_PORT: String(await freePort()),
      TL_S3_PORT: String(await freePort()),
      TL_CONSOLE_PORT: String(await freePort()),
      TL_MODEL_WEIGHTS: 'random',
      TL_LOG_LEVEL: 'info',
      S3_ACCESS_KEY_ID: 'tl-test-key',
      S3_SECRET_ACCESS_KEY: secret,
      AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
    };
    const first = await startUp();
    const banner = first.output();
    expect(banner).toContain('access key tl-test-key / secret *** (S3_SECRET_ACCESS_KEY)');
    expect(banner).toContain('AWS_SECRET_ACCESS_KEY="$S3_SECRET_ACCESS_KEY"');
    expect(banner).not.toContain(secret);

    // the same command again in another terminal: it names the up that holds the data directory
    // (and so its Redis's port), and leaves the first up
    const twice = await runCli(['up', '--metrics-port', String(await freeRun(4))], env, 60_000);
    expect(twice.code).toBe(1);
    expect(twice.stderr).toContain(`is in use by another transferline up (pid ${first.child.pid}, started `);
    expect(twice.stderr).toContain(`Redis port ${env.TL_REDIS_PORT}`);
    expect(first.child.exitCode).toBeNull();
    // and the very same command (its ports too): the up that holds the data directory is named, not a port it holds (a user's trial)
    const same = await runCli(['up', '--metrics-port', String(base)], env, 60_000);
    expect(same.code).toBe(1);
    expect(same.stderr).toContain(`is in use by another transferline up (pid ${first.child.pid}, started `);
    expect(same.stderr).not.toMatch(/metrics port \d+ \(producer\) on/);
    // and with a data directory, Redis and S3 ports of its own but the first one's metrics ports: named as up names them
    const sameMetrics = await runCli(['up', '--metrics-port', String(base)], { ...env, TL_DATA_DIR: path.join(env.TL_DATA_DIR!, 'other'), TL_REDIS_PORT: String(await freePort()), TL_S3_PORT: String(await freePort()), TL_CONSOLE_PORT: String(await freePort()) }, 60_000);
    expect(sameMetrics.code).toBe(1);
    expect(sameMetrics.stderr).toMatch(new RegExp(`metrics port ${base} \\(producer\\) on 127\\.0\\.0\\.1 is in use, by another "transferline up" perhaps.*choose other ports with --metrics-port P`));
    expect(sameMetrics.stderr).not.toMatch(/TL_METRICS_PORT/);
    expect(first.child.exitCode).toBeNull();

    // /metrics answers on loopback, and on no other interface of the machine
    expect((await fetch(`http://127.0.0.1:${base}/metrics`).catch(() => undefined))?.status ?? 0).toBeGreaterThan(0);
    const external = Object.values(os.networkInterfaces()).flat().find((i) => i && i.family === 'IPv4' && !i.internal);
    if (external) {
      const reached = await fetch(`http://${external.address}:${base}/metrics`, { signal: AbortSignal.timeout(3_000) }).then(() => true, () => false);
      expect(reached).toBe(false);
    }

    // some state in Redis, then its server is killed
    const photos = path.join(dataDir, 'photos');
    await mkdir(path.join(photos, 'a'), { recursive: true });
    await mkdir(path.join(photos, 'b'), { recursive: true });
    for (let i = 0; i < 2; i++) {
      await writeFile(path.join(photos, 'a', `${i}.jpg`), await renderSample('circle', i, 3, 96));
      await writeFile(path.join(photos, 'b', `${i}.jpg`), await renderSample('square', i, 3, 96));
    }
    const cliEnv = { ...env };
    // the banner's any-S3-client line works as printed without --demo too (its bucket is there)
    const awsLine = /^ {2}(AWS_ACCESS_KEY_ID=.* aws .+)$/m.exec(banner)![1]!;
    await promisify(execFile)('sh', ['-c', awsLine], { cwd: dataDir, env: { PATH: process.env.PATH, HOME: dataDir, S3_SECRET_ACCESS_KEY: secret } });
    expect((await runCli(['upload', photos, 's3://photos/small/'], cliEnv)).code).toBe(0);
    const ingest = await runCli(['ingest', 's3://photos/small/', '-d', 'small'], cliEnv);
    expect(ingest.stdout).toMatch(/dataset small: 4 images, 4 embedded/);
    await new Promise((r) => setTimeout(r, 1_500)); // the AOF is fsynced every second

    const redis = descendants(first.child.pid!).find((p) => p.cmd.startsWith('redis-server'));
    expect(redis).toBeDefined();
    const mark = first.output().length;
    process.kill(redis!.pid, 'SIGKILL');
    await until('up to restart Redis', () => /redis restarted/.test(first.output().slice(mark)), 30);
    const status = await runCli(['status', '-d', 'small'], cliEnv);
    expect(status.code).toBe(0);
    expect(status.stdout).toMatch(/dataset small: 4 images, 4 embedded/);
    await new Promise((r) => setTimeout(r, 6_000)); // long enough for a reconnect loop to print
    const after = first.output().slice(mark);
    expect(after).toMatch(/\[up\] redis exited \(SIGKILL\); restarting in [\d.]+ s/);
    expect(after).not.toMatch(/^\s+at /m); // no stack traces
    expect(after.split('\n').filter((l) => l.trim()).length).toBeLessThanOrEqual(3);

    // SIGKILL up: every process it started goes away by itself
    const children = descendants(first.child.pid!);
    expect(children.length).toBeGreaterThanOrEqual(5); // redis, s3, preprocess, embed, train
    first.child.kill('SIGKILL');
    await until('no orphans', () => children.every((c) => !isRunning(c.pid)), 30).catch((err: Error) => {
      const left = children.filter((c) => isRunning(c.pid));
      const named = left.map((c) => `${c.pid} ${processState(c.pid)} ${c.cmd.split(' ').slice(0, 3).join(' ')}`);
      // Seen about once in six full runs, for a different worker each time, until the logger
      // wrote synchronously: the async one's flush at exit retried EPIPE for ever once `up` was
      // gone (test/logger-exit.test.ts). If it comes back: say where each leftover is waiting,
      // and what its log said last, so the failure explains itself.
      throw new Error(`${err.message}; still running: ${named.join('; ')}\n${left.map(whereWaiting).join('\n')}\n${logTails(dataDir)}`);
    });

    // nor anything it started later (a worker restarted after the list above was taken)
    await until('no process of the stack', () => processesWithEnv('TL_DATA_DIR', dataDir).length === 0, 30).catch((err: Error) => {
      throw new Error(`${err.message}; still running: ${processesWithEnv('TL_DATA_DIR', dataDir).map((p) => `${p.pid} ${p.cmd}`).join('; ')}`);
    });

    // and the next up starts on the same ports, with the same data
    const logOf = (role: string) => path.join(dataDir, 'logs', `${role}.log`);
    /** where each worker's log ends now: what a stop adds is read from there */
    const logEnds = async () => Object.fromEntries(await Promise.all(['preprocess', 'embed', 'train'].map(async (r) => [r, (await readFile(logOf(r))).length] as const)));
    /** the three workers of the up on `base` (metrics ports base+1..3) answer /healthz with 200 */
    const everyWorkerHealthy = async () => (await Promise.all([1, 2, 3].map((i) => healthz(base + i)))).every(Boolean);
    const logStart = await logEnds();
    const second = await startUp();
    expect(second.output()).toContain('transferline is up');
    const again = await runCli(['status', '-d', 'small'], cliEnv);
    expect(again.stdout).toMatch(/dataset small: 4 images, 4 embedded/);
    const secondChildren = descendants(second.child.pid!);
    // every worker started (its /healthz says so), so each has a stop to make
    await until('every worker of the second up to be healthy', everyWorkerHealthy, 120);
    // a worker started by hand against up's Redis (scaling out, as the README shows): up names it
    // as it stops, since it takes its Redis away from it
    const hand = spawn(process.execPath, [path.join(repoRoot, 'apps', 'feature-worker', 'dist', 'main.js'), 'preprocess'], { env: { ...env, TL_METRICS_HOST: '127.0.0.1', TL_METRICS_PORT: '0' }, stdio: ['ignore', 'pipe', 'pipe'] });
    stray.push(hand.pid!);
    let handSaid = '';
    hand.stdout!.on('data', (d: Buffer) => (handSaid += d.toString()));
    hand.stderr!.on('data', (d: Buffer) => (handSaid += d.toString()));
    await until('the worker started by hand to start', () => handSaid.includes('worker started') || hand.exitCode !== null, 60);
    expect(hand.exitCode, handSaid).toBeNull();
    // its queue connection named as BullMQ names a worker's (after "worker started", a moment later)
    const clientList = async () => (await promisify(execFile)('redis-cli', ['-p', env.TL_REDIS_PORT!, 'CLIENT', 'LIST'])).stdout;
    await until("the worker started by hand to be among the preprocess queue's workers", async () => new RegExp(`name=\\S*:w:${os.hostname()}:${hand.pid}:`).test(await clientList()), 30);
    // Ctrl-C as a terminal sends it: to the foreground process group, not only to up
    process.kill(-second.child.pid!, 'SIGINT');
    await until('up to stop on Ctrl-C', () => second.child.exitCode !== null, 30).catch((err: Error) => {
      // Seen once in a full run under load: say which process held the stop up, and what it logged.
      const left = secondChildren.filter((c) => isRunning(c.pid));
      throw new Error(`${err.message}; still running: ${left.map((c) => `${c.pid} ${c.cmd.split(' ').slice(0, 3).join(' ')}`).join('; ')}\n${left.map(whereWaiting).join('\n')}\n${second.output().slice(-2000)}\n${logTails(dataDir)}`);
    });
    expect(second.child.exitCode).toBe(0);
    await until('its processes to end', () => secondChildren.every((c) => !isRunning(c.pid)), 10);
    expect(second.output()).toContain(`note: 1 worker up did not start is connected to its Redis (preprocess worker ${os.hostname()}:${hand.pid}): it loses it now, and waits for the next up (stop it if the stack is not coming back)\n`);
    hand.kill('SIGKILL');
    // each worker stopped cleanly, once, when up asked: a SIGINT of its own first would have made
    // up's stop a second one (exit at once, jobs in hand), with Redis gone under it
    for (const role of ['preprocess', 'embed', 'train']) {
      const lines = (await readFile(logOf(role))).subarray(logStart[role]!).toString('utf8');
      expect(lines, role).toMatch(/"askedBy":"up","msg":"stopping: finishing the jobs in hand"/);
      expect(lines, role).not.toMatch(/"signal":"SIGINT"|second signal/);
      // and said why it did nothing on SIGINT (a `kill -INT` of one worker did nothing, silently)
      expect(lines, role).toContain(`"msg":"${leftToUp('SIGINT')}"`);
      expect(lines, role).toMatch(/"msg":"stopped"/);
    }
    // right after the banner, while its workers still start: none of them may be left behind
    const third = await startUp();
    third.child.kill('SIGKILL');
    await until('no process of a stack killed while starting', () => processesWithEnv('TL_DATA_DIR', dataDir).length === 0, 30).catch((err: Error) => {
      throw new Error(`${err.message}; still running: ${processesWithEnv('TL_DATA_DIR', dataDir).map((p) => `${p.pid} ${p.cmd}`).join('; ')}`);
    });
    // The terminal closes: `up` in a pseudo-terminal of its own (as in a terminal window), whose
    // master is then closed; the kernel sends SIGHUP to its foreground group (up and its workers),
    // and every later write to it fails with EIO. up stops the stack in order and exits 0, and
    // each worker stops once, cleanly: before, SIGHUP ended the workers at once, and up's own
    // "stopping the stack…" met EIO and ended up with exit 1 before it stopped anything.
    {
      const from = await logEnds();
      const pty = spawn('python3', ['-c', PTY_UP, process.execPath, cliPath, String(base), JSON.stringify(env)], { stdio: ['pipe', 'pipe', 'pipe'] });
      running.push(pty);
      let said = '';
      pty.stdout!.on('data', (d: Buffer) => (said += d.toString()));
      pty.stderr!.on('data', (d: Buffer) => (said += d.toString()));
      await until('up in a terminal to show its banner', () => said.includes('BANNER') || pty.exitCode !== null, 150);
      expect(said).toContain('BANNER');
      await until('every worker of the up in a terminal to be healthy', everyWorkerHealthy, 120);
      pty.stdin!.end('hang up\n');
      await until('up to stop when its terminal closes', () => /EXIT -?\d+/.test(said), 90);
      expect(said).toMatch(/EXIT 0\b/);
      await until('no process of the stack after its terminal closed', () => processesWithEnv('TL_DATA_DIR', dataDir).length === 0, 30);
      for (const role of ['preprocess', 'embed', 'train']) {
        const lines = (await readFile(logOf(role))).subarray(from[role]!).toString('utf8');
        expect(lines, `${role} (terminal closed)`).toMatch(/"msg":"stopped"/);
        expect(lines, `${role} (terminal closed)`).not.toMatch(/second signal/);
      }
    }
    // A signal to the whole job: the shell's SIGHUP when its terminal closes; SIGTERM from
    // `timeout`, a kill of the group, or systemd (KillMode=mixed reaches up alone). Each worker
    // stops once, cleanly: it leaves SIGHUP to up, and up asks it over IPC, not with a second
    // SIGTERM (which ends a worker at once, its jobs in hand); nothing is restarted meanwhile.
    for (const signal of ['SIGHUP', 'SIGTERM'] as const) {
      const from = await logEnds();
      const next = await startUp();
      await until(`every worker of the up stopped by a group ${signal} to be healthy`, everyWorkerHealthy, 120);
      process.kill(-next.child.pid!, signal);
      await until(`up to stop on a group ${signal}`, () => next.child.exitCode !== null || next.child.signalCode !== null, 60);
      expect({ code: next.child.exitCode, signal: next.child.signalCode }, next.output()).toEqual({ code: 0, signal: null });
      expect(next.output()).not.toMatch(/exited \(0\); restart/);
      await until(`no process of the stack after a group ${signal}`, () => processesWithEnv('TL_DATA_DIR', dataDir).length === 0, 30);
      for (const role of ['preprocess', 'embed', 'train']) {
        const lines = (await readFile(logOf(role))).subarray(from[role]!).toString('utf8');
        if (signal === 'SIGHUP') expect(lines, `${role} (group SIGHUP)`).toContain(`"msg":"${leftToUp('SIGHUP')}"`);
        else expect(lines, `${role} (group SIGTERM)`).toMatch(/"signal":"SIGTERM","msg":"stopping: finishing the jobs in hand"/);
        expect(lines, `${role} (group ${signal})`).toMatch(/"msg":"stopped"/);
        expect(lines, `${role} (group ${signal})`).not.toMatch(/second signal/);
      }
    }

    // Ctrl-C twice: the second exits at once (130), the jobs in hand left to run again, but not
    // before Redis and the S3 server have ended: the data directory's lock must not go while one
    // of them still writes there (a next up would start its own Redis on the same files). A Redis
    // that cannot close its files (stopped here, with SIGSTOP) is killed after a few seconds.
    {
      const next = await startUp();
      const servers = descendants(next.child.pid!).filter((p) => p.cmd.startsWith('redis-server') || p.cmd.includes('s3.main.js'));
      expect(servers.map((p) => p.cmd.split(' ')[0])).toHaveLength(2);
      let leftAtExit: { pid: number; cmd: string }[] | undefined;
      const exited = new Promise<number | null>((resolve) =>
        next.child.once('exit', (code) => {
          leftAtExit = servers.filter((p) => isRunning(p.pid)); // the moment up is gone
          resolve(code);
        }),
      );
      // (stopped first: the first Ctrl-C's stop then waits on it, as on workers finishing their jobs)
      const redis = servers.find((p) => p.cmd.startsWith('redis-server'))!;
      // (Redis writes its title over its environment: afterAll could not find it by TL_DATA_DIR)
      stray.push(redis.pid);
      process.kill(redis.pid, 'SIGSTOP');
      process.kill(-next.child.pid!, 'SIGINT');
      await until('up to begin its stop', () => next.output().includes('stopping the stack'), 10);
      process.kill(-next.child.pid!, 'SIGINT');
      expect(await exited, next.output()).toBe(130);
      expect(next.output()).toMatch(/second Ctrl-C: exiting now; jobs in hand run again when the stack is next up/);
      expect(leftAtExit!.map((p) => `${p.pid} ${processState(p.pid)} ${p.cmd}`)).toEqual([]);
      await until('no process of the stack after a second Ctrl-C', () => processesWithEnv('TL_DATA_DIR', dataDir).length === 0, 30);
    }

    // `up | head -3`: the reader goes away after the banner's first lines. At up's next line (a
    // worker that died, here) it stops the stack in order (workers, then Redis and S3) before it
    // exits, with a SIGPIPE's status and no trace
    const piped = spawn('bash', ['-c', `set -o pipefail; "${process.execPath}" "${cliPath}" up --metrics-port ${base} | head -3`], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    running.push(piped);
    let pipedOut = '';
    let pipedErr = '';
    piped.stdout!.on('data', (d: Buffer) => (pipedOut += d.toString()));
    piped.stderr!.on('data', (d: Buffer) => (pipedErr += d.toString()));
    let leftAtExit: { pid: number; cmd: string }[] | undefined;
    const pipedExit = new Promise<number | null>((resolve) =>
      piped.once('exit', (code) => {
        leftAtExit = processesWithEnv('TL_DATA_DIR', dataDir); // the moment up is gone
        resolve(code);
      }),
    );
    await until('head to have its three lines', () => pipedOut.split('\n').filter(Boolean).length >= 3, 60);
    // Which line of up's meets the closed pipe depends on timing: a banner line written after head
    // exited, or else the line that says a worker died. Both must stop the stack the same way.
    const pipedDone = () => piped.exitCode !== null || piped.signalCode !== null;
    const preprocessOfPiped = () => processesWithEnv('TL_DATA_DIR', dataDir).find((p) => p.cmd.includes('main.js preprocess'));
    await until('a preprocess worker of the piped up, or the piped up to exit at a banner line', () => pipedDone() || preprocessOfPiped() !== undefined, 60);
    const victim = pipedDone() ? undefined : preprocessOfPiped();
    if (victim) {
      try {
        process.kill(victim.pid, 'SIGKILL');
      } catch {
        // already gone: up is stopping the stack at a banner line
      }
    }
    await until('the piped up to exit', () => piped.exitCode !== null || piped.signalCode !== null, 60);
    const pipedCode = await pipedExit;
    expect({ code: pipedCode, stderr: pipedErr }).toEqual({ code: 141, stderr: '' });
    expect(pipedOut.split('\n').filter(Boolean)).toHaveLength(3);
    expect(leftAtExit!.map((p) => `${p.pid} ${p.cmd}`)).toEqual([]);

    // `up | true`: the reader is gone before up writes anything, so up always meets the closed pipe
    // at its banner's first line, the case the check above meets only when head is quick. The
    // same status, no trace, and nothing it started is left
    const unread = spawn('bash', ['-c', `set -o pipefail; "${process.execPath}" "${cliPath}" up --metrics-port ${base} | true`], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    running.push(unread);
    let unreadErr = '';
    unread.stderr!.on('data', (d: Buffer) => (unreadErr += d.toString()));
    const unreadExit = new Promise<number | null>((resolve) => unread.once('exit', resolve));
    await until('up | true to exit', () => unread.exitCode !== null || unread.signalCode !== null, 60);
    const unreadCode = await unreadExit;
    expect({ code: unreadCode, stderr: unreadErr, left: processesWithEnv('TL_DATA_DIR', dataDir).map((p) => `${p.pid} ${p.cmd}`) }).toEqual({ code: 141, stderr: '', left: [] });
  }, 300_000);
});
