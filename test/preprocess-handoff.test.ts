import { Worker } from 'bullmq';
import { describe, expect, it, vi } from 'vitest';
import { EmbedBacklogGate } from '../apps/feature-worker/src/embed-backlog.gate.js';
import { createPreprocessStore } from '../apps/feature-worker/src/preprocess.store.js';
import { contentHash, enqueue, jobIds, queueName, type JobContext } from '../packages/shared/src/index.js';
import { createLogger, createMetrics } from '../packages/shared/src/service-runtime.js';
import { guardLeaks } from './support/leak-guard.js';
import { NO_WORKERS, stackForFile, until } from './support/stack.js';

/**
 * Two objects with the same bytes, preprocessed at the same time: the second hands its pixels to
 * embed while the first's embed job is still active, after that job indexed the image and freed
 * its pixels. The second job's add is a no-op (same id), so nothing would ever free the second
 * copy of the pixels: 150 KB left in Redis for the pixels' TTL (days), per duplicate (the scale
 * trial found 11 such keys). Real Redis and BullMQ; a bare BullMQ worker holds the embed job.
 * And the first look at an image, which asks for room in the embed backlog in the same script.
 */

guardLeaks();

const file = stackForFile({}, NO_WORKERS);
const space = 'efficientnet-b0.test-handoff.squash224';

describe('preprocess hand-off of bytes another object embedded meanwhile', () => {
  it('leaves no pixels behind in Redis', async () => {
    const { ctx, stack } = file;
    const { services, queues } = ctx;
    const log = createLogger('test', 'warn');
    const gate = new EmbedBacklogGate(services.redis, queues, services.keys, 1000, async () => [space], createMetrics('preprocess'), log);
    const store = createPreprocessStore(services, queues, gate);
    const pixels = new Uint8Array(224 * 224 * 3).fill(7);
    const sha256 = contentHash(Buffer.from('the same bytes under two keys'));
    const job = { sha256, embedderId: space };
    const id = jobIds.embed(job);

    // the first object's embed job is active in a worker that holds it
    await enqueue(queues.embed(space), 'embed', [{ id, payload: job }]);
    let finish!: () => void;
    const held = new Promise<void>((resolve) => (finish = resolve));
    const connection = services.redis.duplicate({ maxRetriesPerRequest: null });
    const worker = new Worker(queueName('embed', space), () => held, { connection, prefix: stack.config.redis.prefix, autorun: true });
    try {
      await until('the embed job to be active', async () => (await queues.embed(space).getJobState(id)) === 'active', 30, 50);
      // ...which has indexed the image and freed its pixels
      await services.redis.hset(services.keys.embeddingIndex(space), sha256, 'shard-0:0');
      await services.tensors.delete(space, [sha256]);

      // the second object (ingested: its record pending) hands its pixels off now
      const itemId = 'photos/train/cat/copy.jpg';
      await services.datasets.putItem('twins', itemId, { label: 'cat', etag: 'e2', space, state: 'pending' });
      const ctxJob: JobContext = { log, progress: async () => {}, attempt: 1, stopping: () => false };
      const room = await gate.admit(space, ctxJob);
      await store.handOff({ job, pixels, dataset: 'twins', itemId, record: { label: 'cat', etag: 'e2', sha256, space, state: 'queued' }, room });
      finish();
      await until('the embed job to complete', async () => ['completed', 'unknown'].includes(await queues.embed(space).getJobState(id)), 30, 50);
    } finally {
      await worker.close();
      connection.disconnect();
    }
    expect(await services.redis.exists(services.keys.tensor(space, sha256))).toBe(0);
    // the image counts as embedded for the second object's dataset
    expect(await services.inspector.status('twins')).toMatchObject({ total: 1, embedded: 1, orphaned: 0 });
  });

  it('takes room in the backlog at the first look only for bytes the space has not embedded, and remembers the object either way', async () => {
    const { ctx } = file;
    const { services, queues } = ctx;
    const log = createLogger('test', 'warn');
    const other = `${space}.look`;
    const gate = new EmbedBacklogGate(services.redis, queues, services.keys, 1, async () => [other], createMetrics('preprocess'), log);
    const store = createPreprocessStore(services, queues, gate);
    const ctxJob: JobContext = { log, progress: async () => {}, attempt: 1, stopping: () => false };
    const [a, b, c] = ['a', 'b', 'c'].map((x) => contentHash(Buffer.from(`bytes ${x}`)));
    await services.redis.hset(services.keys.embeddingIndex(other), b!, 'shard-0:0');
    const reservations = () => services.redis.zcard(services.keys.backpressure(other));

    const roomA = await store.lookup({ itemId: 'photos/a.jpg', etag: 'ea', sha256: a!, space: other }, ctxJob);
    expect(roomA).not.toBe('embedded');
    expect(await reservations()).toBe(1);
    // embedded already: no room taken, though the backlog is at its bound of 1
    expect(await store.lookup({ itemId: 'photos/b.jpg', etag: 'eb', sha256: b!, space: other }, ctxJob)).toBe('embedded');
    expect(await reservations()).toBe(1);
    expect(await services.datasets.knownHashes(['photos/a.jpg', 'photos/b.jpg'])).toEqual([
      { etag: 'ea', sha256: a },
      { etag: 'eb', sha256: b },
    ]);

    // new bytes at the bound wait for room, and get it once the first room is given back
    let roomC: unknown;
    try {
      const waiting = store.lookup({ itemId: 'photos/c.jpg', etag: 'ec', sha256: c!, space: other }, ctxJob).then((r) => (roomC = r));
      await new Promise((r) => setTimeout(r, 500));
      expect(roomC).toBeUndefined();
      await (roomA as Exclude<typeof roomA, 'embedded'>).release();
      await waiting;
      expect(roomC).toHaveProperty('release');
      expect(await reservations()).toBe(1);
    } finally {
      gate.close();
      await (roomC as { release?: () => Promise<void> } | undefined)?.release?.();
    }
  });

  it('keeps the room of a slow decode: renewed while it lasts, asked for again once it lapsed', async () => {
    const { ctx } = file;
    const { services, queues } = ctx;
    const log = createLogger('test', 'warn');
    const slow = `${space}.slow`;
    const gate = new EmbedBacklogGate(services.redis, queues, services.keys, 1, async () => [slow], createMetrics('preprocess'), log);
    const ctxJob: JobContext = { log, progress: async () => {}, attempt: 1, stopping: () => false };
    const key = services.keys.backpressure(slow);
    const rooms: { release: () => Promise<void> }[] = [];
    vi.useFakeTimers({ toFake: ['Date'] });
    try {
      const room = await gate.admit(slow, ctxJob);
      rooms.push(room);
      const [member, expiry] = await services.redis.zrange(key, 0, -1, 'WITHSCORES');
      // a decode of 20 s: the same room, its expiry moved on
      vi.setSystemTime(Date.now() + 20_000);
      expect(await room.keep(ctxJob)).toBe(room);
      const [sameMember, later] = await services.redis.zrange(key, 0, -1, 'WITHSCORES');
      expect(sameMember).toBe(member);
      expect(Number(later)).toBeGreaterThan(Number(expiry));

      // lapsed (as an expiry drops it), and the slot taken by another job meanwhile
      await services.redis.zrem(key, member!);
      const other = await gate.admit(slow, ctxJob);
      rooms.push(other);
      vi.setSystemTime(Date.now() + 20_000);
      let kept: { release: () => Promise<void> } | undefined;
      const keeping = room.keep(ctxJob).then((r) => (kept = r));
      await new Promise((r) => setTimeout(r, 500));
      expect(kept).toBeUndefined(); // the bound of 1 holds: it waits
      await other.release();
      await keeping;
      rooms.push(kept!);
      expect(await services.redis.zcard(key)).toBe(1);
    } finally {
      vi.useRealTimers();
      gate.close();
      for (const r of rooms) await r.release();
    }
  });
});
