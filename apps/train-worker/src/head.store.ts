import type * as tfTypes from '@tensorflow/tfjs';
import type { ObjectStore } from '@transferline/shared';

type Tf = typeof tfTypes;
const WEIGHTS_FILE = 'weights.bin';

/**
 * Saves a TF.js LayersModel as `model.json` + `weights.bin` under `prefix` in the bucket: the
 * standard TF.js layout, which `tf.loadLayersModel` (and tensorflowjs_converter) read as is.
 */
export async function saveHead(tf: Tf, model: tfTypes.LayersModel, store: ObjectStore, bucket: string, prefix: string): Promise<void> {
  await model.save(
    tf.io.withSaveHandler(async (artifacts) => {
      const weights = artifacts.weightData;
      if (!weights) throw new Error('model has no weights to save');
      const bytes = new Uint8Array(tf.io.concatenateArrayBuffers(Array.isArray(weights) ? weights : [weights]));
      await store.putObject(bucket, `${prefix}${WEIGHTS_FILE}`, bytes);
      await store.putJson(bucket, `${prefix}model.json`, {
        format: 'layers-model',
        generatedBy: `TensorFlow.js tfjs-layers v${tf.version_layers}`,
        convertedBy: null,
        modelTopology: artifacts.modelTopology,
        weightsManifest: [{ paths: [`./${WEIGHTS_FILE}`], weights: artifacts.weightSpecs }],
      });
      return { modelArtifactsInfo: { dateSaved: new Date(), modelTopologyType: 'JSON', weightDataBytes: bytes.byteLength } };
    }),
  );
}

/** Bytes per value of each dtype a weights manifest may name (its quantization's, when quantized). */
const DTYPE_BYTES: Record<string, number> = { float32: 4, int32: 4, bool: 1, complex64: 8, uint8: 1, uint16: 2, float16: 2 };

/** The bytes a manifest's weights take, or undefined when one of them is of a dtype not counted here. */
function manifestBytes(specs: tfTypes.io.WeightsManifestEntry[]): number | undefined {
  let total = 0;
  for (const w of specs) {
    const per = DTYPE_BYTES[w.quantization?.dtype ?? w.dtype];
    if (per === undefined) return undefined;
    total += w.shape.reduce((a, b) => a * b, 1) * per;
  }
  return total;
}

/**
 * Loads a head saved by `saveHead` back from the bucket. Files that are not what `saveHead` wrote
 * (changed or cut short since: a trial overwrote weights.bin) are refused naming the run's files
 * and what is wrong, where TF.js said only "the tensor should have 2560 values but has 250".
 */
export async function loadHead(tf: Tf, store: ObjectStore, bucket: string, prefix: string): Promise<tfTypes.LayersModel> {
  const where = `s3://${bucket}/${prefix}`;
  const damaged = (what: string) => new Error(`the model files in ${where} are damaged: ${what} (changed or cut short since the run saved them): train again, or delete the run`);
  let json: { modelTopology: object; weightsManifest: { paths: string[]; weights: tfTypes.io.WeightsManifestEntry[] }[] } | undefined;
  try {
    json = await store.getJson(bucket, `${prefix}model.json`);
  } catch (err) {
    if (err instanceof SyntaxError) throw damaged(`model.json is not JSON (${err.message})`);
    throw err;
  }
  if (!json) throw new Error(`no model at ${where}model.json`);
  if (!Array.isArray(json.weightsManifest) || typeof json.modelTopology !== 'object' || json.modelTopology === null) throw damaged('model.json is not a TF.js layers model (no modelTopology or weightsManifest)');
  // (as written to the bucket, any of it may be missing: checked before it is read as TF.js's)
  const entries: unknown[] = json.weightsManifest.flatMap((g) => (Array.isArray(g?.weights) ? g.weights : [undefined]));
  const isEntry = (w: unknown): w is tfTypes.io.WeightsManifestEntry => {
    const e = w as Partial<tfTypes.io.WeightsManifestEntry> | undefined;
    return typeof e?.dtype === 'string' && Array.isArray(e.shape) && e.shape.every((d) => Number.isInteger(d));
  };
  if (!entries.every(isEntry) || !json.weightsManifest.every((g) => Array.isArray(g.paths))) {
    throw damaged("model.json's weightsManifest is not TF.js's (a weight without its dtype or shape, or a group without its paths)");
  }
  const specs = entries;
  const parts = await Promise.all(
    json.weightsManifest.flatMap((g) => g.paths).map((p) => store.getObject(bucket, `${prefix}${p.replace(/^\.\//, '')}`)),
  );
  const weightData = tf.io.concatenateArrayBuffers(parts.map((b) => b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength) as ArrayBuffer));
  const expected = manifestBytes(specs);
  if (expected !== undefined && weightData.byteLength !== expected) {
    throw damaged(`its weights hold ${weightData.byteLength.toLocaleString('en-US')} bytes where model.json's ${specs.length} weights take ${expected.toLocaleString('en-US')} bytes`);
  }
  try {
    return await tf.loadLayersModel(tf.io.fromMemory({ modelTopology: json.modelTopology, weightSpecs: specs, weightData }));
  } catch (err) {
    // (its files are whole by their sizes: not called damaged, which would send a user to delete a good run)
    throw new Error(`TF.js could not load the model in ${where}: ${(err as Error).message}`);
  }
}
