import { renderSample, SAMPLE_CLASSES, type SampleClass } from '@transferline/producer/demo/sample-images';
import { openCliContext } from '@transferline/producer/cli-context';
import { trainCommand } from '@transferline/producer/commands/train.command';
import { ingestPrefix } from '@transferline/producer/ingest.service';
import { startTempStack } from '@transferline/producer/embedded/temp-stack';
import { prepareImage } from '@transferline/feature-worker/image.ops';
import { buildEfficientNetB0 } from '@transferline/feature-worker/model/efficientnet-b0.model';
import { exportEfficientNetB0ToOnnx } from '@transferline/feature-worker/model/onnx-export';
import { loadTfRuntime } from '@transferline/shared/tf';
import { RawStreams } from '../ort-streams.js';
import { machine, timeAtLeast, until, withRatios, type Row, type SuiteResult } from '../report.js';
import { largePhotos } from './preprocess.bench.js';

const PREP = { size: 224, maxInputPixels: 100_000_000, background: '#ffffff' };
const quiet = { write: () => true } as unknown as NodeJS.WritableStream;
const THREADS = 2;
/** the embed worker's streams on THREADS threads by default (TL_EMBED_STREAMS): one per thread */
const STREAMS = THREADS;

/**
 * Issue 9's end-to-end figure: a set of images through the real stack (S3 server, Redis, BullMQ,
 * one process per role, ONNX Runtime in the embed worker), per stage, against raw sharp and the
 * raw ONNX Runtime forward pass on the same images in this process. Two sets: the demo shapes and
 * Debian's large wallpaper photos. The bottleneck is the stage with the lower rate.
 */
export async function pipelineBench(o: { perClass: number }): Promise<SuiteResult> {
  const startedAt = new Date().toISOString();
  const demo: { key: string; bytes: Buffer }[] = [];
  for (const kind of Object.keys(SAMPLE_CLASSES) as SampleClass[]) {
    for (let i = 0; i < o.perClass; i++) demo.push({ key: `${kind}/${i}.jpg`, bytes: await renderSample(kind, i, 11) });
  }
  const notes: string[] = [];
  const photos = (await largePhotos(notes)).images.map((im, i) => ({ key: `${i % 2 ? 'even' : 'odd'}/${im.name}`, bytes: im.bytes }));

  // the ceiling's graph: what the embed worker builds from the same (seeded random) weights
  await loadTfRuntime('cpu');
  const net = buildEfficientNetB0({ seed: 42 });
  const onnx = exportEfficientNetB0ToOnnx(net);
  net.dispose();

  const rows: Row[] = [];
  const details: Record<string, unknown> = { weights: 'random (seeded)', threads: THREADS, streams: STREAMS, notes };
  for (const [label, images] of [['demo set', demo], [`large photos (${photos.length})`, photos]] as const) {
    const n = images.length;
    process.stderr.write(`pipeline: ${label}: ${n} images\n`);
    // ceilings, in this process, on the same bytes
    const pixels: Uint8Array[] = [];
    const sharpRaw = await timeAtLeast(3, async () => {
      pixels.length = 0;
      for (const im of images) pixels.push(await prepareImage(im.bytes, PREP));
      return n;
    });
    // the forward pass as the embed worker runs it: STREAMS sessions of 1 thread at once (its
    // cost does not depend on the pixels: each stream runs its own)
    const streams = await RawStreams.start(onnx, Array.from({ length: STREAMS }, () => THREADS / STREAMS));
    let raw: { rate: number };
    try {
      await streams.warm(8);
      raw = await streams.run(8, 3);
    } finally {
      await streams.dispose();
    }

    const stack = await startTempStack({ TL_EMBED_BATCH_SIZE: '8', TL_LOG_LEVEL: 'warn', TL_MODEL_WEIGHTS: 'random', TL_EMBED_THREADS: String(THREADS) });
    try {
      const ctx = await openCliContext(stack.config, quiet);
      const bucket = 'bench-photos';
      await ctx.services.store.ensureBucket(bucket);
      for (const im of images) await ctx.services.store.putObject(bucket, `train/${im.key}`, im.bytes, 'image/jpeg');
      await until('an embed worker', async () => (await ctx.services.spaces.liveWorkers()).length > 0, 120, 100);
      const t0 = performance.now();
      let preprocessDone = 0;
      await ingestPrefix({ bucket, prefix: 'train/', dataset: 'bench', space: stack.space }, { services: ctx.services, queues: ctx.queues });
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
      const preprocessRate = n / ((preprocessDone - t0) / 1000);
      // the streams' passes overlap: their summed time is STREAMS × the time the stage spent in them
      const embedRate = (n * STREAMS) / forwardSum;
      const ceiling = `${label}: raw ONNX Runtime forward, batch 8, ${STREAMS} streams × ${THREADS / STREAMS} thread`;
      rows.push(
        { name: `${label}: raw sharp decode+resize (1 process)`, value: sharpRaw.items / sharpRaw.seconds, unit: 'images/s' },
        { name: ceiling, value: raw.rate, unit: 'images/s' },
        { name: `${label}: pipeline end to end (ingest → embedded)`, value: n / endToEnd, unit: 'images/s', vs: ceiling, note: `bottleneck: ${preprocessRate < embedRate ? 'preprocess' : 'embed'}` },
        { name: `${label}: preprocess stage (S3 GET + hash + sharp + Redis)`, value: preprocessRate, unit: 'images/s', vs: `${label}: raw sharp decode+resize (1 process)`, note: 'shares the 2 cores with embed, Redis and the S3 server' },
        { name: `${label}: embed stage, forward passes only`, value: embedRate, unit: 'images/s', vs: ceiling, note: `images × ${STREAMS} streams ÷ the passes' summed time` },
      );
      if (label === 'demo set') {
        const t1 = performance.now();
        const run = await trainCommand(ctx, { dataset: 'bench', epochs: 40, wait: true });
        rows.push({ name: `train head (40 epochs, ${run.result?.examples} examples, incl. load + save)`, value: (performance.now() - t1) / 1000, unit: 's' });
      }
      await ctx.close();
    } finally {
      await stack.destroy();
    }
  }
  return { suite: 'pipeline', startedAt, machine: machine(), rows: withRatios(rows), details };
}
