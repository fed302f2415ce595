import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { lockDataDir } from './data-dir.lock.js';

const settings = { ports: 'metrics port 1', shares: 'the worker logs' };
/** The pid of a process that has ended. */
const deadPid = () => spawnSync(process.execPath, ['-e', '']).pid!;

describe("the data directory's lock (one up per directory)", () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'tl-lock-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('makes a data directory its user alone can read (a security trial read the objects and models from disk), and leaves the mode of one that is there', async () => {
    const made = path.join(dir, 'new', 'data');
    const lock = await lockDataDir(made, settings);
    expect((await stat(made)).mode & 0o777).toBe(0o700);
    // the parents made for it are left to the umask (a review: /srv/tl made 0700 with /srv/tl/data)
    expect((await stat(path.dirname(made))).mode & 0o777).toBe(0o777 & ~process.umask());
    await lock.release();
    await chmod(made, 0o750);
    const again = await lockDataDir(made, settings);
    expect((await stat(made)).mode & 0o777).toBe(0o750);
    await again.release();
  });

  it('of two ups taking over a file left by one that is gone, exactly one wins, every time', async () => {
    const gone = deadPid();
    for (let round = 0; round < 50; round++) {
      await writeFile(path.join(dir, 'up.pid'), `${JSON.stringify({ pid: gone, startedAt: 'then', ports: 'p' })}\n`);
      const both = await Promise.allSettled([lockDataDir(dir, settings), lockDataDir(dir, settings)]);
      const won = both.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
      expect(won, `round ${round}`).toHaveLength(1);
      expect((both.find((r) => r.status === 'rejected') as PromiseRejectedResult).reason.message).toMatch(/is in use by another transferline up/);
      await won[0]!.release();
      expect(existsSync(path.join(dir, 'up.pid'))).toBe(false);
    }
  });

  it("takes over a file whose pid is alive but another process's now (a container restarted: pids begin again)", async () => {
    // this process's pid, with another start: the up that wrote it is gone
    await writeFile(path.join(dir, 'up.pid'), `${JSON.stringify({ pid: process.pid, startTicks: 1, bootId: (await readFile('/proc/sys/kernel/random/boot_id', 'utf8')).trim(), startedAt: 'then', ports: 'p' })}\n`);
    const lock = await lockDataDir(dir, settings);
    expect(JSON.parse(await readFile(path.join(dir, 'up.pid'), 'utf8'))).toMatchObject({ pid: process.pid, ports: 'metrics port 1' });
    await lock.release();
  });

  it('says a file made a moment ago and not written yet is being taken (where no hard links are: made empty, then written), not a JSON error', async () => {
    await writeFile(path.join(dir, 'up.pid'), '');
    await expect(lockDataDir(dir, settings)).rejects.toThrow(`${dir}: another up is taking ${path.join(dir, 'up.pid')} now: try again in a few seconds`);
  });

  it('is let go on an exit that skips the stop (a second Ctrl-C exits at once)', async () => {
    const lockModule = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'dist', 'embedded', 'data-dir.lock.js');
    const child = spawn(process.execPath, ['--input-type=module', '-e', `const { lockDataDir } = await import(${JSON.stringify(lockModule)}); await lockDataDir(${JSON.stringify(dir)}, { ports: 'p', shares: 's' }); process.exit(130);`], { stdio: 'inherit' });
    const code = await new Promise((resolve) => child.on('exit', resolve));
    expect(code).toBe(130);
    expect(existsSync(path.join(dir, 'up.pid'))).toBe(false);
  });
});
