import { readdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll } from 'vitest';
import type { Redis as SharedRedis } from '../../packages/shared/src/redis.client.js';

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
 * Every Redis client the code under test connects (ioredis as packages/shared loads it), with
 * where it was made. A client left trying a Redis that has stopped holds no socket between its
 * tries, so the handle counts miss it; it goes on trying in the files its process runs next.
 */
const redisClients: { client: WeakRef<{ status: string; options: { port?: number } }>; madeAt: string }[] = (() => {
  const g = globalThis as { tlRedisClients?: typeof redisClients };
  if (g.tlRedisClients) return g.tlRedisClients;
  const list: typeof redisClients = [];
  const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
  const { Redis } = createRequire(path.join(root, 'packages', 'shared', 'package.json'))('ioredis') as { Redis: typeof SharedRedis };
  const connect = Redis.prototype.connect;
  const noted = new WeakSet<object>();
  Redis.prototype.connect = function (this: SharedRedis, ...args: Parameters<typeof connect>) {
    if (!noted.has(this)) {
      noted.add(this);
      // (the first two frames of ours: a client made by createRedis is named by its caller too)
      const ours = (new Error().stack ?? '').split('\n').filter((l) => l.includes(root) && !l.includes('node_modules') && !l.includes('leak-guard'));
      list.push({ client: new WeakRef(this), madeAt: ours.slice(0, 2).map((l) => l.trim()).join(' ← ') || '(unknown)' });
    }
    return connect.apply(this, args);
  };
  g.tlRedisClients = list;
  return list;
})();

/**
 * Fails the file if it leaves a process, a socket, a server, a pipe, or a Redis client still
 * trying to connect behind: everything a test starts (workers, redis-server, S3 server, clients)
 * must be stopped by its own cleanup.
 */
export function guardLeaks(): void {
  // (against what was there before the file: a process runs its files one after another)
  let before: Record<string, number> = {};
  let kidsBefore = new Set<string>();
  let clientsBefore = 0;
  beforeAll(() => {
    before = handles();
    kidsBefore = new Set(childProcesses());
    clientsBefore = redisClients.length;
  });
  afterAll(async () => {
    const deadline = Date.now() + 5_000;
    for (;;) {
      const now = handles();
      const leaked = WATCHED.filter((k) => (now[k] ?? 0) > (before[k] ?? 0)).map((k) => `${k} ×${(now[k] ?? 0) - (before[k] ?? 0)}`);
      const kids = childProcesses().filter((k) => !kidsBefore.has(k));
      const trying = redisClients.slice(clientsBefore).flatMap(({ client, madeAt }) => {
        const c = client.deref();
        return c && (c.status === 'reconnecting' || c.status === 'connecting') ? [`a Redis client still trying port ${c.options.port} (made ${madeAt})`] : [];
      });
      if (leaked.length === 0 && kids.length === 0 && trying.length === 0) return;
      if (Date.now() > deadline) throw new Error(`test leaked: ${[...leaked, ...kids.map((k) => `process ${k}`), ...trying].join(', ')}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }, 10_000);
}
