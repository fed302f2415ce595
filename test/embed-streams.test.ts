import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openCliContext, type CliContext } from '../apps/producer/src/cli-context.js';
import { startEmbedRole } from '../apps/feature-worker/src/embed.worker.js';
import { enqueue, jobIds, type Config, type EmbedJob } from '../packages/shared/src/index.js';
import { createLogger } from '../packages/shared/src/service-runtime.js';
import { guardLeaks } from './support/leak-guard.js';
import { freeRun, repoRoot, runCli, startTestStack, until, type TestStack } from './support/stack.js';

/**
 * An embed process runs several forward passes at once (TL_EMBED_STREAMS), each on its own
 * ONNX Runtime session and thread: a real worker in this process, real Redis and S3, the
 * EfficientNet-B0 graph at 224×224 (random weights: the speed and the sameness of the numbers
 * do not depend on them).
 */

guardLeaks();

const SIZE = 224 * 224 * 3;
const IMAGES = 160;
let stack: TestStack;
let ctx: CliContext;
const sink = { write: () => true } as unknown as NodeJS.WritableStream;
const log = createLogger('embed', 'silent');

beforeAll(async () => {
  stack = await startTestStack({ TL_MODEL_WEIGHTS: 'random', TL_EMBED_BATCH_SIZE: '8', TL_BACKEND: 'onnx' }, { preprocess: 0, embed: 0, train: 0 });
  ctx = await openCliContext(stack.config, sink);
}, 120_000);
afterAll(async () => {
  await ctx?.close();
  await stack?.destroy();
});

const withEmbed = (embed: Partial<Config['embed']>): Config => ({ ...stack.config, embed: { ...stack.config.embed, ...embed } });

/**
 * Embeds `pixels` (stored and queued as preprocess does, under new hashes) with an embed worker
 * of `streams` streams on 2 threads. Returns the wall time from the enqueue to the last one
 * cached, the forward passes' own time summed over all of them, and the hashes.
 */
async function embedWith(streams: number, pixels: Uint8Array[]): Promise<{ wall: number; forward: number; hashes: string[]; scraped: string }> {
  const space = stack.space.id;
  const role = await startEmbedRole(withEmbed({ threads: 2, streams }), log);
  try {
    const jobs = pixels.map(() => {
      const payload: EmbedJob = { sha256: randomBytes(32).toString('hex'), embedderId: space };
      return { id: jobIds.embed(payload), payload };
    });
    for (const [i, job] of jobs.entries()) await ctx.services.tensors.put(space, job.payload.sha256, pixels[i]!);
    const base = await ctx.services.cache.size(space);
    const start = performance.now();
    await enqueue(ctx.queues.embed(space), 'embed', jobs);
    const deadline = Date.now() + 120_000;
    while ((await ctx.services.cache.size(space)) - base < jobs.length) {
      if (Date.now() > deadline) throw new Error(`${jobs.length} images not embedded within 120 s`);
      await new Promise((r) => setTimeout(r, 20));
    }
    const wall = (performance.now() - start) / 1000;
    const values = (await role.metrics.forwardSeconds.get()).values;
    const forward = values.find((v) => v.metricName === 'tl_embed_forward_seconds_sum')!.value;
    return { wall, forward, hashes: jobs.map((j) => j.payload.sha256), scraped: await role.metrics.registry.metrics() };
  } finally {
    await role.stop();
  }
}

describe('an embed worker with two streams on two threads', () => {
  it('computes two batches at once, where one stream computes them in turn, and both give the same embeddings', async () => {
    const pixels = Array.from({ length: IMAGES }, () => new Uint8Array(randomBytes(SIZE)));
    const one = await embedWith(1, pixels);
    const two = await embedWith(2, pixels);
    // passes at once add up to more than the run's wall time (passes in turn never can)
    expect(two.forward).toBeGreaterThan(two.wall);
    // and /metrics says how many run at once, on how many threads
    expect(one.scraped).toMatch(/^tl_embed_streams\{threads="2",role="embed"\} 1$/m);
    expect(two.scraped).toMatch(/^tl_embed_streams\{threads="2",role="embed"\} 2$/m);

    // the same pixels, the same embedding space: the streams' numbers agree with one stream's
    const a = await ctx.services.cache.load(stack.space.id, one.hashes);
    const b = await ctx.services.cache.load(stack.space.id, two.hashes);
    expect(b.rows).toBe(IMAGES);
    let worst = 0;
    for (let i = 0; i < a.data.length; i++) worst = Math.max(worst, Math.abs(a.data[i]! - b.data[i]!) / (Math.abs(a.data[i]!) + 1e-3));
    expect(worst).toBeLessThan(1e-4);
  }, 300_000);

  it('refuses more streams than threads, before it opens anything, saying which settings', async () => {
    await expect(startEmbedRole(withEmbed({ threads: 2, streams: 3 }), log)).rejects.toThrow(
      /^TL_EMBED_STREAMS=3 is more than the 2 threads this embed process has \(TL_EMBED_THREADS\): each stream needs a thread of its own; set TL_EMBED_STREAMS=2 or fewer, or leave it unset$/,
    );
  });

  it('warns when TL_EMBED_THREADS is more than the cores, and runs', async () => {
    const warned: string[] = [];
    const capture = pino({ level: 'warn' }, { write: (line: string) => void warned.push((JSON.parse(line) as { msg: string }).msg) });
    const cores = os.availableParallelism();
    const role = await startEmbedRole(withEmbed({ threads: cores + 1, streams: 1 }), capture);
    await role.stop();
    expect(warned).toContain(`TL_EMBED_THREADS=${cores + 1} is more than the ${cores} core${cores > 1 ? 's' : ''} of this machine: the threads take turns on them, and each forward pass runs slower than on ${cores}; set TL_EMBED_THREADS=${cores} or fewer, or leave it unset`);
  }, 120_000);

  it('started by hand beside another on this machine, with TL_EMBED_THREADS unset, takes its share of the cores, not every one (a trial: 4 threads on 2 cores), and status says each one\'s threads', async () => {
    const said: string[] = [];
    const capture = pino({ level: 'info' }, { write: (line: string) => void said.push((JSON.parse(line) as { msg: string }).msg) });
    const cores = os.availableParallelism();
    const share = Math.max(1, Math.floor(cores / 2));
    // a worker of this machine killed a moment ago (its beat not lapsed yet): no longer one that shares the cores (a review)
    const { redis, keys } = ctx.services;
    let ghostPid = 4_000_000;
    while ((() => { try { process.kill(ghostPid, 0); return true; } catch { return false; } })()) ghostPid++;
    const [secs] = await redis.time();
    const ghost = { workerId: 'ghost-of-a-killed-worker', space: stack.space.id, backend: 'onnx', host: os.hostname(), pid: ghostPid, startedAt: new Date().toISOString(), threads: cores };
    await redis.multi().hset(keys.embedWorkerInfo(), ghost.workerId, JSON.stringify(ghost)).zadd(keys.embedWorkers(), Number(secs) * 1000, ghost.workerId).exec();
    expect((await ctx.services.spaces.workersOn(os.hostname())).map((w) => w.workerId)).toContain(ghost.workerId);
    const first = await startEmbedRole(withEmbed({ threads: undefined, streams: undefined }), capture);
    const env: NodeJS.ProcessEnv = { ...stack.env, TL_METRICS_HOST: '127.0.0.1', TL_METRICS_PORT: '0', TL_SUPERVISOR_HANG_MS: '0' };
    delete env.TL_EMBED_THREADS;
    const second = spawn(process.execPath, ['apps/feature-worker/dist/main.js', 'embed'], { cwd: repoRoot, env, stdio: ['ignore', 'ignore', 'pipe'] });
    let log = '';
    second.stderr.on('data', (d: Buffer) => (log += d.toString()));
    const exited = new Promise((resolve) => second.once('exit', resolve));
    try {
      expect(await first.metrics.registry.metrics()).toMatch(new RegExp(`^tl_embed_streams\\{threads="${cores}",role="embed"\\} ${Math.min(cores, 4)}$`, 'm'));
      expect(said.filter((m) => /other embed worker/.test(m))).toEqual([]);
      await until('the second embed worker to be live', async () => log.includes('"msg":"embedding on onnx'), 90);
      expect(log).toContain(`"msg":"1 other embed worker beats from this machine (${os.hostname()}): this one takes ${share} of its ${cores} cores (TL_EMBED_THREADS sets it; those started before keep theirs)"`);
      expect(log).toContain(`at once on ${share} thread${share > 1 ? 's' : ''}"`);
      // status names each worker's backend with its threads
      const on = (n: number) => `onnx on ${n} thread${n > 1 ? 's' : ''}`;
      let line: string | undefined;
      await until('status to list both workers', async () => {
        line = (await runCli(['status'], stack.env)).stdout.split('\n').find((l) => l.startsWith(`  ${stack.space.id}: 2 embed workers (`));
        return line !== undefined;
      }, 30);
      expect(line?.match(/\((.*)\)/)?.[1]?.split(', ').sort()).toEqual([...new Set([on(cores), on(share)])].sort());
    } finally {
      second.kill('SIGTERM');
      await exited;
      await first.stop();
      await redis.multi().hdel(keys.embedWorkerInfo(), 'ghost-of-a-killed-worker').zrem(keys.embedWorkers(), 'ghost-of-a-killed-worker').exec();
    }
  }, 180_000);

  it('up refuses more streams than the threads it gives each embed process, before it starts anything', async () => {
    const dataDir = await mkdtemp(path.join(os.tmpdir(), 'tl-streams-up-'));
    try {
      // as many embed processes as cores: one thread each
      const cores = os.availableParallelism();
      const r = await runCli(['up', '--embed-workers', String(cores), '--metrics-port', String(await freeRun(4 + 10 * (cores - 1)))], { TL_DATA_DIR: dataDir, TL_MODEL_WEIGHTS: 'random', TL_EMBED_STREAMS: '2' }, 60_000);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(
        cores > 1
          ? `TL_EMBED_STREAMS=2 is more than the 1 thread each embed process has (the ${cores} cores shared among ${cores} embed processes): each stream needs a thread of its own; set TL_EMBED_STREAMS=1, or leave it unset, or start fewer --embed-workers`
          : 'TL_EMBED_STREAMS=2 is more than the 1 thread each embed process has (the 1 core): each stream needs a thread of its own; set TL_EMBED_STREAMS=1, or leave it unset',
      );
      // no Redis, no S3 server, no worker was started: nothing was written
      expect(await readdir(dataDir)).toEqual([]);
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  }, 90_000);
});
