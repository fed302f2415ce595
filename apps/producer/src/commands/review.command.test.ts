import { describe, expect, it } from 'vitest';
import { otherHolderWords } from './review.command.js';

describe('what relabel says of objects another dataset holds', () => {
  it('a training dataset whose prefixes hold the new keys finds them moved at its next ingest', () => {
    expect(otherHolderWords({ dataset: 'pets-v2', images: 2, classify: false, outside: 0 })).toBe(
      '2 of the objects to move are also in dataset pets-v2 (ingested from the same keys): it holds them under the old keys and labels until it is ingested again, which finds them moved (nothing is embedded again)',
    );
  });

  it("one whose prefixes do not hold the new keys drops them (a prefix one label folder deep: 'cats/')", () => {
    expect(otherHolderWords({ dataset: 'cats-only', images: 1, classify: false, outside: 1 })).toBe(
      '1 of the objects to move is also in dataset cats-only (ingested from the same keys): it holds it under the old key and label until it is ingested again, which drops it (its new key lies outside its prefixes)',
    );
    expect(otherHolderWords({ dataset: 'mixed', images: 3, classify: false, outside: 1 })).toMatch(/which finds 2 of them moved \(nothing is embedded again\) and drops the other 1 \(its new key lies outside its prefixes\)$/);
  });

  it("classify's images: labelled again under their new keys by the next classify, not 'ingested again'", () => {
    expect(otherHolderWords({ dataset: '_classify.pets', images: 4, classify: true, outside: 4 })).toBe(
      '4 of the objects to move are among the images classify labelled (_classify.pets): the next classify of their prefix labels them again under the new keys (nothing is embedded again)',
    );
  });
});
