import { readdirSync, readFileSync } from 'node:fs';
import { afterAll, beforeAll } from 'vitest';

const WATCHED = ['TCPSocketWrap', 'TCPServerWrap', 'ProcessWrap', 'PipeWrap'];

function handles(): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const r of process.getActiveResourcesInfo()) if (WATCHED.includes(r)) counts[r] = (counts[r] ?? 0) + 1;
  return counts;
}

/** Live child processes of this process (from /proc), as "pid command". */
export function childProcesses(): string[] {
  const out: string[] = [];
  for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[1]) === process.pid && fields[0] !== 'Z') out.push(`${pid} ${stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'))}`);
    } catch {
      // the process ended while we looked
    }
  }
  return out;
}

/**
 * Fails the file if it leaves a process, a socket, a server or a pipe behind: everything a test
 * starts (workers, redis-server, S3 server, clients) must be stopped by its own cleanup.
 */
export function guardLeaks(): void {
  // (against what was there before the file: a process runs its files one after another)
  let before: Record<string, number> = {};
  let kidsBefore = new Set<string>();
  beforeAll(() => {
    before = handles();
    kidsBefore = new Set(childProcesses());
  });
  afterAll(async () => {
    const deadline = Date.now() + 5_000;
    for (;;) {
      const now = handles();
      const leaked = WATCHED.filter((k) => (now[k] ?? 0) > (before[k] ?? 0)).map((k) => `${k} ×${(now[k] ?? 0) - (before[k] ?? 0)}`);
      const kids = childProcesses().filter((k) => !kidsBefore.has(k));
      if (leaked.length === 0 && kids.length === 0) return;
      if (Date.now() > deadline) throw new Error(`test leaked: ${[...leaked, ...kids.map((k) => `process ${k}`)].join(', ')}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }, 10_000);
}
