import type * as tf from '@tensorflow/tfjs';
import { getOrCreateGroup, writeHdf5Bytes, type Hdf5Group } from './hdf5-bytes.adapter.js';

/** One weight as Keras stores it: full name (`stem_conv/kernel:0`), shape and values. */
export interface KerasH5Weight {
  name: string;
  shape: readonly number[];
  /** float32 weights, or int64 ones (Keras' Normalization `count`). */
  values: Float32Array | BigInt64Array;
}

/** One layer of a Keras weights file; weightless layers have an empty `weights`. */
export interface KerasH5Layer {
  name: string;
  weights: readonly KerasH5Weight[];
}

/** Options of {@link writeKerasH5Weights}. */
export interface WriteKerasH5WeightsOptions {
  /** Nest the tree under `model_weights`, as a full-model `model.save('x.h5')` does. */
  fullModel?: boolean;
  /**
   * Largest attribute Keras writes in one piece (64,512 bytes, HDF5's object header limit);
   * `layer_names` beyond it is split into `layer_names0`, `layer_names1`, …. Lower it to
   * exercise the split layout.
   */
  maxAttributeBytes?: number;
}

const HDF5_OBJECT_HEADER_LIMIT = 64512;

/**
 * Snapshot of a model's current weights as Keras would save them: every layer in order,
 * weight names `<layer>/<weight>:0`, int32 variables widened to int64 like Keras' `count`.
 */
export function kerasH5LayersFromModel(model: tf.LayersModel): KerasH5Layer[] {
  return model.layers.map((layer) => {
    const values = layer.getWeights();
    const weights = layer.weights.map((variable, i): KerasH5Weight => {
      const tensor = values[i];
      if (tensor === undefined) throw new Error(`layer '${layer.name}' has no value for ${variable.name}`);
      const data = tensor.dataSync();
      return {
        name: `${variable.originalName}:0`,
        shape: [...tensor.shape],
        values:
          variable.dtype === 'int32' ? BigInt64Array.from(data, (v) => BigInt(v)) : Float32Array.from(data),
      };
    });
    return { name: layer.name, weights };
  });
}

/**
 * Writes weights in Keras' legacy HDF5 `save_weights` layout (keras/saving/legacy/hdf5_format.py):
 * root attributes `layer_names` (split as Keras splits it), `backend`, `keras_version`; one group
 * per layer with attribute `weight_names`; each weight at `/<layer>/<weight name>`. Meant for
 * tests and benchmarks that need a weights file without the real ImageNet one.
 *
 * @param source a model (its current weights, see {@link kerasH5LayersFromModel}) or explicit layers
 * @returns the bytes of the HDF5 file
 */
export async function writeKerasH5Weights(
  source: tf.LayersModel | readonly KerasH5Layer[],
  options: WriteKerasH5WeightsOptions = {},
): Promise<Uint8Array> {
  const layers = isLayerList(source) ? source : kerasH5LayersFromModel(source);
  const maxAttributeBytes = options.maxAttributeBytes ?? HDF5_OBJECT_HEADER_LIMIT;
  return writeHdf5Bytes((file) => {
    writeVersionAttributes(file);
    let root = file;
    if (options.fullModel === true) {
      root = file.create_group('model_weights');
      writeVersionAttributes(root);
    }
    writeStringListAttribute(root, 'layer_names', layers.map((layer) => layer.name), maxAttributeBytes);
    for (const layer of layers) {
      const group = root.create_group(layer.name);
      writeStringListAttribute(group, 'weight_names', layer.weights.map((w) => w.name), maxAttributeBytes);
      for (const weight of layer.weights) writeWeight(group, weight);
    }
  });
}

function isLayerList(source: tf.LayersModel | readonly KerasH5Layer[]): source is readonly KerasH5Layer[] {
  return Array.isArray(source);
}

function writeVersionAttributes(group: Hdf5Group): void {
  group.create_attribute('backend', 'tensorflow');
  group.create_attribute('keras_version', '2.15.0');
}

function writeWeight(layerGroup: Hdf5Group, weight: KerasH5Weight): void {
  const expected = weight.shape.reduce((a, b) => a * b, 1);
  if (weight.values.length !== expected) {
    throw new Error(`weight ${weight.name}: ${weight.values.length} values for shape [${weight.shape.join(', ')}]`);
  }
  // h5wasm does not create intermediate groups, so walk `stem_conv/kernel:0` one level at a time.
  const parts = weight.name.split('/');
  const datasetName = parts.pop() ?? weight.name;
  const group = parts.reduce(getOrCreateGroup, layerGroup);
  group.create_dataset({
    name: datasetName,
    data: weight.values,
    shape: [...weight.shape],
    dtype: weight.values instanceof BigInt64Array ? '<q' : '<f',
  });
}

/**
 * Keras' `save_attributes_to_hdf5_group`: fixed-width byte strings (numpy 'S'); split with
 * numpy's `array_split` into `name0`, `name1`, … while any chunk exceeds the limit; an empty
 * list becomes an empty float64 array (what `np.asarray([])` gives).
 */
function writeStringListAttribute(group: Hdf5Group, name: string, values: readonly string[], maxBytes: number): void {
  if (values.length === 0) {
    group.create_attribute(name, new Float64Array(0), [0], '<d');
    return;
  }
  const width = Math.max(...values.map((v) => Buffer.byteLength(v, 'utf8')));
  let chunks = 1;
  while (Math.ceil(values.length / chunks) * width > maxBytes && chunks < values.length) chunks += 1;
  // h5wasm's 'A' is a NUL-terminated ASCII string type; h5py writes NUL-padded, and readers
  // (Keras, h5wasm) treat both as "up to the first NUL".
  const dtype = `A${width}`;
  if (chunks === 1) {
    group.create_attribute(name, [...values], [values.length], dtype);
    return;
  }
  // numpy.array_split: the first (n mod k) chunks get one extra element.
  const base = Math.floor(values.length / chunks);
  const extra = values.length % chunks;
  let start = 0;
  for (let i = 0; i < chunks; i += 1) {
    const size = base + (i < extra ? 1 : 0);
    const chunk = values.slice(start, start + size);
    group.create_attribute(`${name}${i}`, chunk, [chunk.length], dtype);
    start += size;
  }
}
