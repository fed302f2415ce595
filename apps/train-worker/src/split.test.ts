import { describe, expect, it } from 'vitest';
import { stratifiedSplit, type Example } from './split.js';

const hex = (n: number) => n.toString(16).padStart(64, '0');
const make = (counts: Record<string, number>): Example[] => {
  let i = 0;
  return Object.entries(counts).flatMap(([label, n]) => Array.from({ length: n }, () => ({ sha256: hex(i++), label })));
};

describe('stratifiedSplit', () => {
  it('keeps each class’s share in validation', () => {
    const { train, validation } = stratifiedSplit(make({ a: 50, b: 20, c: 10 }), 0.2, 7);
    const count = (xs: Example[], l: string) => xs.filter((x) => x.label === l).length;
    expect([count(validation, 'a'), count(validation, 'b'), count(validation, 'c')]).toEqual([10, 4, 2]);
    expect(train.length + validation.length).toBe(80);
  });

  it('is the same for the same seed and input order, and differs for another seed', () => {
    const ex = make({ a: 30, b: 30 });
    const ids = (s: { validation: Example[] }) => s.validation.map((e) => e.sha256).sort();
    expect(ids(stratifiedSplit(ex, 0.25, 3))).toEqual(ids(stratifiedSplit([...ex].reverse(), 0.25, 3)));
    expect(ids(stratifiedSplit(ex, 0.25, 3))).not.toEqual(ids(stratifiedSplit(ex, 0.25, 4)));
  });

  it('never puts the same content on both sides', () => {
    const ex = make({ a: 10, b: 10 });
    const dupes = ex.map((e) => ({ ...e })); // same bytes under other keys
    const { train, validation } = stratifiedSplit([...ex, ...dupes], 0.3, 1);
    const t = new Set(train.map((e) => e.sha256));
    expect(validation.some((e) => t.has(e.sha256))).toBe(false);
    expect(train.length + validation.length).toBe(20);
  });
});
