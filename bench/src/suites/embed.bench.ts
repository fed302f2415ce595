import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import * as ort from 'onnxruntime-node';
import { openCliContext, type CliContext } from '@transferline/producer/cli-context';
import { ingestPrefix } from '@transferline/producer/ingest.service';
import { renderSample, SAMPLE_CLASSES, type SampleClass } from '@transferline/producer/demo/sample-images';
import { startTempStack } from '@transferline/producer/embedded/temp-stack';
import { createEfficientNetEmbedder } from '@transferline/feature-worker/embedder';
import { buildEfficientNetB0 } from '@transferline/feature-worker/model/efficientnet-b0.model';
import { exportEfficientNetB0ToOnnx } from '@transferline/feature-worker/model/onnx-export';
import { createOnnxEmbedder } from '@transferline/feature-worker/model/onnx.embedder';
import { enqueue, jobIds, type EmbedJob } from '@transferline/shared';
import { loadTfRuntime } from '@transferline/shared/tf';
import { RawStreams } from '../ort-streams.js';
import { ensurePythonPeers, PYTHON } from '../python-peers.js';
import { canPin, cpuSeconds, OWN_CPUS, machine, peakRssMb, pinProcess, timeAtLeast, until, withRatios, type Row, type SuiteResult } from '../report.js';

const SIZE = 224 * 224 * 3;
const BATCHES = [1, 8, 32] as const;
const quiet = { write: () => true } as unknown as NodeJS.WritableStream;
const baseEnv = { TL_MODEL_WEIGHTS: 'random', TL_LOG_LEVEL: 'warn' };
const pythonDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'python');
const log = (s: string) => process.stderr.write(`embed: ${s}\n`);

function randomImages(n: number): Uint8Array[] {
  return Array.from({ length: n }, () => new Uint8Array(randomBytes(SIZE)));
}

type Forward = (images: Uint8Array[]) => Promise<unknown>;

function median(xs: number[]): number {
  const sorted = [...xs].sort((x, y) => x - y);
  const m = sorted.length >> 1;
  return sorted.length % 2 ? sorted[m]! : (sorted[m - 1]! + sorted[m]!) / 2;
}

/** A few calls at this batch size, untimed: the first runs at a new size are slow. */
async function warmUp(embed: Forward, pool: Uint8Array[], batch: number): Promise<void> {
  for (let i = 0; i < 3; i++) await embed(pool.slice(0, batch));
}

/** images/s of `embed` on batches of `batch` for at least `seconds`, and how many it embedded. */
async function rateOf(embed: Forward, pool: Uint8Array[], batch: number, seconds: number): Promise<{ rate: number; images: number }> {
  const t = await timeAtLeast(seconds, async () => (await embed(pool.slice(0, batch)), batch));
  return { rate: t.items / t.seconds, images: t.items };
}

/** images/s of `embed` at each batch size, each timed for ≥ `seconds` after a warm-up, and the CPU ms it took per image (all threads). */
async function rawRates(embed: Forward, seconds: number): Promise<Record<number, number> & { cpuMs: Record<number, number> }> {
  const pool = randomImages(32);
  const out: Record<number, number> & { cpuMs: Record<number, number> } = { cpuMs: {} };
  for (const batch of BATCHES) {
    await warmUp(embed, pool, batch);
    const cpu = process.cpuUsage();
    const { rate, images } = await rateOf(embed, pool, batch, seconds);
    const used = process.cpuUsage(cpu);
    out[batch] = rate;
    out.cpuMs[batch] = (used.user + used.system) / 1000 / images;
  }
  return out;
}

/**
 * images/s of `a` and of `b` at each batch size, in alternating rounds (the median of each):
 * two graphs compared minutes apart on a noisy machine differed by ±15% from run to run; taken
 * turn by turn, drift hits both alike.
 */
async function pairedRates(a: Forward, b: Forward, seconds: number, rounds = 4): Promise<{ a: Record<number, number>; b: Record<number, number> }> {
  const pool = randomImages(32);
  const out = { a: {} as Record<number, number>, b: {} as Record<number, number> };
  for (const batch of BATCHES) {
    await warmUp(a, pool, batch);
    await warmUp(b, pool, batch);
    const ra: number[] = [];
    const rb: number[] = [];
    for (let r = 0; r < rounds; r++) {
      ra.push((await rateOf(a, pool, batch, seconds / rounds)).rate);
      rb.push((await rateOf(b, pool, batch, seconds / rounds)).rate);
    }
    out.a[batch] = median(ra);
    out.b[batch] = median(rb);
  }
  return out;
}

/**
 * Puts pixels in Redis as preprocess would, enqueues their embed jobs, waits until all are
 * cached. Returns the whole run's seconds, and the steady rate: images/s between 10% and 90% of
 * them cached, without the ramp (the first batch collected, the last one written), as the raw
 * rate is taken after warm-up. The pixels are drawn from `pool` under fresh hashes: a run of
 * thousands of distinct buffers made the collector of this process, which shares the cores,
 * free hundreds of MB while the stage was timed (the forward pass costs the same on any pixels).
 */
async function embedThroughQueue(ctx: CliContext, space: string, pool: Uint8Array[], n: number, meter?: { start: () => void; stop: () => void }): Promise<{ seconds: number; steady: number }> {
  const jobs: { id: string; payload: EmbedJob }[] = [];
  for (let i = 0; i < n; i++) {
    const sha256 = randomBytes(32).toString('hex');
    await ctx.services.tensors.put(space, sha256, pool[i % pool.length]!);
    const payload = { sha256, embedderId: space };
    jobs.push({ id: jobIds.embed(payload), payload });
  }
  const base = await ctx.services.cache.size(space);
  const marks: { at: number; done: number }[] = [];
  meter?.start();
  const start = performance.now();
  await enqueue(ctx.queues.embed(space), 'embed', jobs);
  // Each mark pairs a count with the moment it was read, so the steady rate does not depend on
  // how often we look; polling every 50 ms (not 10) keeps this process off the cores the stage
  // runs on. The whole run's end is read within 50 ms.
  await until(
    `${n} embeddings in the cache`,
    async () => {
      const done = (await ctx.services.cache.size(space)) - base;
      const at = performance.now();
      if (marks.length === 0 && done >= 0.1 * n) marks.push({ at, done });
      if (marks.length === 1 && done >= 0.9 * n) marks.push({ at, done });
      return done >= n;
    },
    600,
    50,
  );
  const seconds = (performance.now() - start) / 1000;
  meter?.stop();
  const [a, b] = marks;
  return { seconds, steady: a && b && b.at > a.at ? (b.done - a.done) / ((b.at - a.at) / 1000) : n / seconds };
}

/** The stage's rounds against the raw pass measured between them. */
interface StageRounds {
  /** each round's steady rate */
  steady: number[];
  /** the raw rate before the first round and after each (rounds + 1), when measured */
  raw: number[];
}

/** Each round's stage rate over the mean of the raw rates just before and after it. */
function roundRatios(r: StageRounds): number[] {
  return r.steady.map((s, i) => s / ((r.raw[i]! + r.raw[i + 1]!) / 2));
}

/**
 * The embed stage's rate through Redis and BullMQ (the worker processes of a real stack), its
 * CPU by process and its peak RSS. With `rawNow`, `rounds` runs of `n` images alternate with the
 * raw pass on the same stack's machine (before, between and after): this machine's speed drifts
 * by 10–25% over minutes, so one stage run against raw rates taken around it said anything from
 * 0.73 to 0.97 at batch 1; the median of rounds taken turn by turn does not drift with it.
 */
async function stageRate(o: {
  backend: string;
  batch: number;
  processes: number;
  threads: number;
  streams?: number;
  n: number;
  ownCore?: boolean;
  rounds?: number;
  /** the raw pass, measured with the stack idle (pinned as it needs; this process is pinned back after) */
  rawNow?: () => Promise<number>;
}): Promise<{ rate: number; steady: number; peakMb?: number; cpuMs: Record<string, number>; rounds: StageRounds }> {
  const env = { ...baseEnv, TL_BACKEND: o.backend, TL_EMBED_THREADS: String(o.threads), TL_EMBED_STREAMS: String(o.streams ?? 1), TL_EMBED_BATCH_SIZE: String(o.batch), TL_EMBED_BATCH_WAIT_MS: '50' };
  const stack = await startTempStack(env, { preprocess: 0, embed: o.processes, train: 0 });
  const pool = randomImages(32);
  try {
    const ctx = await openCliContext(stack.config, quiet);
    try {
      await until(`${o.processes} embed workers`, async () => (await ctx.services.spaces.workersOf(stack.space.id)) >= o.processes, 120, 100);
      await embedThroughQueue(ctx, stack.space.id, pool, o.batch * o.processes * 2); // warm-up
      // CPU of every process of the stack over the run, by part: what the stage costs besides the forward pass.
      const embedPids = Object.entries(stack.supervisor.pids()).filter(([k]) => k.startsWith('embed')).map(([, pid]) => pid);
      const parts: [part: string, pids: number[]][] = [
        ['embed workers', embedPids],
        ['Redis', [stack.servers.redis?.pid ?? 0]],
        ['S3 server', [stack.servers.s3?.pid ?? 0]],
      ];
      // The worker on CPU 0 as if it were a machine of its own; Redis, the S3 server and this
      // process (enqueueing, polling) on CPU 1, as they would be elsewhere in a deployment.
      const pinStack = () => {
        if (!o.ownCore) return;
        for (const pid of embedPids) pinProcess(pid, '0');
        for (const pid of [stack.servers.redis?.pid, stack.servers.s3?.pid, process.pid]) if (pid) pinProcess(pid, '1');
      };
      const raw = async () => {
        if (!o.rawNow) return;
        rounds.raw.push(await o.rawNow());
        pinStack();
      };
      const cpuOf = (pids: number[]) => pids.reduce((sum, pid) => sum + cpuSeconds(pid), 0);
      const cpuMs: Record<string, number> = {};
      const rounds: StageRounds = { steady: [], raw: [] };
      let whole = 0;
      pinStack();
      await raw();
      for (let r = 0; r < (o.rounds ?? 1); r++) {
        let cpuBefore: number[] = [];
        let selfBefore = process.cpuUsage();
        const run = await embedThroughQueue(ctx, stack.space.id, pool, o.n, {
          start: () => {
            cpuBefore = parts.map(([, pids]) => cpuOf(pids));
            selfBefore = process.cpuUsage();
          },
          stop: () => {
            const self = process.cpuUsage(selfBefore);
            parts.forEach(([part, pids], i) => (cpuMs[part] = (cpuMs[part] ?? 0) + ((cpuOf(pids) - cpuBefore[i]!) * 1000) / o.n));
            const me = 'this process (enqueue, polling)';
            cpuMs[me] = (cpuMs[me] ?? 0) + (self.user + self.system) / 1000 / o.n;
          },
        });
        rounds.steady.push(run.steady);
        whole += run.seconds;
        await raw();
      }
      for (const k of Object.keys(cpuMs)) cpuMs[k]! /= rounds.steady.length;
      const peaks = embedPids.map((pid) => peakRssMb(pid) ?? 0);
      return { rate: (o.n * rounds.steady.length) / whole, steady: median(rounds.steady), peakMb: Math.max(...peaks), cpuMs, rounds };
    } finally {
      await ctx.close();
    }
  } finally {
    if (o.ownCore) pinProcess(process.pid, OWN_CPUS);
    await stack.destroy();
  }
}

/** Enough images for a stage run of about `seconds` at `rate`, whole batches, at least 8 of them. */
function imagesFor(rate: number, seconds: number, batch: number): number {
  return Math.max(8 * batch, Math.ceil((rate * seconds) / batch) * batch);
}

async function python(script: string, args: string[]): Promise<string> {
  const { stdout } = await promisify(execFile)(PYTHON, [path.join(pythonDir, script), ...args], { timeout: 600_000, env: { ...process.env, OMP_NUM_THREADS: '2', MKL_NUM_THREADS: '2' } });
  return stdout;
}

/**
 * Issue 9: the forward pass at batch 1/8/32 on ONNX Runtime (our graph, 1 and 2 threads), TF.js
 * wasm, PyTorch eager (2 threads) and ONNX Runtime on torchvision's exported graph (the rate a
 * Python user gets); the embed stage through Redis and BullMQ against the raw rate at the same
 * batch and threads, and against today's wasm stage; first ingest vs re-ingest.
 */
export async function embedBench(o: { images: number; seconds?: number }): Promise<SuiteResult> {
  const startedAt = new Date().toISOString();
  const seconds = o.seconds ?? 8;
  const rows: Row[] = [];
  const details: Record<string, unknown> = {};
  const name = {
    ours: (b: number, t: number) => `raw forward, ONNX Runtime (our graph), batch ${b}, ${t} thread${t > 1 ? 's' : ''}`,
    oursDefaults: (b: number) => `raw forward, ONNX Runtime (our graph), batch ${b}, 2 threads, ORT's default options (threads spin)`,
    ownCore: (b: number) => `raw forward, ONNX Runtime (our graph), batch ${b}, 1 thread pinned to CPU 0`,
    streams: (b: number) => `raw forward, ONNX Runtime (our graph), batch ${b}, 2 streams × 1 thread (2 sessions at once, as the embed worker runs it)`,
  };

  const rawCpuMs: Record<number, number> = {};
  // Our graph, built from the TF.js model as the embed worker builds it (random weights: speed does not depend on them).
  await loadTfRuntime('cpu');
  const net = buildEfficientNetB0({ seed: 42 });
  const onnxBytes = exportEfficientNetB0ToOnnx(net);
  net.dispose();
  for (const threads of [1, 2]) {
    const e = await createOnnxEmbedder(onnxBytes, { intraOpThreads: threads });
    const r = await rawRates((x) => e.embedBatch(x), seconds);
    await e.dispose();
    for (const b of BATCHES) rows.push({ name: name.ours(b, threads), value: r[b]!, unit: 'images/s' });
    if (threads === 2) for (const b of BATCHES) rawCpuMs[b] = r.cpuMs[b]!;
    log(`ORT ours ${threads} threads: ${JSON.stringify(r)}`);
  }
  // Two sessions of 1 thread each, computing at once: the embed worker's default on 2 cores
  // (TL_EMBED_STREAMS), and the ceiling of its stage.
  const rawStreamsCpuMs: Record<number, number> = {};
  {
    const streams = await RawStreams.start(onnxBytes, [1, 1]);
    try {
      for (const b of BATCHES) {
        await streams.warm(b);
        const cpu = process.cpuUsage();
        const { rate, images } = await streams.run(b, seconds);
        const used = process.cpuUsage(cpu);
        rawStreamsCpuMs[b] = (used.user + used.system) / 1000 / images;
        rows.push({ name: name.streams(b), value: rate, unit: 'images/s', vs: name.ours(b, 2) });
      }
    } finally {
      await streams.dispose();
    }
    log(`ORT ours 2 streams × 1 thread: ${BATCHES.map((b) => rows.find((r) => r.name === name.streams(b))!.value.toFixed(1)).join(', ')}`);
  }
  // One thread on a core of its own: the ceiling of a worker given one core (rows further down).
  const ownCore = canPin && os.availableParallelism() >= 2;
  if (ownCore) {
    const e = await createOnnxEmbedder(onnxBytes, { intraOpThreads: 1 });
    pinProcess(process.pid, '0');
    try {
      const r = await rawRates((x) => e.embedBatch(x), seconds);
      for (const b of BATCHES) rows.push({ name: name.ownCore(b), value: r[b]!, unit: 'images/s' });
      log(`ORT ours 1 thread on CPU 0: ${JSON.stringify(r)}`);
    } finally {
      pinProcess(process.pid, OWN_CPUS);
      await e.dispose();
    }
  } else {
    log('taskset not found or one CPU: no rows for a worker on a core of its own');
  }
  details.rawPeakMbAfterOrt = peakRssMb();

  // TF.js wasm: single-threaded under Node whatever the setting.
  const rtWasm = await loadTfRuntime('wasm');
  const wasm = await createEfficientNetEmbedder(rtWasm, { seed: 42 });
  const wr = await rawRates((x) => wasm.embedBatch(x), seconds);
  wasm.dispose();
  for (const b of BATCHES) rows.push({ name: `raw forward, TF.js wasm, batch ${b}, 1 thread`, value: wr[b]!, unit: 'images/s', vs: name.ours(b, 2) });
  log(`wasm: ${JSON.stringify(wr)}`);

  const peerNotes: string[] = [];
  ensurePythonPeers('embed', [
    ['torch', 'python3-torch'],
    ['torchvision', 'python3-torchvision'],
  ], peerNotes);
  details.pythonPeers = peerNotes;
  // ONNX Runtime on torchvision's exported graph (float32 NCHW in), same threads.
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tl-bench-'));
  try {
    await python('torchvision_onnx_export.py', [path.join(dir, 'tv.onnx')]);
    const session = await ort.InferenceSession.create(new Uint8Array(await readFile(path.join(dir, 'tv.onnx'))), {
      executionProviders: ['cpu'],
      graphOptimizationLevel: 'all',
      intraOpNumThreads: 2,
      interOpNumThreads: 1,
      executionMode: 'sequential',
    });
    const pool = new Float32Array(32 * SIZE).map(() => Math.random());
    // Our graph with ORT's default session options (pool threads spin), as torchvision's graph
    // runs: the two compared with the same options, turn by turn. The worker turns spinning off
    // (see OnnxEmbedderOptions).
    const ours = await createOnnxEmbedder(onnxBytes, { intraOpThreads: 2, spinning: true });
    const { a: or, b: tr } = await pairedRates(
      (x) => ours.embedBatch(x),
      (x) => session.run({ input: new ort.Tensor('float32', pool.subarray(0, x.length * SIZE), [x.length, 3, 224, 224]) }),
      seconds,
    );
    await ours.dispose();
    await session.release();
    for (const b of BATCHES) rows.push({ name: name.oursDefaults(b), value: or[b]!, unit: 'images/s', note: "measured turn by turn with torchvision's graph (medians of 4 rounds)" });
    log(`ORT ours 2 threads, ORT defaults (spinning): ${JSON.stringify(or)}`);
    const tvName = (b: number) => `raw forward, ONNX Runtime on torchvision's torch.onnx.export graph, batch ${b}, 2 threads, ORT's default options (threads spin)`;
    for (const b of BATCHES) rows.push({ name: tvName(b), value: tr[b]!, unit: 'images/s' });
    for (const b of BATCHES) {
      rows.push({ name: `ours vs torchvision-exported graph, batch ${b}, same session options`, value: rows.find((r) => r.name === name.oursDefaults(b))!.value, unit: 'images/s', vs: tvName(b), target: '≥ 0.9×' });
      rows.push({ name: `ours as the embed worker runs it (no spinning) vs torchvision-exported graph, batch ${b}`, value: rows.find((r) => r.name === name.ours(b, 2))!.value, unit: 'images/s', vs: tvName(b) });
    }
    log(`ORT torchvision: ${JSON.stringify(tr)}`);
  } catch (err) {
    log(`torchvision ONNX comparison skipped (${(err as Error).message.split('\n')[0]}; apt-get install python3-torch python3-torchvision)`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }

  // PyTorch eager, 2 threads, 1 inter-op thread, channels_last.
  try {
    const t = JSON.parse(await python('torch_efficientnet.py', ['2', String(seconds)])) as { torch: string; threads: number; interop: number; rates: Record<string, number>; peak_rss_mb: number };
    for (const b of BATCHES) {
      rows.push({ name: `raw forward, PyTorch ${t.torch} eager, batch ${b}, ${t.threads} threads (interop ${t.interop})`, value: t.rates[b]!, unit: 'images/s' });
      rows.push({ name: `ours vs PyTorch eager, batch ${b}`, value: rows.find((r) => r.name === name.ours(b, 2))!.value, unit: 'images/s', vs: `raw forward, PyTorch ${t.torch} eager, batch ${b}, ${t.threads} threads (interop ${t.interop})`, target: '≥ 2×' });
    }
    details.torchPeakMb = t.peak_rss_mb;
  } catch (err) {
    log(`PyTorch comparison skipped (${(err as Error).message.split('\n')[0]}; apt-get install python3-torch python3-torchvision)`);
  }

  // The stage through Redis and BullMQ, on the same threads, against the raw rate: runs sized
  // for about 12 s, so collecting the first batch and writing the last are a small share.
  const stagePeaks: Record<string, number | undefined> = {};
  const raw2 = (b: number) => rows.find((r) => r.name === name.ours(b, 2))!.value;
  const rawStreams = (b: number) => rows.find((r) => r.name === name.streams(b))!.value;
  // Each stage run is compared with the raw rate on sessions held open for this, measured before,
  // between and after its rounds: a raw rate taken minutes earlier drifted by up to ±15% on this
  // machine, as much as the margin being measured.
  const held = {
    2: await createOnnxEmbedder(onnxBytes, { intraOpThreads: 2 }),
    ...(ownCore && { 1: await createOnnxEmbedder(onnxBytes, { intraOpThreads: 1 }) }),
  } as Partial<Record<1 | 2, Awaited<ReturnType<typeof createOnnxEmbedder>>>>;
  const heldStreams = await RawStreams.start(onnxBytes, [1, 1]);
  const heldPool = randomImages(32);
  /** the raw pass on one session of 1 or 2 threads, or on 2 sessions of 1 thread at once */
  type RawKind = 1 | 2 | 'streams';
  const rawNow = async (kind: RawKind, b: number, pinned: boolean): Promise<number> => {
    if (kind === 'streams') {
      await heldStreams.warm(b);
      return (await heldStreams.run(b, seconds / 2)).rate;
    }
    const forward: Forward = (x) => held[kind]!.embedBatch(x);
    if (pinned) pinProcess(process.pid, '0');
    try {
      await warmUp(forward, heldPool, b);
      return (await rateOf(forward, heldPool, b, seconds / 2)).rate;
    } finally {
      if (pinned) pinProcess(process.pid, OWN_CPUS);
    }
  };
  const ROUNDS = 3;
  const roundSeconds = Math.max(8, seconds);
  /** the stage in rounds of about `roundSeconds`, turn by turn with its raw pass */
  const inRounds = (kind: RawKind, pinned: boolean, o: Omit<Parameters<typeof stageRate>[0], 'rounds' | 'rawNow'>) => stageRate({ ...o, rounds: ROUNDS, rawNow: () => rawNow(kind, o.batch, pinned) });
  /** the rows of a stage run in rounds, against its raw pass measured between them */
  const stageRows = (stage: string, raw: string, n: number, s: Awaited<ReturnType<typeof stageRate>>, extra: { target?: string; note?: string }): Row[] => {
    const ratios = roundRatios(s.rounds);
    return [
      { name: raw, value: median(s.rounds.raw), unit: 'images/s', note: `median of ${s.rounds.raw.map((v) => v.toFixed(1)).join(', ')}, measured before, between and after the stage's ${ROUNDS} rounds` },
      {
        name: stage,
        value: s.steady,
        unit: 'images/s',
        vs: raw,
        // the target is read on the rounds taken turn by turn, not on the ratio of two medians
        ratio: median(ratios),
        ...(extra.target && { target: extra.target }),
        note: `median steady rate of ${ROUNDS} rounds (10% → 90% of ${n} images each): ${s.rounds.steady.map((v) => v.toFixed(1)).join(', ')}; each round against the raw passes around it: ${ratios.map((r) => `${r.toFixed(2)}×`).join(', ')} (median ${median(ratios).toFixed(2)}×)${extra.note ? `; ${extra.note}` : ''}`,
      },
    ];
  };
  const stageName = (b: number) => `embed stage via Redis+BullMQ, ONNX Runtime, batch ${b}, 1 process, 2 streams × 1 thread (the default on 2 cores)`;
  const stageOneName = (b: number) => `embed stage via Redis+BullMQ, ONNX Runtime, batch ${b}, 1 process, 1 stream × 2 threads (TL_EMBED_STREAMS=1)`;
  /** the raw passes measured again around the shared-core stage runs */
  const again: Record<'streams' | 2, Record<number, number[]>> = { streams: {}, 2: {} };
  const cpuRows = (b: number, s: { cpuMs: Record<string, number> }, rawCpu: { name: string; value: number }, stage: string) => {
    rows.push(
      { name: rawCpu.name, value: rawCpu.value, unit: 'CPU ms/image' },
      {
        name: `${stage} CPU per image, every process of the stack, batch ${b}`,
        value: Object.values(s.cpuMs).reduce((sum, v) => sum + v, 0),
        unit: 'CPU ms/image',
        vs: rawCpu.name,
        note: Object.entries(s.cpuMs).map(([k, v]) => `${k} ${v.toFixed(2)}`).join(', '),
      },
    );
  };
  for (const b of BATCHES) {
    // The stage as it runs by default here: 2 streams of 1 thread, against the raw pass on 2 sessions of 1 thread.
    const n = imagesFor(rawStreams(b), roundSeconds, b);
    const s = await inRounds('streams', false, { backend: 'onnx', batch: b, processes: 1, threads: 2, streams: 2, n });
    again.streams[b] = s.rounds.raw;
    stagePeaks[`onnx batch ${b}, 2 streams × 1 thread`] = s.peakMb;
    const rawName = `${name.streams(b)}, around the stage run`;
    rows.push(
      ...stageRows(stageName(b), rawName, n, s, { target: '≥ 0.9×', note: `embed process peak ${s.peakMb?.toFixed(0)} MiB (VmHWM)` }),
      { name: `${stageName(b)}, whole run`, value: s.rate, unit: 'images/s', vs: rawName, note: `${ROUNDS} × ${n} images, enqueue → last one cached` },
    );
    cpuRows(b, s, { name: `raw forward CPU per image, batch ${b}, 2 streams × 1 thread`, value: rawStreamsCpuMs[b]! }, 'embed stage (2 streams)');
    log(`stage onnx batch ${b}, 2 streams × 1 thread: steady ${s.rounds.steady.map((v) => v.toFixed(1)).join(', ')} against raw ${s.rounds.raw.map((v) => v.toFixed(1)).join(', ')} (${n} images a round)`);

    // One stream of 2 threads (TL_EMBED_STREAMS=1), against the raw pass on one session of 2 threads.
    const n1 = imagesFor(raw2(b), roundSeconds, b);
    const one = await inRounds(2, false, { backend: 'onnx', batch: b, processes: 1, threads: 2, streams: 1, n: n1 });
    again[2][b] = one.rounds.raw;
    stagePeaks[`onnx batch ${b}, 1 stream × 2 threads`] = one.peakMb;
    rows.push(
      ...stageRows(stageOneName(b), `${name.ours(b, 2)}, around the stage run`, n1, one, { note: `embed process peak ${one.peakMb?.toFixed(0)} MiB (VmHWM)` }),
      { name: `${stageName(b)} vs ${stageOneName(b)}`, value: s.steady, unit: 'images/s', vs: stageOneName(b) },
    );
    cpuRows(b, one, { name: `raw forward CPU per image, batch ${b}, 2 threads`, value: rawCpuMs[b]! }, 'embed stage (1 stream × 2 threads)');
    log(`stage onnx batch ${b}, 1 stream × 2 threads: steady ${one.rounds.steady.map((v) => v.toFixed(1)).join(', ')} against raw ${one.rounds.raw.map((v) => v.toFixed(1)).join(', ')} (${n1} images a round)`);
  }
  // The same stage with the worker on a core of its own and its services on the other: what
  // the stage itself costs beside the forward pass, as in a deployment where Redis and S3 are
  // other machines. On 2 shared cores (above) their CPU comes out of the forward pass's.
  if (ownCore) {
    for (const b of BATCHES) {
      const n = imagesFor(rows.find((r) => r.name === name.ownCore(b))!.value, roundSeconds, b);
      const s = await inRounds(1, true, { backend: 'onnx', batch: b, processes: 1, threads: 1, n, ownCore: true });
      const worker = s.cpuMs['embed workers']!;
      rows.push(
        ...stageRows(`embed stage via Redis+BullMQ, ONNX Runtime, batch ${b}, 1 process × 1 thread pinned to CPU 0 (Redis, S3 server, enqueuer on CPU 1)`, `${name.ownCore(b)}, around the stage run`, n, s, {
          target: '≥ 0.9×',
          note: `embed worker CPU ${worker.toFixed(2)} ms/image; ${Object.entries(s.cpuMs).filter(([k]) => k !== 'embed workers').map(([k, v]) => `${k} ${v.toFixed(2)}`).join(', ')}`,
        }),
      );
      log(`stage onnx batch ${b}, 1 thread on its own core: steady ${s.rounds.steady.map((v) => v.toFixed(1)).join(', ')} against raw ${s.rounds.raw.map((v) => v.toFixed(1)).join(', ')} (${n} images a round)`);
    }
  }
  for (const e of Object.values(held)) await e.dispose();
  await heldStreams.dispose();
  const twoProc = await stageRate({ backend: 'onnx', batch: 8, processes: 2, threads: 1, n: imagesFor(rawStreams(8), roundSeconds, 16) });
  rows.push({ name: 'embed stage, ONNX Runtime, batch 8, 2 processes × 1 thread', value: twoProc.steady, unit: 'images/s', vs: stageName(8), note: `steady rate; peak ${twoProc.peakMb?.toFixed(0)} MiB per process` });
  const wasmStageName = "today's embed stage before this change: TF.js wasm, batch 8, 1 process";
  const wasmStage = await stageRate({ backend: 'wasm', batch: 8, processes: 1, threads: 1, n: 96 });
  rows.push({ name: wasmStageName, value: wasmStage.steady, unit: 'images/s', note: `steady rate; peak ${wasmStage.peakMb?.toFixed(0)} MiB` });
  // The issue's target is on the raw forward pass ("ours ≥ 10× today's wasm stage"), as the
  // embed worker runs it by default; the stage against stage is shown too. Each raw rate is the
  // median of its measurements in this run (its row, and those around its stage's rounds): one
  // of them alone fell in a slow spell of the machine twice.
  for (const b of BATCHES) {
    const three = { streams: [rawStreams(b), ...again.streams[b]!], 2: [raw2(b), ...again[2][b]!] };
    const measured = (xs: number[]) => `median of this run's ${xs.length} measurements of the raw pass: ${xs.map((v) => v.toFixed(1)).join(', ')} (its row, and around its stage's rounds)`;
    rows.push(
      { name: `ours (raw forward, batch ${b}, 2 streams × 1 thread, as the embed worker runs it) vs today's wasm stage`, value: median(three.streams), unit: 'images/s', vs: wasmStageName, target: '≥ 10×', note: measured(three.streams) },
      { name: `ours (raw forward, batch ${b}, 1 session × 2 threads) vs today's wasm stage`, value: median(three[2]), unit: 'images/s', vs: wasmStageName, note: measured(three[2]) },
    );
  }
  rows.push({ name: 'ONNX Runtime stage (batch 8, 2 streams × 1 thread) vs the wasm stage', value: rows.find((r) => r.name === stageName(8))!.value, unit: 'images/s', vs: wasmStageName });
  details.stagePeakMb = stagePeaks;

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
      await until('an embed worker', async () => (await ctx.services.spaces.workersOf(stack.space.id)) > 0, 120, 100);
      const forwardPasses = async () => Number(/^tl_embed_batch_size_count\{[^}]*\} (\d+)/m.exec(await (await fetch(`http://127.0.0.1:${stack.ports.embed}/metrics`)).text())?.[1]);
      const ingest = async () => {
        const t = performance.now();
        await ingestPrefix({ bucket: 'bench', prefix: 'train/', dataset: 'bench', space: stack.space }, { services: ctx.services, queues: ctx.queues });
        await until('the ingest to finish', async () => (await ctx.services.inspector.status('bench')).pending === 0);
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
  details.benchProcessPeakMb = peakRssMb();
  return { suite: 'embed', startedAt, machine: machine(), rows: withRatios(rows), details: { ...details, images: o.images, cpus: os.availableParallelism() } };
}
