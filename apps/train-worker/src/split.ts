import { groupCopies, type Split } from '@transferline/shared';

export interface Example {
  sha256: string;
  label: string;
  /** the dataset's item id (`bucket/key`), to name the image */
  id?: string;
  /** a split the bucket's layout gave the image (train/, val/, test/ folders) */
  split?: Split;
  /** the label manifest (`bucket/key`) that labels the image, if one does (not its folder) */
  manifest?: string;
}

export interface Splits {
  train: Example[];
  validation: Example[];
  test: Example[];
  /** true when the bucket's own split folders (or a manifest's split column) gave some class its held-out images */
  explicit: boolean;
  /** for each held-out split, the classes whose images in it came from the bucket's split folders, and those cut by the fraction */
  heldOut: { validation: HeldOutFrom; test: HeldOutFrom };
  /** contents found under two different labels, each with every copy: left out, since no label is right for them */
  conflicts: Example[][];
  /**
   * contents with a copy held out in val/ or test/ and another where it would be trained on (a
   * train/ folder, or no split): held out, every copy, so that nothing is tested on what it
   * learnt; each with its copies, the held-out one first
   */
  heldOutCopies: Example[][];
}

/** Classes (labels, sorted) whose images in one held-out split came from the split folders, and those cut by the run's fraction. */
export interface HeldOutFrom {
  folders: string[];
  fraction: string[];
}

const RANK: Record<Split, number> = { test: 2, validation: 1, train: 0 };

/**
 * Train/validation/test splits by content hash. Duplicated bytes are one example, so a
 * duplicate can never sit on both sides; bytes under two labels are left out (a duplicate in a
 * held-out folder holds the image out). Without split folders (val/, test/, or a manifest's split
 * column), each class is ordered by content hash and cut by the fractions: validation from the
 * low end, test from the high end, so that one fraction does not move the other's images (at least
 * one validation image for a class of 2+, one test image for a class of 3+ when a test fraction
 * is asked for, and one training image always). Each class decides for itself: one with images
 * in val/ or test/ folders has the test split they give, and its val/ images, or, without any,
 * a validation cut from its other images by the fraction; one without is cut by the fractions.
 * So a bucket that ships train/ and test/ folders gets its validation from train/ (a review: it
 * could not be trained), and one stray image in a val/ or test/ folder decides its own class's
 * splits alone (it made the whole dataset's). The same images always land in the same split,
 * run after run, whatever the seed, and adding images moves few of the others.
 */
export function splitExamples(examples: Example[], fractions: { validation: number; test: number }): Splits {
  const conflicts: Example[][] = [];
  const heldOutCopies: Example[][] = [];
  const unique: Example[] = [];
  for (const g of groupCopies(examples)) {
    if (g.label === undefined) {
      conflicts.push(g.members.map((i) => examples[i]!));
      continue;
    }
    const first = examples[g.members[0]!]!;
    let split: Split | undefined;
    for (const i of g.members) {
      const s = examples[i]!.split;
      if (s && (!split || RANK[s] > RANK[split])) split = s;
    }
    unique.push(split ? { sha256: first.sha256, label: g.label, split } : { sha256: first.sha256, label: g.label });
    const copies = g.members.map((i) => examples[i]!);
    if ((split === 'validation' || split === 'test') && copies.some((e) => e.split === undefined || e.split === 'train')) {
      heldOutCopies.push([...copies.filter((e) => e.split === split), ...copies.filter((e) => e.split !== split)]);
    }
  }
  const out: Splits = { train: [], validation: [], test: [], explicit: false, heldOut: { validation: { folders: [], fraction: [] }, test: { folders: [], fraction: [] } }, conflicts, heldOutCopies };
  const byLabel = new Map<string, Example[]>();
  for (const e of unique) byLabel.set(e.label, [...(byLabel.get(e.label) ?? []), e]);
  // In a fixed order (label, then content hash), not the order Redis listed the records in: that
  // changes when Redis restarts, and the seeded shuffle would then train differently.
  for (const label of [...byLabel.keys()].sort()) {
    const list = byLabel.get(label)!.sort((a, b) => (a.sha256 < b.sha256 ? -1 : 1));
    const given = { validation: list.filter((e) => e.split === 'validation'), test: list.filter((e) => e.split === 'test') };
    const rest = list.filter((e) => e.split !== 'validation' && e.split !== 'test');
    // a class whose images come in held-out folders has the test split they give (none without a
    // test/ folder: a train/ + val/ layout trains on all of train/), and its validation cut from
    // its other images when it has no val/ folder (early stopping and the threshold need one)
    const foldered = given.validation.length > 0 || given.test.length > 0;
    out.explicit ||= foldered;
    const n = rest.length;
    const nVal = given.validation.length > 0 || n < 2 ? 0 : Math.max(1, Math.round(n * fractions.validation));
    // Training keeps at least one image of every label, whatever the fractions ask.
    const nTest = foldered || fractions.test <= 0 || n < 3 ? 0 : Math.min(n - nVal - 1, Math.max(1, Math.round(n * fractions.test)));
    out.validation.push(...given.validation, ...rest.slice(0, nVal));
    out.train.push(...rest.slice(nVal, n - nTest));
    out.test.push(...given.test, ...rest.slice(n - nTest));
    for (const which of ['validation', 'test'] as const) {
      if (given[which].length > 0) out.heldOut[which].folders.push(label);
      else if (which === 'validation' ? nVal > 0 : nTest > 0) out.heldOut[which].fraction.push(label);
    }
  }
  return out;
}
