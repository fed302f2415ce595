import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { openCliContext, type CliContext } from '@transferline/producer/cli-context';
import { ingestPrefix } from '@transferline/producer/ingest.service';
import { renderSample, SAMPLE_CLASSES, type SampleClass } from '@transferline/producer/demo/sample-images';
import { startTempStack } from '@transferline/producer/embedded/temp-stack';
import { createEfficientNetEmbedder } from '@transferline/feature-worker/embedder';
import { enqueue, jobIds, type EmbedJob } from '@transferline/shared';
import { loadTfRuntime } from '@transferline/shared/tf';
import { machine, timeAtLeast, withRatios, type Row, type SuiteResult } from '../report.js';

const SIZE = 224 * 224 * 3;
const quiet = { write: () => true } as unknown as NodeJS.WritableStream;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const baseEnv = { TL_MODEL_WEIGHTS: 'random', TL_LOG_LEVEL: 'warn' };

function randomImages(n: number): Uint8Array[] {
  return Array.from({ length: n }, () => new Uint8Array(randomBytes(SIZE)));
}

/** Puts pixels in Redis as preprocess would, enqueues their embed jobs, waits until all are cached. */
async function embedThroughQueue(ctx: CliContext, images: Uint8Array[]): Promise<number> {
  const { space } = await ctx.services.spaces.resolve();
  const jobs: { id: string; payload: EmbedJob }[] = [];
  for (const img of images) {
    const sha256 = randomBytes(32).toString('hex');
    await ctx.services.tensors.put(sha256, img);
    const payload = { sha256, embedderId: space.id };
    jobs.push({ id: jobIds.embed(payload), payload });
  }
  const target = (await ctx.services.cache.size(space.id)) + images.length;
  const start = performance.now();
  await enqueue(ctx.queues.embed(space.id), 'embed', jobs);
  while ((await ctx.services.cache.size(space.id)) < target) await sleep(20);
  return (performance.now() - start) / 1000;
}

async function stageRate(batch: number, processes: number, n: number): Promise<number> {
  const stack = await startTempStack({ ...baseEnv, TL_EMBED_BATCH_SIZE: String(batch), TL_EMBED_BATCH_WAIT_MS: '200' }, { preprocess: 0, embed: processes, train: 0 });
  try {
    const ctx = await openCliContext(stack.config, quiet);
    try {
      while ((await ctx.services.spaces.liveWorkers()).length < processes) await sleep(100);
      await embedThroughQueue(ctx, randomImages(batch * processes)); // warm-up: first passes compile kernels
      const seconds = await embedThroughQueue(ctx, randomImages(n));
      return n / seconds;
    } finally {
      await ctx.close();
    }
  } finally {
    await stack.destroy();
  }
}

async function torchRates(): Promise<Record<string, number> | undefined> {
  const script = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'python', 'torch_efficientnet.py');
  try {
    const { stdout } = await promisify(execFile)('/usr/bin/python3', [script, '2', '8'], { timeout: 300_000 });
    return (JSON.parse(stdout) as { rates: Record<string, number> }).rates;
  } catch (err) {
    process.stderr.write(`embed: PyTorch comparison skipped (${(err as Error).message.split('\n')[0]}; apt-get install python3-torch python3-torchvision)\n`);
    return undefined;
  }
}

/**
 * Issue 4: raw model.predict at batch 1/8/32 vs the embed stage through Redis and BullMQ at the
 * same batch sizes; 1 vs 2 embed processes; first ingest vs re-ingest of the same bucket;
 * PyTorch on this CPU as a Python user's reference.
 */
export async function embedBench(o: { images: number }): Promise<SuiteResult> {
  const startedAt = new Date().toISOString();
  const rows: Row[] = [];
  const rt = await loadTfRuntime('auto');
  const embedder = await createEfficientNetEmbedder(rt, { seed: 42 });
  const pool = randomImages(32);
  const raw: Record<number, number> = {};
  for (const batch of [1, 8, 32]) {
    embedder.embedBatch(pool.slice(0, batch));
    const t = await timeAtLeast(8, async () => (embedder.embedBatch(pool.slice(0, batch)), batch));
    raw[batch] = t.items / t.seconds;
    rows.push({ name: `raw model.predict, batch ${batch} (${rt.backend})`, value: raw[batch]!, unit: 'images/s' });
    process.stderr.write(`embed: raw batch ${batch}: ${raw[batch]!.toFixed(2)} images/s\n`);
  }
  embedder.dispose();

  for (const batch of [1, 8, 32]) {
    const rate = await stageRate(batch, 1, Math.max(o.images, batch * 2));
    rows.push({ name: `embed stage via Redis+BullMQ, batch ${batch}, 1 process`, value: rate, unit: 'images/s', vs: `raw model.predict, batch ${batch} (${rt.backend})`, target: '≥ 0.9×' });
    process.stderr.write(`embed: stage batch ${batch}: ${rate.toFixed(2)} images/s\n`);
  }
  const two = await stageRate(8, 2, o.images);
  rows.push({ name: 'embed stage, batch 8, 2 processes', value: two, unit: 'images/s', vs: 'embed stage via Redis+BullMQ, batch 8, 1 process', note: 'wasm is single-threaded under Node: scale with processes' });

  // First ingest vs re-ingest of the same bucket, the whole pipeline.
  const stack = await startTempStack({ ...baseEnv, TL_EMBED_BATCH_SIZE: '8' }, { preprocess: 1, embed: 1, train: 0 });
  try {
    const ctx = await openCliContext(stack.config, quiet);
    try {
      await ctx.services.store.ensureBucket('bench');
      let n = 0;
      for (const kind of Object.keys(SAMPLE_CLASSES) as SampleClass[]) {
        for (let i = 0; i < Math.ceil(o.images / 3); i++, n++) await ctx.services.store.putObject('bench', `train/${kind}/${i}.jpg`, await renderSample(kind, i, 3));
      }
      while ((await ctx.services.spaces.liveWorkers()).length === 0) await sleep(100);
      const { space } = await ctx.services.spaces.resolve();
      const forwardPasses = async () => Number(/^tl_embed_batch_size_count\{[^}]*\} (\d+)/m.exec(await (await fetch(`http://127.0.0.1:${stack.ports.embed}/metrics`)).text())?.[1]);
      const ingest = async () => {
        const t = performance.now();
        await ingestPrefix({ bucket: 'bench', prefix: 'train/', dataset: 'bench', space }, { services: ctx.services, queues: ctx.queues });
        while ((await ctx.services.inspector.status('bench')).pending > 0) await sleep(20);
        return (performance.now() - t) / 1000;
      };
      const first = await ingest();
      const passes = await forwardPasses();
      const again = await ingest();
      const passesAgain = (await forwardPasses()) - passes;
      rows.push(
        { name: `first ingest of ${n} images (list → embedded)`, value: first, unit: 's' },
        { name: 're-ingest of the same bucket', value: again, unit: 's', note: `${passesAgain} forward passes` },
        { name: 're-ingest speed-up', value: first / again, unit: '×', target: '≥ 20×, 0 forward passes' },
      );
    } finally {
      await ctx.close();
    }
  } finally {
    await stack.destroy();
  }

  const torch = await torchRates();
  if (torch) for (const [b, r] of Object.entries(torch)) rows.push({ name: `PyTorch eager efficientnet_b0 features, batch ${b}, 2 threads`, value: r, unit: 'images/s', vs: `raw model.predict, batch ${b} (${rt.backend})` });
  return { suite: 'embed', startedAt, machine: machine(), rows: withRatios(rows), details: { backend: rt.backend, images: o.images } };
}
