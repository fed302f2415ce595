import { conflictsLabelledBy, type ReportDoc } from '@transferline/shared';
import { describe, expect, it } from 'vitest';
import { confusableLabelNotes, fewInAll, fewToLearn, fewToMeasure, heldOutCopiesWords, heldOutWords, randomSpaceNote, thresholdCaution, thresholdText, underTwoLabelsFix } from './report-words.js';

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

describe('heldOutCopiesWords', () => {
  it('says which held-out images training lost to a copy of theirs, the first few with their copies, and nothing when none', () => {
    expect(heldOutCopiesWords({})).toEqual([]);
    expect(heldOutCopiesWords({ copiesHeldOut: 2, heldOutCopies: [['s3://p/test/a/x.jpg', 's3://p/train/a/x.jpg']] })).toEqual([
      "note: 2 images held out in val/ or test/ (or by a manifest's split) also have copies (the same bytes) where they would be trained on (train/, or no split): every copy is held out, so they are not trained on; delete the copy you did not mean",
      '  s3://p/test/a/x.jpg = s3://p/train/a/x.jpg',
      '  and 1 more',
    ]);
  });
});

describe('confusableLabelNotes', () => {
  it('names each pair of labels that look like one folder name written two ways, with their images', () => {
    expect(confusableLabelNotes(new Map([['nature', 23], ['natrue', 1], ['abstract', 34]]))).toEqual([
      'labels natrue (1 image) and nature (23) differ by two letters swapped: a misspelt label? Its images make a class of their own; move them into the right folder and ingest again (nothing is embedded again), or move them with transferline relabel; for images a label manifest labels, mend their rows there and ingest it again',
    ]);
    expect(confusableLabelNotes(new Map([['circle', 30], ['square', 30]]))).toEqual([]);
    // many pairs: the first five, and how many more
    const many = confusableLabelNotes(new Map(['ant', 'bee', 'cow', 'dog', 'eel', 'fox', 'gnu'].flatMap((n) => [[n, 9], [n.toUpperCase(), 9]] as [string, number][])));
    expect(many).toHaveLength(6);
    expect(many[5]).toBe('and 2 more pairs of labels that look alike');
  });
});

describe('fewToLearn', () => {
  const report = (support: number[], classWeights: 'balanced' | 'none') =>
    ({
      labels: support.map((_, i) => `l${i}`),
      train: { perClass: support.map((n, i) => ({ label: `l${i}`, support: n })) },
      // balanced: n / (k * n_i)
      classWeights: support.map((n) => support.reduce((a, b) => a + b, 0) / (support.length * n)),
      params: { classWeights },
    }) as unknown as ReportDoc;
  it('names a class with a handful of training images beside much larger ones, with the weight balanced gives them', () => {
    expect(fewToLearn(report([17, 1, 20, 26], 'balanced'))).toEqual([
      'l1 has 1 training image, the other classes 17 to 26: too few to learn it, and --class-weights balanced makes it count 16.0 times as much as an image of a class of average size',
    ]);
    expect(fewToLearn(report([17, 3, 20], 'none'))).toEqual(['l1 has 3 training images, the other classes 17 to 20: too few to learn it']);
    // others all of one size: one figure, not "14 to 14" (a user's trial)
    expect(fewToLearn(report([14, 2, 14], 'none'))).toEqual(['l1 has 2 training images, the other classes 14: too few to learn it']);
    expect(fewToLearn(report([2, 14], 'none'))).toEqual(['l0 has 2 training images, the other class 14: too few to learn it']);
    // small, but no smaller than the rest; or a few fewer than the rest
    expect(fewToLearn(report([3, 4, 3], 'balanced'))).toEqual([]);
    expect(fewToLearn(report([4, 12, 14], 'balanced'))).toEqual([]);
  });
});

describe('fewInAll', () => {
  const report = (support: number[]) => ({ train: { perClass: support.map((n, i) => ({ label: `l${i}`, support: n })) } }) as unknown as ReportDoc;
  it('says so when every class has a handful of training images (a first try on 3 photos trained without a word)', () => {
    expect(fewInAll(report([2, 1]))).toBe('every class has fewer than 5 training images (1 to 2): too few to learn from, and the figures above say little about new images; add images to each label (its folder, or rows of its manifest) and ingest again');
    expect(fewInAll(report([3, 3, 3]))).toMatch(/^every class has fewer than 5 training images \(3\): /);
    // one class large enough: fewToLearn's to name the others, beside it
    expect(fewInAll(report([4, 5]))).toBeUndefined();
    expect(fewInAll(report([]))).toBeUndefined();
  });
});

describe('underTwoLabelsFix', () => {
  it('sends copies in label folders to relabel, and those a label manifest labels to its rows (relabel refuses them)', () => {
    expect(underTwoLabelsFix({ manifests: [], folders: true })).toBe('move the copies to their label with transferline relabel');
    expect(underTwoLabelsFix(conflictsLabelledBy([{ manifest: 'b/l.csv' }, { manifest: 'b/l.csv' }]))).toBe("change the copies' rows in the label manifest s3://b/l.csv and ingest it again");
    expect(underTwoLabelsFix(conflictsLabelledBy([{ manifest: 'b/z.csv' }, { manifest: 'b/a.jsonl' }]))).toBe("change the copies' rows in the label manifests s3://b/a.jsonl, s3://b/z.csv and ingest them again");
    expect(underTwoLabelsFix(conflictsLabelledBy([{ manifest: 'b/l.csv' }, {}]))).toBe('move the copies to their label with transferline relabel; for those that the label manifest s3://b/l.csv labels, change their rows there and ingest it again');
  });
});

describe('thresholdText', () => {
  it('prints three decimals, or as many as keep a threshold near 0 or 1 from reading as 0 or 1 (a trial read "at least 0.000")', () => {
    expect(thresholdText(0.4213)).toBe('0.421');
    expect(thresholdText(0.00004)).toBe('0.00004');
    expect(thresholdText(0.99962)).toBe('0.9996');
    expect(thresholdText(0)).toBe('0.000');
    expect(thresholdText(1)).toBe('1.000');
  });
});

describe('heldOutWords: how train says a run was split', () => {
  const split = (heldOut: { validation: { folders: string[]; fraction: string[] }; test: { folders: string[]; fraction: string[] } }, explicit = true) => ({ train: 10, validation: 2, test: 1, explicit, conflictsLeftOut: 0, heldOut });
  it('says nothing when the fractions alone made the splits', () => {
    expect(heldOutWords(split({ validation: { folders: [], fraction: ['a', 'b'] }, test: { folders: [], fraction: ['a', 'b'] } }, false), ['a', 'b'])).toBeUndefined();
  });
  it('names the classes of each part when the parts are not of them all', () => {
    expect(heldOutWords(split({ validation: { folders: ['a', 'b'], fraction: [] }, test: { folders: [], fraction: [] } }), ['a', 'b'])).toBe('validation from the given split; no test split (none given: no test/ folder, nor test rows in a label manifest)');
    expect(heldOutWords(split({ validation: { folders: [], fraction: ['a', 'b'] }, test: { folders: ['a', 'b'], fraction: [] } }), ['a', 'b'])).toBe('validation cut by --validation-fraction; test from the given split');
    // a stray val/ image in a: its class follows the folders (no test image), b is cut by the fractions
    expect(heldOutWords(split({ validation: { folders: ['a'], fraction: ['b'] }, test: { folders: [], fraction: ['b'] } }), ['a', 'b'])).toBe(
      'validation from the given split for a, cut by --validation-fraction for b; test cut by --test-fraction for b, none for a',
    );
  });
});
