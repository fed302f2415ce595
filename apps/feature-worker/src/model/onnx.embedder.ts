import * as ort from 'onnxruntime-node';
import { EFFICIENTNET_B0_EMBEDDING_DIM, EFFICIENTNET_B0_INPUT_SIZE } from './efficientnet-b0.constants.js';
import { ONNX_INPUT_NAME, ONNX_OUTPUT_NAME } from './onnx-export.js';

/**
 * EfficientNet-B0 on ONNX Runtime (CPU), with the same shape as the TF.js `Embedder`:
 * pixels in, embeddings out.
 */
export interface OnnxEmbedder {
  readonly inputSize: number;
  readonly dim: number;
  /**
   * Row-major [n, dim] embeddings of n images, each size×size×3 uint8 RGB (HWC).
   * ORT's run is synchronous native code: it blocks the Node event loop for the whole batch.
   */
  embedBatch(images: Uint8Array[]): Promise<Float32Array>;
  /** Releases the native session; the embedder must not be used afterwards. */
  dispose(): Promise<void>;
}

/** Options of {@link createOnnxEmbedder}. */
export interface OnnxEmbedderOptions {
  /** ORT intra-op threads: the threads one batch is spread over. */
  intraOpThreads: number;
  /** Side of the square input the model was exported for (default 224). */
  inputSize?: number;
  /** The output to return, for models with a head (default `embedding`, 1280 wide). */
  output?: { name: string; dim: number };
  /**
   * Let ORT's pool threads spin between work items, as ORT does by default (default false).
   * Alone on the machine that is faster at batch 1; in the embed stage, beside the worker's own
   * thread, Redis and S3 on the same cores, it was slower (measured on 2 cores: 69–79 against
   * 80–94 img/s at batch 1) and no faster at batch 8 or 32. The benchmark uses it to compare
   * graphs under ORT's defaults.
   */
  spinning?: boolean;
}

/**
 * Opens an ONNX model made by `exportEfficientNetB0ToOnnx` (input `pixels` uint8 [N, S, S, 3],
 * output `embedding` float32 [N, 1280]) on ORT's CPU provider with full graph optimisation.
 *
 * @throws Error if the model's input or output is not what the exporter writes, or if its input
 *   size differs from `inputSize`.
 */
export async function createOnnxEmbedder(modelBytes: Uint8Array, o: OnnxEmbedderOptions): Promise<OnnxEmbedder> {
  const size = o.inputSize ?? EFFICIENTNET_B0_INPUT_SIZE;
  const output = o.output ?? { name: ONNX_OUTPUT_NAME, dim: EFFICIENTNET_B0_EMBEDDING_DIM };
  if (!Number.isInteger(o.intraOpThreads) || o.intraOpThreads < 1) {
    throw new Error(`intraOpThreads must be a positive integer, got ${o.intraOpThreads}`);
  }
  const session = await ort.InferenceSession.create(modelBytes, {
    executionProviders: ['cpu'],
    graphOptimizationLevel: 'all',
    intraOpNumThreads: o.intraOpThreads,
    // The graph is one chain: inter-op parallelism would only add threads that contend with intra-op ones.
    interOpNumThreads: 1,
    executionMode: 'sequential',
    // ORT's pool threads spin between work items by default; beside the worker's own thread,
    // Redis and the S3 client on the same cores, that spinning takes the CPU they need.
    ...(!o.spinning && { extra: { session: { intra_op: { allow_spinning: '0' }, inter_op: { allow_spinning: '0' } } } }),
  });
  try {
    checkSignature(session, size, output);
  } catch (error) {
    await session.release();
    throw error;
  }

  const bytesPerImage = size * size * 3;
  const dim = output.dim;
  // The batch input, kept from one call to the next: a fresh megabytes-large buffer per batch
  // is external memory that sets off V8's full collections (every ~0.5 s at batch 8).
  let input: Uint8Array | undefined;
  let inputBusy = false;
  return {
    inputSize: size,
    dim,
    async embedBatch(images) {
      images.forEach((image, i) => {
        if (image.length !== bytesPerImage) {
          throw new Error(
            `image ${i} of ${images.length} has ${image.length} bytes, ` +
              `expected ${bytesPerImage} (${size}×${size}×3 uint8 RGB)`,
          );
        }
      });
      if (images.length === 0) return new Float32Array(0);
      // One tensor for the whole batch: a single image is fed as is, several are copied once into
      // the kept buffer (a new one while a call that overlaps this one holds it).
      let batch: Uint8Array;
      let holds = false;
      if (images.length === 1) batch = images[0] as Uint8Array;
      else if (inputBusy) batch = concat(images, bytesPerImage, new Uint8Array(images.length * bytesPerImage));
      else {
        const need = images.length * bytesPerImage;
        if (!input || input.length < need) input = new Uint8Array(need);
        batch = concat(images, bytesPerImage, input.subarray(0, need));
        inputBusy = holds = true;
      }
      let results: ort.InferenceSession.OnnxValueMapType;
      try {
        results = await session.run({ [ONNX_INPUT_NAME]: new ort.Tensor('uint8', batch, [images.length, size, size, 3]) });
      } finally {
        if (holds) inputBusy = false;
      }
      const result = results[output.name];
      if (result === undefined || result.type !== 'float32' || result.data.length !== images.length * dim) {
        throw new Error(
          `ONNX model returned ${result === undefined ? 'no' : `${result.type} [${result.dims.join(', ')}]`} ` +
            `'${output.name}', expected float32 [${images.length}, ${dim}]`,
        );
      }
      return result.data as Float32Array;
    },
    async dispose() {
      await session.release();
    },
  };
}

function concat(images: Uint8Array[], bytesPerImage: number, into: Uint8Array): Uint8Array {
  images.forEach((image, i) => into.set(image, i * bytesPerImage));
  return into;
}

function checkSignature(session: ort.InferenceSession, size: number, expected: { name: string; dim: number }): void {
  const input = session.inputMetadata.find((m) => m.name === ONNX_INPUT_NAME);
  const output = session.outputMetadata.find((m) => m.name === expected.name);
  const problems: string[] = [];
  if (input === undefined || !input.isTensor) {
    problems.push(`no tensor input '${ONNX_INPUT_NAME}' (inputs: ${session.inputNames.join(', ')})`);
  } else {
    const [, height, width, channels] = input.shape;
    if (input.type !== 'uint8' || input.shape.length !== 4 || channels !== 3) {
      problems.push(`input '${ONNX_INPUT_NAME}' is ${input.type} [${input.shape.join(', ')}], expected uint8 [N, S, S, 3]`);
    } else if (height !== size || width !== size) {
      problems.push(`input '${ONNX_INPUT_NAME}' is ${String(height)}×${String(width)}, but inputSize is ${size}`);
    }
  }
  if (output === undefined || !output.isTensor) {
    problems.push(`no tensor output '${expected.name}' (outputs: ${session.outputNames.join(', ')})`);
  } else if (output.type !== 'float32' || output.shape[1] !== expected.dim) {
    problems.push(`output '${expected.name}' is ${output.type} [${output.shape.join(', ')}], expected float32 [N, ${expected.dim}]`);
  }
  if (problems.length > 0) throw new Error(`not an EfficientNet-B0 model of this shape: ${problems.join('; ')}`);
}
