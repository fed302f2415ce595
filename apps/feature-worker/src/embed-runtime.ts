import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { Logger } from '@transferline/shared';
import { loadTfRuntime } from '@transferline/shared/tf';
import type { ThreadReply, ThreadRequest, ThreadSpec } from './embed.thread.js';
import type { Embedder, StoredEmbeddings } from './embedder.js';
import { allFinite, nonFiniteModelWords } from './model/finite-output.js';

/** Where the model runs: `tensorflow` (tfjs-node[-gpu], libtensorflow), `onnx` (ONNX Runtime, CPU), `wasm` or `cpu` (TF.js). */
export type EmbedBackend = 'tensorflow' | 'onnx' | 'wasm' | 'cpu';
export type BackendPreference = 'auto' | EmbedBackend;

export interface EmbedRuntimeSpec extends Omit<ThreadSpec, 'backend' | 'threads'> {
  preference: BackendPreference;
  /** the variable that named it, as its error says it (TL_BACKEND, or its old name TL_TF_BACKEND) */
  preferenceVariable?: string;
  /** the forward pass's threads in all (ONNX Runtime intra-op threads), shared among the streams */
  threads: number;
  /**
   * Forward passes run at once (ONNX Runtime and wasm): each stream is a thread with its own
   * session, given its share of `threads`. The native TF.js backend runs one.
   */
  streams: number;
}

export interface EmbedRuntime {
  embedder: Embedder;
  backend: EmbedBackend;
  /** the package that provided it, for the log line */
  provider: string;
  /** ONNX Runtime only: the model file and whether it was built now */
  onnx?: { path: string; built: boolean; warning?: string };
  /** why earlier backends were skipped (auto) */
  skipped: string[];
  /** the intra-op threads of each stream (forward passes run at once); one entry on tensorflow */
  streams: number[];
}

/**
 * `threads` shared among `streams`, as evenly as whole threads go (6 among 4: 2, 2, 1, 1).
 *
 * @throws Error if there are more streams than threads: a stream without a thread of its own
 *   would only take turns with another on the same core.
 */
export function shareThreads(threads: number, streams: number): number[] {
  if (!Number.isInteger(streams) || streams < 1) throw new Error(`streams must be a positive integer, got ${streams}`);
  if (streams > threads) throw new Error(`${streams} streams need at least ${streams} threads, and there are ${threads}`);
  return Array.from({ length: streams }, (_, i) => Math.floor(threads / streams) + (i < threads % streams ? 1 : 0));
}

/**
 * Starts the fastest backend that loads: auto tries tfjs-node-gpu (CUDA, the GPU path), then
 * ONNX Runtime on CPU (the graph built from the same Keras weights), then TF.js wasm. ONNX
 * Runtime and wasm run in a worker thread, so the forward pass never blocks the event loop; the
 * native TF.js backend stays on the main thread (its kernels run in libtensorflow's own pool).
 * A backend that was asked for by name and fails to load is an error, not a silent fallback.
 */
export async function startEmbedRuntime(spec: EmbedRuntimeSpec, log: Logger): Promise<EmbedRuntime> {
  const order: EmbedBackend[] = spec.preference === 'auto' ? ['tensorflow', 'onnx', 'wasm'] : [spec.preference];
  const skipped: string[] = [];
  for (const backend of order) {
    try {
      if (backend === 'tensorflow') {
        // On auto only the GPU package: on a CPU, ONNX Runtime is the faster native path.
        const rt = await loadTfRuntime('tensorflow', undefined, spec.preference === 'auto' ? { packages: ['@tensorflow/tfjs-node-gpu'] } : {});
        // (the TF.js model and the HDF5 reader: loaded only on this path, as in the embed thread)
        const { createEfficientNetEmbedder } = await import('./embedder.js');
        const embedder = await createEfficientNetEmbedder(rt, { seed: spec.seed, inputSize: spec.inputSize, ...(spec.weights && { weights: spec.weights }) });
        // (as the embed thread checks ONNX Runtime's and wasm's)
        if (!allFinite(await embedder.embedBatch([new Uint8Array(spec.inputSize * spec.inputSize * 3)]))) {
          await embedder.dispose();
          throw new Error(nonFiniteModelWords());
        }
        return { embedder, backend, provider: rt.provider, skipped, streams: [spec.threads] };
      }
      const shares = shareThreads(spec.threads, spec.streams);
      const { streams: _, ...threadSpec } = spec;
      const started = await startStreams({ ...threadSpec, backend }, shares, log);
      // (the graph's bytes, handed to the other streams where the cache could not keep it, go no further: not logged, not held)
      const { bytes: _bytes, ...onnx } = started.ready.onnx ?? {};
      return { embedder: started.embedder, backend, provider: started.ready.provider, ...(started.ready.onnx && { onnx: onnx as NonNullable<EmbedRuntime['onnx']> }), skipped, streams: shares };
    } catch (err) {
      if (spec.preference !== 'auto') throw new Error(`${spec.preferenceVariable ?? 'TL_BACKEND'}=${backend} does not load: ${(err as Error).message}`);
      skipped.push(`${backend}: ${(err as Error).message.replace(/\s*\n\s*/g, '; ')}`);
    }
  }
  throw new Error(`no embedding backend loads:\n  ${skipped.join('\n  ')}`);
}

/**
 * Runs a ready ONNX model (uint8 [N, S, S, 3] in, `output` out) on ONNX Runtime in worker
 * threads, like the embed worker's forward pass: `serve` runs an exported classifier this way.
 * `streams` passes at once (default 1), sharing `threads`.
 */
export async function startOnnxThread(o: { bytes: Uint8Array; output: { name: string; dim: number }; inputSize: number; threads: number; streams?: number; warmupBatch: number }, log: Logger): Promise<Embedder> {
  const spec: ThreadSpec = { backend: 'onnx', weightsKey: 'prebuilt', seed: 0, inputSize: o.inputSize, threads: o.threads, cacheDir: '', warmupBatch: o.warmupBatch, prebuilt: { bytes: o.bytes, output: o.output } };
  return (await startStreams(spec, shareThreads(o.threads, o.streams ?? 1), log)).embedder;
}

/**
 * One embed thread per stream, each with its share of the threads. The first starts alone: on a
 * cache miss it builds the ONNX graph, which the others then load from the cache.
 */
async function startStreams(spec: ThreadSpec, shares: number[], log: Logger): Promise<{ embedder: Embedder; ready: Extract<ThreadReply, { type: 'ready' }> }> {
  const [first, ...rest] = shares;
  const head = await ThreadedEmbedder.start({ ...spec, threads: first! }, log);
  if (rest.length === 0) return head;
  // a graph the cache could not keep (a read-only folder) is handed to the others, not built by each
  const built = head.ready.onnx?.bytes;
  const theirs: ThreadSpec = built ? { ...spec, prebuilt: { bytes: built } } : spec;
  const others = await Promise.allSettled(rest.map((threads) => ThreadedEmbedder.start({ ...theirs, threads }, log)));
  const members = [head.embedder, ...others.flatMap((o) => (o.status === 'fulfilled' ? [o.value.embedder] : []))];
  const failed = others.find((o) => o.status === 'rejected');
  if (failed) {
    await Promise.all(members.map((m) => m.dispose()));
    throw failed.reason as Error;
  }
  return { embedder: new StreamPool(members), ready: head.ready };
}

/**
 * Several embed threads as one Embedder: each batch goes to the thread with the fewest batches
 * on hand, so a pass computes on every stream while the next batch's pixels are read. Passes
 * finish out of order; each caller gets its own batch's result.
 */
class StreamPool implements Embedder {
  readonly inputSize: number;
  readonly dim: number;
  readonly streams: number;
  readonly embedStored?: (space: string, sha256s: string[]) => Promise<StoredEmbeddings>;
  private readonly onHand: number[];

  constructor(private readonly members: ThreadedEmbedder[]) {
    this.inputSize = members[0]!.inputSize;
    this.dim = members[0]!.dim;
    this.streams = members.length;
    this.onHand = members.map(() => 0);
    if (members.every((m) => m.embedStored)) this.embedStored = (space, sha256s) => this.on((m) => m.embedStored!(space, sha256s));
  }

  embedBatch(images: Uint8Array[]): Promise<Float32Array> {
    return this.on((m) => m.embedBatch(images));
  }

  private async on<T>(call: (m: ThreadedEmbedder) => Promise<T>): Promise<T> {
    const i = this.onHand.indexOf(Math.min(...this.onHand));
    this.onHand[i]!++;
    try {
      return await call(this.members[i]!);
    } finally {
      this.onHand[i]!--;
    }
  }

  async dispose(): Promise<void> {
    await Promise.all(this.members.map((m) => m.dispose()));
  }
}

/** What a forward pass asked of a disposed embedder gets. */
const UNLOADED = () => new Error('the model was unloaded (disposed) before this forward pass ran');

/** The built thread script (tests run the TypeScript sources, the thread always runs dist/). */
const THREAD_SCRIPT = fileURLToPath(new URL('../dist/embed.thread.js', import.meta.url));

/**
 * An Embedder whose forward passes run in a worker thread: pixels are handed over in one buffer
 * per batch (transferred, not copied), embeddings come back the same way.
 */
class ThreadedEmbedder implements Embedder {
  readonly dim: number;
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (r: StoredEmbeddings) => void; reject: (e: Error) => void }>();
  /** present when the thread reads pixels from Redis itself (spec.pixelSource) */
  readonly embedStored?: (space: string, sha256s: string[]) => Promise<StoredEmbeddings>;
  private dead: Error | undefined;
  private closing = false;

  private constructor(
    private readonly thread: Worker,
    log: Logger,
    readonly inputSize: number,
    onDeath: (err: Error) => void,
    dim = 1280,
    readsPixels = false,
  ) {
    this.dim = dim;
    if (readsPixels) this.embedStored = (space, sha256s) => this.request({ type: 'embed-stored', id: this.nextId++, space, sha256s });
    thread.on('message', (m: ThreadReply) => {
      if (m.type === 'warn') return void log.warn(m.message);
      if (m.type !== 'result' && m.type !== 'error') return;
      const p = this.pending.get(m.id);
      this.pending.delete(m.id);
      if (m.type === 'result') p?.resolve({ data: m.data, sizes: m.sizes ?? [], cached: m.cached ?? [], seconds: m.seconds });
      else p?.reject(new Error(m.message));
    });
    const die = (err: Error) => {
      if (this.dead) return;
      // Disposed: what was still waiting (or asks later) fails instead of waiting on a thread that is gone.
      this.dead = this.closing ? UNLOADED() : err;
      for (const p of this.pending.values()) p.reject(this.dead);
      this.pending.clear();
      if (!this.closing) onDeath(err);
    };
    thread.on('error', die);
    thread.on('exit', (code) => die(new Error(`the embed thread exited (${code})`)));
  }

  static async start(spec: ThreadSpec, log: Logger): Promise<{ embedder: ThreadedEmbedder; ready: Extract<ThreadReply, { type: 'ready' }> }> {
    const thread = new Worker(THREAD_SCRIPT, { workerData: spec });
    let onMessage: (m: ThreadReply) => void = () => {};
    let onError: (err: Error) => void = () => {};
    let onExit: (code: number) => void = () => {};
    const ready = await new Promise<Extract<ThreadReply, { type: 'ready' }>>((resolve, reject) => {
      onMessage = (m) => {
        if (m.type === 'ready') resolve(m);
        else if (m.type === 'failed') reject(new Error(m.message));
      };
      onError = reject;
      onExit = (code) => reject(new Error(`the embed thread exited (${code}) while starting`));
      thread.on('message', onMessage).on('error', onError).on('exit', onExit);
    })
      .catch(async (err: unknown) => {
        await thread.terminate();
        throw err;
      })
      .finally(() => thread.off('message', onMessage).off('error', onError).off('exit', onExit));
    const embedder = new ThreadedEmbedder(
      thread,
      log,
      spec.inputSize,
      (err) => {
        // Without its thread this process cannot embed: say so and leave, so it is restarted.
        log.fatal({ err }, 'the embed thread died; exiting so the process is restarted');
        process.exit(1);
      },
      spec.prebuilt?.output?.dim,
      spec.pixelSource !== undefined,
    );
    return { embedder, ready };
  }

  embedBatch(images: Uint8Array[]): Promise<Float32Array> {
    if (this.dead) return Promise.reject(this.dead);
    const per = this.inputSize * this.inputSize * 3;
    for (const img of images) if (img.length !== per) return Promise.reject(new Error(`expected ${per} bytes per image, got ${img.length}`));
    if (images.length === 0) return Promise.resolve(new Float32Array(0));
    const pixels = new Uint8Array(images.length * per);
    images.forEach((img, i) => pixels.set(img, i * per));
    return this.request({ type: 'embed', id: this.nextId++, n: images.length, pixels }, [pixels.buffer]).then((r) => r.data);
  }

  private request(m: Exclude<ThreadRequest, { type: 'close' }>, transfer: ArrayBuffer[] = []): Promise<StoredEmbeddings> {
    if (this.dead) return Promise.reject(this.dead);
    if (this.closing) return Promise.reject(UNLOADED());
    return new Promise<StoredEmbeddings>((resolve, reject) => {
      this.pending.set(m.id, { resolve, reject });
      this.thread.postMessage(m, transfer);
    });
  }

  async dispose(): Promise<void> {
    this.closing = true;
    const exited = new Promise((r) => this.thread.once('exit', r));
    this.thread.postMessage({ type: 'close' } satisfies ThreadRequest);
    const timer = setTimeout(() => void this.thread.terminate(), 5_000);
    await exited;
    clearTimeout(timer);
  }
}
