import type * as tfTypes from '@tensorflow/tfjs';
import type { EmbeddingSpace } from '@transferline/shared';
import { loadTfRuntime } from '@transferline/shared/tf';
import { RESIZE_KERNEL } from './image.ops.js';
import { buildEfficientNetB0 } from './model/efficientnet-b0.model.js';
import { loadKerasH5Weights } from './model/keras-h5-weights.loader.js';
import { exportEfficientNetB0ToOnnx, ONNX_PROBABILITIES_NAME, OnnxExportError, type DenseLayerWeights } from './model/onnx-export.js';

/** What a classifier ONNX file says about itself (its metadata_props, under `transferline.`). */
export interface ClassifierMetadata {
  dataset: string;
  runId: string;
  /** class names in output order */
  labels: string[];
  /** two classes: the decision threshold on the second label's probability, chosen on validation */
  threshold?: number;
  /** the embedding space the head was trained in */
  embedderId: string;
  /** how images are brought to inputSize × inputSize before they enter the model */
  resize: string;
  inputSize: number;
  /** the seed of EfficientNet-B0's weights when the space has seeded random ones, not ImageNet's */
  randomSeed?: number;
  /** the colour transparent pixels are flattened onto before the resize (`#rrggbb`: the embedding space's; none in files exported before it was written) */
  alphaBackground?: string;
}

/** Metadata keys, as Python's `onnxruntime` shows them in `get_modelmeta().custom_metadata_map`. */
export function classifierMetadataProps(m: ClassifierMetadata): Record<string, string> {
  return {
    'transferline.model': `${m.dataset}@${m.runId}`,
    'transferline.labels': JSON.stringify(m.labels),
    ...(m.threshold !== undefined && { 'transferline.threshold': String(m.threshold) }),
    'transferline.embedder': m.embedderId,
    'transferline.resize': m.resize,
    // sharp's `kernel` option (libvips's reduction filter): PIL's BILINEAR is close to it, not bit-identical
    'transferline.resize_filter': RESIZE_KERNEL,
    'transferline.input': `uint8 RGB [N, ${m.inputSize}, ${m.inputSize}, 3], channels last, 0-255`,
    // (an image with transparency is flattened onto it first: dropping the alpha channel instead gives other pixels)
    ...(m.alphaBackground !== undefined && { 'transferline.alpha_background': m.alphaBackground }),
  };
}

/** The dense layers of a trained head (TF.js Sequential of Dense and Dropout layers), for export. */
export function headLayers(head: tfTypes.LayersModel): DenseLayerWeights[] {
  const out: DenseLayerWeights[] = [];
  for (const layer of head.layers) {
    const kind = layer.getClassName();
    if (kind === 'Dropout' || kind === 'InputLayer') continue; // identity at inference
    if (kind !== 'Dense') throw new OnnxExportError(`head layer '${layer.name}' is a ${kind}; only Dense and Dropout layers can be exported`);
    const config = layer.getConfig() as { activation?: string; useBias?: boolean };
    const activation = config.activation ?? 'linear';
    if (activation !== 'linear' && activation !== 'relu' && activation !== 'softmax') throw new OnnxExportError(`head layer '${layer.name}' has activation ${activation}`);
    const [kernel, bias] = layer.getWeights();
    if (!kernel) throw new OnnxExportError(`head layer '${layer.name}' has no kernel`);
    const [inputs, units] = kernel.shape as [number, number];
    out.push({
      kernel: kernel.dataSync() as Float32Array,
      bias: bias ? (bias.dataSync() as Float32Array) : new Float32Array(units),
      inputs,
      units,
      activation,
    });
  }
  return out;
}

/**
 * One ONNX model from image to class probabilities: uint8 RGB pixels in (the size the embedding
 * space resizes to), EfficientNet-B0 with the space's weights (the same graph the embed worker
 * runs), the trained head (its standardisation already folded into the first layer), softmax.
 * Labels, threshold and provenance go into the model's metadata.
 *
 * @param weights the space's Keras `.h5` (imagenet spaces); absent for a random-seed space
 */
export async function buildClassifierOnnx(o: { space: EmbeddingSpace; weights?: Uint8Array; head: tfTypes.LayersModel; meta: Omit<ClassifierMetadata, 'embedderId' | 'resize' | 'inputSize'> }): Promise<Uint8Array> {
  const { space } = o;
  if (space.weights === 'imagenet' && !o.weights) throw new Error(`embedding space ${space.id} needs its weights file (MD5 ${space.weightsMd5})`);
  await loadTfRuntime('cpu');
  const net = buildEfficientNetB0({ seed: space.seed ?? 42, inputSize: space.inputSize });
  try {
    if (o.weights) await loadKerasH5Weights(net, o.weights);
    const head = headLayers(o.head);
    if (head[head.length - 1]?.units !== o.meta.labels.length) throw new OnnxExportError(`the head has ${head[head.length - 1]?.units} outputs for ${o.meta.labels.length} labels`);
    const metadata = classifierMetadataProps({ ...o.meta, embedderId: space.id, resize: space.resize, inputSize: space.inputSize });
    return exportEfficientNetB0ToOnnx(net, { inputSize: space.inputSize, head, metadata });
  } finally {
    net.dispose();
  }
}

export { ONNX_PROBABILITIES_NAME };
