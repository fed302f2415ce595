import { seededRandom } from '@transferline/shared';

export interface Example {
  sha256: string;
  label: string;
}

/**
 * Stratified, seeded train/validation split. Examples are unique by content hash first (the
 * same bytes under two keys are one example, so a duplicate can never sit on both sides), then
 * each class is shuffled and `fraction` of it (at least one, when the class has two or more)
 * goes to validation.
 */
export function stratifiedSplit(examples: Example[], fraction: number, seed: number): { train: Example[]; validation: Example[] } {
  const seen = new Set<string>();
  const byLabel = new Map<string, Example[]>();
  for (const e of [...examples].sort((a, b) => (a.sha256 < b.sha256 ? -1 : a.sha256 > b.sha256 ? 1 : 0))) {
    if (seen.has(e.sha256)) continue;
    seen.add(e.sha256);
    const list = byLabel.get(e.label) ?? [];
    list.push(e);
    byLabel.set(e.label, list);
  }
  const rand = seededRandom(seed);
  const train: Example[] = [];
  const validation: Example[] = [];
  for (const label of [...byLabel.keys()].sort()) {
    const list = byLabel.get(label)!;
    for (let i = list.length - 1; i > 0; i--) {
      const j = Math.floor(rand() * (i + 1));
      [list[i], list[j]] = [list[j]!, list[i]!];
    }
    const nVal = list.length < 2 ? 0 : Math.max(1, Math.round(list.length * fraction));
    validation.push(...list.slice(0, nVal));
    train.push(...list.slice(nVal));
  }
  return { train, validation };
}
