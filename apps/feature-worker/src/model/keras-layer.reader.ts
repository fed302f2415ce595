import type * as tf from '@tensorflow/tfjs';

/**
 * A model the ONNX exporter cannot translate exactly: an unknown layer class, a configuration
 * it does not handle, or a topology it cannot fold. Retrying cannot help.
 */
export class OnnxExportError extends Error {
  override name = 'OnnxExportError';
}

/** A layer's serialised config, read field by field with checks that name the layer. */
export class LayerConfig {
  private readonly config: Record<string, unknown>;

  constructor(readonly layer: tf.layers.Layer) {
    this.config = layer.getConfig() as Record<string, unknown>;
  }

  /** An error naming the layer, its class and the offending setting. */
  error(message: string): OnnxExportError {
    return new OnnxExportError(`cannot export layer '${this.layer.name}' (${this.layer.getClassName()}): ${message}`);
  }

  raw(key: string): unknown {
    return this.config[key];
  }

  string(key: string, fallback?: string): string {
    const value = this.config[key] ?? fallback;
    if (typeof value !== 'string') throw this.error(`config '${key}' is ${JSON.stringify(value)}, expected a string`);
    return value;
  }

  number(key: string, fallback?: number): number {
    const value = this.config[key] ?? fallback;
    if (typeof value !== 'number' || !Number.isFinite(value)) {
      throw this.error(`config '${key}' is ${JSON.stringify(value)}, expected a number`);
    }
    return value;
  }

  boolean(key: string, fallback?: boolean): boolean {
    const value = this.config[key] ?? fallback;
    if (typeof value !== 'boolean') throw this.error(`config '${key}' is ${JSON.stringify(value)}, expected a boolean`);
    return value;
  }

  /** A 2-D size (kernel, strides, dilation): TF.js accepts a number for both axes. */
  pair(key: string): [number, number] {
    const value = this.config[key];
    if (typeof value === 'number') return [value, value];
    if (Array.isArray(value) && value.length === 2 && value.every((v) => Number.isInteger(v))) {
      return [value[0] as number, value[1] as number];
    }
    throw this.error(`config '${key}' is ${JSON.stringify(value)}, expected two integers`);
  }

  /** A number or per-channel numbers, broadcast to `channels` entries (Keras Rescaling). */
  channelVector(key: string, channels: number, fallback: number): Float64Array {
    const value = this.config[key] ?? fallback;
    const list = typeof value === 'number' ? [value] : value;
    if (!Array.isArray(list) || !list.every((v) => typeof v === 'number' && Number.isFinite(v))) {
      throw this.error(`config '${key}' is ${JSON.stringify(value)}, expected a number or an array of numbers`);
    }
    if (list.length !== 1 && list.length !== channels) {
      throw this.error(`config '${key}' has ${list.length} values for ${channels} channels`);
    }
    return Float64Array.from({ length: channels }, (_, i) => (list.length === 1 ? list[0] : list[i]) as number);
  }

  /** Requires channels-last data, the only layout the exporter transposes from. */
  requireChannelsLast(): void {
    const format = this.string('dataFormat', 'channelsLast');
    if (format !== 'channelsLast') throw this.error(`dataFormat '${format}' (only channelsLast is handled)`);
  }
}

/**
 * Reads one weight of `layer` by its Keras name (`kernel`, `gamma`, …) as float64, checking its
 * shape. Variables are read in place: `read()` returns the variable itself, which must not be
 * disposed.
 */
export function readWeight(layer: tf.layers.Layer, name: string, shape: readonly number[]): Float64Array {
  const variable = layer.weights.find((w) => w.originalName.split('/').pop() === name);
  if (variable === undefined) {
    throw new OnnxExportError(`cannot export layer '${layer.name}' (${layer.getClassName()}): it has no weight '${name}'`);
  }
  if (variable.shape.length !== shape.length || variable.shape.some((d, i) => d !== shape[i])) {
    throw new OnnxExportError(
      `cannot export layer '${layer.name}': weight '${name}' has shape [${variable.shape.join(', ')}], ` +
        `expected [${shape.join(', ')}]`,
    );
  }
  return Float64Array.from(variable.read().dataSync());
}

/** TF.js Conv2D kernel [kh, kw, in, out] → ONNX Conv weight [out, in, kh, kw]. */
export function convKernelToOnnx(kernel: Float64Array, kh: number, kw: number, cin: number, cout: number): Float64Array {
  const out = new Float64Array(kernel.length);
  for (let y = 0; y < kh; y += 1) {
    for (let x = 0; x < kw; x += 1) {
      for (let i = 0; i < cin; i += 1) {
        const from = ((y * kw + x) * cin + i) * cout;
        for (let o = 0; o < cout; o += 1) out[((o * cin + i) * kh + y) * kw + x] = kernel[from + o] ?? NaN;
      }
    }
  }
  return out;
}

/** TF.js DepthwiseConv2D kernel [kh, kw, C, 1] → ONNX grouped Conv weight [C, 1, kh, kw]. */
export function depthwiseKernelToOnnx(kernel: Float64Array, kh: number, kw: number, channels: number): Float64Array {
  const out = new Float64Array(kernel.length);
  for (let y = 0; y < kh; y += 1) {
    for (let x = 0; x < kw; x += 1) {
      for (let c = 0; c < channels; c += 1) out[(c * kh + y) * kw + x] = kernel[(y * kw + x) * channels + c] ?? NaN;
    }
  }
  return out;
}

/** BatchNormalization at inference as `x · scale + shift` per channel, computed in float64. */
export interface ChannelAffine {
  scale: Float64Array;
  shift: Float64Array;
}

/**
 * A channels-last BatchNormalization's inference transform:
 * `γ (x − moving_mean) / sqrt(moving_variance + ε) + β`, with γ = 1 / β = 0 when the layer was
 * built without `scale` / `center`, as TF.js does.
 */
export function batchNormAffine(layer: tf.layers.Layer, channels: number): ChannelAffine {
  const config = new LayerConfig(layer);
  const axis = config.number('axis', -1);
  if (axis !== -1 && axis !== 3) throw config.error(`axis ${axis} (only the channel axis, -1 or 3, is handled)`);
  const epsilon = config.number('epsilon');
  const gamma = config.boolean('scale', true) ? readWeight(layer, 'gamma', [channels]) : null;
  const beta = config.boolean('center', true) ? readWeight(layer, 'beta', [channels]) : null;
  const mean = readWeight(layer, 'moving_mean', [channels]);
  const variance = readWeight(layer, 'moving_variance', [channels]);
  const scale = new Float64Array(channels);
  const shift = new Float64Array(channels);
  for (let c = 0; c < channels; c += 1) {
    scale[c] = (gamma?.[c] ?? 1) / Math.sqrt((variance[c] ?? NaN) + epsilon);
    shift[c] = (beta?.[c] ?? 0) - (mean[c] ?? NaN) * (scale[c] ?? NaN);
  }
  return { scale, shift };
}
