import { parentPort, workerData } from 'node:worker_threads';
import { redisKeys } from '@transferline/shared/keys';
import { createRedis } from '@transferline/shared/redis';
import { TensorStore } from '@transferline/shared/tensors';
import type { Embedder } from './embedder.js';
import { ONNX_BUILDER_VERSION } from './model/onnx-export.js';
import { allFinite, nonFiniteModelWords } from './model/finite-output.js';
import { loadOrBuildOnnx } from './model/onnx-model.cache.js';
import { createOnnxEmbedder } from './model/onnx.embedder.js';

/** What the embed thread runs: the model, its weights, and the backend to run it on. */
export interface ThreadSpec {
  backend: 'onnx' | 'wasm' | 'cpu';
  /** a Keras `efficientnetb0_notop.h5`; absent: the seeded random weights */
  weights?: Uint8Array;
  /** names the weights in the ONNX cache: their MD5, or `random-seed<N>` */
  weightsKey: string;
  seed: number;
  inputSize: number;
  /** ONNX Runtime intra-op threads */
  threads: number;
  /** where built ONNX models are kept (next to the weights) */
  cacheDir: string;
  /** a batch of this size runs twice at start, so the first real batches are not slow */
  warmupBatch: number;
  /**
   * A ready ONNX model to run instead of building the embedding graph (onnx backend only): an
   * exported image classifier, say, whose `output` is returned.
   */
  prebuilt?: { bytes: Uint8Array; /** a head's output (serve), else the embedding */ output?: { name: string; dim: number } };
  /**
   * Where preprocess stores pixels: the thread reads them itself for `embed-stored` requests, so
   * the 147 KB per image never enter the worker's main isolate (whose large heap each GC marks).
   */
  pixelSource?: {
    redisUrl: string;
    redisPrefix: string;
    /**
     * A connection that receives nothing this long while a read waits, though it looks up, is
     * taken for a dead one (a NAT or load balancer that dropped the flow without a reset): it is
     * made again and the read sent again. A slow read that keeps arriving is left alone. 30 s by
     * default.
     */
    stallMs?: number;
  };
}

/** Messages from the thread. */
export type ThreadReply =
  | { type: 'ready'; provider: string; onnx?: { path: string; built: boolean; warning?: string; /** the graph, where the cache could not keep it */ bytes?: Uint8Array } }
  | { type: 'failed'; message: string }
  | { type: 'result'; id: number; data: Float32Array; sizes?: number[]; cached?: boolean[]; seconds: number }
  | { type: 'error'; id: number; message: string }
  /** something the worker should log */
  | { type: 'warn'; message: string };

/** Messages to the thread. */
export type ThreadRequest =
  | { type: 'embed'; id: number; n: number; pixels: Uint8Array }
  | { type: 'embed-stored'; id: number; space: string; sha256s: string[] }
  | { type: 'close' };

/**
 * The forward pass runs here, off the worker's event loop: ONNX Runtime's and TF.js wasm's
 * forward passes are synchronous native code, and a batch that blocked the main thread for
 * seconds would hold up lock renewals (BullMQ would think the jobs stalled), heartbeats and
 * /healthz. Requests are served one at a time, in order.
 */
/**
 * Two forward passes of blank images (the first allocates, the second settles): whether the
 * second gave finite numbers only.
 */
async function warm(embedder: Embedder): Promise<boolean> {
  const zeros = Array.from({ length: spec.warmupBatch }, () => new Uint8Array(spec.inputSize * spec.inputSize * 3));
  let sample: Float32Array | undefined;
  for (let i = 0; i < 2 && zeros.length; i++) sample = await embedder.embedBatch(zeros);
  return sample === undefined || allFinite(sample);
}

async function start(spec: ThreadSpec): Promise<{ embedder: Embedder; reply: ThreadReply; finite?: boolean }> {
  if (spec.backend === 'onnx' && spec.prebuilt) {
    const embedder = await createOnnxEmbedder(spec.prebuilt.bytes, { intraOpThreads: spec.threads, inputSize: spec.inputSize, ...(spec.prebuilt.output && { output: spec.prebuilt.output }) });
    return { embedder, reply: { type: 'ready', provider: 'onnxruntime-node' } };
  }
  if (spec.backend === 'onnx') {
    const key = `${spec.weightsKey}-${spec.inputSize}-${ONNX_BUILDER_VERSION}`;
    const load = (rebuild?: string) =>
      loadOrBuildOnnx({
        cacheDir: spec.cacheDir,
        key,
        // Built from the same Keras weights the TF.js model loads: the TF.js model (on the plain
        // cpu backend, which only holds the weights here) is the one definition of the network.
        build: async () => {
          const { loadTfRuntime, buildEfficientNetB0, loadKerasH5Weights, exportEfficientNetB0ToOnnx } = await modelBuilder();
          await loadTfRuntime('cpu');
          const net = buildEfficientNetB0({ seed: spec.seed, inputSize: spec.inputSize });
          try {
            if (spec.weights) await loadKerasH5Weights(net, spec.weights);
            return exportEfficientNetB0ToOnnx(net, { inputSize: spec.inputSize });
          } finally {
            net.dispose();
          }
        },
        ...(rebuild !== undefined && { rebuild }),
      });
    const open = async (m: Awaited<ReturnType<typeof load>>) => {
      const embedder = await createOnnxEmbedder(m.bytes, { intraOpThreads: spec.threads, inputSize: spec.inputSize });
      return { embedder, finite: await warm(embedder) };
    };
    let model = await load();
    let opened: Awaited<ReturnType<typeof open>> | undefined;
    let refused: string | undefined;
    try {
      opened = await open(model);
      if (!opened.finite && !model.built) refused = 'it gives a blank image NaN or Infinity';
    } catch (err) {
      // a graph built now that ONNX Runtime refuses is an error, naming the file
      if (model.built) throw new Error(`the ONNX graph built from the weights (${model.path}) does not load: ${(err as Error).message}`);
      refused = (err as Error).message;
    }
    // A cached graph ONNX Runtime refuses, or that gives NaN, though its checksum is whole (a faulty
    // build summed it) is built again once, where every start would go to wasm or fail.
    if (refused !== undefined) {
      await opened?.embedder.dispose();
      model = await load(refused);
      opened = await open(model).catch((again: unknown) => {
        throw new Error(`the ONNX graph built from the weights (${model.path}) does not load: ${(again as Error).message}`);
      });
    }
    // (the graph, for the other streams to open, where the cache could not keep it)
    const onnx = { path: model.path, built: model.built, ...(model.warning && { warning: model.warning }), ...(model.uncached && { bytes: model.bytes }) };
    return { embedder: opened!.embedder, finite: opened!.finite, reply: { type: 'ready', provider: 'onnxruntime-node', onnx } };
  }
  const [{ loadTfRuntime }, { createEfficientNetEmbedder }] = await Promise.all([import('@transferline/shared/tf'), import('./embedder.js')]);
  const rt = await loadTfRuntime(spec.backend);
  const embedder = await createEfficientNetEmbedder(rt, { seed: spec.seed, inputSize: spec.inputSize, ...(spec.weights && { weights: spec.weights }) });
  return { embedder, reply: { type: 'ready', provider: rt.provider } };
}

/**
 * TF.js, the Keras loader and the model's definition, loaded only to build the ONNX graph (a
 * cache miss): with a cached graph the thread's heap stays small (7 MB against 26), and every
 * full collection, which the pixel buffers set off about once a second, marks less.
 */
async function modelBuilder() {
  const [{ loadTfRuntime }, { buildEfficientNetB0 }, { loadKerasH5Weights }, { exportEfficientNetB0ToOnnx }] = await Promise.all([
    import('@transferline/shared/tf'),
    import('./model/efficientnet-b0.model.js'),
    import('./model/keras-h5-weights.loader.js'),
    import('./model/onnx-export.js'),
  ]);
  return { loadTfRuntime, buildEfficientNetB0, loadKerasH5Weights, exportEfficientNetB0ToOnnx };
}

const port = parentPort!;
const spec = workerData as ThreadSpec;
start(spec).then(
  async ({ embedder, reply, finite }) => {
    if (!(finite ?? (await warm(embedder)))) {
      await embedder.dispose();
      port.postMessage({ type: 'failed', message: nonFiniteModelWords(reply.type === 'ready' ? reply.onnx?.path : undefined) } satisfies ThreadReply);
      return;
    }
    port.postMessage(reply);
    const per = spec.inputSize * spec.inputSize * 3;
    const redis = spec.pixelSource && createRedis(spec.pixelSource.redisUrl, 'worker');
    // Reads only: the TTL is the writer's (preprocess) business.
    const tensors = redis && new TensorStore(redis, redisKeys(spec.pixelSource!.redisPrefix), 0);
    const stallMs = spec.pixelSource?.stallMs ?? 30_000;
    /**
     * A read that hangs would hold this batch, and every one after it, for ever, while the worker
     * keeps renewing the jobs' locks: nothing else would ever take them. While Redis is down the
     * read waits as all work does (ioredis queues it). When a connection that is up (or connected
     * and not yet ready) has received nothing for `stallMs` while the read waits, it is made
     * again, and ioredis sends the read again on the new one; a read that is slow but arriving
     * is left alone.
     */
    const guarded = async <T>(read: () => Promise<T>, again = true): Promise<T> => {
      let timer: NodeJS.Timeout | undefined;
      let seen: { stream: unknown; bytes: number } | undefined;
      let cycled = false;
      const watch = () => {
        timer = setTimeout(() => {
          const stream = redis?.stream;
          const now = stream ? { stream, bytes: stream.bytesRead } : undefined;
          const silent = now && seen && now.stream === seen.stream && now.bytes === seen.bytes;
          if (silent && (redis!.status === 'ready' || redis!.status === 'connect')) {
            port.postMessage({ type: 'warn', message: `Redis sent nothing for ${stallMs / 1000} s while a pixel read waited, on a connection that looked up: connecting again and reading again` } satisfies ThreadReply);
            cycled = true;
            redis!.disconnect(true);
            seen = undefined;
          } else seen = now;
          watch();
        }, stallMs);
        // a thread being closed does not wait for it
        timer.unref();
      };
      seen = redis?.stream ? { stream: redis.stream, bytes: redis.stream.bytesRead } : undefined;
      watch();
      try {
        return await read();
      } catch (err) {
        // ioredis sends again what got no answer at all, but aborts a pipeline that was partly
        // answered when its connection was dropped: that read is made again, once.
        if (cycled && again && (err as Error).name === 'AbortError') return guarded(read, false);
        throw err;
      } finally {
        clearTimeout(timer);
      }
    };
    // One forward pass at a time: two runs of the session at once would each bring their own
    // intra-op threads, oversubscribing the cores the threads were sized for. Reading the next
    // batch's pixels does not wait for the running pass.
    let queue: Promise<unknown> = Promise.resolve();
    const forward = (id: number, input: Promise<{ images: Uint8Array[]; sizes?: number[]; cached?: boolean[] }>) => {
      // A read that fails while an earlier pass runs is reported when this batch's turn comes;
      // until then it must not count as unhandled (that would end the thread, and the worker).
      input.catch(() => {});
      const run = queue.then(async () => {
        const { images, sizes, cached } = await input;
        const start = performance.now();
        const data = images.length ? await embedder.embedBatch(images) : new Float32Array(0);
        return { data, sizes, cached, seconds: (performance.now() - start) / 1000 };
      });
      queue = run.catch(() => {});
      run.then(
        ({ data, sizes, cached, seconds }) => {
          // A copy we own (the runtime may own the output's memory), handed over without another copy.
          const out = data.slice();
          port.postMessage({ type: 'result', id, data: out, seconds, ...(sizes && { sizes }), ...(cached && { cached }) } satisfies ThreadReply, [out.buffer as ArrayBuffer]);
        },
        (err: unknown) => port.postMessage({ type: 'error', id, message: (err as Error).message } satisfies ThreadReply),
      );
    };
    port.on('message', (m: ThreadRequest) => {
      if (m.type === 'close') {
        redis?.disconnect();
        void Promise.resolve(embedder.dispose()).finally(() => port.close());
        return;
      }
      if (m.type === 'embed-stored') {
        if (!tensors) {
          port.postMessage({ type: 'error', id: m.id, message: 'this embed thread has no pixel source' } satisfies ThreadReply);
          return;
        }
        forward(m.id, guarded(() => tensors.getBatch(m.space, m.sha256s, per)));
        return;
      }
      forward(m.id, Promise.resolve({ images: Array.from({ length: m.n }, (_, i) => m.pixels.subarray(i * per, (i + 1) * per)) }));
    });
  },
  (err: unknown) => port.postMessage({ type: 'failed', message: (err as Error).message } satisfies ThreadReply),
);
