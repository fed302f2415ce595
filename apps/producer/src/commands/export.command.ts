import { stat } from 'node:fs/promises';
import path from 'node:path';
import { classifierMetadataProps } from '@transferline/feature-worker/classifier.export';
import type { CliContext } from '../cli-context.js';
import { replaceFile } from './download.command.js';
import { backgroundNote, loadClassifierModel, randomWeightsNote } from '../classifier-model.js';
import { printable } from '../terminal.js';
import { thresholdText } from '../report-words.js';
import { CliExit, EXIT } from '../exit-codes.js';

export interface ExportOptions {
  /** `dataset` (its latest run) or `dataset@run` */
  model: string;
  format: string;
  /** file to write, or a folder to write `<dataset>-<run>.onnx` in (default: that name in the current folder) */
  output?: string;
}

/**
 * `transferline export -m NAME[@run] --format onnx [-o FILE|FOLDER]`: the trained model as one ONNX file
 * that takes uint8 RGB images [N, 224, 224, 3] and returns class probabilities [N, classes]:
 * EfficientNet-B0 with the weights of the model's embedding space, the head, softmax. Labels,
 * threshold and provenance are in its metadata.
 */
export async function exportCommand(ctx: CliContext, o: ExportOptions): Promise<{ file: string; bytes: number }> {
  if (o.format !== 'onnx') throw new Error(`--format ${JSON.stringify(o.format)} is not supported: onnx is the one format`);
  // where it goes is checked before the model loads (seconds): a folder takes the default name
  const out = o.output === undefined ? undefined : path.resolve(o.output);
  const isFolder = out !== undefined && (o.output!.endsWith('/') || (await stat(out).catch(() => undefined))?.isDirectory() === true);
  const folder = out === undefined ? process.cwd() : isFolder ? out : path.dirname(out);
  const there = await stat(folder).catch(() => undefined);
  if (!there?.isDirectory()) throw new CliExit(EXIT.error, `transferline: -o ${o.output}: ${there ? `${folder} is a file, not a folder` : `there is no folder ${folder}`} to write it in (make it first, or give another -o)`);
  const model = await loadClassifierModel(ctx, o.model);
  const { meta } = model;
  const name = `${meta.dataset}-${meta.runId}.onnx`.replace(/[^A-Za-z0-9._-]/g, '_');
  const file = out === undefined || isFolder ? path.join(folder, name) : out;
  await replaceFile(file, model.bytes);
  const w = (s: string) => ctx.out.write(`${s}\n`);
  w(`wrote ${file} (${(model.bytes.length / 1e6).toFixed(1)} MB): ${meta.dataset}@${meta.runId}, ${meta.labels.length} classes`);
  // (upright and flattened as preprocess has them: a review fed a transparent PNG with its alpha dropped, and got another label)
  const flatten = meta.alphaBackground ? `, transparency flattened onto ${meta.alphaBackground} (transferline.alpha_background, as the run's embedding space does)` : '';
  w(`  input   pixels         uint8 [N, ${meta.inputSize}, ${meta.inputSize}, 3]  RGB, channels last; turn each image upright by its EXIF orientation${flatten}, and resize it to ${meta.inputSize}×${meta.inputSize} (${meta.resize === 'squash' ? 'stretch the whole image' : 'centre crop'}, as transferline does, with libvips's ${classifierMetadataProps(meta)['transferline.resize_filter']} filter: sharp's kernel of that name gives the same pixels, PIL's BILINEAR nearly)`);
  w(`  output  probabilities  float32 [N, ${meta.labels.length}]  in label order: ${meta.labels.map(printable).join(', ')}`);
  if (meta.threshold !== undefined) w(`  two classes: predict "${printable(meta.labels[1]!)}" when its probability ≥ ${thresholdText(meta.threshold)} (chosen on validation; in the metadata as transferline.threshold)`);
  // the keys the file holds (no threshold when validation held one class, or for more than two)
  w(`  metadata: ${Object.keys(classifierMetadataProps(meta)).join(', ')}`);
  if (meta.threshold === undefined && meta.labels.length === 2) w('  no threshold (validation held one class only, or the run has no report.json): the most probable label wins');
  for (const note of [randomWeightsNote(meta), backgroundNote(ctx.config, meta)]) if (note) w(`  ${note}`);
  return { file, bytes: model.bytes.length };
}
