import * as tf from '@tensorflow/tfjs';

// TF.js' VarianceScaling 'normal' draws from a normal truncated at 2σ without Keras' correction,
// so the result's stddev is this factor times the requested one; the scale divides it out.
const TRUNCATED_NORMAL_STDDEV_FACTOR = 0.87962566103423978;
// E[swish(z)²] for z ~ N(0, 1): what a swish keeps of a unit-variance signal's second moment.
const SWISH_SECOND_MOMENT = 0.3558;
// The squeeze-excite gate starts near sigmoid(0) = 0.5, so it keeps about a quarter of it again.
const SE_GATE_SECOND_MOMENT = 0.25;

/**
 * Kernel gains (variance × fan-in) for random initial weights. Keras initialises conv kernels
 * with VarianceScaling(2, fan_out), which is fine when training re-normalises with batch
 * statistics, but at inference with identity BatchNorm (mean 0, variance 1) it shrinks the signal
 * about 8× per block, and the 1280-d output of a random net would be ~1e-5. These gains instead
 * keep every pre-activation near unit variance, so a randomly initialised model (for tests and
 * benchmarks without the ImageNet file) produces embeddings of ordinary magnitude.
 */
export const KERNEL_GAIN = {
  /** After a linear tensor (the normalised image, a block input): keep the variance. */
  afterLinear: 1,
  /** After a swish: undo what the swish removed. */
  afterSwish: 1 / SWISH_SECOND_MOMENT,
  /** `se_expand`: small on purpose, so every SE gate starts near sigmoid(0) = 0.5. */
  seGate: 0.1,
  /** `project_conv` sees swish × SE gate. */
  afterGatedSwish: 1 / (SWISH_SECOND_MOMENT * SE_GATE_SECOND_MOMENT),
} as const;

/**
 * Extra factor on a residual block's `project_conv` gain. A residual branch at full variance
 * would double the variance at each of the 9 `add`s (×512); at a tenth the nine grow it < 3×.
 */
export const RESIDUAL_BRANCH_VARIANCE = 0.1;

/**
 * A truncated-normal kernel initializer with variance `gain / fan`, seeded per layer when `seed`
 * is given (see {@link layerSeed}), unseeded otherwise.
 */
export function kernelInitializer(
  seed: number | undefined,
  layerName: string,
  gain: number,
  mode: 'fanIn' | 'fanOut',
): ReturnType<typeof tf.initializers.varianceScaling> {
  return tf.initializers.varianceScaling({
    scale: gain / TRUNCATED_NORMAL_STDDEV_FACTOR ** 2,
    mode,
    distribution: 'normal',
    ...(seed === undefined ? {} : { seed: layerSeed(seed, layerName) }),
  });
}

/**
 * A per-layer seed from the model seed and the layer name (FNV-1a), so layers do not share a
 * random stream and a layer's initial weights do not depend on how many layers precede it.
 */
export function layerSeed(seed: number, layerName: string): number {
  let hash = 0x811c9dc5;
  for (const char of `${seed}/${layerName}`) {
    hash ^= char.charCodeAt(0);
    hash = Math.imul(hash, 0x01000193) >>> 0;
  }
  // TF.js treats a falsy seed as "no seed".
  return hash === 0 ? 1 : hash;
}
