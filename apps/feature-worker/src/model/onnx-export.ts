import type * as tf from '@tensorflow/tfjs';
import { OnnxExportError } from './keras-layer.reader.js';
import { OnnxGraphBuilder } from './onnx-graph.builder.js';
import { LAYER_TRANSLATORS, materialise, type TranslationContext, type Value } from './onnx-layer.translators.js';

export { OnnxExportError } from './keras-layer.reader.js';

/**
 * Version of the emitted graph. Change it whenever the exporter's output changes for the same
 * weights (ops, folding, names, opset): it keys the on-disk cache of exported models.
 */
export const ONNX_BUILDER_VERSION = 'b0-onnx-1';
/** Name of the graph input: uint8 RGB [N, S, S, 3], channels last, values 0–255. */
export const ONNX_INPUT_NAME = 'pixels';
/** Name of the graph output: float32 [N, 1280]. */
export const ONNX_OUTPUT_NAME = 'embedding';
// Opset 17 / IR 8: what onnx-proto 8 (ONNX 1.10 schema) can describe, and well inside ORT 1.30.
const OPSET_VERSION = 17;
const IR_VERSION = 8;

/** Name of the output of a model exported with a classification head: float32 [N, classes]. */
export const ONNX_PROBABILITIES_NAME = 'probabilities';

/** One dense layer of a classification head: y = activation(x · kernel + bias). */
export interface DenseLayerWeights {
  /** row-major [inputs, units], as Keras and TF.js store it */
  kernel: Float32Array;
  bias: Float32Array;
  inputs: number;
  units: number;
  activation: 'linear' | 'relu' | 'softmax';
}

/** Options of {@link exportEfficientNetB0ToOnnx}. */
export interface OnnxExportOptions {
  /** Side of the square input; defaults to the model's. Must equal it when the model fixes one. */
  inputSize?: number;
  /**
   * A classification head to run on the embedding (dense layers, the last one softmax): the
   * model then outputs `probabilities` [N, classes] instead of the embedding.
   */
  head?: readonly DenseLayerWeights[];
  /** key/value pairs stored in the model (labels, threshold, provenance) */
  metadata?: Readonly<Record<string, string>>;
}

/**
 * Translates the TF.js EfficientNet-B0 of `buildEfficientNetB0` (with whatever weights it holds)
 * into an ONNX model for ONNX Runtime: input `pixels` uint8 [N, S, S, 3] (RGB, 0–255, symbolic
 * batch), output `embedding` float32 [N, 1280]. The graph is NCHW after one Cast + Transpose;
 * the preprocessing layers collapse into one per-channel Mul + Add, every ZeroPadding2D becomes
 * the next conv's `pads`, and every BatchNormalization is folded into the conv before it (in
 * float64, rounded to float32 once).
 *
 * Layers are found through their inbound nodes, so only the layer classes EfficientNet uses are
 * accepted, each in the configurations it uses.
 *
 * @throws OnnxExportError naming the layer on an unknown class, an unhandled configuration, or a
 *   topology that cannot be folded exactly (never a silently different graph).
 */
export function exportEfficientNetB0ToOnnx(model: tf.LayersModel, options: OnnxExportOptions = {}): Uint8Array {
  const unknown = model.layers.filter((l) => l.getClassName() !== 'InputLayer' && !(l.getClassName() in LAYER_TRANSLATORS));
  if (unknown.length > 0) {
    const list = unknown.map((l) => `'${l.name}' (${l.getClassName()})`).join(', ');
    throw new OnnxExportError(
      `cannot export layer class ${list}: the ONNX exporter handles only InputLayer, ` +
        Object.keys(LAYER_TRANSLATORS).join(', '),
    );
  }
  const [inputLayer, ...moreInputs] = model.inputLayers;
  const [outputLayer, ...moreOutputs] = model.outputLayers;
  if (inputLayer === undefined || outputLayer === undefined || moreInputs.length > 0 || moreOutputs.length > 0) {
    throw new OnnxExportError(
      `cannot export model '${model.name}': it has ${model.inputLayers.length} inputs and ` +
        `${model.outputLayers.length} outputs, expected one of each`,
    );
  }
  const inputSize = checkInputShape(model, options.inputSize);

  const ctx: TranslationContext = {
    graph: new OnnxGraphBuilder(),
    consumers: countConsumers(model),
    materialised: new Map(),
  };
  const values = new Map<string, Value>();
  ctx.graph.declareInput(ONNX_INPUT_NAME);
  const asFloat = ctx.graph.addNode('Cast', 'pixels_to_float', [ONNX_INPUT_NAME], ['pixels_float'], {
    to: { int: 1 }, // TensorProto.FLOAT
  });
  const nchw = ctx.graph.addNode('Transpose', 'nhwc_to_nchw', [asFloat], [inputLayer.name], {
    perm: { ints: [0, 3, 1, 2] },
  });
  values.set(inputLayer.name, { kind: 'plain', name: nchw, form: 'spatial', channels: 3 });

  for (const layer of model.layers) {
    if (layer === inputLayer) continue;
    const inbound = inboundLayerNames(layer);
    const inputs = inbound.map((name) => {
      const value = values.get(name);
      if (value === undefined) {
        throw new OnnxExportError(`cannot export layer '${layer.name}': its input '${name}' is not (yet) translated`);
      }
      return value;
    });
    const handler = LAYER_TRANSLATORS[layer.getClassName()];
    if (handler === undefined) throw new OnnxExportError(`cannot export layer '${layer.name}' (${layer.getClassName()})`);
    values.set(layer.name, handler(layer, inputs, ctx, inbound));
  }

  const last = values.get(outputLayer.name);
  if (last === undefined) {
    throw new OnnxExportError(`cannot export model '${model.name}': output '${outputLayer.name}' is not translated`);
  }
  const pooled = materialise(last, ctx, 'the model output');
  if (pooled.form !== 'pooled') {
    throw new OnnxExportError(
      `cannot export model '${model.name}': its output '${outputLayer.name}' is not a pooled [N, C] embedding`,
    );
  }
  ctx.graph.addNode('Flatten', 'flatten', [pooled.name], [ONNX_OUTPUT_NAME], { axis: { int: 1 } });
  const output = options.head ? appendHead(ctx.graph, options.head, pooled.channels) : { name: ONNX_OUTPUT_NAME, width: pooled.channels };

  return ctx.graph.toModelBytes({
    graphName: model.name,
    input: { name: ONNX_INPUT_NAME, elemType: 'uint8', dims: ['N', inputSize, inputSize, 3] },
    output: { name: output.name, elemType: 'float32', dims: ['N', output.width] },
    ...(options.metadata && { metadata: options.metadata }),
    opsetVersion: OPSET_VERSION,
    irVersion: IR_VERSION,
    producerName: 'transferline',
    producerVersion: ONNX_BUILDER_VERSION,
    docString: 'EfficientNet-B0 feature extractor exported from TF.js; BatchNormalization folded into convolutions',
  });
}

/** The head's dense layers as Gemm (+ Relu) nodes after the embedding, ending in a Softmax named `probabilities`. */
function appendHead(graph: OnnxGraphBuilder, head: readonly DenseLayerWeights[], embeddingWidth: number): { name: string; width: number } {
  const last = head[head.length - 1];
  if (last === undefined || last.activation !== 'softmax') throw new OnnxExportError('a classification head must end in a softmax layer');
  let value = ONNX_OUTPUT_NAME;
  let width = embeddingWidth;
  head.forEach((layer, i) => {
    if (layer.inputs !== width) throw new OnnxExportError(`head layer ${i} takes ${layer.inputs} inputs, but gets ${width}`);
    if (layer.kernel.length !== layer.inputs * layer.units || layer.bias.length !== layer.units) {
      throw new OnnxExportError(`head layer ${i}: kernel or bias does not match [${layer.inputs}, ${layer.units}]`);
    }
    const kernel = graph.addInitializer(`head_${i}_kernel`, [layer.inputs, layer.units], layer.kernel);
    const bias = graph.addInitializer(`head_${i}_bias`, [layer.units], layer.bias);
    value = graph.addNode('Gemm', `head_${i}_dense`, [value, kernel, bias], [`head_${i}_logits`]);
    if (layer.activation === 'relu') value = graph.addNode('Relu', `head_${i}_relu`, [value], [`head_${i}_relu`]);
    if (layer.activation === 'softmax') {
      if (i !== head.length - 1) throw new OnnxExportError(`head layer ${i}: softmax only on the last layer`);
      value = graph.addNode('Softmax', 'head_softmax', [value], [ONNX_PROBABILITIES_NAME], { axis: { int: 1 } });
    }
    width = layer.units;
  });
  return { name: value, width };
}

function checkInputShape(model: tf.LayersModel, requested: number | undefined): number {
  const shape = model.inputs[0]?.shape ?? [];
  const [, height, width, channels] = shape;
  const fail = (why: string): never => {
    throw new OnnxExportError(`cannot export model '${model.name}': input shape [${shape.join(', ')}] ${why}`);
  };
  if (shape.length !== 4 || channels !== 3) fail('is not [batch, size, size, 3]');
  if (height !== width) fail('is not square');
  const size = requested ?? height;
  if (typeof size !== 'number' || !Number.isInteger(size) || size < 1) return fail('has no fixed size; pass inputSize');
  if (height !== null && height !== undefined && height !== size) fail(`does not match inputSize ${size}`);
  return size;
}

function inboundLayerNames(layer: tf.layers.Layer): string[] {
  const [node, ...more] = layer.inboundNodes;
  if (node === undefined || more.length > 0) {
    throw new OnnxExportError(
      `cannot export layer '${layer.name}': it is called ${layer.inboundNodes.length} times (shared layers are not handled)`,
    );
  }
  if (node.tensorIndices.some((i) => i !== 0) || node.nodeIndices.some((i) => i !== 0)) {
    throw new OnnxExportError(`cannot export layer '${layer.name}': it reads a layer with several outputs or calls`);
  }
  return node.inboundLayers.map((l) => l.name);
}

function countConsumers(model: tf.LayersModel): Map<string, number> {
  const counts = new Map<string, number>();
  const bump = (name: string): void => void counts.set(name, (counts.get(name) ?? 0) + 1);
  for (const layer of model.layers) layer.inboundNodes.forEach((n) => n.inboundLayers.forEach((l) => bump(l.name)));
  model.outputLayers.forEach((l) => bump(l.name));
  return counts;
}
