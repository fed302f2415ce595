import { renderSample, SAMPLE_CLASSES, type SampleClass } from '@transferline/producer/demo/sample-images';
import { openCliContext } from '@transferline/producer/cli-context';
import { trainCommand } from '@transferline/producer/commands/train.command';
import { ingestPrefix } from '@transferline/producer/ingest.service';
import { startTempStack } from '@transferline/producer/embedded/temp-stack';
import { prepareImage } from '@transferline/feature-worker/image.ops';
import { createEfficientNetEmbedder } from '@transferline/feature-worker/embedder';
import { loadTfRuntime } from '@transferline/shared/tf';
import { machine, timeAtLeast, until, withRatios, type Row, type SuiteResult } from '../report.js';

const PREP = { size: 224, maxInputPixels: 100_000_000, background: { r: 255, g: 255, b: 255 } };
const quiet = { write: () => true } as unknown as NodeJS.WritableStream;

/**
 * Issue 2's first benchmark: the demo set end to end through the real stack (S3 server, Redis,
 * BullMQ, worker processes), per stage, against raw sharp and raw model.predict on the same
 * images in this process.
 */
export async function pipelineBench(o: { perClass: number }): Promise<SuiteResult> {
  const startedAt = new Date().toISOString();
  const images: { key: string; bytes: Buffer }[] = [];
  for (const kind of Object.keys(SAMPLE_CLASSES) as SampleClass[]) {
    for (let i = 0; i < o.perClass; i++) images.push({ key: `${kind}/${i}.jpg`, bytes: await renderSample(kind, i, 11) });
  }
  const n = images.length;
  process.stderr.write(`pipeline: ${n} demo images\n`);

  // Ceilings, in this process, on the same bytes.
  const pixels: Uint8Array[] = [];
  const sharpRaw = await timeAtLeast(3, async () => {
    pixels.length = 0;
    for (const im of images) pixels.push(await prepareImage(im.bytes, PREP));
    return n;
  });
  const rt = await loadTfRuntime('auto');
  const embedder = await createEfficientNetEmbedder(rt, { seed: 42 });
  embedder.embedBatch(pixels.slice(0, 8)); // warm-up: kernels compiled, memory allocated
  const predictStart = performance.now();
  for (let i = 0; i < n; i += 8) embedder.embedBatch(pixels.slice(i, i + 8));
  const predictSeconds = (performance.now() - predictStart) / 1000;
  embedder.dispose();

  // The pipeline: one process per role, as `transferline up` runs it.
  const stack = await startTempStack({ TL_EMBED_BATCH_SIZE: '8', TL_LOG_LEVEL: 'warn', TL_MODEL_WEIGHTS: 'random' });
  const rows: Row[] = [];
  try {
    const ctx = await openCliContext(stack.config, quiet);
    const bucket = 'bench-photos';
    await ctx.services.store.ensureBucket(bucket);
    for (const im of images) await ctx.services.store.putObject(bucket, `train/${im.key}`, im.bytes, 'image/jpeg');
    // the embed worker loads its model at start; wait until it is connected before timing
    await until('an embed worker', async () => (await ctx.services.spaces.liveWorkers()).length > 0, 120, 100);
    const { space } = await ctx.services.spaces.resolve();

    const t0 = performance.now();
    let preprocessDone = 0;
    await ingestPrefix({ bucket, prefix: 'train/', dataset: 'bench', space }, { services: ctx.services, queues: ctx.queues });
    await until('every image embedded or failed', async () => {
      if (!preprocessDone) {
        const c = await ctx.queues.preprocess.getJobCounts('waiting', 'active', 'delayed', 'prioritized');
        if (Object.values(c).every((v) => v === 0)) preprocessDone = performance.now();
      }
      return (await ctx.services.inspector.status('bench')).pending === 0;
    }, 1800, 50);
    const endToEnd = (performance.now() - t0) / 1000;
    const metrics = await (await fetch(`http://127.0.0.1:${stack.ports.embed}/metrics`)).text();
    const forwardSum = Number(/^tl_embed_forward_seconds_sum\{[^}]*\} ([\d.e+-]+)$/m.exec(metrics)?.[1] ?? NaN);

    const epochs = 40;
    const t1 = performance.now();
    const run = await trainCommand(ctx, { dataset: 'bench', epochs, wait: true });
    const trainSeconds = (performance.now() - t1) / 1000;
    await ctx.close();

    rows.push(
      { name: 'raw sharp decode+resize (1 process)', value: sharpRaw.items / sharpRaw.seconds, unit: 'images/s' },
      { name: `raw model.predict, batch 8 (${rt.backend})`, value: n / predictSeconds, unit: 'images/s' },
      { name: 'pipeline end to end (ingest → embedded)', value: n / endToEnd, unit: 'images/s', vs: `raw model.predict, batch 8 (${rt.backend})` },
      { name: 'preprocess stage (S3 GET + hash + sharp + Redis)', value: n / ((preprocessDone - t0) / 1000), unit: 'images/s', vs: 'raw sharp decode+resize (1 process)', note: 'overlaps with embed on the same 2 cores' },
      { name: 'embed stage, forward passes only', value: n / forwardSum, unit: 'images/s', vs: `raw model.predict, batch 8 (${rt.backend})` },
      { name: `train head (${epochs} epochs, ${run.result?.examples} examples, incl. load + save)`, value: trainSeconds, unit: 's' },
    );
  } finally {
    await stack.destroy();
  }
  return { suite: 'pipeline', startedAt, machine: machine(), rows: withRatios(rows), details: { images: n, backend: rt.backend, weights: 'random (seeded)' } };
}
