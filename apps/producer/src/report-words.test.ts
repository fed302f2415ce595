import type { ReportDoc } from '@transferline/shared';
import { describe, expect, it } from 'vitest';
import { fewToMeasure, randomSpaceNote, thresholdCaution } from './report-words.js';

const validation = (matrix: number[][], binary = true): ReportDoc['validation'] =>
  ({
    examples: matrix.flat().reduce((a, b) => a + b, 0),
    accuracy: 0.9,
    confusionMatrix: matrix,
    perClass: [],
    ...(binary && { binary: { positiveLabel: 'dog', rocAuc: 0.9, threshold: 0.055, accuracyAtThreshold: 0.9 } }),
  }) as unknown as ReportDoc['validation'];

describe('thresholdCaution', () => {
  it('cautions against a two-class threshold chosen on few validation images of a class, naming the class', () => {
    expect(thresholdCaution(validation([[12, 2], [1, 6]]), ['cat', 'dog'])).toBe('the threshold was chosen on 21 validation images, 7 of them "dog": too few to place it well; more images (or a larger --validation-fraction) make it steadier');
    expect(thresholdCaution(validation([[40, 2], [3, 10]]), ['cat', 'dog'])).toBeUndefined();
    // no threshold (three classes, or validation of one class): nothing to caution against
    expect(thresholdCaution(validation([[1, 0], [0, 1]], false), ['cat', 'dog'])).toBeUndefined();
  });
});

describe('fewToMeasure', () => {
  it('says how far one image moves the accuracy of a small validation or test split, and nothing of a large or empty one', () => {
    expect(fewToMeasure({ validation: 3, test: 1 })).toEqual([
      'validation holds 3 images: one image moves its accuracy by 33 points, so take it as rough (more images a class give steadier figures)',
      'test holds 1 image: one image moves its accuracy by 100 points, so take it as rough (more images a class give steadier figures)',
    ]);
    expect(fewToMeasure({ validation: 30, test: 0 })).toEqual([]);
  });
});

describe('randomSpaceNote', () => {
  it('names seeded random weights, and nothing for ImageNet ones or an unknown space', () => {
    expect(randomSpaceNote({ id: 'efficientnet-b0.random-seed7.squash224', weights: 'random', seed: 7 }, 'its labels are')).toBe(
      "note: EfficientNet-B0 runs with SEEDED RANDOM weights (seed 7) in embedding space efficientnet-b0.random-seed7.squash224: its labels are fine for the demo's shapes, not for real photos",
    );
    expect(randomSpaceNote({ id: 'efficientnet-b0.imagenet-0123.squash224', weights: 'imagenet' }, 'its labels are')).toBeUndefined();
    expect(randomSpaceNote(undefined, 'its labels are')).toBeUndefined();
  });
});
