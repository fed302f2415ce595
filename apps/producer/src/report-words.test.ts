import type { ReportDoc } from '@transferline/shared';
import { describe, expect, it } from 'vitest';
import { thresholdCaution } from './report-words.js';

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
