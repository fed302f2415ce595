import path from 'node:path';
import pMap from 'p-map';
import { backslashHint, headerHint, ManifestError, readManifest, type ManifestRow } from './manifest.js';
import { CliExit, EXIT } from './exit-codes.js';
import {
  DatasetRepository,
  ObjectTooLargeError,
  TRANSIENT_REASONS,
  UNLABELLED,
  bucketUnreadable,
  isHiddenPath,
  itemFromKey,
  manifestFormat,
  splitOfFolder,
  splitOfPrefix,
  spaceBackground,
  jobIds,
  requeue,
  type EmbeddingSpace,
  type ItemRecord,
  type ItemView,
  type ObjectInfo,
  type PreprocessJob,
  type Queues,
  type Services,
  type Split,
} from '@transferline/shared';

export interface IngestRequest {
  bucket: string;
  prefix: string;
  dataset: string;
  /** the embedding space the images go into (read from the cluster) */
  space: EmbeddingSpace;
  /** 'folders' (default): label = first folder below the prefix; 'none': every object, unlabelled (classify) */
  labels?: 'folders' | 'none';
  /**
   * The dataset was there before this ingest (a later round of --watch): gone (no space recorded)
   * when the first page is about to record it again, it was deleted meanwhile, and this ingest
   * stops instead of making it anew.
   */
  existing?: boolean;
}

export interface IngestCounts {
  /** objects listed under the prefix, folder markers (keys ending in `/`) aside */
  listed: number;
  /** objects at the prefix root: no label, not ingested */
  unlabelled: number;
  /**
   * Folders (relative to the prefix) that a folder marker (a key ending in `/`, as consoles make)
   * says are there, with no image under them: an empty label folder. Absent when none.
   */
  emptyFolders?: string[];
  /** already in the dataset with the same ETag, embedded, in flight, or failed on bad input */
  unchanged: number;
  /** of those unchanged, how many are still on their way (queued by an earlier ingest, not yet embedded or failed) */
  unchangedInFlight: number;
  /** hash known and embedding cached: added without any job */
  fromCache: number;
  /** of those, items of the dataset whose bytes did not change but whose label, split or manifest did (a manifest's edit) */
  relabelled?: number;
  /** new or changed objects: preprocess jobs enqueued */
  enqueued: number;
  /** new or changed objects whose job another ingest had just enqueued (running at the same time) */
  alreadyQueued: number;
  /** items tried again: failed for a transient reason, or orphaned (their job was lost) */
  retried: number;
  /** items under the prefix whose objects are gone from the bucket: taken out of the dataset */
  removed: number;
  /** labels whose folder names came in more than one Unicode spelling (NFC and NFD), merged into one */
  mergedLabels: string[];
  /**
   * Split folders (train/, val/, test/: their sub-folders are labels) beside folders read as
   * labels, directly under the prefix: likely a prefix one level too high. Absent otherwise.
   */
  mixedLayout?: { splitFolders: string[]; labelFolders: string[] };
  /**
   * a manifest's images that are not in the bucket: how many, the first few (`s3://…`), the
   * buckets named that cannot be read (and why), and the first line when it is among them and
   * looks like names (a header of names the reader does not know, read as a row)
   */
  missing?: { count: number; first: string[]; unreadable?: string[]; firstLine?: string };
  /** label manifests (.csv, .jsonl, …) a listing found where an image would be: left out, not counted as listed (`s3://…`) */
  manifestFiles?: string[];
  /**
   * of manifestFiles, those the dataset held as images (listed so before such files were left
   * out: failed, as no image): taken out of it, and not counted in `removed` (they are in the bucket)
   */
  manifestFilesRemoved?: number;
  /**
   * hidden files and files in hidden folders (names that start with a dot: isHiddenPath) a listing
   * found: left out, not counted as listed; the first few (`s3://…`); and how many of them the
   * dataset held (listed before they were left out): taken out of it, not counted in `removed`;
   * and how many stay in it, labelled by a label manifest still in the bucket
   */
  hidden?: { count: number; first: string[]; removed?: number; kept?: number };
  /** listed objects a label manifest (still in the bucket) labels in the dataset, kept as it labels them; the manifests (`bucket/key`) */
  manifestLabelled?: { count: number; manifests: string[] };
  /** a manifest's images that another manifest labelled in the dataset until now; those manifests (`bucket/key`) */
  fromOtherManifests?: { count: number; manifests: string[] };
}

export interface ManifestRequest extends Omit<IngestRequest, 'prefix' | 'labels'> {
  /** the manifest's key in `bucket` */
  key: string;
  format: 'csv' | 'jsonl';
}

export interface IngestDeps {
  services: Pick<Services, 'store' | 'datasets' | 'cache' | 'inspector' | 'redis'>;
  queues: Pick<Queues, 'preprocess'>;
  /** objects listed per page written (1,000; tests use fewer) */
  pageSize?: number;
}

/** Counts of an ingest before its first page. */
const noCounts = (): IngestCounts => ({ listed: 0, unlabelled: 0, unchanged: 0, unchangedInFlight: 0, fromCache: 0, enqueued: 0, alreadyQueued: 0, retried: 0, removed: 0, mergedLabels: [] });

/**
 * Lists `s3://bucket/prefix` page by page and makes the dataset match it. Per page of up to 1,000
 * keys: the dataset's records and their state (one classification of a few pipelined round
 * trips), known content hashes, the cache, then one batch of jobs. An object already ingested
 * with the same ETag costs nothing; one whose bytes were seen before (under any key) and are
 * embedded is added without a job; new content is enqueued with a content-derived job id, so
 * running ingest twice enqueues nothing new. Items that failed for a transient reason, and items
 * whose job vanished, are enqueued again (a failed job is retried, not deduplicated away).
 */
export async function ingestPrefix(req: IngestRequest, deps: IngestDeps, onPage?: (c: IngestCounts) => void | Promise<void>): Promise<IngestCounts> {
  const { store, datasets } = deps.services;
  const counts = noCounts();
  let page: ObjectInfo[] = [];
  // The prefix becomes a source of the dataset (relabel finds an item's label folder by it) only
  // once it gives the dataset an item: a prefix one level too deep, all of it unlabelled, must not
  // stand in for the right one.
  let recorded = false;
  /** every object listed, labelled or not: an item is gone only when its key is not among them */
  const listedIds = new Set<string>();
  /** the objects left out as label manifests (an item one was before leaves the dataset, though it is there) */
  const tables = new Set<string>();
  /** the objects left out as hidden, as tables are */
  const hiddenIds = new Set<string>();
  let labelledCount = 0;
  const spellings = new Map<string, Set<string>>();
  // the folders directly under the prefix, by how they were read (a split, or a label)
  const layout = { splitFolders: new Set<string>(), labelFolders: new Set<string>() };
  const readsSplits = req.labels !== 'none' && !splitOfPrefix(req.prefix);
  // folder markers (an S3 console's "create folder"), and the folders images were found in (the
  // first two levels: a label, or a split and its label)
  const markers = new Set<string>();
  const filled = new Set<string>();
  // each manifest that labels listed images, looked up once (a HEAD)
  const manifests = new Map<string, Promise<boolean>>();
  const manifestStands = (m: string) => {
    if (!manifests.has(m)) {
      const { bucket, key } = DatasetRepository.parseItemId(m);
      manifests.set(m, store.headObject(bucket, key).then((o) => o !== undefined));
    }
    return manifests.get(m)!;
  };
  /** a page of items written: the dataset is there from then on, its space and this prefix recorded, unless deleted meanwhile */
  let wrote = false;
  const flush = async () => {
    if (wrote) await stillThere(req, datasets, req.prefix, counts.listed - page.length);
    const labelled = page.flatMap((o) => {
      const item = req.labels === 'none' ? { label: UNLABELLED } : itemFromKey(req.prefix, o.key);
      if (item === undefined) counts.unlabelled++;
      else {
        noteSpelling(spellings, item.label, o.key, req.prefix);
        const parts = o.key.slice(req.prefix.length).split('/');
        filled.add(parts[0]!).add(parts.slice(0, 2).join('/'));
      }
      if (item && readsSplits) (item.split ? layout.splitFolders : layout.labelFolders).add(o.key.slice(req.prefix.length).split('/')[0]!);
      return item === undefined ? [] : [{ ...o, ...item, id: DatasetRepository.itemId(req.bucket, o.key) }];
    });
    for (const o of page) listedIds.add(DatasetRepository.itemId(req.bucket, o.key));
    labelledCount += labelled.length;
    page = [];
    if (labelled.length && !recorded) {
      await notDeletedMeanwhile(req, datasets);
      await datasets.setSpace(req.dataset, req.space.id);
      await datasets.addSource(req.dataset, req.bucket, req.prefix);
      recorded = true;
    }
    await applyPage(req, deps, labelled, counts, manifestStands);
    wrote ||= labelled.length > 0;
    await onPage?.({ ...counts });
  };
  for await (const o of store.listObjects(req.bucket, req.prefix)) {
    // a folder marker is no image, nor an object without a label: neither listed nor skipped
    // (nor, when hidden, a folder to call empty)
    if (o.key.endsWith('/')) {
      if (o.key.length > req.prefix.length && !isHiddenPath(o.key.slice(req.prefix.length, -1))) markers.add(o.key.slice(req.prefix.length, -1));
      continue;
    }
    // nor a hidden file, or one in a hidden folder (.DS_Store, a Finder's ._ files, .thumbnails/):
    // left out and counted, as tables are below
    if (isHiddenPath(o.key.slice(req.prefix.length))) {
      const hidden = (counts.hidden ??= { count: 0, first: [] });
      if (hidden.first.length < 3) hidden.first.push(`s3://${req.bucket}/${o.key}`);
      hidden.count++;
      hiddenIds.add(DatasetRepository.itemId(req.bucket, o.key));
      continue;
    }
    // nor a label manifest beside the images (as upload --manifest puts it), nor any file of a
    // manifest's format, in a label folder too (a table is never an image): left out, and named
    // (an item it was before, failed as no image, leaves the dataset as unlisted)
    if (manifestFormat(o.key)) {
      (counts.manifestFiles ??= []).push(`s3://${req.bucket}/${o.key}`);
      tables.add(DatasetRepository.itemId(req.bucket, o.key));
      continue;
    }
    counts.listed++;
    page.push(o);
    if (page.length >= (deps.pageSize ?? 1_000)) await flush();
  }
  if (page.length) await flush();
  if (wrote) await stillThere(req, datasets, req.prefix, counts.listed);
  // A hidden object that a label manifest still standing labels is the manifest's: a listing does
  // not take it out (each listing and manifest ingest took it from the other: a review), and it
  // counts as one of the dataset's images listed (else every round of --watch scanned the dataset).
  const kept = await keptByManifests(req, datasets, [...hiddenIds], manifestStands);
  for (const id of kept) listedIds.add(id);
  if (kept.length) counts.hidden!.kept = kept.length;
  const gone = await removeDeleted(req, datasets, listedIds, labelledCount + kept.length);
  const tablesGone = gone.filter((id) => tables.has(id)).length;
  const hiddenGone = gone.filter((id) => hiddenIds.has(id)).length;
  counts.removed = gone.length - tablesGone - hiddenGone;
  if (tablesGone) counts.manifestFilesRemoved = tablesGone;
  if (hiddenGone) counts.hidden!.removed = hiddenGone;
  // Listed to the end: the dataset has every object of the prefix now (what a Redis loss asks for).
  if (recorded) await datasets.markListed(req.dataset, req.bucket, req.prefix);
  counts.mergedLabels = [...spellings].filter(([, forms]) => forms.size > 1).map(([label]) => label).sort();
  if (layout.splitFolders.size && layout.labelFolders.size) counts.mixedLayout = { splitFolders: [...layout.splitFolders].sort(), labelFolders: [...layout.labelFolders].sort() };
  // A label folder (or a split's) is directly under the prefix, or in a split folder under it; a
  // marker of a folder deeper (a label's own sub-folder), or of one that holds images, says nothing.
  const labelLevel = (m: string) => {
    const parts = m.split('/');
    return parts.length === 1 || (parts.length === 2 && readsSplits && splitOfFolder(parts[0]!) !== undefined);
  };
  const empty = [...markers].filter((m) => labelLevel(m) && !filled.has(m) && ![...markers].some((other) => other.startsWith(`${m}/`))).sort();
  if (empty.length && req.labels !== 'none') counts.emptyFolders = empty;
  await onPage?.({ ...counts });
  return counts;
}

/**
 * Deleted while an ingest wrote it (delete dataset, or Redis's data lost): the pages still to come
 * would make a dataset of the rest alone, without its space or sources (a review). Asked between
 * pages and after the last: a page's write lists the dataset again, but records neither its space
 * nor its sources, which only an ingest's first page records (another ingest that made the dataset
 * anew from other prefixes does not record this one).
 */
async function stillThere(req: { dataset: string; bucket: string }, datasets: IngestDeps['services']['datasets'], prefix: string, done: number): Promise<void> {
  if (await datasets.holdsSource(req.dataset, req.bucket, prefix)) return;
  // What pages written after the deletion made, when no other ingest has made the dataset anew (no
  // space, no source): a dataset of nothing usable, whose name would keep another watch of it going.
  if ((await datasets.space(req.dataset)) === undefined && (await datasets.sources(req.dataset)).length === 0) await datasets.remove(req.dataset);
  throw new CliExit(EXIT.vanished, `transferline: dataset ${req.dataset} was deleted (or Redis lost its data) while this ingest wrote it, after ${done} objects of s3://${req.bucket}/${prefix}: stopped, rather than make a dataset of what it had not written yet; ingest again to make it anew`);
}

/** A dataset that was there before this ingest (`existing`) and has no space now was deleted meanwhile: not made anew. */
async function notDeletedMeanwhile(req: { dataset: string; existing?: boolean }, datasets: IngestDeps['services']['datasets']): Promise<void> {
  if (!req.existing || (await datasets.space(req.dataset)) !== undefined) return;
  throw new CliExit(EXIT.vanished, `transferline: dataset ${req.dataset} was deleted (or Redis lost its data) since it was last ingested by this command: stopped before writing to it`);
}

/** An object to be in the dataset with this label (from its folder, or from a manifest). */
type Labelled = ObjectInfo & { id: string; label: string; split?: Split; manifest?: string };

/**
 * Makes the dataset's records of these objects match them: unchanged ones (same ETag, label,
 * split, source and space) cost nothing, unless they are to be run again; the others are submitted.
 * Adds what became of each to `counts`. A listed image that a manifest in the bucket labels keeps
 * the manifest's label (a manifest deleted lets its images go to their folders).
 */
async function applyPage(
  req: Pick<IngestRequest, 'dataset' | 'space'>,
  deps: IngestDeps,
  labelled: Labelled[],
  counts: IngestCounts,
  /** for a listing: whether a manifest (`bucket/key`) that labels some of its images is still in the bucket */
  manifestStands?: (manifest: string) => Promise<boolean>,
): Promise<void> {
  const existing = await deps.services.datasets.getItems(req.dataset, labelled.map((o) => o.id));
  const known = existing.flatMap((r, i) => (r ? [[labelled[i]!.id, r] as [string, ItemRecord]] : []));
  const views = new Map((await deps.services.inspector.classify(req.dataset, known, req.space.id)).map((v) => [v.id, v]));
  const work: { o: (typeof labelled)[number]; retry: boolean; relabel?: boolean }[] = [];
  for (const listed of labelled) {
    const v = views.get(listed.id);
    const r = v?.record;
    let o = listed;
    // A listing does not take an image from the manifest that labels it (its row says more than
    // its folder) while the manifest is there: the image keeps the manifest's label and split,
    // and is otherwise a listed object like any (its new bytes enqueued, its failure retried).
    if (r?.manifest !== undefined && o.manifest === undefined && (await manifestStands?.(r.manifest))) {
      const { split: _folders, ...rest } = o;
      o = { ...rest, label: r.label, manifest: r.manifest, ...(r.split && { split: r.split }) };
      tally((counts.manifestLabelled ??= { count: 0, manifests: [] }), r.manifest);
    }
    // (two manifests naming one image: the one ingested last labels it, and says whose it was)
    if (r?.manifest !== undefined && o.manifest !== undefined && r.manifest !== o.manifest) tally((counts.fromOtherManifests ??= { count: 0, manifests: [] }), r.manifest);
    const sameBytes = r !== undefined && r.etag === o.etag && (r.space ?? req.space.id) === req.space.id;
    const same = sameBytes && r.label === o.label && r.split === o.split && r.manifest === o.manifest;
    // (a new label is no new embedding: one its own job computed is not counted as found in the cache from now on, a trial's "200 of them already in the embedding cache")
    if (!same) work.push({ o: { ...o, ...(sameBytes && r.state === 'queued' && v!.phase === 'embedded' && { embeddedByItsJob: true }) }, retry: false, relabel: sameBytes });
    else if (needsRetry(v!, o.lastModified)) work.push({ o, retry: true });
    else {
      counts.unchanged++;
      if (v!.phase === 'preprocess' || v!.phase === 'embed') counts.unchangedInFlight++;
    }
  }
  const outcomes = await submit(req, deps, work.map((w) => ({ ...w.o, ...(w.retry && { previous: views.get(w.o.id) }) })));
  outcomes.forEach((outcome, i) => {
    if (outcome === 'cached') {
      counts.fromCache++;
      if (work[i]!.relabel) counts.relabelled = (counts.relabelled ?? 0) + 1;
    } else if (work[i]!.retry) counts.retried++;
    else if (outcome === 'queued') counts.alreadyQueued++;
    else counts.enqueued++;
  });
}

/** One more image in a count by manifest. */
function tally(c: { count: number; manifests: string[] }, manifest: string): void {
  c.count++;
  if (!c.manifests.includes(manifest)) c.manifests.push(manifest);
}

/** The largest manifest ingest reads (some five million rows; a JSON Lines file is read as one string). */
const MAX_MANIFEST_BYTES = 500 * 2 ** 20;

/**
 * Makes the dataset match a label manifest (see manifest.ts): each image it names is ingested
 * with the manifest's label and split, as a listed object of a label folder would be; images
 * the manifest gave the dataset before and names no more (or that are gone from the bucket)
 * leave it. The images' ETags come from a listing of the folder they share, or, for a manifest
 * that names a few images of a large folder, one HEAD each. Nothing changes when the manifest
 * cannot be read (ManifestError) or names no image that is in the bucket.
 */
export async function ingestManifest(req: ManifestRequest, deps: IngestDeps, onPage?: (c: IngestCounts) => void): Promise<IngestCounts> {
  const { store, datasets } = deps.services;
  const counts = noCounts();
  const source = DatasetRepository.source(req.bucket, req.key);
  const bytes = await store.getObject(req.bucket, req.key, MAX_MANIFEST_BYTES).catch((err: unknown) => {
    if (!(err instanceof ObjectTooLargeError)) throw err;
    throw new ManifestError(`the manifest s3://${source} is ${err.size.toLocaleString('en-US')} bytes, more than the ${MAX_MANIFEST_BYTES / 2 ** 20} MiB a manifest may be: split it in several, each ingested into the dataset`);
  });
  const rows = await readManifest(bytes, req.format, { bucket: req.bucket, key: req.key });
  const { found, unreadable } = await findObjects(store, rows, req.bucket);
  const missing = rows.filter((r) => !found.has(DatasetRepository.itemId(r.bucket, r.key)));
  if (missing.length) {
    // a first line of names the reader does not know is read as a row, and names no image
    const firstLine = missing[0]!.headerLike;
    counts.missing = { count: missing.length, first: missing.slice(0, 5).map((r) => `s3://${r.bucket}/${r.key}`), ...(unreadable.length && { unreadable }), ...(firstLine !== undefined && { firstLine }) };
  }
  if (missing.length === rows.length) {
    const folder = path.posix.dirname(req.key) === '.' ? '' : `${path.posix.dirname(req.key)}/`;
    const { unreadable: buckets, firstLine } = counts.missing!;
    const windows = backslashHint(rows.map((r) => r.key));
    throw new ManifestError(
      `${rows.length === 1 ? 'the one image' : `none of the ${rows.length} images`} s3://${source} names ${rows.length === 1 ? 'is not' : 'is'} in the bucket (the first: ${counts.missing!.first.join(', ')}${buckets ? `; ${buckets.join(', ')}` : ''}), so nothing was ingested: ` +
        `a key relative to the manifest's folder is read from s3://${req.bucket}/${folder}${firstLine === undefined ? '' : `; ${headerHint(firstLine)}`}${windows ? `; ${windows}` : ''}`,
    );
  }
  await notDeletedMeanwhile(req, datasets);
  await datasets.setSpace(req.dataset, req.space.id);
  await datasets.addSource(req.dataset, req.bucket, req.key);
  const labelled: Labelled[] = rows.flatMap((r) => {
    const id = DatasetRepository.itemId(r.bucket, r.key);
    const o = found.get(id);
    return o ? [{ ...o, id, label: r.label, ...(r.split && { split: r.split }), manifest: source }] : [];
  });
  for (let i = 0; i < labelled.length; i += 1000) {
    if (i > 0) await stillThere(req, datasets, req.key, counts.listed);
    const page = labelled.slice(i, i + 1000);
    counts.listed += page.length;
    await applyPage(req, deps, page, counts);
    await onPage?.({ ...counts });
  }
  await stillThere(req, datasets, req.key, counts.listed);
  // what the manifest gave the dataset before and gives no more (or whose object is gone)
  const kept = new Set(labelled.map((o) => o.id));
  const gone: string[] = [];
  if ((await datasets.size(req.dataset)) > kept.size) {
    for await (const page of datasets.scan(req.dataset)) {
      for (const [id, r] of page) if (r.manifest === source && !kept.has(id)) gone.push(id);
    }
  }
  // (a row dropped leaves its object in the bucket, and its known bytes: one named but gone does not)
  const named = new Set(rows.map((r) => DatasetRepository.itemId(r.bucket, r.key)));
  const dropped = gone.filter((id) => !named.has(id));
  const deleted = gone.filter((id) => named.has(id));
  for (let i = 0; i < dropped.length; i += 1000) await datasets.removeItems(req.dataset, dropped.slice(i, i + 1000), { objectsStay: true });
  for (let i = 0; i < deleted.length; i += 1000) await datasets.removeItems(req.dataset, deleted.slice(i, i + 1000));
  counts.removed = gone.length;
  await datasets.markListed(req.dataset, req.bucket, req.key);
  onPage?.({ ...counts });
  return counts;
}

/**
 * Size, ETag and date of each image the rows name that is in the bucket. Per bucket, the folder
 * the keys share is listed (a thousand keys a request), until the listing has gone on far longer
 * than the rows are many: the keys not seen by then are asked for one by one (HEAD).
 */
async function findObjects(store: IngestDeps['services']['store'], rows: ManifestRow[], home: string): Promise<{ found: Map<string, ObjectInfo>; unreadable: string[] }> {
  const found = new Map<string, ObjectInfo>();
  /** other buckets the rows name that cannot be read (not there, or refused), and why: their images are missing, as any not there */
  const unreadable: string[] = [];
  const byBucket = new Map<string, string[]>();
  for (const r of rows) {
    const keys = byBucket.get(r.bucket);
    if (keys) keys.push(r.key);
    else byBucket.set(r.bucket, [r.key]);
  }
  for (const [bucket, keys] of byBucket) {
    const wanted = new Set(keys);
    const shared = keys.reduce((a, b) => {
      let n = 0;
      while (n < a.length && n < b.length && a[n] === b[n]) n++;
      return a.slice(0, n);
    });
    const folder = shared.slice(0, shared.lastIndexOf('/') + 1);
    let seen = 0;
    const enough = 2 * wanted.size + 1000;
    try {
      for await (const o of store.listObjects(bucket, folder)) {
        if (wanted.has(o.key)) found.set(DatasetRepository.itemId(bucket, o.key), o);
        if (++seen >= enough) break;
      }
    } catch (err) {
      const why = bucketUnreadable(err);
      if (why === undefined || bucket === home) throw err;
      unreadable.push(`bucket ${bucket} ${why}`);
      continue;
    }
    if (seen < enough) continue; // listed to the end: what it did not list is not there
    const rest = [...wanted].filter((key) => !found.has(DatasetRepository.itemId(bucket, key)));
    await pMap(rest, async (key) => {
      const o = await store.headObject(bucket, key);
      if (o) found.set(DatasetRepository.itemId(bucket, key), o);
    }, { concurrency: 16 });
  }
  return { found, unreadable: unreadable.sort() };
}

/** Records the raw folder spelling behind a (NFC-normalised) label. */
function noteSpelling(spellings: Map<string, Set<string>>, label: string, key: string, prefix: string): void {
  const raw = key.slice(prefix.length).split('/').find((part) => part.normalize('NFC') === label);
  if (raw === undefined || raw === label) {
    if (!spellings.has(label)) spellings.set(label, new Set([label]));
    return;
  }
  const forms = spellings.get(label) ?? new Set<string>();
  forms.add(raw);
  spellings.set(label, forms);
}

/** Of the dataset's items among `ids`, those a label manifest still in the bucket labels. */
async function keptByManifests(req: IngestRequest, datasets: IngestDeps['services']['datasets'], ids: string[], manifestStands: (manifest: string) => Promise<boolean>): Promise<string[]> {
  const kept: string[] = [];
  for (let i = 0; i < ids.length; i += 1000) {
    const part = ids.slice(i, i + 1000);
    const records = await datasets.getItems(req.dataset, part);
    for (const [j, r] of records.entries()) if (r?.manifest !== undefined && (await manifestStands(r.manifest))) kept.push(part[j]!);
  }
  return kept;
}

/**
 * Items of the dataset under the listed prefix whose objects were not listed: deleted from the
 * bucket (or left out of the listing). They leave the dataset (and training), so a dataset
 * matches its bucket after an ingest. Returns their ids.
 */
async function removeDeleted(req: IngestRequest, datasets: IngestDeps['services']['datasets'], listed: Set<string>, labelled: number): Promise<string[]> {
  // Every labelled object listed is in the dataset by now: when that is all it holds, nothing was
  // deleted, and the scan (the whole dataset, on every round of --watch) is not needed.
  if ((await datasets.size(req.dataset)) <= labelled) return [];
  // An item whose key was listed stays, labelled under this prefix or not: ingesting a prefix one
  // level too deep (nothing in a label folder under it) must not take the dataset's images out.
  const gone: string[] = [];
  for await (const page of datasets.scan(req.dataset)) {
    for (const [id] of page) {
      const { bucket, key } = DatasetRepository.parseItemId(id);
      if (bucket === req.bucket && key.startsWith(req.prefix) && !listed.has(id)) gone.push(id);
    }
  }
  for (let i = 0; i < gone.length; i += 1000) await datasets.removeItems(req.dataset, gone.slice(i, i + 1000));
  return gone;
}

/**
 * Whether re-ingesting an unchanged object should run it again: its job was lost, it failed for a
 * reason that is not the image's, or it failed `not-found` and is listed as put there since (put
 * back, or copied to the S3 the workers read: a user's trial). One still listed from an S3 the
 * workers do not read is not run again on every round of a watch.
 */
function needsRetry(v: ItemView, lastModified: Date | undefined): boolean {
  if (v.phase === 'orphaned') return true;
  if (v.phase !== 'failed') return false;
  if (TRANSIENT_REASONS.has(v.failure!.reason)) return true;
  const failedAt = v.record.failedAt === undefined ? NaN : Date.parse(v.record.failedAt);
  // (S3 gives LastModified in whole seconds: one put back within the second of the failure counts)
  return v.failure!.reason === 'not-found' && lastModified !== undefined && lastModified.getTime() + 1000 > failedAt;
}

export interface Submission {
  /** the item: `bucket/key` of its object */
  id: string;
  etag: string;
  label: string;
  split?: ItemRecord['split'];
  /** the label manifest that gave its label (`bucket/key`), if one did */
  manifest?: string;
  /** the item's classified state, when it is being run again */
  previous?: ItemView;
  /** given a new label (or split, or manifest) only, its embedding computed by its own job before: recorded so still, not as found in the cache */
  embeddedByItsJob?: boolean;
}

/**
 * Puts items (new, changed, or to be run again) on their way: an item whose bytes are known and
 * embedded in the space is recorded as cached without a job; the others are recorded pending
 * and get a preprocess job (a failed job of the same id is retried). Records are written before
 * jobs, so a fast worker always finds its item. Returns what became of each item.
 */
export async function submit(
  req: Pick<IngestRequest, 'dataset' | 'space'>,
  deps: IngestDeps,
  items: Submission[],
): Promise<('cached' | 'enqueued' | 'queued')[]> {
  const { datasets, cache } = deps.services;
  if (items.length === 0) return [];
  const known = await datasets.knownHashes(items.map((o) => o.id));
  const knownSha = items.map((o, i) => (known[i]?.etag === o.etag ? known[i]!.sha256 : undefined));
  const cached = await cache.has(req.space.id, knownSha.map((s) => s ?? '0'.repeat(64)));
  // An embed failure is about the bytes in a space; the item is being tried again, so forget it.
  const failedEmbeds = items.flatMap((o) => (o.previous?.failure?.stage === 'embed' && o.previous.record.sha256 ? [o.previous.record.sha256] : []));
  await datasets.clearEmbedFailures(req.space.id, failedEmbeds);
  const records: [string, ItemRecord][] = [];
  const jobs: { id: string; payload: PreprocessJob }[] = [];
  const outcomes = items.map((o, i): 'cached' | 'enqueued' => {
    const base = { label: o.label, etag: o.etag, space: req.space.id, ...(o.split && { split: o.split }), ...(o.manifest && { manifest: o.manifest }) };
    const sha256 = knownSha[i];
    if (sha256 && cached[i]) {
      records.push([o.id, { ...base, sha256, state: o.embeddedByItsJob ? 'queued' : 'cached' }]);
      return 'cached';
    }
    records.push([o.id, { ...base, state: 'pending' }]);
    // (the object's own bucket: a manifest may name images in several)
    const { bucket, key } = DatasetRepository.parseItemId(o.id);
    const payload: PreprocessJob = { dataset: req.dataset, bucket, key, etag: o.etag, label: o.label, embedderId: req.space.id, resize: req.space.resize, background: spaceBackground(req.space) };
    jobs.push({ id: jobIds.preprocess(payload), payload });
    return 'enqueued';
  });
  // Jobs that exist already: failed ones are moved back (requeue); the others were queued by
  // another ingest of the same objects at the same time, and adding them again is a no-op.
  const pipe = deps.services.redis.pipeline();
  for (const j of jobs) pipe.exists(deps.queues.preprocess.toKey(j.id)).zscore(deps.queues.preprocess.toKey('failed'), j.id);
  const res = ((await pipe.exec()) ?? []).map(([, v]) => v);
  const failed = jobs.map((_, k) => res[2 * k + 1] !== null && res[2 * k + 1] !== undefined);
  const queuedBefore = new Set(jobs.flatMap((j, k) => (res[2 * k] === 1 && !failed[k] ? [j.id] : [])));
  await datasets.putItems(req.dataset, records);
  await requeue(deps.services.redis, deps.queues.preprocess, 'preprocess', jobs, failed);
  let at = 0;
  return outcomes.map((o) => (o === 'enqueued' && queuedBefore.has(jobs[at++]!.id) ? 'queued' : o));
}
