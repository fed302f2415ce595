import * as tf from '@tensorflow/tfjs';

/** ImageNet channel means (RGB), the `mean` the Keras weights file ships for B0. */
export const IMAGENET_MEAN_RGB: readonly number[] = [0.485, 0.456, 0.406];
/**
 * ImageNet channel standard deviations (RGB). The Keras weights file stores these in the
 * Normalization layer's `variance` (not their squares), which is why Keras ≥ 2.9 adds `rescaling_1`.
 */
export const IMAGENET_STD_RGB: readonly number[] = [0.229, 0.224, 0.225];

// Keras divides by max(sqrt(variance), epsilon()) so a zero variance cannot produce Inf.
const KERAS_EPSILON = 1e-7;

type LayerArgs = NonNullable<ConstructorParameters<typeof tf.layers.Layer>[0]>;

/** Constructor arguments of {@link Normalization} (also its serialized config). */
export interface NormalizationArgs extends LayerArgs {
  /** Initial per-channel mean; defaults to {@link IMAGENET_MEAN_RGB}. */
  mean?: readonly number[];
  /** Initial per-channel variance; defaults to {@link IMAGENET_STD_RGB} (see its note). */
  variance?: readonly number[];
}

/**
 * TF.js port of the Keras `Normalization` preprocessing layer (axis -1, inference only):
 * `(x − mean) / max(sqrt(variance), 1e-7)`.
 *
 * Weights, in Keras order and with Keras names: `mean` [C], `variance` [C], `count` [] — all
 * non-trainable, as in Keras. Keras stores `count` as int64; TF.js has no int64 so it is an int32
 * variable here (it still counts as one parameter). `count` only matters to Keras' `adapt()`,
 * which this port does not implement, so its value never affects the output.
 */
export class Normalization extends tf.layers.Layer {
  /** Serialization name; equal to the Keras class name so layer summaries match. */
  static className = 'Normalization';

  private readonly initialMean: readonly number[];
  private readonly initialVariance: readonly number[];
  private mean: tf.LayerVariable | null = null;
  private variance: tf.LayerVariable | null = null;

  constructor(args: NormalizationArgs = {}) {
    const { mean, variance, ...layerArgs } = args;
    super(layerArgs);
    this.initialMean = mean ?? IMAGENET_MEAN_RGB;
    this.initialVariance = variance ?? IMAGENET_STD_RGB;
    if (this.initialMean.length !== this.initialVariance.length) {
      throw new Error(
        `Normalization: mean has ${this.initialMean.length} channels but variance has ${this.initialVariance.length}`,
      );
    }
  }

  override build(inputShape: tf.Shape | tf.Shape[]): void {
    const shape = (Array.isArray(inputShape[0]) ? inputShape[0] : inputShape) as tf.Shape;
    const channels = shape[shape.length - 1];
    if (channels !== this.initialMean.length) {
      throw new Error(
        `Normalization '${this.name}': input has ${String(channels)} channels, expected ${this.initialMean.length}`,
      );
    }
    const zeros = tf.initializers.zeros();
    this.mean = this.addWeight('mean', [channels], 'float32', zeros, undefined, false);
    this.variance = this.addWeight('variance', [channels], 'float32', zeros, undefined, false);
    this.addWeight('count', [], 'int32', zeros, undefined, false);
    // TF.js initializers cannot hold a per-channel vector, so write the defaults after creation.
    tf.tidy(() => {
      this.mean?.write(tf.tensor1d([...this.initialMean], 'float32'));
      this.variance?.write(tf.tensor1d([...this.initialVariance], 'float32'));
    });
    this.built = true;
  }

  override computeOutputShape(inputShape: tf.Shape | tf.Shape[]): tf.Shape | tf.Shape[] {
    return inputShape;
  }

  override call(inputs: tf.Tensor | tf.Tensor[]): tf.Tensor {
    return tf.tidy(() => {
      const x = Array.isArray(inputs) ? inputs[0] : inputs;
      if (x === undefined || this.mean === null || this.variance === null) {
        throw new Error(`Normalization '${this.name}' called before build or without an input`);
      }
      const std = tf.maximum(tf.sqrt(this.variance.read()), KERAS_EPSILON);
      return tf.div(tf.sub(tf.cast(x, 'float32'), this.mean.read()), std);
    });
  }

  override getConfig(): tf.serialization.ConfigDict {
    // Keras' config carries axis, plus our initial values so a JSON round trip rebuilds the layer.
    return {
      ...super.getConfig(),
      axis: -1,
      mean: [...this.initialMean],
      variance: [...this.initialVariance],
    };
  }
}

tf.serialization.registerClass(Normalization);
