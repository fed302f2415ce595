import { describe, expect, it } from 'vitest';
import { splitExamples, type Example } from './split.js';

const hex = (n: number) => n.toString(16).padStart(64, '0');
const make = (counts: Record<string, number>, offset = 0): Example[] => {
  let i = offset;
  return Object.entries(counts).flatMap(([label, n]) => Array.from({ length: n }, () => ({ sha256: hex(i++ * 7919), label })));
};
const ids = (xs: Example[]) => xs.map((e) => e.sha256).sort();
const F = { validation: 0.2, test: 0.1 };

describe('splitExamples', () => {
  it('keeps each class’s share in validation and test', () => {
    const s = splitExamples(make({ a: 50, b: 20, c: 10 }), F);
    const count = (xs: Example[], l: string) => xs.filter((x) => x.label === l).length;
    expect(['a', 'b', 'c'].map((l) => count(s.validation, l))).toEqual([10, 4, 2]);
    expect(['a', 'b', 'c'].map((l) => count(s.test, l))).toEqual([5, 2, 1]);
    expect(s.train.length + s.validation.length + s.test.length).toBe(80);
    expect(s.explicit).toBe(false);
  });

  it('is stable: the same images land in the same split whatever their order', () => {
    const ex = make({ a: 30, b: 30 });
    const a = splitExamples(ex, F);
    const b = splitExamples([...ex].reverse(), F);
    expect(ids(b.validation)).toEqual(ids(a.validation));
    expect(ids(b.test)).toEqual(ids(a.test));
  });

  it('adding images moves few of the others', () => {
    const before = splitExamples(make({ a: 100 }), { validation: 0.2, test: 0 });
    const after = splitExamples([...make({ a: 100 }), ...make({ a: 10 }, 1000)], { validation: 0.2, test: 0 });
    const kept = ids(before.validation).filter((id) => ids(after.validation).includes(id)).length;
    expect(kept).toBeGreaterThanOrEqual(16);
  });

  it('never puts the same content on both sides, and leaves out content under two labels', () => {
    const ex = make({ a: 10, b: 10 });
    const dupes = ex.map((e) => ({ ...e })); // the same bytes under other keys
    const conflict = { sha256: ex[0]!.sha256, label: 'b' }; // a's first image also filed under b
    const s = splitExamples([...ex, ...dupes, conflict], F);
    const all = [...s.train, ...s.validation, ...s.test].map((e) => e.sha256);
    expect(new Set(all).size).toBe(all.length);
    expect(all).not.toContain(ex[0]!.sha256);
    expect(s.conflicts).toEqual([[ex[0], dupes[0], conflict]]);
    expect(all.length).toBe(19);
  });

  it('uses the bucket’s own train/val/test folders when it has them', () => {
    const ex: Example[] = [
      ...make({ a: 5, b: 5 }).map((e) => ({ ...e, split: 'train' as const })),
      ...make({ a: 2, b: 2 }, 100).map((e) => ({ ...e, split: 'validation' as const })),
      ...make({ a: 1, b: 1 }, 200).map((e) => ({ ...e, split: 'test' as const })),
    ];
    const s = splitExamples(ex, F);
    expect(s.explicit).toBe(true);
    expect([s.train.length, s.validation.length, s.test.length]).toEqual([10, 4, 2]);
    // a duplicate in train and test counts as test: the held-out side wins
    const dup = { ...s.test[0]!, split: 'train' as const };
    const s2 = splitExamples([...ex, dup], F);
    expect(ids(s2.test)).toContain(dup.sha256);
    expect(ids(s2.train)).not.toContain(dup.sha256);
    // and said (a trial: training lost the image without a word), the held-out copy first
    expect(s2.heldOutCopies).toEqual([[s.test[0], dup]]);
    expect(s.heldOutCopies).toEqual([]);
    // copies held out twice (in test/ and val/, say: test wins), or trained on twice, are no such case
    const twice = splitExamples([...ex, { ...s.test[0]!, split: 'validation' as const }, { ...s.train[0]! }], F);
    expect(twice.heldOutCopies).toEqual([]);
    expect(ids(twice.test)).toContain(s.test[0]!.sha256);
  });

  it('cuts validation from train/ by the fraction for a bucket that ships train/ and test/ folders only (a review: it could not be trained)', () => {
    const ex: Example[] = [...make({ a: 10, b: 10 }).map((e) => ({ ...e, split: 'train' as const })), ...make({ a: 3, b: 3 }, 100).map((e) => ({ ...e, split: 'test' as const }))];
    const s = splitExamples(ex, { validation: 0.2, test: 0.1 });
    expect([s.train.length, s.validation.length, s.test.length]).toEqual([16, 4, 6]);
    expect(s.validation.every((e) => e.split === 'train')).toBe(true);
    expect(s.heldOut).toEqual({ validation: { folders: [], fraction: ['a', 'b'] }, test: { folders: ['a', 'b'], fraction: [] } });
    expect(s.explicit).toBe(true);
  });

  it("lets a stray val/ image decide its own class's validation only, and says so (a review: it made the whole split)", () => {
    const ex: Example[] = [...make({ a: 30, b: 30 }), { ...make({ a: 1 }, 500)[0]!, split: 'validation' as const }];
    const s = splitExamples(ex, { validation: 0.2, test: 0.1 });
    const count = (xs: Example[], l: string) => xs.filter((x) => x.label === l).length;
    expect([count(s.validation, 'a'), count(s.validation, 'b')]).toEqual([1, 6]);
    // (a class in split folders has the test split they give: none for a, as for a train/ + val/ layout; b's is cut)
    expect([count(s.test, 'a'), count(s.test, 'b')]).toEqual([0, 3]);
    expect(s.heldOut).toEqual({ validation: { folders: ['a'], fraction: ['b'] }, test: { folders: [], fraction: ['b'] } });
    // and a stray test/ image: its class's test split, the others' cut
    const t = splitExamples([...make({ a: 30, b: 30 }), { ...make({ a: 1 }, 500)[0]!, split: 'test' as const }], { validation: 0.2, test: 0.1 });
    expect([count(t.test, 'a'), count(t.test, 'b'), count(t.validation, 'a'), count(t.validation, 'b')]).toEqual([1, 3, 6, 6]);
    expect(t.heldOut).toEqual({ validation: { folders: [], fraction: ['a', 'b'] }, test: { folders: ['a'], fraction: ['b'] } });
  });

  it('keeps the test images where they are when the validation fraction changes (runs compared by test accuracy saw other images)', () => {
    const ex = make({ a: 30, b: 30 });
    const a = splitExamples(ex, { validation: 0.2, test: 0.1 });
    const b = splitExamples(ex, { validation: 0.3, test: 0.1 });
    expect(ids(b.test)).toEqual(ids(a.test));
    expect(ids(b.validation).filter((id) => ids(a.test).includes(id))).toEqual([]);
  });

  it('gives its splits in the same order whatever order the records were listed in (the seeded shuffle depends on it)', () => {
    const foldered = make({ a: 12, b: 9 }).map((e, i) => ({ ...e, split: i % 4 === 0 ? ('validation' as const) : i % 5 === 0 ? ('test' as const) : ('train' as const) }));
    const auto = make({ a: 12, b: 9 });
    for (const ex of [foldered, auto]) {
      const a = splitExamples(ex, F);
      const b = splitExamples([...ex].reverse(), F);
      expect(b.train.map((e) => e.sha256)).toEqual(a.train.map((e) => e.sha256));
      expect(b.validation.map((e) => e.sha256)).toEqual(a.validation.map((e) => e.sha256));
      expect(b.test.map((e) => e.sha256)).toEqual(a.test.map((e) => e.sha256));
    }
  });

  it('leaves every class at least one training image, whatever the fractions ask', () => {
    const s = splitExamples(make({ a: 4, b: 3, c: 10 }), { validation: 0.5, test: 0.5 });
    for (const l of ['a', 'b', 'c']) expect(s.train.filter((e) => e.label === l).length).toBeGreaterThanOrEqual(1);
    expect(s.train.length + s.validation.length + s.test.length).toBe(17);
  });

  it('keeps tiny classes in training', () => {
    const s = splitExamples(make({ a: 1, b: 2, c: 3 }), F);
    expect(s.train.filter((e) => e.label === 'a')).toHaveLength(1);
    expect(s.validation.filter((e) => e.label === 'b')).toHaveLength(1);
    expect(s.test.filter((e) => e.label === 'c')).toHaveLength(1);
  });
});
