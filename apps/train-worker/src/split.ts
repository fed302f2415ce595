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
  /** true when the bucket's own train/val/test folders decided the split */
  explicit: boolean;
  /** contents found under two different labels, each with every copy: left out, since no label is right for them */
  conflicts: Example[][];
}

const RANK: Record<Split, number> = { test: 2, validation: 1, train: 0 };

/**
 * Train/validation/test splits by content hash. Duplicated bytes are one example, so a
 * duplicate can never sit on both sides; bytes under two labels are left out. When the bucket
 * has validation or test folders, those decide (a duplicate goes to the most held-out split).
 * Otherwise each class is ordered by content hash and cut by the fractions (at least one
 * validation example per class of 2+, one test example per class of 3+ when a test fraction is
 * asked for): the same images always land in the same split, run after run, whatever the seed,
 * and adding images moves few of the others.
 */
export function splitExamples(examples: Example[], fractions: { validation: number; test: number }): Splits {
  const conflicts: Example[][] = [];
  const unique: Example[] = [];
  for (const g of groupCopies(examples)) {
    if (g.label === undefined) {
      conflicts.push(g.members.map((i) => examples[i]!));
      continue;
    }
    const first = examples[g.members[0]!]!;
    // a copy in a held-out folder holds the image out
    let split: Split | undefined;
    for (const i of g.members) {
      const s = examples[i]!.split;
      if (s && (!split || RANK[s] > RANK[split])) split = s;
    }
    unique.push(split ? { sha256: first.sha256, label: g.label, split } : { sha256: first.sha256, label: g.label });
  }
  const explicit = unique.some((e) => e.split === 'validation' || e.split === 'test');
  const out: Splits = { train: [], validation: [], test: [], explicit, conflicts };
  if (explicit) {
    // In a fixed order (label, then content hash), not the order Redis listed the records in:
    // that changes when Redis restarts, and the seeded shuffle would then train differently.
    for (const e of unique.sort(byLabelThenHash)) out[e.split ?? 'train'].push(e);
    return out;
  }
  const byLabel = new Map<string, Example[]>();
  for (const e of unique) byLabel.set(e.label, [...(byLabel.get(e.label) ?? []), e]);
  for (const label of [...byLabel.keys()].sort()) {
    const list = byLabel.get(label)!.sort((a, b) => (a.sha256 < b.sha256 ? -1 : 1));
    const n = list.length;
    const nVal = n < 2 ? 0 : Math.max(1, Math.round(n * fractions.validation));
    // Training keeps at least one image of every label, whatever the fractions ask.
    const nTest = fractions.test <= 0 || n < 3 ? 0 : Math.min(n - nVal - 1, Math.max(1, Math.round(n * fractions.test)));
    out.validation.push(...list.slice(0, nVal));
    out.test.push(...list.slice(nVal, nVal + nTest));
    out.train.push(...list.slice(nVal + nTest));
  }
  return out;
}

function byLabelThenHash(a: Example, b: Example): number {
  if (a.label !== b.label) return a.label < b.label ? -1 : 1;
  return a.sha256 < b.sha256 ? -1 : a.sha256 > b.sha256 ? 1 : 0;
}
