import sharp from 'sharp';
import { openCliContext } from '@transferline/producer/cli-context';
import { startTempStack } from '@transferline/producer/embedded/temp-stack';
import { ingestPrefix } from '@transferline/producer/ingest.service';
import { machine, until, withRatios, type Row, type SuiteResult } from '../report.js';

const quiet = { write: () => true } as unknown as NodeJS.WritableStream;
const log = (s: string) => process.stderr.write(`queue-memory: ${s}\n`);

/** Redis's own figures from INFO memory, in MiB. */
async function redisMemory(redis: { info: (section: string) => Promise<string> }): Promise<{ used: number; peak: number }> {
  const info = await redis.info('memory');
  const field = (name: string) => Number(new RegExp(`^${name}:(\\d+)`, 'm').exec(info)?.[1] ?? NaN) / 2 ** 20;
  return { used: field('used_memory'), peak: field('used_memory_peak') };
}

/**
 * Issue 10: Redis memory with `images` queued. Tiny distinct JPEGs are ingested while the
 * preprocess worker is stopped (every job waits in BullMQ), then preprocess runs with no embed
 * worker: the pixels waiting for embed must stop at TL_MAX_PENDING_TENSORS, so Redis's peak is
 * the jobs plus the bound, whatever the number of images.
 */
export async function queueMemoryBench(o: { images: number; bound: number }): Promise<SuiteResult> {
  const startedAt = new Date().toISOString();
  const rows: Row[] = [];
  const stack = await startTempStack({ TL_MODEL_WEIGHTS: 'random', TL_LOG_LEVEL: 'warn', TL_MAX_PENDING_TENSORS: String(o.bound) }, { preprocess: 1, embed: 0, train: 0 });
  try {
    const ctx = await openCliContext(stack.config, quiet);
    try {
      const bucket = 'bench-queue';
      await ctx.services.store.ensureBucket(bucket);
      const empty = await redisMemory(ctx.services.redis);
      log(`uploading ${o.images} images`);
      for (let i = 0; i < o.images; i += 64) {
        await Promise.all(
          Array.from({ length: Math.min(64, o.images - i) }, async (_, j) => {
            const n = i + j;
            // distinct content per image (the same bytes would share one embed job): n in the first pixels
            const pixels = Buffer.alloc(32 * 32 * 3, 128);
            for (let k = 0; k < 4; k++) pixels.fill((n >> (k * 4)) & 15 ? ((n >> (k * 4)) & 15) * 16 : 8, k * 96, (k + 1) * 96);
            const jpeg = await sharp(pixels, { raw: { width: 32, height: 32, channels: 3 } }).jpeg().toBuffer();
            await ctx.services.store.putObject(bucket, `q/${n % 2 ? 'odd' : 'even'}/${n}.jpg`, jpeg, 'image/jpeg');
          }),
        );
      }
      stack.supervisor.signal('preprocess', 1, 'SIGSTOP');
      try {
        log('ingesting');
        const counts = await ingestPrefix({ bucket, prefix: 'q/', dataset: 'queued', space: stack.space }, { services: ctx.services, queues: ctx.queues });
        const queued = await redisMemory(ctx.services.redis);
        rows.push(
          { name: 'Redis used memory, empty stack', value: empty.used, unit: 'MiB' },
          { name: `Redis used memory, ${counts.enqueued} images queued for preprocess`, value: queued.used, unit: 'MiB', note: `${(((queued.used - empty.used) * 2 ** 20) / counts.enqueued).toFixed(0)} bytes per queued image (job + dataset record)` },
        );
      } finally {
        stack.supervisor.signal('preprocess', 1, 'SIGCONT');
      }
      log('preprocessing with no embed worker');
      const embedQueue = ctx.queues.embed(stack.space.id);
      const waiting = async () => {
        const c = await embedQueue.getJobCounts('waiting', 'active', 'delayed', 'prioritized');
        return Object.values(c).reduce((a, b) => a + b, 0);
      };
      await until(`${o.bound} tensors waiting for embed`, async () => (await waiting()) >= o.bound, 900, 500);
      await new Promise((r) => setTimeout(r, 20_000)); // preprocess keeps trying; the bound must hold
      const held = await waiting();
      const mem = await redisMemory(ctx.services.redis);
      const status = await ctx.services.inspector.status('queued');
      rows.push(
        { name: `tensors waiting for embed (bound ${o.bound}), 20 s after reaching it`, value: held, unit: 'images', note: `${status.pending} images still pending in all` },
        { name: `Redis peak memory, ${o.images} images in the pipeline, no embed worker`, value: mem.peak, unit: 'MiB', note: `used ${mem.used.toFixed(0)} MiB; a 224×224×3 tensor is 147 KiB` },
      );
    } finally {
      await ctx.close();
    }
  } finally {
    await stack.destroy();
  }
  return { suite: 'queue-memory', startedAt, machine: machine(), rows: withRatios(rows) };
}
