import { spawn } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import autocannon from 'autocannon';
import * as ort from 'onnxruntime-node';
import sharp from 'sharp';
import { openCliContext } from '@transferline/producer/cli-context';
import { loadClassifierModel } from '@transferline/producer/classifier-model';
import { trainCommand } from '@transferline/producer/commands/train.command';
import { renderSample } from '@transferline/producer/demo/sample-images';
import { freePort } from '@transferline/producer/embedded/redis.server';
import { startTempStack } from '@transferline/producer/embedded/temp-stack';
import { ingestPrefix } from '@transferline/producer/ingest.service';
import { ONNX_PROBABILITIES_NAME } from '@transferline/feature-worker/classifier.export';
import { RawStreams } from '../ort-streams.js';
import { machine, timeAtLeast, until, withRatios, type Row, type SuiteResult } from '../report.js';

const quiet = { write: () => true } as unknown as NodeJS.WritableStream;
const PHOTOS = '/usr/share/backgrounds/mate/nature';
const cliPath = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..', '..', '..', 'apps', 'producer', 'bin', 'transferline.js');

function rssMb(pid: number, field: 'VmRSS' | 'VmHWM'): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

/**
 * Issue 12: `transferline serve` under load from autocannon on loopback, 1, 8 and 64 concurrent
 * clients posting a 640×480 JPEG, next to the raw forward rate of the same exported model at the
 * same threads; then 10,000 requests, with the server's RSS before and after (no leak: it must
 * stay flat). The server is the CLI in its own process, as users run it.
 */
const rawStreamsName = (b: number) => `raw forward of the exported classifier, batch ${b}, 2 streams × 1 thread (2 sessions at once, as serve runs them by default)`;

export async function serveBench(o: { seconds?: number; soakRequests?: number } = {}): Promise<SuiteResult> {
  const startedAt = new Date().toISOString();
  const seconds = o.seconds ?? 10;
  const rows: Row[] = [];
  const threads = 2;
  const stack = await startTempStack({ TL_MODEL_WEIGHTS: 'random', TL_LOG_LEVEL: 'warn', TL_EMBED_BATCH_SIZE: '8' }, { preprocess: 1, embed: 1, train: 1 });
  try {
    const ctx = await openCliContext(stack.config, quiet);
    let bytes: Uint8Array;
    let labels: number;
    try {
      await ctx.services.store.ensureBucket('bench-serve');
      for (const kind of ['circle', 'square'] as const) for (let i = 0; i < 12; i++) await ctx.services.store.putObject('bench-serve', `train/${kind}/${i}.jpg`, await renderSample(kind, i, 5));
      await until('an embed worker', async () => (await ctx.services.spaces.liveWorkers()).length > 0, 120, 100);
      await ingestPrefix({ bucket: 'bench-serve', prefix: 'train/', dataset: 'serve', space: stack.space }, { services: ctx.services, queues: ctx.queues });
      await until('the set embedded', async () => (await ctx.services.inspector.status('serve')).pending === 0, 300, 100);
      await trainCommand(ctx, { dataset: 'serve', epochs: 20, wait: true });
      const model = await loadClassifierModel(ctx, 'serve');
      bytes = model.bytes;
      labels = model.meta.labels.length;
    } finally {
      await ctx.close();
    }

    // the ceiling: the same model, same threads, batch 1/8/32, no HTTP, no decoding
    const session = await ort.InferenceSession.create(bytes, { executionProviders: ['cpu'], graphOptimizationLevel: 'all', intraOpNumThreads: threads, interOpNumThreads: 1, executionMode: 'sequential' });
    const raw: Record<number, number> = {};
    for (const b of [1, 8, 32]) {
      const input = new ort.Tensor('uint8', new Uint8Array(b * 224 * 224 * 3).map((_, i) => i % 251), [b, 224, 224, 3]);
      await session.run({ pixels: input });
      const t = await timeAtLeast(seconds / 2, async () => (await session.run({ pixels: input }), b));
      raw[b] = t.items / t.seconds;
      rows.push({ name: `raw forward of the exported classifier, batch ${b}, ${threads} threads`, value: raw[b]!, unit: 'images/s' });
    }
    await session.release();
    // as serve runs it by default: 2 streams of 1 thread, passes at once
    const streams = await RawStreams.start(bytes, [1, 1], { name: ONNX_PROBABILITIES_NAME, dim: labels });
    const rawStreams: Record<number, number> = {};
    try {
      for (const b of [1, 8, 32]) {
        await streams.warm(b);
        rawStreams[b] = (await streams.run(b, seconds / 2)).rate;
        rows.push({ name: rawStreamsName(b), value: rawStreams[b]!, unit: 'images/s', vs: `raw forward of the exported classifier, batch ${b}, ${threads} threads` });
      }
    } finally {
      await streams.dispose();
    }

    const photo = readdirSync(PHOTOS).filter((f) => f.endsWith('.jpg')).sort()[0]!;
    const body = await sharp(path.join(PHOTOS, photo)).resize(640, 480, { fit: 'fill' }).jpeg({ quality: 90 }).toBuffer();
    const port = await freePort();
    const server = spawn(process.execPath, [cliPath, 'serve', '-m', 'serve', '--port', String(port), '--threads', String(threads)], { env: { ...stack.env, TL_LOG_LEVEL: 'warn' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    server.stdout.on('data', (d: Buffer) => (out += d.toString()));
    server.stderr.on('data', (d: Buffer) => (out += d.toString()));
    try {
      await until('serve to listen', async () => out.includes('Ctrl-C stops it') || server.exitCode !== null, 180, 100);
      if (server.exitCode !== null) throw new Error(`serve exited: ${out}`);
      const url = `http://127.0.0.1:${port}/v1/classify`;
      const load = (connections: number, extra: Partial<autocannon.Options>) =>
        autocannon({ url, method: 'POST', headers: { 'content-type': 'image/jpeg' }, body, connections, ...extra });
      await load(8, { amount: 200 }); // warm-up
      for (const c of [1, 8, 64]) {
        const r = await load(c, { duration: seconds });
        const ok = r.requests.total - r.non2xx - r.errors;
        rows.push({
          name: `serve, ${c} concurrent client${c === 1 ? '' : 's'} (640×480 JPEG)`,
          value: ok / seconds,
          unit: 'images/s',
          vs: rawStreamsName(c === 1 ? 1 : c === 8 ? 8 : 32),
          ...(c === 64 && { target: '≥ 0.8×' }),
          note: `p50 ${r.latency.p50} ms, p99 ${r.latency.p99} ms, ${r.non2xx} non-2xx, ${r.errors} errors`,
        });
      }
      const before = rssMb(server.pid!, 'VmRSS');
      const n = o.soakRequests ?? 10_000;
      const soak = await load(64, { amount: n });
      const after = rssMb(server.pid!, 'VmRSS');
      rows.push(
        { name: `server RSS before ${n} requests`, value: before, unit: 'MiB' },
        { name: `server RSS after ${n} requests`, value: after, unit: 'MiB', vs: `server RSS before ${n} requests`, note: `peak ${rssMb(server.pid!, 'VmHWM').toFixed(0)} MiB (VmHWM); ${soak.non2xx} non-2xx, ${soak.errors} errors` },
      );
    } finally {
      server.kill('SIGTERM');
      await new Promise((r) => server.once('exit', r));
    }
  } finally {
    await stack.destroy();
  }
  return { suite: 'serve', startedAt, machine: machine(), rows: withRatios(rows), details: { threads, note: 'the serve rows include sharp decoding and resizing of each JPEG and HTTP on the same 2 cores; the raw rows are the forward pass alone' } };
}
