import { readFileSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';

/** What `<data>/up.pid` says of the `up` that holds the directory. */
interface Holder {
  pid: number;
  startedAt: string;
  /** the ports it runs its servers on, to name them */
  ports: string;
}

export interface DataDirLock {
  /** Removes the lock, if it is still this process's. */
  release(): Promise<void>;
}

/**
 * Whether `pid` is a live process that may be a `transferline up`: alive (signal 0), and, where
 * /proc tells, a Node process (a pid reused by something else since is not one).
 */
function upAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  try {
    return /node/i.test(readFileSync(`/proc/${pid}/cmdline`, 'utf8'));
  } catch {
    return true; // no /proc (macOS): alive is all we know
  }
}

/**
 * One `up` per data directory: two would run two Redis servers on one append-only file and two
 * S3 servers on one directory (a user's trial: a second `up` on other ports started on the first
 * one's `./data`). Taken with an exclusive create of `<data>/up.pid`; a file left by an `up` that
 * is gone (SIGKILLed) is taken over.
 */
export async function lockDataDir(dir: string, ports: string): Promise<DataDirLock> {
  await mkdir(dir, { recursive: true });
  const file = path.join(dir, 'up.pid');
  const mine: Holder = { pid: process.pid, startedAt: new Date().toISOString(), ports };
  for (let attempt = 0; ; attempt++) {
    try {
      await writeFile(file, `${JSON.stringify(mine)}\n`, { flag: 'wx' });
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || attempt > 0) throw err;
    }
    const holder = await readFile(file, 'utf8').then(
      (text) => JSON.parse(text) as Holder,
      () => undefined,
    );
    if (holder && typeof holder.pid === 'number' && (holder.pid === process.pid || upAlive(holder.pid))) {
      throw new Error(
        `${dir} is in use by another transferline up (pid ${holder.pid}, started ${holder.startedAt}, ${holder.ports}): two would share one Redis file and one S3 directory. ` +
          'Stop that one (Ctrl-C in its terminal), or give this one a data directory of its own with TL_DATA_DIR',
      );
    }
    // left by an up that is gone: taken over (one exclusive create again: of two racing, one wins)
    await rm(file, { force: true });
  }
  return {
    release: async () => {
      const now = await readFile(file, 'utf8').catch(() => '');
      if (now.includes(`"pid":${process.pid},`)) await rm(file, { force: true });
    },
  };
}
