import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_IDLE_TIMEOUT_MS, ObjectStore, startS3Guard, type DependencyGuard } from '../packages/shared/src/index.js';
import { createMetrics } from '../packages/shared/src/service-runtime.js';
import { startFaultyS3, type FaultyS3 } from './support/fault-proxy.js';
import { guardLeaks } from './support/leak-guard.js';
import { until } from './support/stack.js';

guardLeaks();

/**
 * The S3 guard every worker role starts (startS3Guard), against a real S3 server behind a fault
 * proxy, at the default idle timeout (30 s, 5 attempts): a wedged S3 takes connections and
 * answers nothing, so a job's request fails only after minutes, and the outage (the workers'
 * pause, `tl_dependency_up{dependency="s3"} 0`, the DependencyDown alert) was seen only then
 * (user trial: about 5 minutes to the alert). A request without an answer asks the probe now.
 */

const BUCKET = 'wedged';
let faulty: FaultyS3;
let store: ObjectStore;
let guard: DependencyGuard;
const metrics = createMetrics('test');
const lines: string[] = [];
const log = pino({ level: 'info' }, { write: (l: string) => void lines.push(l) });

/** tl_dependency_up{dependency="s3"} as /metrics shows it */
async function s3Up(): Promise<number> {
  const text = await metrics.registry.getSingleMetricAsString('tl_dependency_up');
  return Number(/tl_dependency_up\{dependency="s3"[^}]*\} (\d+)/.exec(text)![1]);
}

beforeAll(async () => {
  faulty = await startFaultyS3();
  store = new ObjectStore({ endpoint: faulty.proxy.url, region: 'us-east-1', accessKeyId: faulty.s3.accessKeyId, secretAccessKey: faulty.s3.secretAccessKey, forcePathStyle: true });
  await store.ensureBucket(BUCKET);
  await store.putObject(BUCKET, 'photos/a.jpg', Buffer.alloc(1024, 7));
  await store.putObject(BUCKET, 'photos/big.bin', Buffer.alloc(64 * 1024, 1));
  guard = await startS3Guard(store, { bucket: BUCKET, endpoint: faulty.proxy.url }, log, metrics);
}, 60_000);

afterAll(async () => {
  guard?.close();
  await faulty?.stop(); // (ends the requests the mute proxy holds)
  store?.close();
});

describe('a worker’s S3 guard, at the default idle timeout', () => {
  it('calls a wedged S3 down within seconds of a request that gets no answer, for direct reads and writes and the SDK’s requests alike, and up again when it answers', async () => {
    expect(DEFAULT_IDLE_TIMEOUT_MS).toBe(30_000);
    for (const [what, request] of [
      ['a GET of an image', () => store.getObject(BUCKET, 'photos/a.jpg')],
      ['a listing', async () => {
        for await (const o of store.listObjects(BUCKET, 'photos/')) void o;
      }],
      ['a PUT of an image', () => store.putObject(BUCKET, 'photos/new.jpg', Buffer.alloc(2048, 3))],
    ] as const) {
      expect(guard.up, what).toBe(true);
      const mark = lines.length;
      faulty.proxy.inject('', { kind: 'mute' }); // taken, never answered: stopped or wedged
      const since = Date.now();
      void request().catch((err: unknown) => err); // a job's request, left waiting
      try {
        // before the request's first attempt could even give up (the idle timeout: 30 s)
        await until(`the guard to call S3 down after ${what} went unanswered`, () => !guard.up, 25);
        expect(Date.now() - since, what).toBeLessThan(DEFAULT_IDLE_TIMEOUT_MS);
        expect(await s3Up(), what).toBe(0);
        const said = lines.slice(mark).map((l) => JSON.parse(l) as { msg: string; err?: string });
        expect(said.map((l) => l.msg), what).toContainEqual(expect.stringMatching(/^S3 at http:\/\/127\.0\.0\.1:\d+ is unreachable: pausing work that needs it/));
        expect(said.find((l) => /unreachable/.test(l.msg))?.err, what).toBe('a request had no answer for 10 s');
      } finally {
        faulty.proxy.heal();
      }
      await until(`S3 to be called up again after ${what}`, () => guard.up, 15);
      expect(await s3Up(), what).toBe(1);
    }
  }, 120_000);

  it('leaves an S3 that answers slowly up: its probe answers, and a slow answer is no outage', async () => {
    faulty.proxy.inject('big.bin', { kind: 'slow', ms: 13_000 });
    faulty.proxy.inject('.transferline-probe', { kind: 'slow', ms: 0 }); // (passed on at once: counted)
    const mark = lines.length;
    try {
      const body = await store.getObject(BUCKET, 'photos/big.bin');
      expect(body.length).toBe(64 * 1024);
    } finally {
      faulty.proxy.heal();
    }
    // the request went 10 s without an answer, so S3 was asked, and answered
    expect(faulty.proxy.hits.get('.transferline-probe')).toBeGreaterThanOrEqual(1);
    expect(guard.up).toBe(true);
    expect(await s3Up()).toBe(1);
    expect(lines.slice(mark).join('')).not.toMatch(/unreachable/);
  }, 60_000);
});
