import * as tf from '@tensorflow/tfjs';

type LayerArgs = NonNullable<ConstructorParameters<typeof tf.layers.Layer>[0]>;

/** Constructor arguments of {@link ChannelRescaling} (also its serialized config). */
export interface ChannelRescalingArgs extends LayerArgs {
  /** Per-channel multiplier, broadcast over the last axis. */
  scale: readonly number[];
  /** Added after scaling; Keras' default is 0. */
  offset?: number;
}

/**
 * Keras `Rescaling` with a per-channel `scale` (`x * scale + offset`), which Keras ≥ 2.9 uses as
 * `rescaling_1` in EfficientNet. TF.js' own `Rescaling` is typed for a scalar scale only.
 *
 * It reports the class name `Rescaling` so the layer table matches Keras, but it is deliberately
 * not registered for deserialization: that would replace TF.js' `Rescaling` for every model in
 * the process. Its config is the one Keras writes, and TF.js' `Rescaling` applies it correctly
 * (`mul` broadcasts an array scale), so a JSON round trip still rebuilds an equivalent model.
 */
export class ChannelRescaling extends tf.layers.Layer {
  /** Keras class name, so summaries and the reference layer table agree. */
  static className = 'Rescaling';

  private readonly scale: readonly number[];
  private readonly offset: number;

  constructor(args: ChannelRescalingArgs) {
    const { scale, offset, ...layerArgs } = args;
    super(layerArgs);
    this.scale = [...scale];
    this.offset = offset ?? 0;
  }

  override computeOutputShape(inputShape: tf.Shape | tf.Shape[]): tf.Shape | tf.Shape[] {
    return inputShape;
  }

  override call(inputs: tf.Tensor | tf.Tensor[]): tf.Tensor {
    return tf.tidy(() => {
      const x = Array.isArray(inputs) ? inputs[0] : inputs;
      if (x === undefined) throw new Error(`Rescaling '${this.name}' called without an input`);
      const scaled = tf.mul(tf.cast(x, 'float32'), tf.tensor1d([...this.scale], 'float32'));
      return this.offset === 0 ? scaled : tf.add(scaled, this.offset);
    });
  }

  override getConfig(): tf.serialization.ConfigDict {
    return { ...super.getConfig(), scale: [...this.scale], offset: this.offset };
  }
}
