import { isUtf8 } from 'node:buffer';
import { Readable } from 'node:stream';
import { parse } from 'csv-parse';
import { UNLABELLED, splitOfFolder, type Split } from '@transferline/shared';

/**
 * A label manifest: a CSV or JSON Lines object in the bucket that gives each image its label
 * (and, if it likes, its split), for images that are not sorted into label folders.
 *
 * - CSV: `key,label[,split]` per row (or `;`- or tab-separated: see delimiterOf). A first row
 *   that names a column (KEY_NAMES, LABEL_NAMES, SPLIT_NAMES below) is a header, must name a key
 *   and a label column, and the columns may then come in any order, with others beside them
 *   (ignored).
 * - JSON Lines: one object per line, `{"key": …, "label": …, "split": …}` (the same names).
 *
 * A key is `s3://bucket/key`, `/key` from the bucket's root, or a path relative to the folder the
 * manifest is in (`images/cat-1.jpg`, `../photos/cat-1.jpg`). A split is `train`, `val`
 * (`valid`, `validation`) or `test`, as split folders are named; empty for none.
 */
export interface ManifestRow {
  /** the row's line in the file, as an editor counts them (1-based; a CSV row whose quoted value spans lines: its last) */
  line: number;
  bucket: string;
  key: string;
  label: string;
  split?: Split;
  /** a CSV's first row, as its line reads, when it named no column the reader knows and no file: a header of other names, perhaps */
  headerLike?: string;
}

/** A manifest that cannot be read as one, or names no image there is: nothing of it was ingested. */
export class ManifestError extends Error {
  override readonly name = 'ManifestError';
  constructor(
    /** what is wrong, in one line */
    readonly headline: string,
    /** the first problems, each with its line */
    readonly problems: string[] = [],
    /** how many rows have a problem */
    readonly total = problems.length,
  ) {
    super([headline, ...problems.map((p) => `  ${p}`), ...(total > problems.length ? [`  … and ${total - problems.length} more`] : [])].join('\n'));
  }
}

/** Column names a header may give the image's key. */
const KEY_NAMES = new Set(['key', 'path', 'file', 'filename', 'file_name', 'filepath', 'file_path', 'image', 'image_path', 'url', 'uri']);
/** Column names a header may give the label. */
const LABEL_NAMES = new Set(['label', 'class']);
const SPLIT_NAMES = new Set(['split']);
/** What to say of a manifest's first line read as a row, when it may be a header of names the reader does not know. */
export function headerHint(firstLine: string): string {
  return `its first line, ${JSON.stringify(firstLine)}, was read as a row: a header names the key's column (key, filename, image, path, …) and the label's (label or class)`;
}

/**
 * What to say of rows naming images not found when some of their keys hold a backslash: a path
 * written on Windows (S3 keys separate folders with `/`, and a backslash is part of a name).
 * `keys` as the rows give them; the hint is shown as it is (put it through `printable`).
 */
export function backslashHint(keys: readonly string[]): string | undefined {
  const first = keys.find((k) => k.includes('\\'));
  return first === undefined ? undefined : `a key with a backslash (${first}) is a path written on Windows? S3 keys separate folders with / and take a backslash as part of a name: write the rows' paths with / (img/photo.jpg, not img\\photo.jpg)`;
}

/** The problems a refusal shows. */
const SHOWN = 10;

/**
 * Reads a manifest's rows, each image once, every key resolved against the manifest's own
 * place (`bucket`, `manifestKey`). Throws ManifestError, naming lines, when any row lacks a key
 * or a label, names a folder, an unknown split, or an image a second time with another label;
 * its headline names the manifest `shownAs` (its s3:// URL by default) and says what was not done
 * (`refused`: "nothing of it was ingested" by default).
 */
export async function readManifest(bytes: Buffer, format: 'csv' | 'jsonl', at: { bucket: string; key: string }, o: { shownAs?: string; refused?: string } = {}): Promise<ManifestRow[]> {
  const where = `the manifest ${o.shownAs ?? `s3://${at.bucket}/${at.key}`}`;
  const encoding = otherEncoding(bytes, format);
  if (encoding) {
    throw new ManifestError(
      `${where} is not UTF-8 text, so ${o.refused ?? 'nothing of it was ingested'}: its labels would be read garbled. Saved in another encoding (Windows-1252 or Latin-1, as Excel's "CSV (Comma delimited)" does)? Save it as UTF-8 (Excel: "CSV UTF-8") and use it again`,
      [`line ${encoding.line}, as Windows-1252 would read it: ${JSON.stringify(encoding.text)}`],
    );
  }
  const problems: { line: number; what: string }[] = [];
  const problem = (line: number, what: string) => problems.push({ line, what });
  const rows = new Map<string, ManifestRow>();
  /** a CSV's first row when it may be a header of names the reader does not know (see ManifestRow.headerLike) */
  let firstRow: string | undefined;
  const add = (line: number, fields: { key?: unknown; label?: unknown; split?: unknown }) => {
    const row = rowOf(line, fields, at);
    if (typeof row === 'string') return problem(line, row);
    const id = `${row.bucket}/${row.key}`;
    const before = rows.get(id);
    if (before === undefined) rows.set(id, row);
    else if (before.label !== row.label || before.split !== row.split) {
      problem(line, `s3://${id} is listed again with ${describe(row)} (line ${before.line}: ${describe(before)}): an image has one ${before.label === row.label ? 'split' : 'label'}`);
    }
  };
  if (format === 'jsonl') {
    bytes
      .toString('utf8')
      .replace(/^\uFEFF/, '')
      .split(/\r?\n/)
      .forEach((text, i) => {
        if (text.trim() === '') return;
        let value: unknown;
        try {
          value = JSON.parse(text);
        } catch (err) {
          return problem(i + 1, `not JSON (${(err as Error).message})`);
        }
        if (typeof value !== 'object' || value === null || Array.isArray(value)) return problem(i + 1, 'not a JSON object (expected {"key": …, "label": …})');
        const o = value as Record<string, unknown>;
        const named = (names: Set<string>) => Object.keys(o).find((k) => names.has(k.toLowerCase()));
        const keyName = named(KEY_NAMES);
        const labelName = named(LABEL_NAMES);
        const splitName = named(SPLIT_NAMES);
        add(i + 1, { key: keyName === undefined ? undefined : o[keyName], label: labelName === undefined ? undefined : o[labelName], split: splitName === undefined ? undefined : o[splitName] });
      });
  } else {
    // (a record that is no CSV, an unclosed quote, is said and skipped: the others are still read
    // for what else is wrong; a quote inside an unquoted value is taken as it is)
    const delimiter = delimiterOf(bytes);
    const parser = Readable.from([bytes]).pipe(
      parse({ bom: true, delimiter, trim: true, skip_empty_lines: true, relax_column_count: true, relax_quotes: true, skip_records_with_error: true, info: true }),
    );
    // (csv-parse's own line count takes a CRLF inside a quoted value for two lines)
    const lineAt = lineCounter(bytes);
    // (a record skipped as no CSV is named by the line csv-parse had read it to: from the end of
    // the record before, or its own last delimiter, to the first character after)
    parser.on('skip', (err: Error & { bytes?: number; lines?: number }) => problem(err.bytes === undefined ? (err.lines ?? 0) : lineAt.startingAt(err.bytes), `not CSV (${err.message})`));
    let columns: { key: number; label: number; split?: number } | undefined;
    try {
      for await (const { record, info } of parser as AsyncIterable<{ record: string[]; info: { bytes: number } }>) {
        const line = lineAt.endingAt(info.bytes);
        if (columns === undefined) {
          // a first row that names any column is a header, and must name the two it needs
          const names = record.map((f) => f.toLowerCase());
          const [key, label, split] = [KEY_NAMES, LABEL_NAMES, SPLIT_NAMES].map((set) => names.findIndex((n) => set.has(n))) as [number, number, number];
          if (key >= 0 || label >= 0 || split >= 0) {
            columns = { key, label, ...(split >= 0 && { split }) };
            if (key < 0) problem(line, `the header names no key column (one of ${[...KEY_NAMES].join(', ')})`);
            if (label < 0) problem(line, `the header names no label column (${[...LABEL_NAMES].join(' or ')})`);
            if (key < 0 || label < 0) break;
            continue;
          }
          columns = { key: 0, label: 1, split: 2 };
          // (a key with a file's extension is an image: only names look like a header)
          if (!/\.[A-Za-z0-9]{2,5}$/.test(record[0]?.trim() ?? '')) firstRow = record.join(delimiter);
        }
        add(line, { key: record[columns.key], label: record[columns.label], split: columns.split === undefined ? undefined : record[columns.split] });
      }
    } catch (err) {
      // (csv-parse names the line: an unclosed quote, a quote inside an unquoted value)
      problem(Number((err as { lines?: number }).lines ?? 0), `not CSV (${(err as Error).message})`);
    }
  }
  if (problems.length) {
    const shown = problems.sort((a, b) => a.line - b.line).slice(0, SHOWN).map((p) => `line ${p.line}: ${p.what}${p.line === 1 && firstRow !== undefined ? ` (${headerHint(firstRow)})` : ''}`);
    throw new ManifestError(`${where}: ${problems.length === 1 ? 'a row' : `${problems.length} rows`} cannot be read, so ${o.refused ?? 'nothing of it was ingested'}`, shown, problems.length);
  }
  if (rows.size === 0) throw new ManifestError(`${where} has no rows: expected key,label in each (README: "A label manifest")`);
  const out = [...rows.values()];
  if (firstRow !== undefined && out[0]?.line === 1) out[0] = { ...out[0], headerLike: firstRow };
  return out;
}

/**
 * A manifest in another encoding than UTF-8 (a CSV in UTF-16 little-endian with its BOM, as
 * spreadsheets save "Unicode text", is read as such): its first line that is not UTF-8 (Node's
 * `isUtf8`, line by line: CR and LF bytes are never inside a UTF-8 sequence), as an editor counts
 * lines, and its text as Windows-1252 reads it (what a spreadsheet saved, most likely); undefined
 * for UTF-8.
 */
function otherEncoding(bytes: Buffer, format: 'csv' | 'jsonl'): { line: number; text: string } | undefined {
  if (isUtf8(bytes) || (format === 'csv' && bytes[0] === 0xff && bytes[1] === 0xfe)) return undefined;
  let line = 1;
  for (let start = 0; start < bytes.length; line++) {
    let end = start;
    while (end < bytes.length && bytes[end] !== 0x0a && bytes[end] !== 0x0d) end++;
    const text = bytes.subarray(start, end);
    if (!isUtf8(text)) return { line, text: new TextDecoder('windows-1252').decode(text.subarray(0, 200)) };
    start = end + (bytes[end] === 0x0d && bytes[end + 1] === 0x0a ? 2 : 1);
  }
  // (not reached: a file that is not UTF-8 has a line that is not)
  return { line: line - 1, text: '' };
}

/**
 * Lines (1-based) of a file, as an editor counts them (a CRLF is one break, as are a lone LF and
 * a lone CR), by byte offset: `endingAt(end)`, the line of the last character before `end`, one
 * line break there left out (where a CSV record read up to `end`, its delimiter included, ends:
 * a record of tabs alone, a TSV's empty row, is on its own line); `startingAt(start)`, the line
 * of the first character from `start` on that is no blank or line break (where a record that
 * begins there, after blank lines, begins).
 */
export function lineCounter(bytes: Buffer): { endingAt: (end: number) => number; startingAt: (start: number) => number } {
  const breaks: number[] = [];
  for (let i = 0; i < bytes.length; i++) {
    const c = bytes[i];
    if (c === 0x0a || c === 0x0d) breaks.push(i);
    if (c === 0x0d && bytes[i + 1] === 0x0a) i++;
  }
  const blank = (c: number | undefined) => c === 0x0a || c === 0x0d || c === 0x20 || c === 0x09;
  // the breaks before `at`: the first index whose break is at or after it
  const lineOf = (at: number) => {
    let lo = 0;
    let hi = breaks.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (breaks[mid]! < at) lo = mid + 1;
      else hi = mid;
    }
    return lo + 1;
  };
  return {
    endingAt: (end) => {
      let at = Math.min(end, bytes.length);
      if (bytes[at - 1] === 0x0a) at--;
      if (bytes[at - 1] === 0x0d) at--;
      return lineOf(at);
    },
    startingAt: (start) => {
      let at = Math.max(start, 0);
      while (at < bytes.length && blank(bytes[at])) at++;
      return lineOf(at);
    },
  };
}

/** The field delimiters a CSV manifest may use: spreadsheets in many locales write `;`, and some export tabs. */
const DELIMITERS = [',', ';', '\t'] as const;

/**
 * A CSV's field delimiter, as its first line shows: the one of DELIMITERS found there most often
 * outside quotes (a comma when none is, or on a tie).
 */
export function delimiterOf(bytes: Buffer): (typeof DELIMITERS)[number] {
  const text = bytes.subarray(0, 64 * 1024).toString('utf8');
  const counts = new Map<string, number>();
  // a quote opens a quoted value only at a field's start (elsewhere it is a character, as the
  // reader takes it: 12" vinyl.jpg); any field start counts, whatever the delimiter turns out to be
  const delimiter = (c: string) => (DELIMITERS as readonly string[]).includes(c);
  let quoted = false;
  let fieldStart = true;
  for (const c of text) {
    if (quoted) {
      if (c === '"') quoted = false;
      continue;
    }
    const newline = c === '\n' || c === '\r';
    if (c === '"' && fieldStart) quoted = true;
    else if (newline && counts.size > 0) break;
    else if (delimiter(c)) counts.set(c, (counts.get(c) ?? 0) + 1);
    fieldStart = newline || delimiter(c);
  }
  return DELIMITERS.reduce((best, d) => ((counts.get(d) ?? 0) > (counts.get(best) ?? 0) ? d : best), DELIMITERS[0]);
}

/** One row's image, or what is wrong with it. */
function rowOf(line: number, f: { key?: unknown; label?: unknown; split?: unknown }, at: { bucket: string; key: string }): ManifestRow | string {
  if (typeof f.key !== 'string' || f.key.trim() === '') return 'no key (the image: s3://bucket/key, or a path from the manifest\'s folder)';
  // (a JSON number is a label as its digits: {"label": 1})
  const given = typeof f.label === 'number' && Number.isFinite(f.label) ? String(f.label) : f.label;
  if (given === undefined || given === null || (typeof given === 'string' && given.trim() === '')) return `no label for ${f.key}`;
  if (typeof given !== 'string') return `the label of ${f.key} is ${JSON.stringify(given)}, not text or a number`;
  const label = given.trim().normalize('NFC');
  if (label === UNLABELLED) return `"${UNLABELLED}" is no label (it stands for an image without one)`;
  let split: Split | undefined;
  if (f.split !== undefined && f.split !== null && f.split !== '') {
    split = typeof f.split === 'string' ? splitOfFolder(f.split.trim()) : undefined;
    if (split === undefined) return `split ${JSON.stringify(f.split)} is none of train, val (valid, validation), test`;
  }
  const resolved = resolveKey(f.key.trim(), at);
  if (typeof resolved === 'string') return resolved;
  return { line, ...resolved, label, ...(split && { split }) };
}

/** A key as a manifest writes it, as a bucket and key (or what is wrong with it). */
function resolveKey(value: string, at: { bucket: string; key: string }): { bucket: string; key: string } | string {
  let bucket = at.bucket;
  let key: string;
  if (value.startsWith('s3://')) {
    const m = /^s3:\/\/([^/]+)\/(.+)$/.exec(value);
    if (!m) return `${value} names no object (expected s3://bucket/key)`;
    [, bucket, key] = m as unknown as [string, string, string];
  } else if (value.startsWith('/')) {
    key = value.slice(1);
  } else {
    // relative to the manifest's folder: `..` and `.` steps taken, the rest of the key as it is
    // (S3 keys may hold `//`)
    const parts = at.key.split('/').slice(0, -1);
    for (const step of value.split('/')) {
      if (step === '..') {
        if (parts.pop() === undefined) return `${value} goes above the bucket's root`;
      } else if (step !== '.') parts.push(step);
    }
    key = parts.join('/');
  }
  if (key === '' || key.endsWith('/')) return `${value} names a folder, not an image`;
  return { bucket, key };
}

function describe(r: Pick<ManifestRow, 'label' | 'split'>): string {
  return `label ${JSON.stringify(r.label)}${r.split ? `, split ${r.split}` : ''}`;
}
