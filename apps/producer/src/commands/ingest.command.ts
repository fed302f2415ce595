import { BYTES_FAILURE_REASONS, DatasetRepository, DEFAULT_STALL_SECONDS, manifestFormat, ObjectNotFoundError, parseS3ObjectUrl, parseS3Url, redactUrl, relistCommand, s3Refusal, UNLABELLED_SHOWN, type DatasetStatus } from '@transferline/shared';
import type { CliContext } from '../cli-context.js';
import { CliExit, EXIT } from '../exit-codes.js';
import { otherPrefixWords, restoreLostIndex, spacesUnderOtherPrefixes } from '../data-loss.js';
import { watchRounds, WatchEnded } from '../watch-loop.js';
import { waitForDataset } from '../dataset-wait.js';
import { ingestManifest, ingestPrefix, type IngestCounts } from '../ingest.service.js';
import { backslashHint, headerHint, ManifestError } from '../manifest.js';
import { createProgress } from '../progress.js';
import { namesOneObject } from '../storage-hint.js';
import { printable } from '../terminal.js';
import { confusableLabelNotes, manifestsNamed } from '../report-words.js';

export interface IngestOptions {
  dataset: string;
  wait: boolean;
  /** `--embedder ID`: the embedding space, when the cluster has more than one */
  embedder?: string;
  /** why `embedder` was chosen, for the line that names the space (default: "chosen with --embedder") */
  embedderReason?: string;
  /** seconds without progress before a missing worker ends the wait (default 30) */
  stallSeconds?: number;
  /**
   * A round of --watch after the first: no listing bar, and when the listing changed nothing
   * (no object new, changed, gone or tried again) nothing is printed and nothing waited for.
   */
  quietUnlessNew?: boolean;
  /** a round of --watch (the first included): a prefix with no label folder yet is watched, not refused */
  watching?: boolean;
  /** the dataset was there after an earlier round of this watch: deleted since, it is not made anew (IngestRequest.existing) */
  existing?: boolean;
}

export interface IngestOutcome {
  /** the embedding space the images went to */
  space: string;
  counts: IngestCounts;
  status?: DatasetStatus;
  /** a quiet round: the listing changed nothing, and nothing was printed */
  quiet?: boolean;
}

/**
 * Whether a listing changed the dataset (or asked anything of the workers). Labels spelled two
 * ways are found again by every listing: said by the rounds that speak, not a change.
 */
export function changedAnything(c: IngestCounts): boolean {
  return c.enqueued + c.alreadyQueued + c.fromCache + c.retried + c.removed + (c.hidden?.removed ?? 0) > 0;
}

/** The hidden files a listing left out (see isHiddenPath), for ingest's and classify's notes. */
export function hiddenNote(h: NonNullable<IngestCounts['hidden']>): string {
  const n = h.count;
  const named = `${h.first.map(printable).join(', ')}${n > h.first.length ? ` and ${n - h.first.length} more` : ''}`;
  const taken = h.removed ? `; ${h.removed} of them ${h.removed === 1 ? 'was' : 'were'} in the dataset, and ${h.removed === 1 ? 'is' : 'are'} taken out of it` : '';
  const kept = h.kept ? `; ${h.kept} of them ${h.kept === 1 ? 'stays' : 'stay'} in the dataset: the label manifest that names ${h.kept === 1 ? 'it labels it' : 'them labels them'}` : '';
  return `${n} hidden file${n === 1 ? '' : 's'} left out (a name that starts with a dot, or a folder's: .DS_Store, a Finder's ._ files, .thumbnails/; aws s3 sync copies them, upload does not): ${named}${taken}${kept}`;
}

/** The label manifests (`s3://…`) right in `folder`, the first few among its first few thousand objects. */
async function manifestsIn(ctx: CliContext, bucket: string, folder: string): Promise<string[]> {
  const found: string[] = [];
  let seen = 0;
  for await (const o of ctx.services.store.listObjects(bucket, folder)) {
    if (!o.key.slice(folder.length).includes('/') && manifestFormat(o.key)) found.push(`s3://${bucket}/${o.key}`);
    if (found.length >= 5 || ++seen >= 5000) break;
  }
  return found;
}

/** The label manifest an ingest's URL names (an object ending in .csv, .tsv, .jsonl or .ndjson), or undefined for a prefix. */
function manifestOf(url: string): { bucket: string; key: string; format: 'csv' | 'jsonl' } | undefined {
  const format = url.endsWith('/') ? undefined : manifestFormat(url);
  return format && { ...parseS3ObjectUrl(url), format };
}

/**
 * `transferline ingest s3://bucket/prefix --dataset NAME`: list, enqueue, then follow the dataset
 * until every item is embedded or failed. The embedding space comes from the cluster (the embed
 * workers publish theirs), never from this process's environment.
 */
export async function ingestCommand(ctx: CliContext, url: string, o: IngestOptions): Promise<IngestOutcome> {
  const { bucket, prefix } = parseS3Url(url);
  const manifest = manifestOf(url);
  // which space, and why: said by the rounds that speak (a quiet --watch round says nothing)
  const { space, message: spaceChoice } = await ctx.services.spaces.resolve(o.embedder, o.embedderReason, await ctx.services.datasets.space(o.dataset)).catch(async (err: unknown) => {
    // none found: under another TL_QUEUE_PREFIX, the setting is named rather than a worker to start
    const others = await spacesUnderOtherPrefixes(ctx).catch(() => []);
    throw others.length ? new Error(`no embedding space is published under this prefix: ${otherPrefixWords(ctx, others, 'the live embed workers')}`) : err;
  });
  if (!o.quietUnlessNew) ctx.out.write(`${spaceChoice}\n`);
  await restoreLostIndex(ctx, space.id);
  const listing = o.quietUnlessNew ? undefined : createProgress('listing');
  let counts: IngestCounts;
  try {
    const deps = { services: ctx.services, queues: ctx.queues };
    // (a manifest of millions of rows is read and checked whole before anything is found)
    if (manifest) listing?.update(0, 0, 'reading the manifest and finding its images', true);
    counts = manifest
      ? await ingestManifest({ ...manifest, dataset: o.dataset, space, existing: o.existing }, deps, (c) => listing?.update(c.listed, c.listed, `found, ${c.enqueued} enqueued`))
      : await ingestPrefix({ bucket, prefix, dataset: o.dataset, space, existing: o.existing }, deps, (c) => listing?.update(c.listed, c.listed, `listed, ${c.enqueued} enqueued`));
  } catch (err) {
    if (err instanceof ManifestError) throw new CliExit(EXIT.error, `transferline: ${err.message.split('\n').map(printable).join('\n')}`);
    if (manifest && err instanceof ObjectNotFoundError && err.key === manifest.key) {
      // a typo in its name, most likely: the manifests beside it are named
      const beside = await manifestsIn(ctx, bucket, manifest.key.slice(0, manifest.key.lastIndexOf('/') + 1)).catch(() => []);
      const hint = beside.length ? `; the label manifests in its folder: ${beside.map(printable).join(', ')}` : ` (a prefix ends in "/": s3://${printable(bucket)}/${printable(manifest.key)}/)`;
      throw new CliExit(EXIT.error, `transferline: the manifest ${printable(url)} does not exist${hint}`);
    }
    throw s3Refusal(err, ctx.config.s3) ?? err;
  } finally {
    listing?.stop();
  }
  if (o.quietUnlessNew && !changedAnything(counts)) return { space: space.id, counts, quiet: true };
  if (o.quietUnlessNew) ctx.out.write(`${spaceChoice}\n`);
  const w = (s: string) => ctx.out.write(`${s}\n`);
  const where = manifest ? printable(url) : `s3://${printable(bucket)}/${printable(prefix)}`;
  if (counts.listed === 0 && !manifest) {
    // (the URL names one object: a manifest of a name ingest does not read, most likely)
    const hint = (await namesOneObject(ctx, url, bucket, prefix)) ? `; ${printable(url)} is an object: ingest takes a prefix, or a label manifest ending in .csv, .tsv, .jsonl or .ndjson` : ` (is the prefix right? keys look like ${where}<label>/<file>)`;
    w(`ingest ${where}: no objects there${counts.hidden ? ' but hidden files' : ''}${hint}`);
  }
  const found = manifest
    ? `${counts.listed} ${counts.missing ? `of the ${counts.listed + counts.missing.count} ` : ''}image${counts.listed + (counts.missing?.count ?? 0) === 1 ? '' : 's'} named by the manifest${counts.missing ? ' found' : ''}`
    : `${counts.listed} object${counts.listed === 1 ? '' : 's'} listed`;
  w(
    `ingest ${where} → dataset ${o.dataset}: ${found}, ${counts.enqueued} enqueued, ` +
      `${counts.fromCache - (counts.relabelled ?? 0)} added from the embedding cache (no job), ` +
      // (a manifest's edit: the same bytes under a new label or split, nothing to embed)
      (counts.relabelled ? `${counts.relabelled} given a new label, split or manifest (no job), ` : '') +
      `${counts.unchanged} unchanged` +
      // (an ingest of them running now, or one that went before and whose work goes on)
      (counts.unchangedInFlight ? ` (${counts.unchangedInFlight} of them still on their way: queued before, not yet embedded)` : '') +
      (counts.alreadyQueued ? `, ${counts.alreadyQueued} already queued (by another ingest of them running now)` : '') +
      (counts.retried ? `, ${counts.retried} tried again (failed on a transient error, or their job was lost)` : '') +
      (counts.unlabelled ? `, ${counts.unlabelled} skipped (not in a label folder: use <prefix>/<label>/<file>)` : '') +
      (counts.removed ? `, ${counts.removed} removed from the dataset (${manifest ? 'no longer named by the manifest, or deleted from the bucket' : 'deleted from the bucket'})` : ''),
  );
  if (counts.manifestLabelled) {
    const { count, manifests } = counts.manifestLabelled;
    w(
      `note: ${count} of the images under ${where} ${count === 1 ? 'takes its label' : 'take their labels'} in dataset ${o.dataset} from ${manifestsNamed(manifests, printable)}, ` +
        `not from ${count === 1 ? 'its folder' : 'their folders'}: change ${count === 1 ? 'its row' : 'their rows'} there and ingest it again ` +
        `(with the manifest deleted, a listing labels ${count === 1 ? 'it' : 'them'} by ${count === 1 ? 'its folder' : 'their folders'})`,
    );
  }
  if (counts.fromOtherManifests) {
    const { count, manifests } = counts.fromOtherManifests;
    w(
      `note: ${count} of the images this manifest names ${count === 1 ? 'was' : 'were'} labelled in dataset ${o.dataset} by ${manifestsNamed(manifests, printable)}; ` +
        `this one labels ${count === 1 ? 'it' : 'them'} now (an image takes its label from the manifest ingested last)`,
    );
  }
  if (counts.missing) {
    const { count, first, unreadable, firstLine } = counts.missing;
    const buckets = unreadable ? ` (${unreadable.map(printable).join('; ')})` : '';
    w(`note: ${count} of the images the manifest names ${count === 1 ? 'is' : 'are'} not in the bucket, so not ingested: ${first.map(printable).join(', ')}${count > first.length ? ` and ${count - first.length} more` : ''}${buckets}`);
    if (firstLine !== undefined) w(`note: ${headerHint(printable(firstLine))}`);
    const windows = backslashHint(first);
    if (windows) w(`note: ${printable(windows)}`);
  }
  if (counts.manifestFiles) {
    const files = counts.manifestFiles;
    w(`note: ${files.slice(0, 3).map(printable).join(', ')}${files.length > 3 ? ` and ${files.length - 3} more` : ''} ${files.length === 1 ? 'is' : 'are'} in a label manifest's format (.csv, .tsv, .jsonl, .ndjson), not ${files.length === 1 ? 'an image' : 'images'}: left out of the listing (a manifest labels the dataset when ingested by its URL)${counts.manifestFilesRemoved ? `; ${counts.manifestFilesRemoved} of them ${counts.manifestFilesRemoved === 1 ? 'was' : 'were'} in the dataset as ${counts.manifestFilesRemoved === 1 ? 'an image that failed, and is' : 'images that failed, and are'} taken out of it` : ''}`);
  }
  if (counts.hidden) w(`note: ${hiddenNote(counts.hidden)}`);
  if (counts.emptyFolders) {
    const names = counts.emptyFolders;
    w(`note: under ${where}, ${folderList(names)} ${names.length === 1 ? 'is an empty folder' : 'are empty folders'} (a folder marker, no image in ${names.length === 1 ? 'it' : 'them'}): no label of ${names.length === 1 ? 'it' : 'them'} is in the dataset`);
  }
  if (counts.mixedLayout) {
    const { splitFolders, labelFolders } = counts.mixedLayout;
    w(
      `note: under ${where}, ${folderList(splitFolders)} hold${splitFolders.length === 1 ? 's' : ''} splits (the folders in ${splitFolders.length === 1 ? 'it' : 'them'} are labels), ` +
        `but ${folderList(labelFolders)} ${labelFolders.length === 1 ? 'is' : 'are'} taken as label${labelFolders.length === 1 ? '' : 's'} themselves: ` +
        `if ${labelFolders.length === 1 ? 'it is' : 'they are'} not labels, ingest the right prefixes one by one into a new dataset (this one has those labels now)`,
    );
  }
  for (const label of counts.mergedLabels) {
    w(`note: label folder "${printable(label)}" comes in more than one Unicode spelling (NFC and NFD, as macOS writes them); they are one label`);
  }
  // Nothing under the prefix (a typo in it), or every object outside a label folder (a prefix one
  // level too deep, a label's own folder), for a dataset that exists: nothing was added, and
  // waiting would only print its old figures and failures as if they were this ingest's (and exit
  // 3 on them). Said as for a new dataset, with where its label folders are.
  // (Not for a --watch, which may wait for objects or label folders to come; nor for one of the
  // dataset's own prefixes, or a listing that removed images: it changed the dataset.)
  const sources = counts.unlabelled === counts.listed && counts.removed === 0 && !counts.hidden?.removed && !o.watching ? await ctx.services.datasets.sources(o.dataset) : [];
  if (!manifest && sources.length && !sources.includes(DatasetRepository.source(bucket, prefix))) {
    const what = counts.listed === 0 ? `nothing to ingest under ${where}` : `none of the ${counts.listed} objects is in a label folder under ${where}`;
    const folders = sources.filter((src) => !DatasetRepository.isManifestSource(src)).sort();
    const manifests = sources.filter(DatasetRepository.isManifestSource).sort();
    const sourceWords = [
      ...(folders.length ? [`its label folders are under ${folders.map((p) => `s3://${printable(p)}`).join(', ')}`] : []),
      ...(manifests.length ? [`it is labelled by ${manifestsNamed(manifests, printable)}`] : []),
    ].join('; ');
    throw new CliExit(
      EXIT.error,
      `transferline: ${what}, so nothing was added to dataset ${o.dataset} ` + `(${counts.listed === 0 ? 'a typo in the prefix?' : 'a prefix one level too deep?'} ${sourceWords})`,
    );
  }
  if (!o.wait) return { space: space.id, counts };
  // nothing listed and nothing from before: no dataset to wait for (waiting would call it vanished)
  if (!(await ctx.services.datasets.exists(o.dataset))) return { space: space.id, counts };
  // what this ingest waits for: its new and changed objects, and those still on their way from before
  const ours = counts.enqueued + counts.alreadyQueued + counts.retried + counts.unchangedInFlight + counts.fromCache;
  const status = await waitForDataset(ctx, o.dataset, { space: space.id, stallSeconds: o.stallSeconds ?? DEFAULT_STALL_SECONDS, ours: { count: ours, done: counts.fromCache, what: "this ingest's images" } });
  printDatasetSummary(ctx, status);
  return { space: space.id, counts, status };
}

export interface WatchOptions extends Omit<IngestOptions, 'quietUnlessNew'> {
  intervalSeconds: number;
  /** for tests: stop after this many rounds */
  maxRounds?: number;
  /** called with each round's outcome */
  onRound?: (outcome: IngestOutcome) => void;
}

/**
 * `ingest --watch`: lists the prefix every `intervalSeconds` until Ctrl-C. The first round is a
 * whole ingest; after it, a round speaks only when the listing changed something (new, changed
 * or deleted objects, images tried again), and then waits for what it enqueued as ingest does.
 * Says whether any round ended with failed images, or a manifest's images missing (a watch runs
 * for days: no round is kept).
 */
export async function watchIngest(ctx: CliContext, url: string, o: WatchOptions): Promise<{ failed: boolean }> {
  let failed = false;
  const { intervalSeconds, maxRounds, onRound, ...ingest } = o;
  // Whether the dataset was there after an earlier round (a first round of an empty prefix makes
  // none): deleted since (a review: the next round made it again, every object downloaded and
  // decoded again, and said nothing), or Redis's data lost, the round's ingest stops before its
  // first write (`existing`), and the watch with it: not this watch's to bring back.
  let existed = false;
  await watchRounds(ctx, { intervalSeconds, maxRounds }, async (round) => {
    let outcome: IngestOutcome;
    try {
      outcome = await ingestCommand(ctx, url, { ...ingest, quietUnlessNew: round > 1, watching: true, existing: existed });
    } catch (err) {
      // deleted while the round listed or waited: the watch ends there, as at the next round's look
      if (err instanceof CliExit && err.code === EXIT.vanished) throw new WatchEnded(EXIT.vanished, `${err.message.replace(/[.\s]+$/, '')}; this watch stops`);
      throw err;
    } finally {
      // (once there, the dataset stays the watch's, a round that failed after writing it too; a
      // Redis that does not answer now fails the next round's look instead, as an outage)
      existed ||= await ctx.services.datasets.exists(ingest.dataset).catch(() => false);
    }
    failed ||= (outcome.status?.failed ?? 0) > 0 || outcome.counts.missing !== undefined;
    onRound?.(outcome);
    if (round === 1) {
      const what = manifestOf(url) ? 'reading the manifest' : 'listing it';
      ctx.out.write(`watching ${printable(url)}: ${what} every ${intervalSeconds} s for new and changed images (Ctrl-C to stop)\n`);
      // the space the first round chose stays the watch's, whatever other spaces' workers come and go
      if (!ingest.embedder) Object.assign(ingest, { embedder: outcome.space, embedderReason: 'the one this watch started with' });
    }
  });
  return { failed };
}

/** Folder names as a note lists them: the first five, and how many more. */
function folderList(names: string[]): string {
  return `${names.slice(0, 5).map((n) => `${printable(n)}/`).join(', ')}${names.length > 5 ? ` and ${names.length - 5} more` : ''}`;
}

export function printDatasetSummary(ctx: CliContext, s: DatasetStatus): void {
  const w = (line: string) => ctx.out.write(`${line}\n`);
  w(
    `dataset ${s.dataset}: ${s.total} image${s.total === 1 ? '' : 's'}, ${s.embedded} embedded (${s.cached} of them already in the embedding cache: not computed again), ${s.failed} failed, ${s.pending} pending` +
      (s.orphaned ? `, ${s.orphaned} orphaned (their job was lost: ${relistCommand(s.dataset)})` : '') +
      (s.space ? ` — embedding space ${s.space}` : ''),
  );
  // (failed images are the dataset's, but no training run's)
  if (s.labels.length) w(`  labels: ${s.labels.map((l) => `${l.unlabelled ? UNLABELLED_SHOWN : printable(l.label)} (${l.count}${l.failed ? `, ${l.failed} failed` : ''})`).join(', ')}`);
  for (const note of confusableLabelNotes(new Map(s.labels.filter((l) => !l.unlabelled).map((l) => [l.label, l.count])), printable)) w(`  note: ${note}`);
  if (s.failuresByReason.length) w(`  failures: ${s.failuresByReason.map((f) => `${f.reason} ${f.count} (${f.stage})`).join(', ')}`);
  // listed, then not found: deleted since, or (every image of an ingest, in a user's trial) the
  // workers read another S3 than the one this shell listed
  const notFound = s.failuresByReason.filter((f) => f.reason === 'not-found').reduce((n, f) => n + f.count, 0);
  if (notFound) w(`  note: ${notFound} listed but not found by the workers: deleted since, or listed from another S3 than the workers read (this shell's S3_ENDPOINT is ${redactUrl(ctx.config.s3.endpoint)}). A re-ingest runs again each one put back since it failed`);
  // what to do of files that failed for their bytes (a user's trial was told only what was wrong)
  const ofBytes = s.failuresByReason.filter((f) => BYTES_FAILURE_REASONS.has(f.reason));
  const nBytes = ofBytes.reduce((n, f) => n + f.count, 0);
  if (nBytes) {
    const reasons = [...new Set(ofBytes.map((f) => f.reason))].join(', ');
    w(`  note: ${nBytes} failed for ${nBytes === 1 ? 'its' : 'their'} own bytes (${reasons}), which fail again however often they run: replace each with an image that reads, or delete it, and ${relistCommand(s.dataset)} (a replaced or deleted file's failure goes)`);
  }
  for (const line of elsewhereLines(s)) w(`  ${line}`);
  printFailures(ctx, s);
}

/**
 * What to say of embedded images whose embedding is in another space than the dataset's (a later
 * ingest of some of its prefixes, into another space, moved the dataset there): train leaves
 * them out, and ingesting their prefixes again into the dataset's space brings them back.
 */
export function elsewhereLines(s: Pick<DatasetStatus, 'space' | 'elsewhere'>): string[] {
  return s.elsewhere.map((e) => {
    const prefixes = e.sources.slice(0, 3).map((src) => `s3://${printable(src)}`).join(', ') + (e.sources.length > 3 ? ` and ${e.sources.length - 3} more` : '');
    return (
      `${e.count} of them are embedded in ${e.space}, not in the dataset's space ${s.space} (its last ingest's): train leaves them out. ` +
      `Ingest ${prefixes || 'their prefixes'} again with --embedder ${s.space} to use them`
    );
  });
}

/** The failures a status lists, one line each, and where to find the rest. */
export function printFailures(ctx: CliContext, s: Pick<DatasetStatus, 'dataset' | 'failed' | 'failures'>): void {
  const w = (line: string) => ctx.out.write(`${line}\n`);
  for (const f of s.failures) w(`  failed ${printable(f.object)}: ${f.stage} ${f.reason}${f.detail ? ` — ${printable(f.detail)}` : ''}`);
  if (s.failed > s.failures.length) w(`  … and ${s.failed - s.failures.length} more failure${s.failed - s.failures.length === 1 ? '' : 's'}, older (those above are the newest): transferline failures -d ${s.dataset}`);
}
