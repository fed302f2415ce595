import type * as tf from '@tensorflow/tfjs';
import {
  batchNormAffine,
  convKernelToOnnx,
  depthwiseKernelToOnnx,
  LayerConfig,
  OnnxExportError,
  readWeight,
} from './keras-layer.reader.js';
import { type OnnxGraphBuilder } from './onnx-graph.builder.js';

// How each Keras layer class becomes ONNX nodes. Values stay "pending" (a preprocessing affine,
// zero padding, an un-emitted conv) until a reader forces them, which is what lets consecutive
// affines collapse, padding move into a conv's pads and a BatchNormalization fold into its conv.

// Keras' Normalization divides by max(sqrt(variance), epsilon()).
const KERAS_EPSILON = 1e-7;

/** A materialised ONNX value. `pooled`: Keras [N, C] held as ONNX [N, C, 1, 1]. */
export interface Plain {
  kind: 'plain';
  name: string;
  form: 'spatial' | 'pooled';
  channels: number;
}
/** A per-channel affine (preprocessing) not yet emitted, so consecutive ones collapse into one. */
interface Affine {
  kind: 'affine';
  source: Plain;
  scale: Float64Array;
  offset: Float64Array;
  name: string;
  label: string;
}
/** Zero padding waiting for the convolution that absorbs it into its `pads`. */
interface Padded {
  kind: 'padded';
  source: Plain;
  /** ONNX order: [top, left, bottom, right]. */
  pads: number[];
  layer: string;
}
/** A convolution not yet emitted, so a following BatchNormalization can fold into it. */
interface ConvPlan {
  kind: 'conv';
  /** Keras layer whose output this is; a BatchNormalization may fold only into its direct input. */
  owner: string;
  label: string;
  input: string;
  channels: number;
  weight: Float64Array;
  weightDims: number[];
  bias: Float64Array | null;
  pads: number[];
  strides: number[];
  group: number;
  activation: ActivationName;
}
export type Value = Plain | Affine | Padded | ConvPlan;
type ActivationName = 'linear' | 'swish' | 'sigmoid';

/** State shared by the translators while one model is exported. */
export interface TranslationContext {
  graph: OnnxGraphBuilder;
  /** How many layers (and model outputs) read each layer's output. */
  consumers: Map<string, number>;
  materialised: Map<Value, Plain>;
}

/** Translates one layer call given its translated inputs (and their Keras layer names). */
type Handler = (layer: tf.layers.Layer, inputs: Value[], ctx: TranslationContext, inbound: string[]) => Value;

/** The layer classes the exporter handles, by Keras/TF.js class name. */
export const LAYER_TRANSLATORS: Readonly<Record<string, Handler>> = {
  Rescaling: (layer, inputs, ctx) => rescaling(layer, one(layer, inputs), ctx),
  Normalization: (layer, inputs, ctx) => normalization(layer, one(layer, inputs), ctx),
  ZeroPadding2D: (layer, inputs, ctx) => zeroPadding(layer, one(layer, inputs), ctx),
  Conv2D: (layer, inputs, ctx) => convolution(layer, one(layer, inputs), ctx, false),
  DepthwiseConv2D: (layer, inputs, ctx) => convolution(layer, one(layer, inputs), ctx, true),
  BatchNormalization: (layer, inputs, ctx, inbound) => foldBatchNorm(layer, one(layer, inputs), ctx, inbound),
  Activation: (layer, inputs, ctx) => activationLayer(layer, one(layer, inputs), ctx),
  GlobalAveragePooling2D: (layer, inputs, ctx) => globalAveragePool(layer, one(layer, inputs), ctx),
  Reshape: (layer, inputs, ctx) => reshape(layer, one(layer, inputs), ctx),
  Multiply: (layer, inputs, ctx) => elementwise(layer, inputs, ctx, 'Mul'),
  Add: (layer, inputs, ctx) => elementwise(layer, inputs, ctx, 'Add'),
  // Inactive at inference: the identity.
  Dropout: (layer, inputs) => one(layer, inputs),
};

/** The single input of a one-input layer. */
export function one(layer: tf.layers.Layer, inputs: Value[]): Value {
  const [input, ...more] = inputs;
  if (input === undefined || more.length > 0) {
    throw new OnnxExportError(`cannot export layer '${layer.name}': ${inputs.length} inputs, expected 1`);
  }
  return input;
}

/** Emits a pending value (once, however many layers read it) and returns its ONNX name. */
export function materialise(value: Value, ctx: TranslationContext, consumer: string): Plain {
  if (value.kind === 'plain') return value;
  const done = ctx.materialised.get(value);
  if (done !== undefined) return done;
  const { graph } = ctx;
  let plain: Plain;
  if (value.kind === 'padded') {
    throw new OnnxExportError(
      `cannot export ZeroPadding2D '${value.layer}': it feeds ${consumer}, ` +
        'but only a Conv2D or DepthwiseConv2D can absorb its padding',
    );
  } else if (value.kind === 'affine') {
    const dims = [1, value.source.channels, 1, 1];
    const scale = graph.addInitializer(`${value.name}/scale`, dims, value.scale);
    const offset = graph.addInitializer(`${value.name}/offset`, dims, value.offset);
    const scaled = graph.addNode('Mul', `${value.label}/mul`, [value.source.name, scale], [`${value.name}/scaled`]);
    const name = graph.addNode('Add', `${value.label}/add`, [scaled, offset], [value.name]);
    plain = { kind: 'plain', name, form: 'spatial', channels: value.source.channels };
  } else {
    const weight = graph.addInitializer(`${value.owner}/W`, value.weightDims, value.weight);
    const bias = value.bias === null ? [] : [graph.addInitializer(`${value.owner}/B`, [value.channels], value.bias)];
    const [, , kh = 1, kw = 1] = value.weightDims;
    const convOut = value.activation === 'linear' ? value.owner : `${value.owner}/preact`;
    graph.addNode('Conv', value.label, [value.input, weight, ...bias], [convOut], {
      kernel_shape: { ints: [kh, kw] },
      strides: { ints: value.strides },
      pads: { ints: value.pads },
      group: { int: value.group },
    });
    const name = emitActivation(ctx, convOut, value.activation, value.owner);
    plain = { kind: 'plain', name, form: 'spatial', channels: value.channels };
  }
  ctx.materialised.set(value, plain);
  return plain;
}

function emitActivation(ctx: TranslationContext, input: string, activation: ActivationName, out: string): string {
  if (activation === 'linear') return input;
  if (activation === 'sigmoid') return ctx.graph.addNode('Sigmoid', `${out}/sigmoid`, [input], [out]);
  // TF.js swish is x · sigmoid(x) (β = 1); ORT fuses the pair where it can.
  const gate = ctx.graph.addNode('Sigmoid', `${out}/sigmoid`, [input], [`${out}/gate`]);
  return ctx.graph.addNode('Mul', `${out}/swish`, [input, gate], [out]);
}

function parseActivation(config: LayerConfig, key: string): ActivationName {
  const name = config.string(key, 'linear');
  if (name !== 'linear' && name !== 'swish' && name !== 'sigmoid') {
    throw config.error(`activation '${name}' (only linear, swish, sigmoid)`);
  }
  return name;
}

function spatial(value: Value, ctx: TranslationContext, layer: tf.layers.Layer): Plain {
  const plain = materialise(value, ctx, `'${layer.name}'`);
  if (plain.form !== 'spatial') {
    throw new LayerConfig(layer).error('its input is a pooled [N, C] tensor, expected [N, H, W, C]');
  }
  return plain;
}

/** Per-channel `x · scale + offset` of one preprocessing layer, for `channels` channels. */
type ChannelTransform = (channels: number) => { scale: Float64Array; offset: Float64Array };

function addAffine(layer: tf.layers.Layer, input: Value, ctx: TranslationContext, transform: ChannelTransform): Affine {
  // Compose with a pending affine instead of emitting it: rescaling → normalization → rescaling_1 is one Mul + Add.
  const prior = input.kind === 'affine' ? input : null;
  const source = prior?.source ?? spatial(input, ctx, layer);
  const { scale, offset } = transform(source.channels);
  return {
    kind: 'affine',
    source,
    scale: scale.map((s, c) => (prior?.scale[c] ?? 1) * s),
    offset: offset.map((o, c) => (prior?.offset[c] ?? 0) * (scale[c] ?? NaN) + o),
    name: layer.name,
    label: prior === null ? layer.name : `${prior.label}+${layer.name}`,
  };
}

function rescaling(layer: tf.layers.Layer, input: Value, ctx: TranslationContext): Value {
  const config = new LayerConfig(layer);
  return addAffine(layer, input, ctx, (c) => ({
    scale: config.channelVector('scale', c, 1),
    offset: config.channelVector('offset', c, 0),
  }));
}

function normalization(layer: tf.layers.Layer, input: Value, ctx: TranslationContext): Value {
  const config = new LayerConfig(layer);
  const axis = config.raw('axis') ?? -1;
  if (axis !== -1 && axis !== 3) throw config.error(`axis ${JSON.stringify(axis)} (only the channel axis is handled)`);
  // Our Normalization layer: (x − mean) / max(sqrt(variance), ε), from its weights, not its config.
  return addAffine(layer, input, ctx, (c) => {
    const mean = readWeight(layer, 'mean', [c]);
    const scale = readWeight(layer, 'variance', [c]).map((v) => 1 / Math.max(Math.sqrt(v), KERAS_EPSILON));
    return { scale, offset: mean.map((m, i) => -m * (scale[i] ?? NaN)) };
  });
}

function zeroPadding(layer: tf.layers.Layer, input: Value, ctx: TranslationContext): Value {
  const config = new LayerConfig(layer);
  config.requireChannelsLast();
  const padding = config.raw('padding');
  const ok = (p: unknown): p is [number, number] =>
    Array.isArray(p) && p.length === 2 && p.every((v) => Number.isInteger(v) && v >= 0);
  if (!Array.isArray(padding) || padding.length !== 2 || !ok(padding[0]) || !ok(padding[1])) {
    throw config.error(`padding ${JSON.stringify(padding)}, expected [[top, bottom], [left, right]]`);
  }
  const [[top, bottom], [left, right]] = padding as [[number, number], [number, number]];
  const source = input.kind === 'padded' ? input.source : spatial(input, ctx, layer);
  const before = input.kind === 'padded' ? input.pads : [0, 0, 0, 0];
  const pads = [top, left, bottom, right].map((p, i) => p + (before[i] ?? 0));
  return { kind: 'padded', source, pads, layer: layer.name };
}

function convolution(layer: tf.layers.Layer, input: Value, ctx: TranslationContext, depthwise: boolean): ConvPlan {
  const config = new LayerConfig(layer);
  config.requireChannelsLast();
  const [kh, kw] = config.pair('kernelSize');
  const strides = config.pair('strides');
  const dilation = config.pair('dilationRate');
  if (dilation[0] !== 1 || dilation[1] !== 1) {
    throw config.error(`dilationRate [${dilation.join(', ')}] (only 1 is handled)`);
  }
  const source = input.kind === 'padded' ? input.source : spatial(input, ctx, layer);
  const pads = input.kind === 'padded' ? [...input.pads] : [0, 0, 0, 0];
  const padding = config.string('padding');
  if (padding === 'same') {
    // TF 'same' depends on the input size when strided; EfficientNet pads those explicitly.
    if (strides[0] !== 1 || strides[1] !== 1) throw config.error(`padding 'same' with strides [${strides.join(', ')}]`);
    const [t, l] = [Math.floor((kh - 1) / 2), Math.floor((kw - 1) / 2)];
    [t, l, kh - 1 - t, kw - 1 - l].forEach((p, i) => (pads[i] = (pads[i] ?? 0) + p));
  } else if (padding !== 'valid') {
    throw config.error(`padding '${padding}'`);
  }
  const cin = source.channels;
  let channels: number;
  let weight: Float64Array;
  let weightDims: number[];
  if (depthwise) {
    const multiplier = config.number('depthMultiplier', 1);
    if (multiplier !== 1) throw config.error(`depthMultiplier ${multiplier} (only 1 is handled)`);
    channels = cin;
    weight = depthwiseKernelToOnnx(readWeight(layer, 'depthwise_kernel', [kh, kw, cin, 1]), kh, kw, cin);
    weightDims = [cin, 1, kh, kw];
  } else {
    channels = config.number('filters');
    weight = convKernelToOnnx(readWeight(layer, 'kernel', [kh, kw, cin, channels]), kh, kw, cin, channels);
    weightDims = [channels, cin, kh, kw];
  }
  return {
    kind: 'conv',
    owner: layer.name,
    label: layer.name,
    input: source.name,
    channels,
    weight,
    weightDims,
    bias: config.boolean('useBias') ? readWeight(layer, 'bias', [channels]) : null,
    pads,
    strides,
    group: depthwise ? cin : 1,
    activation: parseActivation(config, 'activation'),
  };
}

function foldBatchNorm(layer: tf.layers.Layer, input: Value, ctx: TranslationContext, inbound: string[]): ConvPlan {
  const config = new LayerConfig(layer);
  // Folding rewrites the conv's weights: only exact when the BN is the conv's sole reader and
  // nothing (activation, dropout, another layer) sits between them.
  const foldable =
    input.kind === 'conv' &&
    input.owner === inbound[0] &&
    input.activation === 'linear' &&
    ctx.consumers.get(input.owner) === 1;
  if (!foldable) {
    throw config.error(
      'it must directly follow a Conv2D/DepthwiseConv2D without activation whose output feeds only this layer',
    );
  }
  const { scale, shift } = batchNormAffine(layer, input.channels);
  const perChannel = input.weight.length / input.channels;
  const weight = input.weight.map((w, i) => w * (scale[Math.floor(i / perChannel)] ?? NaN));
  const bias = scale.map((s, c) => (input.bias?.[c] ?? 0) * s + (shift[c] ?? NaN));
  return { ...input, owner: layer.name, label: `${input.label}+${layer.name}`, weight, bias };
}

function activationLayer(layer: tf.layers.Layer, input: Value, ctx: TranslationContext): Value {
  const activation = parseActivation(new LayerConfig(layer), 'activation');
  if (activation === 'linear') return input;
  const source = spatial(input, ctx, layer);
  return { ...source, name: emitActivation(ctx, source.name, activation, layer.name) };
}

function globalAveragePool(layer: tf.layers.Layer, input: Value, ctx: TranslationContext): Value {
  const config = new LayerConfig(layer);
  config.requireChannelsLast();
  const source = spatial(input, ctx, layer);
  const name = ctx.graph.addNode('GlobalAveragePool', layer.name, [source.name], [layer.name]);
  // ONNX keeps [N, C, 1, 1]: the same data as Keras' keepDims output, or its [N, C] one flattened.
  return { kind: 'plain', name, form: config.boolean('keepDims', false) ? 'spatial' : 'pooled', channels: source.channels };
}

function reshape(layer: tf.layers.Layer, input: Value, ctx: TranslationContext): Value {
  const config = new LayerConfig(layer);
  const source = materialise(input, ctx, `'${layer.name}'`);
  const target = config.raw('targetShape');
  const isSqueezeExcite =
    Array.isArray(target) && target.length === 3 && target[0] === 1 && target[1] === 1 && target[2] === source.channels;
  if (source.form !== 'pooled' || !isSqueezeExcite) {
    throw config.error(
      `targetShape ${JSON.stringify(target)}: only the squeeze-excite [N, C] → [N, 1, 1, C] reshape is handled`,
    );
  }
  // The pooled value already is [N, C, 1, 1] in ONNX: nothing to emit.
  return { ...source, form: 'spatial' };
}

function elementwise(layer: tf.layers.Layer, inputs: Value[], ctx: TranslationContext, op: 'Mul' | 'Add'): Value {
  const config = new LayerConfig(layer);
  if (inputs.length !== 2) throw config.error(`${inputs.length} inputs (only 2 are handled)`);
  const [a, b] = inputs.map((v) => spatial(v, ctx, layer)) as [Plain, Plain];
  // Both are rank 4 in the same NCHW permutation, so Keras' NHWC broadcasting carries over.
  if (a.channels !== b.channels) throw config.error(`inputs have ${a.channels} and ${b.channels} channels`);
  return { ...a, name: ctx.graph.addNode(op, layer.name, [a.name, b.name], [layer.name]) };
}
