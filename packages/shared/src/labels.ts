import levenshtein from 'damerau-levenshtein';
import type { Split } from './documents.js';

// A Map, not an object literal: folder names are user strings, and `constructor` or `__proto__`
// would find Object.prototype's members in a plain object.
const SPLIT_FOLDERS = new Map<string, Split>([
  ['train', 'train'],
  ['val', 'validation'],
  ['valid', 'validation'],
  ['validation', 'validation'],
  ['test', 'test'],
]);

/** The split a folder name stands for (`train`, `val`/`valid`/`validation`, `test`), if any. */
export function splitOfFolder(name: string): Split | undefined {
  return SPLIT_FOLDERS.get(name.toLowerCase());
}

/**
 * The label of an object listed under `prefix`: the first folder below the prefix, as in Keras
 * `image_dataset_from_directory` (`train/<label>/<file>`; deeper folders belong to that label).
 * Returns undefined for keys directly at the prefix root and for folder markers, which have no label.
 */
export function labelFromKey(prefix: string, key: string): string | undefined {
  if (!key.startsWith(prefix)) return undefined;
  const rest = key.slice(prefix.length);
  const slash = rest.indexOf('/');
  if (slash <= 0) return undefined; // at the root, or an empty folder name ("//")
  if (rest.endsWith('/')) return undefined; // a folder marker object, not a file
  const label = rest.slice(0, slash).normalize('NFC');
  return label.trim() === '' ? undefined : label;
}

/**
 * Whether a path below a prefix (`cats/.DS_Store`, `cats/._a.jpg`, `.thumbnails/a.jpg`) is in a
 * hidden file or folder: one whose name starts with a dot. Such files (a Finder's .DS_Store and
 * ._ files, thumbnail caches, a .git folder) are not the dataset's images, and a hidden folder is
 * no label: `upload` sends none of them and a listing leaves them out, where `aws s3 sync` copies
 * them like any file.
 */
export function isHiddenPath(relative: string): boolean {
  return relative.split('/').some((part) => part.startsWith('.'));
}

/** The split a prefix itself names (`s3://photos/val/`), if its last folder is a split folder. */
export function splitOfPrefix(prefix: string): Split | undefined {
  return splitOfFolder(prefix.replace(/\/$/, '').split('/').pop() ?? '');
}

/**
 * Label and split of a listed object. The split comes from the layout: a prefix that ends in a
 * split folder (`s3://photos/val/`), or split folders right below the prefix
 * (`s3://photos/` holding `train/<label>/…` and `val/<label>/…`).
 */
export function itemFromKey(prefix: string, key: string): { label: string; split?: Split } | undefined {
  const fromPrefix = splitOfPrefix(prefix);
  const first = labelFromKey(prefix, key);
  if (first === undefined) return undefined;
  if (fromPrefix) return { label: first, split: fromPrefix };
  const split = splitOfFolder(first);
  if (split) {
    const label = labelFromKey(`${prefix}${key.slice(prefix.length).split('/')[0]}/`, key);
    if (label !== undefined) return { label, split };
  }
  return { label: first };
}

/** The longest object key S3 accepts, in bytes of UTF-8. */
export const S3_MAX_KEY_BYTES = 1024;

/**
 * The key an object gets when it moves to label folder `label`: the folder `itemFromKey` read its
 * label from is renamed, everything else (prefix, split folder, sub-folders, file name) is kept.
 */
export function relabelKey(prefix: string, key: string, label: string): string {
  if (label === '' || label.includes('/')) throw new Error(`a label folder cannot be empty or contain "/" (got ${JSON.stringify(label)})`);
  // (a listing leaves hidden folders out: the image would leave the dataset at the next ingest)
  if (isHiddenPath(label)) throw new Error(`a label folder cannot start with a dot (got ${JSON.stringify(label)}): listings leave hidden folders out`);
  const slot = labelSlot(prefix, key);
  if (slot === undefined) throw new Error(`${key} is not in a label folder under ${prefix || 'the bucket root'}`);
  slot.parts[slot.at] = label;
  const moved = `${prefix}${slot.parts.join('/')}`;
  const bytes = Buffer.byteLength(moved);
  if (bytes > S3_MAX_KEY_BYTES) throw new Error(`the new key would be ${bytes} bytes long, and S3 keys are at most ${S3_MAX_KEY_BYTES}: choose a shorter label`);
  return moved;
}

/** The folders and file name of a key below `prefix`, and which of them is its label folder (itemFromKey's). */
function labelSlot(prefix: string, key: string): { parts: string[]; at: number } | undefined {
  const item = itemFromKey(prefix, key);
  if (item === undefined) return undefined;
  return { parts: key.slice(prefix.length).split('/'), at: !splitOfPrefix(prefix) && item.split ? 1 : 0 };
}

/**
 * A key below `prefix` with its label folder left out: the keys relabelKey moves an object
 * between have the same one. Undefined for a key in no label folder.
 */
export function keyBesideLabel(prefix: string, key: string): string | undefined {
  const slot = labelSlot(prefix, key);
  if (slot === undefined) return undefined;
  slot.parts[slot.at] = '';
  return slot.parts.join('/');
}

/**
 * Whether S3 takes `name` for a new bucket: 3-63 lowercase letters, digits, dots and hyphens,
 * starting and ending with a letter or digit, no two dots in a row (what MinIO and the embedded
 * server enforce too).
 */
export function isBucketName(name: string): boolean {
  return /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(name) && !name.includes('..');
}

/** What a bucket name must be, in words, for an error message. */
export const BUCKET_NAME_RULE = '3 to 63 lowercase letters, digits, dots and hyphens, starting and ending with a letter or digit';

/** Copies of the same bytes: indices of the items with one content hash, and the label they agree on. */
export interface CopyGroup {
  /** indices into the items, in their order */
  members: number[];
  /** undefined when the copies are filed under different labels: no label is right for them */
  label: string | undefined;
}

/**
 * The rule `train` and `review` share: copies of the same bytes (one SHA-256) are one image, and
 * bytes filed under two labels are fitted under neither. Groups in the order of their first copy.
 */
export function groupCopies(items: readonly { sha256: string; label: string }[]): CopyGroup[] {
  const bySha = new Map<string, CopyGroup>();
  items.forEach((item, i) => {
    const g = bySha.get(item.sha256);
    if (!g) bySha.set(item.sha256, { members: [i], label: item.label });
    else {
      g.members.push(i);
      if (g.label !== item.label) g.label = undefined;
    }
  });
  return [...bySha.values()];
}

/** Two labels that look like one name written two ways, and how they differ. */
export interface ConfusablePair {
  a: string;
  b: string;
  /** as said after "they differ" */
  how: 'only in case or separators' | 'by one letter' | 'by two letters swapped';
}

/** A label as a name is compared: lowercase, without spaces, hyphens, underscores or dots. */
const bareName = (label: string) => label.toLowerCase().replace(/[\s_.-]+/g, '');

/** How many images the smaller of two labels one letter apart has at most, against the larger, to look misspelt. */
export const MISSPELT_SHARE = 0.25;

/**
 * Pairs of labels that look like one folder name written two ways (`nature`, `natrue`; `cat`,
 * `cats`; `Dog`, `dog`): a misspelt folder makes a class of its own, with the images meant for
 * the other. Given each label's images: names that differ in case or separators only, or by a
 * plural `s`; and names one letter apart (added, removed, changed, or two swapped:
 * Damerau–Levenshtein distance 1), both of 4 letters or more, when two letters are swapped or one
 * has at most MISSPELT_SHARE of the other's images (a slip of the keyboard is a small folder beside a large one; `bear` and
 * `pear` of like sizes are two classes). Names that differ in their digits alone (`class_1`,
 * `class_2`) are never paired.
 */
export function confusableLabels(counts: ReadonlyMap<string, number>): ConfusablePair[] {
  const pairs: ConfusablePair[] = [];
  const sorted = [...counts.keys()].sort();
  const uneven = (a: string, b: string) => Math.min(counts.get(a)!, counts.get(b)!) <= MISSPELT_SHARE * Math.max(counts.get(a)!, counts.get(b)!);
  for (let i = 0; i < sorted.length; i++) {
    for (let j = i + 1; j < sorted.length; j++) {
      const [a, b] = [sorted[i]!, sorted[j]!];
      const [x, y] = [bareName(a), bareName(b)];
      if (x.replace(/\d+/g, '') === y.replace(/\d+/g, '') && x !== y) continue;
      if (x === y) {
        pairs.push({ a, b, how: 'only in case or separators' });
        continue;
      }
      const plural = (p: string, q: string) => q === `${p}s` && p.length >= 2;
      if (plural(x, y) || plural(y, x)) pairs.push({ a, b, how: 'by one letter' });
      else if (Math.abs(x.length - y.length) <= 1 && Math.min(x.length, y.length) >= 4 && levenshtein(x, y).steps === 1) {
        // (two letters swapped are a slip whatever the sizes: two real classes are not named so)
        const swapped = x.length === y.length && swappedOnce(x, y);
        if (swapped || uneven(a, b)) pairs.push({ a, b, how: swapped ? 'by two letters swapped' : 'by one letter' });
      }
    }
  }
  return pairs;
}

/** Whether `y` is `x` with two neighbouring letters swapped. */
function swappedOnce(x: string, y: string): boolean {
  const at = [...x].findIndex((c, k) => c !== y[k]);
  return at >= 0 && x[at] === y[at + 1] && x[at + 1] === y[at] && x.slice(at + 2) === y.slice(at + 2);
}

/**
 * The format of a label manifest an `s3://` URL names (`…/labels.csv`, `…/labels.jsonl`): rows
 * of an image's key and its label, instead of label folders. Undefined for a prefix. A `.tsv` is
 * a CSV whose fields are separated by tabs (the reader finds its delimiter).
 */
export function manifestFormat(key: string): 'csv' | 'jsonl' | undefined {
  if (/\.[ct]sv$/i.test(key)) return 'csv';
  if (/\.(jsonl|ndjson)$/i.test(key)) return 'jsonl';
  return undefined;
}
