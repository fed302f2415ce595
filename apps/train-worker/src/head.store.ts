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

/** Loads a head saved by `saveHead` back from the bucket. */
export async function loadHead(tf: Tf, store: ObjectStore, bucket: string, prefix: string): Promise<tfTypes.LayersModel> {
  const json = await store.getJson<{ modelTopology: object; weightsManifest: { paths: string[]; weights: tfTypes.io.WeightsManifestEntry[] }[] }>(bucket, `${prefix}model.json`);
  if (!json) throw new Error(`no model at s3://${bucket}/${prefix}model.json`);
  const parts = await Promise.all(
    json.weightsManifest.flatMap((g) => g.paths).map((p) => store.getObject(bucket, `${prefix}${p.replace(/^\.\//, '')}`)),
  );
  const weightData = tf.io.concatenateArrayBuffers(parts.map((b) => b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength) as ArrayBuffer));
  return tf.loadLayersModel(
    tf.io.fromMemory({ modelTopology: json.modelTopology, weightSpecs: json.weightsManifest.flatMap((g) => g.weights), weightData }),
  );
}
