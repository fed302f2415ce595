import { randomBytes } from 'node:crypto';
import { readFileSync, unlinkSync } from 'node:fs';
import { link, mkdir, rename, rm, rmdir, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';

/** Who holds `<data>/up.pid`: enough to tell a live `up` from one that is gone, and to name it. */
interface Holder {
  pid: number;
  /** the process's start, in clock ticks since boot (/proc/PID/stat), where /proc tells */
  startTicks?: number;
  /** this boot's id (/proc/sys/kernel/random/boot_id): start ticks of another boot say nothing */
  bootId?: string;
  startedAt: string;
  /** the ports it runs its servers on, to name them */
  ports: string;
}

export interface DataDirLock {
  /** Removes the lock, if it is still this process's. */
  release(): Promise<void>;
}

const readText = (file: string) => {
  try {
    return readFileSync(file, 'utf8').trim();
  } catch {
    return undefined;
  }
};

/** A process's start in clock ticks since boot (field 22 of /proc/PID/stat), or undefined without /proc. */
function startTicks(pid: number | 'self'): number | undefined {
  const text = readText(`/proc/${pid}/stat`);
  // the command name (field 2) is in parentheses and may hold spaces: count after its end
  const fields = text?.slice(text.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(fields?.[19]);
  return Number.isFinite(ticks) ? ticks : undefined;
}

/**
 * Whether the process that wrote `holder` still runs: its pid is alive and, where /proc tells, is
 * the same process (the same start, in the same boot), not a later one given the same pid (a
 * container restarted: pids start again from 1).
 */
function holderAlive(holder: Holder): boolean {
  try {
    process.kill(holder.pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  if (holder.startTicks !== undefined && holder.bootId !== undefined) {
    if (readText('/proc/sys/kernel/random/boot_id') !== holder.bootId) return false;
    return startTicks(holder.pid) === holder.startTicks;
  }
  // no start recorded (no /proc where it was written): a Node process, where /proc tells
  const cmdline = readText(`/proc/${holder.pid}/cmdline`);
  return cmdline === undefined ? holder.pid !== process.pid : /node/i.test(cmdline);
}

/**
 * Whether a running `up` holds the directory now (a look, not a lock: `lockDataDir` decides). For
 * what `up` would do before it locks, at no use when the directory is taken (the weights' download).
 */
export function dataDirHeld(dir: string): boolean {
  const holder = readHolder(path.join(dir, 'up.pid'));
  return holder !== undefined && holderAlive(holder);
}

/** The holder `up.pid` names, or undefined when there is no such file or it names none (empty, being written, not JSON). */
function readHolder(file: string): Holder | undefined {
  const text = readText(file);
  try {
    const holder = text ? (JSON.parse(text) as Partial<Holder>) : undefined;
    return typeof holder?.pid === 'number' ? (holder as Holder) : undefined;
  } catch {
    return undefined;
  }
}

/** Longest a takeover may hold its mutex; one older was left by a process that died in it. */
const TAKEOVER_STALE_MS = 10_000;

/**
 * One `up` per data directory: two would run two Redis servers on one append-only file and two
 * S3 servers on one directory (a user's trial: a second `up` on other ports started on the first
 * one's `./data`). `<data>/up.pid` names the holder; it is created whole (written aside, then
 * linked into place, which fails if it exists), and one left by an `up` that is gone (SIGKILLed)
 * is taken over under a mutex (a directory: one of two racing takers wins, and the other then
 * finds the winner alive). Released when `up` stops, and on any exit but SIGKILL.
 */
export async function lockDataDir(dir: string, o: { ports: string; shares: string }): Promise<DataDirLock> {
  // Its user's alone: Redis's files, the S3 server's objects and the logs are not for the other
  // users of the machine (a security trial read the images and models from disk, past the S3
  // server's signature check). A folder that is there already keeps its mode, and so do the
  // parents made for it (a review: /srv/tl made 0700 with /srv/tl/data).
  await mkdir(path.dirname(dir), { recursive: true });
  await mkdir(dir, { mode: 0o700 }).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'EEXIST') throw err;
  });
  const file = path.join(dir, 'up.pid');
  const bootId = readText('/proc/sys/kernel/random/boot_id');
  const ticks = startTicks('self');
  const mine: Holder = { pid: process.pid, ...(ticks !== undefined && bootId && { startTicks: ticks, bootId }), startedAt: new Date().toISOString(), ports: o.ports };
  const text = `${JSON.stringify(mine)}\n`;
  const aside = `${file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  await writeFile(aside, text);
  const refuse = (holder: Holder) =>
    new Error(
      `${dir} is in use by another transferline up (pid ${holder.pid}, started ${holder.startedAt}, ${holder.ports}): two would share ${o.shares}. ` +
        'Stop that one (Ctrl-C in its terminal), or give this one a data directory of its own with TL_DATA_DIR',
    );
  // Linked into place whole; where the file system has no hard links (exFAT, FAT, some network
  // and FUSE mounts), created exclusively and then written (a reader may see it empty meanwhile)
  const create = () =>
    link(aside, file).then(
      () => true,
      async (err: NodeJS.ErrnoException) => {
        if (err.code === 'EEXIST') return false;
        if (err.code !== 'EPERM' && err.code !== 'ENOTSUP' && err.code !== 'EOPNOTSUPP' && err.code !== 'ENOSYS') throw err;
        return writeFile(file, text, { flag: 'wx' }).then(
          () => true,
          (e: NodeJS.ErrnoException) => {
            if (e.code === 'EEXIST') return false;
            throw e;
          },
        );
      },
    );
  try {
    if (!(await create())) {
      const mutex = `${file}.takeover`;
      for (let waited = 0; ; waited += 100) {
        try {
          await mkdir(mutex);
          break;
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
          const age = Date.now() - ((await stat(mutex).catch(() => undefined))?.mtimeMs ?? Date.now());
          if (age > TAKEOVER_STALE_MS) {
            // left by a process that died taking over: moved aside first, which one caller alone
            // can do (a removal could take the fresh mutex of one that cleared it just before)
            const moved = `${mutex}.${process.pid}.${randomBytes(4).toString('hex')}`;
            if (await rename(mutex, moved).then(() => true, () => false)) await rmdir(moved).catch(() => undefined);
          }
          else if (waited > TAKEOVER_STALE_MS) throw new Error(`${dir}: another up is taking over ${file} (${mutex} is there): try again in a few seconds`);
          else await new Promise((resolve) => setTimeout(resolve, 100));
        }
      }
      try {
        const holder = readHolder(file);
        if (holder && holderAlive(holder)) throw refuse(holder);
        // unreadable and new: being written by an up that could not link it whole
        const age = Date.now() - ((await stat(file).catch(() => undefined))?.mtimeMs ?? 0);
        if (!holder && age < 5_000) throw new Error(`${dir}: another up is taking ${file} now: try again in a few seconds`);
        // left by an up that is gone (or unreadable): replaced, within the mutex
        await rm(file, { force: true });
        if (!(await create())) {
          // another up made it between the removal and this create (it found no file, so it took
          // no mutex): it holds the directory now, and is named as any holder is
          const now = readHolder(file);
          throw now && holderAlive(now) ? refuse(now) : new Error(`${dir}: ${file} was made again while this up took it over: try again`);
        }
      } finally {
        await rmdir(mutex).catch(() => undefined);
      }
    }
  } finally {
    await rm(aside, { force: true });
  }
  const ours = () => readText(file) === text.trim();
  // any exit but SIGKILL (a second Ctrl-C exits at once) lets the next up in
  const onExit = () => {
    if (ours()) {
      try {
        unlinkSync(file);
      } catch {
        // gone already
      }
    }
  };
  process.on('exit', onExit);
  return {
    release: async () => {
      process.off('exit', onExit);
      if (ours()) await rm(file, { force: true });
    },
  };
}
