import type { ReviewLine } from '@transferline/shared';
import { describe, expect, it } from 'vitest';
import { reviewPage } from './console/review.page.js';
import { dealFolds, foldGroups, reviewHighlights } from './review.service.js';

/** A review line of `key`, given `given`, with the out-of-fold probabilities `p` (two labels: a, b). */
function line(key: string, given: 'a' | 'b', pA: number, issue: boolean): ReviewLine {
  const probabilities = { a: pA, b: 1 - pA };
  const best = pA >= 0.5 ? 'a' : 'b';
  const other = given === 'a' ? 'b' : 'a';
  return {
    key: `s3://photos/train/${given}/${key}.jpg`,
    given,
    suggested: issue ? other : best,
    pGiven: probabilities[given],
    pSuggested: probabilities[issue ? other : best],
    issue,
    uncertainty: 1 - Math.max(pA, 1 - pA),
    probabilities,
  };
}

// In the review's order: issues first, least likely given label first. The second issue is the
// most uncertain image of all (0.49 against 0.51): it belongs to the issues, not to both lists.
const lines = [line('sure-wrong', 'a', 0.05, true), line('torn-wrong', 'a', 0.49, true), line('torn', 'b', 0.48, false), line('fine', 'a', 0.9, false), line('doubt', 'b', 0.35, false)];

describe('reviewHighlights', () => {
  it('lists an image shown as mislabelled only there, and fills the uncertain list with the others, most uncertain first', () => {
    const { issues, uncertain } = reviewHighlights(lines, { issues: 10, uncertain: 3 });
    expect(issues.map((l) => l.key)).toEqual([lines[0]!.key, lines[1]!.key]);
    expect(uncertain.map((l) => l.key)).toEqual([lines[2]!.key, lines[4]!.key, lines[3]!.key]);
  });

  it('lists an issue beyond the first N among the uncertain ones: it is shown nowhere else', () => {
    const { issues, uncertain } = reviewHighlights(lines, { issues: 1, uncertain: 2 });
    expect(issues.map((l) => l.key)).toEqual([lines[0]!.key]);
    expect(uncertain.map((l) => l.key)).toEqual([lines[1]!.key, lines[2]!.key]);
  });
});

describe('the review page', () => {
  it('shows each image once: the mislabelled ones, then the most uncertain of the others', () => {
    const html = reviewPage({ actionsConfigured: false }, { dataset: 'pets', source: 's3://b/reviews/pets/t.jsonl', lines, unreadable: [] });
    for (const l of lines) expect(html.split(`data-key="${l.key}"`).length - 1, l.key).toBe(1);
    const [issuesTable, uncertainTable] = [/<table id="issues">.*?<\/table>/s.exec(html)![0], /<table id="uncertain">.*?<\/table>/s.exec(html)![0]];
    expect(issuesTable).toContain(lines[1]!.key);
    expect(uncertainTable).not.toContain(lines[1]!.key);
    expect(html).toContain('<h2>The most uncertain of the others</h2>');
  });

  it('shows an uncertain image with the label it is confused with, as the CLI does (its suggested label is its own)', () => {
    const html = reviewPage({ actionsConfigured: false }, { dataset: 'pets', source: 's3://b/reviews/pets/t.jsonl', lines, unreadable: [] });
    const uncertainTable = /<table id="uncertain">.*?<\/table>/s.exec(html)![0];
    // 'fine': given a, p(a) 0.9; confused, if at all, with b at 0.1
    const fine = new RegExp(`<tr data-key="${lines[3]!.key}">.*?</tr>`).exec(uncertainTable)![0];
    expect(fine).toMatch(/<td class="label">a<\/td><td class="label">b<\/td><td class="n" data-value="0.9">90.0%<\/td><td class="n">10.0%<\/td>/);
    expect(uncertainTable).toContain('<th>or else</th>');
    // a label issue keeps its suggested label
    const issuesTable = /<table id="issues">.*?<\/table>/s.exec(html)![0];
    expect(issuesTable).toContain('<th>suggested</th>');
  });
});

describe('the folds of a review', () => {
  it('keep copies of the same bytes together, and give images filed under two labels no class turn', () => {
    // in hash order: cat A, an image filed under cat and dog (X), cat B, then two dogs
    const labels = ['cat', 'cat', 'dog', 'cat', 'cat', 'dog', 'dog'];
    const items = ['a', 'x', 'x', 'b', 'b', 'd1', 'd2'].map((sha256, i) => ({ sha256, label: labels[i]! }));
    const groups = foldGroups(items, new Map([['cat', 0], ['dog', 1]]));
    expect(groups.map((g) => [g.members, g.label])).toEqual([[[0], 0], [[1, 2], undefined], [[3, 4], 0], [[5], 1], [[6], 1]]);
    const fold = dealFolds(groups, 2, 2);
    // cat's two fittable images in different folds (X taking cat's turn put both in fold 0 before)
    expect(fold[0]).not.toBe(fold[2]);
    expect(fold[3]).not.toBe(fold[4]);
  });
});
