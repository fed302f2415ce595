import * as tf from '@tensorflow/tfjs';
import {
  asDataset,
  asGroup,
  hasHdf5Signature,
  hdf5ErrorReason,
  readHdf5Bytes,
  type Hdf5Group,
  type Hdf5Value,
} from './hdf5-bytes.adapter.js';

/**
 * A weights file that cannot be loaded into the model: not HDF5, truncated, not Keras' layout,
 * or not the same architecture. Retrying cannot help.
 */
export class KerasH5WeightsError extends Error {
  override name = 'KerasH5WeightsError';
}

/** Options of {@link loadKerasH5Weights}. */
export interface LoadKerasH5WeightsOptions {
  /**
   * Skip weighted layers that are in the file but not in the model (e.g. `predictions` of a
   * with-top file). Off by default: an unexpected layer usually means the wrong file.
   */
  ignoreExtraLayers?: boolean;
}

/** What {@link loadKerasH5Weights} assigned. */
export interface KerasH5LoadSummary {
  layers: number;
  weights: number;
  parameters: number;
}

/** One model layer's new values, validated and ready to assign. */
interface LayerUpdate {
  layer: tf.layers.Layer;
  values: { data: Float32Array | Int32Array; shape: number[]; dtype: 'float32' | 'int32' }[];
}

interface FileLayer {
  group: Hdf5Group | null;
  weightNames: string[];
}

/**
 * Loads weights saved by Keras `save_weights` (legacy HDF5 layout; a full-model save's
 * `model_weights` tree works too) into `model`, matching layers by name and weights by their
 * order in each layer's `weight_names` attribute, as Keras does. Every name and shape is checked
 * before anything is assigned, so on error the model keeps its previous weights.
 *
 * int64 datasets (Keras' Normalization `count`) arrive as BigInt and are stored in the model's
 * int32 variable, saturating outside the int32 range (the value is unused at inference).
 *
 * @throws KerasH5WeightsError naming the layer, weight and both shapes on any mismatch, a
 *   missing layer, or a file that is not HDF5, truncated, or not in Keras' layout.
 */
export async function loadKerasH5Weights(
  model: tf.LayersModel,
  h5Bytes: Uint8Array,
  options: LoadKerasH5WeightsOptions = {},
): Promise<KerasH5LoadSummary> {
  if (!hasHdf5Signature(h5Bytes)) {
    throw new KerasH5WeightsError(
      `not an HDF5 file (${h5Bytes.length} bytes without the HDF5 signature); ` +
        'expected Keras weights from save_weights()',
    );
  }
  let updates: LayerUpdate[];
  try {
    updates = await readHdf5Bytes(h5Bytes, (root) => collectUpdates(model, root, options));
  } catch (error) {
    if (error instanceof KerasH5WeightsError) throw error;
    const reason = hdf5ErrorReason(error);
    const hint = /truncat/i.test(reason) ? 'the file is truncated: ' : '';
    throw new KerasH5WeightsError(`cannot read the HDF5 weights file (${h5Bytes.length} bytes): ${hint}${reason}`, {
      cause: error,
    });
  }

  tf.tidy(() => {
    for (const { layer, values } of updates) {
      layer.setWeights(values.map((v) => tf.tensor(v.data, v.shape, v.dtype)));
    }
  });
  return {
    layers: updates.length,
    weights: updates.reduce((sum, u) => sum + u.values.length, 0),
    parameters: updates.reduce((sum, u) => sum + u.values.reduce((s, v) => s + v.data.length, 0), 0),
  };
}

function collectUpdates(model: tf.LayersModel, file: Hdf5Group, options: LoadKerasH5WeightsOptions): LayerUpdate[] {
  const root = findWeightsRoot(file);
  const layerNames = readStringList(root, 'layer_names') ?? [];
  const fileLayers = new Map<string, FileLayer>();
  for (const name of layerNames) {
    const group = asGroup(root.get(name));
    fileLayers.set(name, { group, weightNames: group === null ? [] : (readStringList(group, 'weight_names') ?? []) });
  }

  const modelLayers = model.layers.filter((layer) => layer.weights.length > 0);
  const modelNames = new Set(modelLayers.map((layer) => layer.name));
  const extra = [...fileLayers].filter(([name, l]) => l.weightNames.length > 0 && !modelNames.has(name));
  if (extra.length > 0 && options.ignoreExtraLayers !== true) {
    throw new KerasH5WeightsError(
      `the weights file has weighted layers the model lacks: ${extra.map(([name]) => name).join(', ')} ` +
        '(wrong file? pass ignoreExtraLayers to skip them)',
    );
  }

  return modelLayers.map((layer) => {
    const fileLayer = fileLayers.get(layer.name);
    if (fileLayer === undefined || fileLayer.group === null) {
      throw new KerasH5WeightsError(
        `layer '${layer.name}' (${layer.getClassName()}) is missing from the weights file ` +
          `(it lists ${layerNames.length} layers, ${fileLayers.size - countWeightless(fileLayers)} with weights)`,
      );
    }
    return { layer, values: readLayerValues(layer, fileLayer.group, fileLayer.weightNames) };
  });
}

/** `save_weights` writes at the root; a full-model `save` nests the same tree in `model_weights`. */
function findWeightsRoot(file: Hdf5Group): Hdf5Group {
  if (hasStringList(file, 'layer_names')) return file;
  const nested = asGroup(file.get('model_weights'));
  if (nested !== null && hasStringList(nested, 'layer_names')) return nested;
  throw new KerasH5WeightsError(
    "the HDF5 file has no 'layer_names' attribute at / or /model_weights: not a Keras 2 weights file " +
      '(Keras 3 `.weights.h5` files use another layout)',
  );
}

function readLayerValues(layer: tf.layers.Layer, group: Hdf5Group, weightNames: string[]): LayerUpdate['values'] {
  const variables = layer.weights;
  const expectedNames = variables.map((v) => baseName(v.originalName));
  if (weightNames.length !== variables.length) {
    throw new KerasH5WeightsError(
      `layer '${layer.name}': the file has ${weightNames.length} weights [${weightNames.join(', ')}], ` +
        `the model expects ${variables.length} [${expectedNames.join(', ')}]`,
    );
  }
  return variables.map((variable, i) => {
    const weightName = weightNames[i] ?? '';
    const expectedName = expectedNames[i] ?? '';
    const where = `layer '${layer.name}' weight '${expectedName}' (${weightName})`;
    // Keras assigns by position; comparing names too catches e.g. gamma/beta swapped in a file.
    if (baseName(weightName) !== expectedName) {
      throw new KerasH5WeightsError(
        `layer '${layer.name}' weight ${i}: the file has '${weightName}', the model expects '${expectedName}'`,
      );
    }
    const dataset = asDataset(group.get(weightName));
    if (dataset === null) {
      throw new KerasH5WeightsError(
        `${where}: listed in weight_names but there is no dataset ${group.path}/${weightName}`,
      );
    }
    const fileShape = dataset.shape ?? [];
    const modelShape = variable.shape.map((d) => d ?? -1);
    if (fileShape.length !== modelShape.length || fileShape.some((d, k) => d !== modelShape[k])) {
      throw new KerasH5WeightsError(
        `${where}: shape mismatch, file [${fileShape.join(', ')}] vs model [${modelShape.join(', ')}]`,
      );
    }
    const dtype = variable.dtype === 'int32' ? 'int32' : 'float32';
    const data = toTypedArray(dataset.value, dtype, where);
    const size = modelShape.reduce((a, b) => a * b, 1);
    if (data.length !== size) {
      throw new KerasH5WeightsError(`${where}: ${data.length} values for shape [${modelShape.join(', ')}]`);
    }
    return { data, shape: modelShape, dtype };
  });
}

/** `stem_conv/kernel:0` → `kernel`; `stem_conv/kernel` (a TF.js variable) → `kernel`. */
function baseName(weightName: string): string {
  return (weightName.split('/').pop() ?? weightName).replace(/:\d+$/, '');
}

const INT32_MIN = -(2 ** 31);
const INT32_MAX = 2 ** 31 - 1;

function toTypedArray(value: Hdf5Value, dtype: 'float32' | 'int32', where: string): Float32Array | Int32Array {
  // h5wasm returns a bare number or bigint for a scalar dataset such as `count`.
  const values = typeof value === 'number' || typeof value === 'bigint' ? [value] : value;
  if (dtype === 'float32' && values instanceof Float32Array) return values;
  if (!isNumericArray(values)) {
    throw new KerasH5WeightsError(`${where}: unsupported data type (expected numbers, got ${describe(values)})`);
  }
  const out = dtype === 'float32' ? new Float32Array(values.length) : new Int32Array(values.length);
  for (let i = 0; i < values.length; i += 1) {
    const v = Number(values[i]);
    out[i] = dtype === 'int32' ? Math.min(INT32_MAX, Math.max(INT32_MIN, Math.trunc(v))) : v;
  }
  return out;
}

function isNumericArray(values: unknown): values is ArrayLike<number | bigint> {
  if (ArrayBuffer.isView(values)) return !(values instanceof DataView);
  return Array.isArray(values) && values.every((v) => typeof v === 'number' || typeof v === 'bigint');
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (ArrayBuffer.isView(value)) return value.constructor.name;
  return Array.isArray(value) ? `an array of ${typeof value[0]}` : typeof value;
}

function countWeightless(layers: Map<string, FileLayer>): number {
  return [...layers.values()].filter((l) => l.weightNames.length === 0).length;
}

function hasStringList(group: Hdf5Group, name: string): boolean {
  const attrs = Object.keys(group.attrs);
  return attrs.includes(name) || attrs.includes(`${name}0`);
}

/**
 * Keras' `load_attributes_from_hdf5_group`: `name`, or the chunks `name0`, `name1`, … that
 * Keras writes when the list exceeds HDF5's attribute size limit. Null if neither exists.
 */
function readStringList(group: Hdf5Group, name: string): string[] | null {
  const attrs = group.attrs;
  const whole = attrs[name];
  if (whole !== undefined) return toStrings(whole.value, `${group.path} @${name}`);
  const chunks: string[] = [];
  for (let i = 0; attrs[`${name}${i}`] !== undefined; i += 1) {
    chunks.push(...toStrings(attrs[`${name}${i}`]?.value ?? null, `${group.path} @${name}${i}`));
  }
  return attrs[`${name}0`] === undefined ? null : chunks;
}

function toStrings(value: Hdf5Value, where: string): string[] {
  if (value === null) return [];
  if (typeof value === 'string') return [value];
  // An empty list is saved as an empty float64 array (np.asarray([])).
  if (ArrayBuffer.isView(value) && 'length' in value && value.length === 0) return [];
  if (Array.isArray(value) && value.every((v) => typeof v === 'string')) return value as string[];
  throw new KerasH5WeightsError(`${where}: expected a list of strings, got ${describe(value)}`);
}
