import type { TfRuntime } from '@transferline/shared/tf';
import { buildEfficientNetB0, EFFICIENTNET_B0_EMBEDDING_DIM, EFFICIENTNET_B0_INPUT_SIZE } from './model/efficientnet-b0.model.js';

/** The model behind one module, with one verb: pixels in, embeddings out. */
export interface Embedder {
  readonly inputSize: number;
  readonly dim: number;
  /** Row-major [n, dim] embeddings of n images, each size×size×3 uint8 RGB. */
  embedBatch(images: Uint8Array[]): Float32Array;
  dispose(): void;
}

/**
 * EfficientNet-B0 (ImageNet normalisation inside the graph). The uint8 pixels go to the device
 * as they are and are cast to float there, so host-to-device traffic is 4× smaller.
 */
export function createEfficientNetEmbedder(rt: TfRuntime, options: { seed: number }): Embedder {
  const { tf } = rt;
  const model = buildEfficientNetB0({ seed: options.seed });
  const size = EFFICIENTNET_B0_INPUT_SIZE;
  const pixelsPerImage = size * size * 3;
  return {
    inputSize: size,
    dim: EFFICIENTNET_B0_EMBEDDING_DIM,
    embedBatch(images) {
      for (const img of images) {
        if (img.length !== pixelsPerImage) throw new Error(`expected ${pixelsPerImage} bytes per image, got ${img.length}`);
      }
      return tf.tidy(() => {
        const flat = new Uint8Array(images.length * pixelsPerImage);
        images.forEach((img, i) => flat.set(img, i * pixelsPerImage));
        const x = tf.tensor4d(flat, [images.length, size, size, 3], 'int32').toFloat();
        const y = model.predict(x) as import('@tensorflow/tfjs').Tensor;
        return y.dataSync() as Float32Array;
      });
    },
    dispose() {
      model.dispose();
    },
  };
}
