import { randomBytes } from 'node:crypto';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { createOnnxEmbedder, type OnnxEmbedder } from '@transferline/feature-worker/model/onnx.embedder';

/**
 * The raw forward pass as an embed worker with several streams runs it: one ONNX Runtime
 * session per thread, each with its share of the intra-op threads, all computing at once on
 * pixels they already hold (no Redis, no queue). The ceiling of the embed stage with streams.
 */
export class RawStreams {
  private constructor(private readonly threads: Worker[]) {}

  /**
   * Starts one thread per entry of `shares` (its intra-op threads), each with a session of
   * `onnx`; `output`: the output to read, for a model with a head (default the embedding).
   */
  static async start(onnx: Uint8Array, shares: number[], output?: { name: string; dim: number }): Promise<RawStreams> {
    const threads = shares.map((intraOpThreads) => new Worker(new URL(import.meta.url), { workerData: { onnx, intraOpThreads, ...(output && { output }) } satisfies Spec }));
    const streams = new RawStreams(threads);
    try {
      await streams.all({ type: 'ping' });
    } catch (err) {
      await streams.dispose();
      throw err;
    }
    return streams;
  }

  /** A few untimed passes of `batch` on each stream: the first runs at a new size are slow. */
  async warm(batch: number): Promise<void> {
    await this.all({ type: 'warm', batch });
  }

  /**
   * images/s of all streams together on batches of `batch`, each stream running for about
   * `seconds`: every image over one window, from the first stream's start to the last one's end
   * (a stream that ends last runs alone for a while); and the images embedded.
   */
  async run(batch: number, seconds: number): Promise<{ rate: number; images: number }> {
    const runs = (await this.all({ type: 'run', batch, seconds })) as { images: number; start: number; end: number }[];
    const images = runs.reduce((sum, r) => sum + r.images, 0);
    const window = Math.max(...runs.map((r) => r.end)) - Math.min(...runs.map((r) => r.start));
    return { rate: images / (window / 1000), images };
  }

  private all(m: Request): Promise<unknown[]> {
    return Promise.all(
      this.threads.map(
        (t) =>
          new Promise((resolve, reject) => {
            const onError = (err: Error) => reject(err);
            t.once('error', onError);
            t.once('message', (r: unknown) => {
              t.off('error', onError);
              resolve(r);
            });
            t.postMessage(m);
          }),
      ),
    );
  }

  async dispose(): Promise<void> {
    await Promise.all(this.threads.map((t) => t.terminate()));
  }
}

interface Spec {
  onnx: Uint8Array;
  intraOpThreads: number;
  output?: { name: string; dim: number };
}
type Request = { type: 'ping' } | { type: 'warm'; batch: number } | { type: 'run'; batch: number; seconds: number };

async function serve(spec: Spec): Promise<void> {
  const port = parentPort!;
  let embedder: OnnxEmbedder | undefined;
  const pool = Array.from({ length: 32 }, () => new Uint8Array(randomBytes(224 * 224 * 3)));
  port.on('message', (m: Request) => {
    void (async () => {
      embedder ??= await createOnnxEmbedder(spec.onnx, { intraOpThreads: spec.intraOpThreads, ...(spec.output && { output: spec.output }) });
      if (m.type === 'warm') for (let i = 0; i < 3; i++) await embedder.embedBatch(pool.slice(0, m.batch));
      if (m.type !== 'run') return port.postMessage('ok');
      // on the process's clock (each thread's performance.now() has an origin of its own)
      const now = () => performance.timeOrigin + performance.now();
      const start = now();
      let images = 0;
      while (now() - start < m.seconds * 1000) {
        await embedder.embedBatch(pool.slice(0, m.batch));
        images += m.batch;
      }
      port.postMessage({ images, start, end: now() });
    })();
  });
}

if (!isMainThread && (workerData as Partial<Spec> | undefined)?.onnx) void serve(workerData as Spec);
