import type * as tfTypes from '@tensorflow/tfjs';
import type { TfRuntime } from '@transferline/shared/tf';
import { buildEfficientNetB0, EFFICIENTNET_B0_EMBEDDING_DIM, EFFICIENTNET_B0_INPUT_SIZE } from './model/efficientnet-b0.model.js';
import { loadKerasH5Weights } from './model/keras-h5-weights.loader.js';

/** The model behind one module, with one verb: pixels in, embeddings out. */
export interface Embedder {
  readonly inputSize: number;
  readonly dim: number;
  /** forward passes it runs at once (default 1): callers keep that many batches, and one more, on hand */
  readonly streams?: number;
  /** Row-major [n, dim] embeddings of n images, each size×size×3 uint8 RGB. */
  embedBatch(images: Uint8Array[]): Promise<Float32Array>;
  /**
   * Reads the pixels preprocess stored for `space` and `sha256s` and embeds them, where the
   * forward pass runs (an embed thread with its own Redis connection), so the worker's main
   * thread never holds them. The same read looks each hash up in the space's index: those found
   * are reported in `cached` and not embedded (a job run twice, or an image embedded meanwhile),
   * at no extra round trip. `sizes` is TensorStore.getBatch's; `data` has one row per image of
   * the right size, in order. Absent: the caller reads the pixels and calls embedBatch.
   */
  embedStored?(space: string, sha256s: string[]): Promise<StoredEmbeddings>;
  dispose(): void | Promise<void>;
}

export interface StoredEmbeddings {
  sizes: number[];
  data: Float32Array;
  /** per hash, whether its embedding is in the index (then it has no row in `data`) */
  cached: boolean[];
  /** the forward pass's own time, without waiting for the pass before it or reading the pixels */
  seconds?: number;
}

export interface EmbedderOptions {
  /** seed of the initial weights (what runs when no weights file is given) */
  seed: number;
  /** a Keras `efficientnetb0_notop.h5` (legacy HDF5 layout) to load */
  weights?: Uint8Array;
  /** input side; 224 for the ImageNet model, smaller only in tests */
  inputSize?: number;
}

/**
 * EfficientNet-B0 (ImageNet normalisation inside the graph). The uint8 pixels go to the device
 * as int32 and are cast to float there, so host-to-device traffic stays small; every
 * intermediate tensor is released by tidy().
 */
export async function createEfficientNetEmbedder(rt: TfRuntime, options: EmbedderOptions): Promise<Embedder> {
  const { tf } = rt;
  const size = options.inputSize ?? EFFICIENTNET_B0_INPUT_SIZE;
  const model = buildEfficientNetB0({ seed: options.seed, inputSize: size });
  if (options.weights) await loadKerasH5Weights(model, options.weights);
  const pixelsPerImage = size * size * 3;
  return {
    inputSize: size,
    dim: EFFICIENTNET_B0_EMBEDDING_DIM,
    async embedBatch(images) {
      for (const img of images) {
        if (img.length !== pixelsPerImage) throw new Error(`expected ${pixelsPerImage} bytes per image, got ${img.length}`);
      }
      return tf.tidy(() => {
        const flat = new Int32Array(images.length * pixelsPerImage);
        images.forEach((img, i) => flat.set(img, i * pixelsPerImage));
        const x = tf.tensor4d(flat, [images.length, size, size, 3], 'int32').toFloat();
        // (predict's own passes of 32 at most: a batch of hundreds in one pass would hold gigabytes of activations)
        const y = model.predict(x) as tfTypes.Tensor;
        return y.dataSync() as Float32Array;
      });
    },
    dispose() {
      model.dispose();
    },
  };
}
