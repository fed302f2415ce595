import { describe, expect, it } from 'vitest';
import { confusableLabels, groupCopies, isHiddenPath, keyBesideLabel, labelFromKey, relabelKey } from './labels.js';

describe('isHiddenPath', () => {
  it('a file or any folder below the prefix whose name starts with a dot; dots elsewhere are names like any', () => {
    for (const p of ['cats/.DS_Store', 'cats/._a.jpg', '.thumbnails/a.jpg', 'cats/.git/config', 'train/.cache/cats/a.jpg']) expect(isHiddenPath(p), p).toBe(true);
    for (const p of ['cats/a.jpg', 'cats/a.b.jpg', 'dr.who/a.jpg', 'cats/a.', 'cats/a..jpg']) expect(isHiddenPath(p), p).toBe(false);
  });
});

describe('labelFromKey', () => {
  it('takes the first folder below the prefix', () => {
    expect(labelFromKey('train/', 'train/cats/1.jpg')).toBe('cats');
    expect(labelFromKey('', 'dogs/a.png')).toBe('dogs');
  });
  it('keeps deeper folders in the first folder’s label', () => {
    expect(labelFromKey('train/', 'train/cats/indoor/2024/1.jpg')).toBe('cats');
  });
  it('keeps spaces and unicode, NFC-normalised', () => {
    expect(labelFromKey('p/', 'p/golden retriever/x.jpg')).toBe('golden retriever');
    expect(labelFromKey('p/', 'p/chats noirs 🐈/x.jpg')).toBe('chats noirs 🐈');
    // "é" as e + combining accent and as one code point are one label
    expect(labelFromKey('p/', 'p/cafe\u0301/x.jpg')).toBe(labelFromKey('p/', 'p/caf\u00e9/y.jpg'));
  });
  it('gives no label to keys at the prefix root, folder markers, or keys outside the prefix', () => {
    expect(labelFromKey('train/', 'train/readme.txt')).toBeUndefined();
    expect(labelFromKey('train/', 'train/cats/')).toBeUndefined();
    expect(labelFromKey('train/', 'train//x.jpg')).toBeUndefined();
    expect(labelFromKey('train/', 'val/cats/x.jpg')).toBeUndefined();
    expect(labelFromKey('train/', 'train/   /x.jpg')).toBeUndefined();
  });
});

describe('itemFromKey', () => {
  it('takes the split from a prefix that ends in a split folder', async () => {
    const { itemFromKey } = await import('./labels.js');
    expect(itemFromKey('photos/val/', 'photos/val/cats/1.jpg')).toEqual({ label: 'cats', split: 'validation' });
    expect(itemFromKey('photos/train/', 'photos/train/cats/1.jpg')).toEqual({ label: 'cats', split: 'train' });
  });
  it('takes the split from split folders right below the prefix, the label from the next folder', async () => {
    const { itemFromKey } = await import('./labels.js');
    expect(itemFromKey('photos/', 'photos/test/dogs/a/b.jpg')).toEqual({ label: 'dogs', split: 'test' });
    expect(itemFromKey('', 'validation/dogs/b.jpg')).toEqual({ label: 'dogs', split: 'validation' });
    expect(itemFromKey('photos/', 'photos/test/b.jpg')).toEqual({ label: 'test' });
    expect(itemFromKey('photos/', 'photos/cats/b.jpg')).toEqual({ label: 'cats' });
  });
});

describe('labels named like Object.prototype members', () => {
  it('are labels, not splits', async () => {
    const { itemFromKey, splitOfFolder } = await import('./labels.js');
    for (const name of ['__proto__', 'constructor', 'toString', 'hasOwnProperty', 'valueOf']) {
      expect(splitOfFolder(name), name).toBeUndefined();
      expect(itemFromKey('photos/', `photos/${name}/1.jpg`), name).toEqual({ label: name });
      expect(itemFromKey('photos/val/', `photos/val/${name}/1.jpg`), name).toEqual({ label: name, split: 'validation' });
    }
  });
});

describe('relabelKey', () => {
  it('renames the label folder and nothing else', () => {
    expect(relabelKey('photos/', 'photos/cat/sub/1.jpg', 'dog')).toBe('photos/dog/sub/1.jpg');
    expect(relabelKey('photos/', 'photos/val/cat/1.jpg', 'dog')).toBe('photos/val/dog/1.jpg');
    expect(relabelKey('photos/val/', 'photos/val/cat/1.jpg', 'dog')).toBe('photos/val/dog/1.jpg');
    expect(relabelKey('cat/', 'cat/cat/cat.jpg', 'dog')).toBe('cat/dog/cat.jpg');
    expect(relabelKey('', 'cat/1.jpg', '__proto__')).toBe('__proto__/1.jpg');
    expect(() => relabelKey('photos/', 'photos/1.jpg', 'dog')).toThrow(/not in a label folder/);
    expect(() => relabelKey('photos/', 'photos/cat/1.jpg', 'a/b')).toThrow(/cannot be empty or contain/);
    // (a listing leaves hidden folders out: the image would leave the dataset at the next ingest)
    expect(() => relabelKey('photos/', 'photos/cat/1.jpg', '.net')).toThrow(/cannot start with a dot \(got "\.net"\): listings leave hidden folders out/);
  });
  it('moves a key to one with the same place beside its label (keyBesideLabel), and to no other', () => {
    const cases: [string, string][] = [['photos/', 'photos/cat/sub/1.jpg'], ['photos/', 'photos/val/cat/1.jpg'], ['photos/val/', 'photos/val/cat/1.jpg'], ['', 'cat/1.jpg']];
    for (const [prefix, key] of cases) expect(keyBesideLabel(prefix, relabelKey(prefix, key, 'dog'))).toBe(keyBesideLabel(prefix, key));
    expect(keyBesideLabel('photos/', 'photos/cat/2.jpg')).not.toBe(keyBesideLabel('photos/', 'photos/dog/1.jpg'));
    expect(keyBesideLabel('photos/', 'photos/val/cat/1.jpg')).not.toBe(keyBesideLabel('photos/', 'photos/train/cat/1.jpg'));
    expect(keyBesideLabel('photos/', 'photos/1.jpg')).toBeUndefined();
  });
  it('refuses a label that would make the key longer than S3 allows (1,024 bytes of UTF-8)', () => {
    const key = `photos/cat/${'x'.repeat(1000)}.jpg`;
    expect(relabelKey('photos/', key, 'dogs')).toHaveLength(1016);
    expect(relabelKey('photos/', key, 'dogs'.padEnd(12, 's'))).toHaveLength(1024);
    // 13 characters, or 4 of them taking 3 bytes each
    expect(() => relabelKey('photos/', key, 'dogs'.padEnd(13, 's'))).toThrow(/would be 1025 bytes long, and S3 keys are at most 1024: choose a shorter label/);
    expect(() => relabelKey('photos/', key, 'é'.repeat(7))).toThrow(/would be 1026 bytes/);
  });
});

describe('groupCopies', () => {
  it('makes one group of the copies of each content hash, with the label they agree on', () => {
    const items = [
      { sha256: 'b', label: 'cat' },
      { sha256: 'a', label: 'dog' },
      { sha256: 'b', label: 'cat' },
      { sha256: 'c', label: 'cat' },
      { sha256: 'c', label: 'dog' },
      { sha256: 'c', label: 'cat' },
    ];
    expect(groupCopies(items)).toEqual([
      { members: [0, 2], label: 'cat' },
      { members: [1], label: 'dog' },
      // filed under two labels: no label is right for them, whatever most copies say
      { members: [3, 4, 5], label: undefined },
    ]);
  });
});

describe('confusableLabels', () => {
  it('pairs labels that look like one folder name written two ways, and leaves distinct names alone', () => {
    const counts = (entries: Record<string, number>) => new Map(Object.entries(entries));
    const pairs = confusableLabels(counts({ nature: 23, natrue: 3, cat: 30, cats: 28, Dog: 2, dog: 40, car: 20, cart: 20, 'red-panda': 9, red_panda: 12, apple: 30, maple: 30, flower: 40, flowers: 1, bird: 30, bard: 2 }));
    expect(pairs).toEqual([
      { a: 'Dog', b: 'dog', how: 'only in case or separators' },
      { a: 'bard', b: 'bird', how: 'by one letter' },
      { a: 'cat', b: 'cats', how: 'by one letter' },
      { a: 'flower', b: 'flowers', how: 'by one letter' },
      { a: 'natrue', b: 'nature', how: 'by two letters swapped' },
      { a: 'red-panda', b: 'red_panda', how: 'only in case or separators' },
    ]);
    // short names one letter apart are often two classes (cat, car), and so are names of like
    // sizes one letter apart (bear, pear), names two edits apart, and names that differ in digits
    expect(confusableLabels(counts({ cat: 9, car: 1, cot: 9, bear: 30, pear: 25, horse: 40, house: 38, circle: 9, square: 9, class_1: 9, class_2: 1, cam10: 9, cam9: 1 }))).toEqual([]);
    // two letters swapped: a slip whatever the sizes
    expect(confusableLabels(counts({ natrue: 20, nature: 23 }))).toEqual([{ a: 'natrue', b: 'nature', how: 'by two letters swapped' }]);
  });
});
