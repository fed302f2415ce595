import { describe, expect, it } from 'vitest';
import { backslashHint, ManifestError, readManifest } from './manifest.js';

const at = { bucket: 'photos', key: 'sets/pets/labels.csv' };
const csv = (text: string) => readManifest(Buffer.from(text), 'csv', at);
const jsonl = (text: string) => readManifest(Buffer.from(text), 'jsonl', { ...at, key: 'sets/pets/labels.jsonl' });
/** The refusal's lines, or a failure when the manifest was taken. */
async function refusal(p: Promise<unknown>): Promise<string[]> {
  const err = await p.then(
    () => expect.fail('the manifest was taken'),
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ManifestError);
  return (err as Error).message.split('\n');
}

describe('label manifests', () => {
  it('reads key,label rows without a header, keys relative to the manifest, from the bucket root, or s3:// URLs', async () => {
    const rows = await csv('cat-1.jpg,cat\nimg/dog 1.jpg, dog \n../other/cat-2.jpg,cat\n/root.jpg,dog,val\ns3://elsewhere/x/y.png,cat,test\n\n');
    expect(rows.map(({ bucket, key, label, split }) => ({ bucket, key, label, split }))).toEqual([
      { bucket: 'photos', key: 'sets/pets/cat-1.jpg', label: 'cat', split: undefined },
      { bucket: 'photos', key: 'sets/pets/img/dog 1.jpg', label: 'dog', split: undefined },
      { bucket: 'photos', key: 'sets/other/cat-2.jpg', label: 'cat', split: undefined },
      { bucket: 'photos', key: 'root.jpg', label: 'dog', split: 'validation' },
      { bucket: 'elsewhere', key: 'x/y.png', label: 'cat', split: 'test' },
    ]);
    expect(rows.map((r) => r.line)).toEqual([1, 2, 3, 4, 5]);
  });

  it('takes a header that names its columns, in any order, others beside them; quoted values with commas; a BOM', async () => {
    const rows = await csv('\uFEFFsplit,Class,notes,filename\ntrain,cat,"a note, with a comma",a.jpg\n,dog,,"b, c.jpg"\n');
    expect(rows.map(({ key, label, split }) => ({ key, label, split }))).toEqual([
      { key: 'sets/pets/a.jpg', label: 'cat', split: 'train' },
      { key: 'sets/pets/b, c.jpg', label: 'dog', split: undefined },
    ]);
  });

  it("refuses a manifest that is not UTF-8 (a spreadsheet's Windows-1252), naming its first such line as it was meant; reads UTF-16 with its BOM", async () => {
    const cp1252 = Buffer.concat([Buffer.from('key;label\r\nn1.jpg;'), Buffer.from([0x4b, 0xfc, 0x73, 0x74, 0x65]), Buffer.from('\r\na1.jpg;abstract\r\n')]);
    expect(await refusal(readManifest(cp1252, 'csv', at))).toEqual([
      'the manifest s3://photos/sets/pets/labels.csv is not UTF-8 text, so nothing of it was ingested: its labels would be read garbled. Saved in another encoding (Windows-1252 or Latin-1, as Excel\'s "CSV (Comma delimited)" does)? Save it as UTF-8 (Excel: "CSV UTF-8") and use it again',
      '  line 2, as Windows-1252 would read it: "n1.jpg;Küste"',
    ]);
    // the same in JSON Lines, on its third line
    const lines = Buffer.concat([Buffer.from('{"key":"a.jpg","label":"x"}\n{"key":"b.jpg","label":"y"}\n{"key":"c.jpg","label":"'), Buffer.from([0xe9]), Buffer.from('"}\n')]);
    expect((await refusal(readManifest(lines, 'jsonl', at)))[1]).toBe('  line 3, as Windows-1252 would read it: "{\\"key\\":\\"c.jpg\\",\\"label\\":\\"é\\"}"');
    // UTF-8 as it should be, and UTF-16 with its BOM, are read
    expect((await csv('key,label\nn1.jpg,Küste\n')).map((r) => r.label)).toEqual(['Küste']);
    const utf16 = Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from('key,label\nn1.jpg,Küste\n', 'utf16le')]);
    expect((await readManifest(utf16, 'csv', at)).map((r) => r.label)).toEqual(['Küste']);
    // but not UTF-16 big-endian, nor JSON Lines in UTF-16 (neither is decoded as such: a review)
    const be = Buffer.from(utf16.subarray(2)).swap16();
    expect((await refusal(readManifest(Buffer.concat([Buffer.from([0xfe, 0xff]), be]), 'csv', at)))[0]).toMatch(/is not UTF-8 text/);
    expect((await refusal(readManifest(Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from('{"key":"a.jpg","label":"x"}\n', 'utf16le')]), 'jsonl', at)))[0]).toMatch(/is not UTF-8 text/);
    // an overlong form (C0 AF, E0 80 AF) or a surrogate (ED A0 80) is named on its own line
    for (const bad of [[0xe0, 0x80, 0xaf], [0xed, 0xa0, 0x80]]) {
      const bytes = Buffer.concat([Buffer.from('key,label\na.jpg,x\nb.jpg,'), Buffer.from(bad), Buffer.from('\nc.jpg,y\n')]);
      expect((await refusal(readManifest(bytes, 'csv', at)))[1]).toMatch(/^ {2}line 3, as Windows-1252 would read it: "b\.jpg,/);
    }
  });

  it('names a key written as a Windows path among those not found, and how to write it', () => {
    expect(backslashHint(['s3://photos/a.jpg', 's3://photos/img\\Foto 1.jpg'])).toBe('a key with a backslash (s3://photos/img\\Foto 1.jpg) is a path written on Windows? S3 keys separate folders with / and take a backslash as part of a name: write the rows\' paths with / (img/photo.jpg, not img\\photo.jpg)');
    expect(backslashHint(['s3://photos/a.jpg'])).toBeUndefined();
  });

  it('reads fields separated by semicolons (a spreadsheet in many locales) or tabs, as its first line shows', async () => {
    const pick = (rows: Awaited<ReturnType<typeof csv>>) => rows.map(({ key, label, split }) => ({ key, label, split }));
    // Excel's CSV where the decimal mark is a comma: ; between fields, CRLF, a BOM; commas inside keys
    expect(pick(await csv('\uFEFFfilename;label;split\r\na,1.jpg;cat;val\r\n"b;2.jpg";dog;\r\n'))).toEqual([
      { key: 'sets/pets/a,1.jpg', label: 'cat', split: 'validation' },
      { key: 'sets/pets/b;2.jpg', label: 'dog', split: undefined },
    ]);
    expect(pick(await csv('\nkey\tlabel\nx y.jpg\tcat\n'))).toEqual([{ key: 'sets/pets/x y.jpg', label: 'cat', split: undefined }]);
    // a quote inside a value opens nothing (12" vinyl), as the reader takes it
    expect(pick(await csv('12" vinyl.jpg;cat\nb.jpg;dog\n'))).toEqual([
      { key: 'sets/pets/12" vinyl.jpg', label: 'cat', split: undefined },
      { key: 'sets/pets/b.jpg', label: 'dog', split: undefined },
    ]);
    // commas win where the first line has as many (a ; inside a key stays in it)
    expect(pick(await csv('a;b.jpg,cat\n'))).toEqual([{ key: 'sets/pets/a;b.jpg', label: 'cat', split: undefined }]);
  });

  it('reads JSON Lines, and an image listed twice with the same label once', async () => {
    const rows = await jsonl('{"path": "a.jpg", "label": "cat"}\n\n{"key": "s3://photos/b.jpg", "label": "Hündin", "split": "valid"}\n{"key": "a.jpg", "label": "cat"}\n');
    expect(rows.map(({ key, label, split }) => ({ key, label, split }))).toEqual([
      { key: 'sets/pets/a.jpg', label: 'cat', split: undefined },
      { key: 'b.jpg', label: 'Hündin'.normalize('NFC'), split: 'validation' },
    ]);
  });

  it('refuses the whole manifest over any bad row, naming each line', async () => {
    const lines = await refusal(csv('key,label,split\na.jpg,cat\na.jpg,dog\n,cat\nb.jpg,\nc.jpg,cat,holdout\n../../../x.jpg,cat\nd/,cat\ne.jpg,?\n"f.jpg,cat\n'));
    expect(lines[0]).toBe('the manifest s3://photos/sets/pets/labels.csv: 8 rows cannot be read, so nothing of it was ingested');
    expect(lines.slice(1)).toEqual([
      '  line 3: s3://photos/sets/pets/a.jpg is listed again with label "dog" (line 2: label "cat"): an image has one label',
      "  line 4: no key (the image: s3://bucket/key, or a path from the manifest's folder)",
      '  line 5: no label for b.jpg',
      '  line 6: split "holdout" is none of train, val (valid, validation), test',
      "  line 7: ../../../x.jpg goes above the bucket's root",
      '  line 8: d/ names a folder, not an image',
      '  line 9: "?" is no label (it stands for an image without one)',
      expect.stringMatching(/^ {2}line 10: not CSV \(Quote Not Closed/),
    ]);
    // a quoted value over two lines, in a file of CRLFs and blank lines: each row named by its
    // line as an editor counts them (the quoted one by its last)
    const crlf = ['key,label', '"a', 'b.jpg",cat', '', 'c.jpg,', '"d.jpg","x', 'y"', '  ', 'e.jpg,', '\t', ''].join('\r\n');
    expect((await refusal(csv(crlf))).slice(1)).toEqual(['  line 5: no label for c.jpg', '  line 9: no label for e.jpg']);
    expect((await csv(crlf.replace(/,(\r|$)/g, ',cat$1'))).map((r) => [r.key, r.line])).toEqual([
      ['sets/pets/a\r\nb.jpg', 3],
      ['sets/pets/c.jpg', 5],
      ['sets/pets/d.jpg', 7],
      ['sets/pets/e.jpg', 9],
    ]);
    expect((await refusal(csv(['a,cat', '"b', 'c.jpg",cat', '', '"d"e.jpg,cat'].join('\r\n')))).slice(1)).toEqual([expect.stringMatching(/^ {2}line 5: not CSV \(Invalid Closing Quote/)]);
    // a TSV's empty row (tabs alone, as a spreadsheet saves it) is named by its own line
    expect((await refusal(csv(['key\tlabel', 'a.jpg\tcat', '\t', 'b.jpg\tdog', ''].join('\r\n')))).slice(1)).toEqual(["  line 3: no key (the image: s3://bucket/key, or a path from the manifest's folder)"]);
    // a first row of column names the reader does not know, refused as a row: said it may be a header
    expect((await refusal(csv('name,category,subset\na.jpg,cat,train\n')))[1]).toBe(
      '  line 1: split "subset" is none of train, val (valid, validation), test (its first line, "name,category,subset", was read as a row: a header names the key\'s column (key, filename, image, path, …) and the label\'s (label or class))',
    );
    // a first row that is an image is not called a header
    expect((await refusal(csv('a.jpg,\nb.jpg,cat\n')))[1]).toBe('  line 1: no label for a.jpg');
    // listed again with its label and another split: the split is what disagrees
    expect((await refusal(csv('a.jpg,cat,val\n./a.jpg,cat,test\n')))[1]).toBe('  line 2: s3://photos/sets/pets/a.jpg is listed again with label "cat", split test (line 1: label "cat", split validation): an image has one split');
    const json = await refusal(jsonl('{"key": "a.jpg", "label": "cat"}\nnot json\n["a.jpg", "cat"]\n{"file": "b.jpg", "label": true}\n{"file": "c.jpg"}\n'));
    expect(json.slice(1)).toEqual([
      expect.stringMatching(/^ {2}line 2: not JSON/),
      '  line 3: not a JSON object (expected {"key": …, "label": …})',
      '  line 4: the label of b.jpg is true, not text or a number',
      '  line 5: no label for c.jpg',
    ]);
    // a number is a label as its digits
    expect((await jsonl('{"key": "a.jpg", "label": 1}\n')).map((r) => r.label)).toEqual(['1']);
  });

  it('a header must name a key and a label column; a key keeps its own // (an S3 key may hold one)', async () => {
    expect((await refusal(csv('image_id,label\n0001,cat\n'))).slice(1)).toEqual(['  line 1: the header names no key column (one of key, path, file, filename, file_name, filepath, file_path, image, image_path, url, uri)']);
    expect((await refusal(csv('key,category\na.jpg,cat\n'))).slice(1)).toEqual(['  line 1: the header names no label column (label or class)']);
    const rows = await jsonl('{"Key": "raw//a.jpg", "Class": "cat", "Split": "TEST"}\n{"key": "./b.jpg", "label": "dog"}\n');
    expect(rows.map(({ key, label, split }) => ({ key, label, split }))).toEqual([
      { key: 'sets/pets/raw//a.jpg', label: 'cat', split: 'test' },
      { key: 'sets/pets/b.jpg', label: 'dog', split: undefined },
    ]);
  });

  it('shows the first ten problems and counts the rest; an empty manifest is refused', async () => {
    const many = Array.from({ length: 25 }, (_, i) => `img-${i}.jpg,`).join('\n');
    const lines = await refusal(csv(many));
    expect(lines[0]).toMatch(/25 rows cannot be read/);
    expect(lines).toHaveLength(1 + 10 + 1);
    expect(lines.at(-1)).toBe('  … and 15 more');
    expect((await refusal(csv('key,label\n\n')))[0]).toMatch(/^the manifest s3:\/\/photos\/sets\/pets\/labels\.csv has no rows/);
  });
});
