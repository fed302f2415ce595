import { buildClassifierOnnx, type ClassifierMetadata } from '@transferline/feature-worker/classifier.export';
import { DEFAULT_ALPHA_BACKGROUND, LabelsDoc, ReportDoc, resolveWeights, spaceBackground, type Config, type EmbeddingSpace } from '@transferline/shared';
import { loadTfRuntime } from '@transferline/shared/tf';
import { loadHead } from '@transferline/train-worker/head.store';
import type { CliContext } from './cli-context.js';
import { RANDOM_IS_FOR_SHAPES, randomWeights } from './report-words.js';
import { resolveModel } from './commands/classify.command.js';

/** A trained run as one image-in, probabilities-out ONNX model. */
export interface ClassifierModel {
  bytes: Uint8Array;
  meta: ClassifierMetadata;
  space: EmbeddingSpace;
}

/**
 * Builds the ONNX classifier of `dataset[@run]`: the run's head from the bucket, on EfficientNet-B0
 * with the weights of the embedding space the head was trained in (the cached weights file, or
 * TL_MODEL_WEIGHTS_SOURCE, verified by MD5; the seeded random weights for a random space).
 */
export async function loadClassifierModel(ctx: CliContext, spec: string): Promise<ClassifierModel> {
  const { dataset, runId, space } = await resolveModel(ctx, spec);
  const { bucket } = ctx.config.s3;
  const { store, layout } = ctx.services;
  const labels = await store.getDocument(LabelsDoc, bucket, layout.runFile(dataset, runId, 'labels.json'));
  if (!labels) throw new Error(`run ${dataset}@${runId} has no labels.json in s3://${bucket}/${layout.run(dataset, runId)}`);
  const report = await store.getDocument(ReportDoc, bucket, layout.runFile(dataset, runId, 'report.json'));
  const threshold = labels.length === 2 ? report?.validation.binary?.threshold : undefined;
  const { tf } = await loadTfRuntime('cpu');
  const head = await loadHead(tf, store, bucket, layout.run(dataset, runId));
  try {
    const weights = space.weights === 'imagenet' ? (await resolveWeights({ ...ctx.config.embed, weightsMd5: space.weightsMd5! }, { store })).bytes : undefined;
    const meta = { dataset, runId, labels, ...(threshold !== undefined && { threshold }), alphaBackground: spaceBackground(space) };
    const bytes = await buildClassifierOnnx({ space, ...(weights && { weights }), head, meta });
    return { bytes, meta: { ...meta, embedderId: space.id, resize: space.resize, inputSize: space.inputSize, ...(space.weights === 'random' && space.seed !== undefined && { randomSeed: space.seed }) }, space };
  } finally {
    head.dispose();
  }
}

/**
 * What serve and export say when this shell sets a TL_ALPHA_BACKGROUND other than the model's
 * space's (none otherwise): the space's is the one used, as it was the workers' (until spaces named
 * it, this shell's was, which is what a user who set it may expect).
 */
export function backgroundNote(config: Pick<Config, 'preprocess'>, meta: ClassifierMetadata): string | undefined {
  const own = config.preprocess.background;
  if (own === DEFAULT_ALPHA_BACKGROUND || meta.alphaBackground === undefined || own === meta.alphaBackground) return undefined;
  const legacy = meta.alphaBackground === DEFAULT_ALPHA_BACKGROUND ? ' (a space recorded before spaces named their background is taken as white: README, "Embedding spaces")' : '';
  return `note: this shell's TL_ALPHA_BACKGROUND (${own}) is not used: ${meta.dataset}@${meta.runId}'s embedding space flattens transparent pixels onto ${meta.alphaBackground}, as its embed workers did${legacy}`;
}

/** What serve and export say of a model whose EfficientNet-B0 has seeded random weights (none otherwise). */
export function randomWeightsNote(meta: ClassifierMetadata): string | undefined {
  if (meta.randomSeed === undefined) return undefined;
  return `note: ${randomWeights(meta.randomSeed)}, as this run was trained (${meta.embedderId}): ${RANDOM_IS_FOR_SHAPES}`;
}
