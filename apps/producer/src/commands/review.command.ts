import { readFile } from 'node:fs/promises';
import { text as streamText } from 'node:stream/consumers';
import { confusableLabels, conflictsLabelledBy, DatasetRepository, isHiddenPath, ObjectChangedError, ReviewLine, describeIssues, parseJsonLines, parseS3ObjectUrl } from '@transferline/shared';
import type { CliContext } from '../cli-context.js';
import { CliExit, EXIT } from '../exit-codes.js';
import { likeliestOther, relabelItems, reviewAgreement, reviewDataset, reviewHighlights, type OtherHolder, type RelabelOutcome, type Review } from '../review.service.js';
import { createProgress } from '../progress.js';
import { printable } from '../terminal.js';
import { manifestRelabelNote, manifestRowsAdvice, manifestsNamed, randomSpaceNote } from '../report-words.js';

/**
 * `transferline review -d NAME [--top N] [--folds K] [--json]`: ranks the images whose given label
 * the model finds least likely (out-of-fold, confident learning) and the most uncertain ones,
 * prints the top N of each, and writes the whole list as JSON Lines in the bucket.
 */
export async function reviewCommand(ctx: CliContext, o: { dataset: string; top?: number; folds?: number; json?: boolean }): Promise<Review & { outputKey: string }> {
  const bar = createProgress(`review of ${o.dataset}: folds`);
  let review: Review;
  try {
    review = await reviewDataset(ctx, { dataset: o.dataset, ...(o.folds && { folds: o.folds }), onFold: (done, folds) => bar.update(done, folds, 'fitted') });
  } finally {
    bar.stop();
  }
  // What relabel and the console will read back: a line they would refuse is not written.
  for (const l of review.lines) {
    const r = ReviewLine.safeParse(l);
    if (!r.success) throw new Error(`the review of ${l.key} is not a valid review line (${describeIssues(r.error, 1)}); are its cached embeddings finite numbers?`);
  }
  const { bucket } = ctx.config.s3;
  const outputKey = ctx.services.layout.review(o.dataset, new Date().toISOString().replace(/[:.]/g, '-'));
  await ctx.services.store.putObject(bucket, outputKey, review.lines.map((l) => JSON.stringify(l)).join('\n') + (review.lines.length ? '\n' : ''), 'application/x-ndjson');
  if (o.json) {
    ctx.out.write(`${JSON.stringify({ ...review, outputKey: `s3://${bucket}/${outputKey}` }, null, 2)}\n`);
    return { ...review, outputKey };
  }
  const top = o.top ?? 20;
  const w = (s: string) => ctx.out.write(`${s}\n`);
  const pct = (x: number) => `${(x * 100).toFixed(1).padStart(5)}%`;
  const row = (l: ReviewLine) => `  ${pct(l.pGiven)}  ${printable(l.given)} → ${printable(l.suggested)} (${pct(l.pSuggested).trim()})  ${printable(l.key)}`;
  const copies = review.lines.length - review.distinct;
  const distinct = copies ? `, ${review.distinct} distinct (copies of the same bytes count once and share a fold)` : '';
  const limited = review.foldsLimitedBy ? ` (not ${review.foldsLimitedBy.asked}: ${printable(review.foldsLimitedBy.label)} has ${review.foldsLimitedBy.images} images to fit on, and every fold needs one)` : '';
  w(`review of ${o.dataset}: ${review.lines.length} embedded images${distinct}, ${review.folds}-fold${limited} out-of-fold predictions in ${review.seconds.toFixed(1)} s`);
  // (a relabel on its word would move well-labelled objects in the bucket)
  const random = randomSpaceNote(await ctx.services.spaces.get(review.space).catch(() => undefined), 'its suggestions are');
  if (random) w(`  ${random}`);
  if (review.underTwoLabels) w(`  ${review.underTwoLabels} of them ${review.underTwoLabels === 1 ? 'is' : 'are'} filed under more than one label: predicted, but fitted under none (${printable(review.underTwoLabelsFix ?? '')})`);
  for (const l of review.leftOutLabels ?? []) w(`  left out: label ${printable(l.label)} (${l.images} image${l.images === 1 ? '' : 's'}): a review needs 2 distinct images of a label, one fitted on while the other is held out; add another to review it`);
  if (review.failed) w(`  left out: ${review.failed} failed image${review.failed === 1 ? '' : 's'} (see transferline failures -d ${o.dataset})`);
  if (review.notYetEmbedded) w(`  left out: ${review.notYetEmbedded} images not embedded yet (on their way, or orphaned: see transferline status): review again once they are`);
  const agree = reviewAgreement(review.lines);
  w(`  ${agree.words}`);
  w(`${review.issues} image${review.issues === 1 ? '' : 's'} look${review.issues === 1 ? 's' : ''} mislabelled (another label is confidently more likely)${review.issues ? `; the ${Math.min(top, review.issues)} least likely:` : ''}`);
  const { issues, uncertain } = reviewHighlights(review.lines, { issues: top, uncertain: top });
  if (issues.length) w('  p(given)  given → suggested  key');
  for (const l of issues) w(row(l));
  w(`the ${uncertain.length} most uncertain${issues.length ? ' of the others' : ''} (lowest top probability first):`);
  // here the suggested label is often the given one: the label it is confused with says more
  w('  p(given)  given, or the likeliest other label  key');
  for (const l of uncertain) {
    const other = likeliestOther(l) ?? { label: '–', p: 0 };
    w(`  ${pct(l.pGiven)}  ${printable(l.given)}, or ${printable(other.label)} (${pct(other.p).trim()})  ${printable(l.key)}`);
  }
  w(`full list (JSON Lines): s3://${bucket}/${outputKey}`);
  if (review.issues) {
    // (the first N of the file: those listed above, least likely first); relabel moves folders,
    // so those a label manifest labels are mended in its rows
    const by = conflictsLabelledBy(issues);
    if (issues.length && !by.folders) w(`look at ${issues.length === 1 ? 'it' : 'them'}; ${manifestRowsAdvice(by.manifests, issues.length, printable)}`);
    else if (issues.length) {
      w(`look at them; to move those listed to their suggested labels: transferline relabel -d ${o.dataset} --from-review s3://${bucket}/${outputKey} --top ${Math.min(top, review.issues)}`);
      w(`  (add --dry-run to see each move first, and move nothing; a wrong one moved is moved back with relabel KEY --to LABEL)`);
      const manifests = (await ctx.services.datasets.sources(o.dataset)).filter(DatasetRepository.isManifestSource).sort();
      const note = manifestRelabelNote(manifests, printable);
      if (note) w(`  (${note})`);
    }
  }
  return { ...review, outputKey };
}

/**
 * `transferline relabel -d NAME KEY… --to LABEL`, or `--from-review s3://…jsonl [--top N]`: moves
 * the objects to another label folder and updates the dataset, without embedding anything again.
 */
/**
 * The keys of `relabel --keys-from FILE` (`-`: standard input): one s3://bucket/key per line,
 * blank lines and `#` comments skipped (a scale trial: 300 keys given as arguments worked, a list
 * of thousands does not fit a command line). A line that is not an s3:// URL is bad usage, named
 * with its number: moving what it happens to say is worse than moving nothing.
 */
export async function keysFromFile(file: string): Promise<string[]> {
  let text: string;
  try {
    text = file === '-' ? await streamText(process.stdin) : await readFile(file, 'utf8');
  } catch (err) {
    throw new CliExit(EXIT.error, `transferline: cannot read --keys-from ${file}: ${(err as Error).message}`);
  }
  const keys: string[] = [];
  const bad: string[] = [];
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    if (/^s3:\/\/[^/]+\/./.test(line)) keys.push(line);
    else bad.push(`line ${i + 1}: ${printable(line.slice(0, 120))}`);
  });
  if (bad.length) throw new CliExit(EXIT.usage, `transferline: --keys-from ${file} has ${bad.length} line${bad.length === 1 ? '' : 's'} that ${bad.length === 1 ? 'is' : 'are'} not s3://bucket/key; nothing was moved:\n  ${bad.slice(0, 5).join('\n  ')}${bad.length > 5 ? `\n  … and ${bad.length - 5} more` : ''}`);
  if (keys.length === 0) throw new CliExit(EXIT.usage, `transferline: --keys-from ${file} names no image (one s3://bucket/key per line)`);
  return keys;
}

export async function relabelCommand(ctx: CliContext, o: { dataset: string; keys: string[]; to?: string; newLabel?: boolean; fromReview?: string; top?: number; dryRun?: boolean }): Promise<RelabelOutcome[]> {
  const asItemId = (k: string) => k.replace(/^s3:\/\//, '');
  let moves: { itemId: string; label: string }[];
  /** a review's suggestions left because a label manifest labels their images (said, and counted as left) */
  let leftByManifest = 0;
  if (o.fromReview) {
    if (o.keys.length || o.to) throw new CliExit(EXIT.usage, 'transferline: give either KEY… --to LABEL, or --from-review, not both');
    const { bucket, key } = parseS3ObjectUrl(o.fromReview);
    const text = (await ctx.services.store.getObject(bucket, key)).toString();
    // Moving images on a file that is partly not a review would move what it happens to say.
    const { values: lines, bad } = parseJsonLines(ReviewLine, text);
    if (bad.length) {
      const shown = bad.slice(0, 3).map((b) => `line ${b.line}: ${b.reason}`).join('\n  ');
      throw new CliExit(EXIT.error, `transferline: ${o.fromReview} is not a review file (${bad.length} line${bad.length === 1 ? '' : 's'} of ${bad.length + lines.length} unreadable); nothing was moved:\n  ${shown}`);
    }
    moves = lines.filter((l) => l.issue).slice(0, o.top ?? Number.POSITIVE_INFINITY).map((l) => ({ itemId: asItemId(l.key), label: l.suggested }));
    // images a label manifest labels are its rows' to change: left, and said, the others moved
    const records = await ctx.services.datasets.getItems(o.dataset, moves.map((m) => m.itemId));
    const manifests = [...new Set(records.flatMap((r) => (r?.manifest === undefined ? [] : [r.manifest])))].sort();
    if (manifests.length) {
      const byManifest = moves.filter((_, i) => records[i]?.manifest !== undefined);
      leftByManifest = byManifest.length;
      ctx.out.write(`note: ${leftByManifest} of the images to move ${leftByManifest === 1 ? 'takes its label' : 'take their labels'} from ${manifestsNamed(manifests, printable)}: left as ${manifests.length === 1 ? 'it labels' : 'they label'} them; change their rows there and ingest again:\n`);
      for (const m of byManifest.slice(0, 10)) ctx.out.write(`  s3://${printable(m.itemId)}: suggested ${printable(m.label)}\n`);
      if (byManifest.length > 10) ctx.out.write(`  … and ${byManifest.length - 10} more\n`);
      moves = moves.filter((_, i) => records[i]?.manifest === undefined);
    }
  } else {
    if (!o.to || o.keys.length === 0) throw new CliExit(EXIT.usage, 'transferline: name the images and the new label: transferline relabel -d NAME s3://bucket/key … --to LABEL (or --keys-from FILE --to LABEL, or --from-review)');
    // said once, before the label check (a review: "add --new-label", then a refusal per image)
    if (isHiddenPath(o.to)) throw new CliExit(EXIT.usage, `transferline: a label cannot start with a dot (${printable(o.to)}): a listing leaves hidden folders out, so the images would leave the dataset at its next ingest`);
    // A label the dataset does not have is a typo more often than a new class (a user's trial:
    // --to plum beside plums made a class of one image): said before anything moves.
    if (!o.newLabel) {
      const labels = (await ctx.services.inspector.status(o.dataset, 0)).labels.filter((l) => !l.unlabelled);
      const known = labels.map((l) => l.label);
      if (known.length && !known.includes(o.to)) {
        // a label it begins or ends, or one that ingest and status would call a misspelling of it
        // (as a class of the one image: a letter left out, added, changed or swapped)
        const to = o.to;
        // (counted as none: a new label holds no image yet, whatever the sizes)
        const misspelt = confusableLabels(new Map([...labels.map((l): [string, number] => [l.label, l.count]), [to, 0]]))
          .filter((p) => p.a === to || p.b === to)
          .map((p) => (p.a === to ? p.b : p.a));
        const close = known.filter((l) => l.toLowerCase().startsWith(to.toLowerCase()) || to.toLowerCase().startsWith(l.toLowerCase()) || misspelt.includes(l));
        throw new CliExit(EXIT.usage, `transferline: ${printable(o.to)} is not a label of ${o.dataset} (${known.map(printable).join(', ')})${close.length ? `; did you mean ${close.map(printable).join(' or ')}?` : ''}: add --new-label to make it one`);
      }
    }
    moves = o.keys.map((k) => ({ itemId: asItemId(k), label: o.to! }));
  }
  const w = (s: string) => ctx.out.write(`${s}\n`);
  const done: RelabelOutcome[] = [];
  const count = (x: RelabelOutcome['outcome']) => done.filter((r) => r.outcome === x).length;
  const moved = o.dryRun ? 'would move' : 'moved';
  let left = leftByManifest;
  const summary = () => `${count('moved')} ${o.dryRun ? 'to move' : 'moved'}, ${count('unchanged')} already there, ${count('missing')} not found${left ? `, ${left} left (see above)` : ''}`;
  try {
    await relabelItems(
      ctx,
      o.dataset,
      moves,
      (r) => {
        done.push(r);
        if (r.outcome === 'moved') w(`  ${moved} s3://${printable(r.from)} → s3://${printable(r.to!)}${r.note ? ` (${printable(r.note)})` : ''}`);
        else if (r.outcome === 'missing') w(`  not in ${o.dataset}: s3://${printable(r.from)}`);
      },
      {
        dryRun: !!o.dryRun,
        // a move is the bucket's: every dataset ingested (or classified) from those keys sees it
        onOtherHolders: (holders) => {
          for (const h of holders) w(`note: ${otherHolderWords(h)}`);
        },
        // a review's suggestions are moved as far as they can be: one that cannot be (a name its
        // new folder has already, say) is left and said, where naming keys moves all or none
        ...(o.fromReview && {
          onLeft: ({ images, why }: { images: number; why: string[] }) => {
            left += images;
            w(`note: ${images} of the images to move ${images === 1 ? 'is' : 'are'} left as ${images === 1 ? 'it is' : 'they are'}:`);
            for (const line of why.slice(0, 10)) w(`  ${printable(line)}`);
            if (why.length > 10) w(`  … and ${why.length - 10} more`);
          },
        }),
      },
    );
  } catch (err) {
    // What moved before the failure stays moved (and is listed above). After S3 or Redis went away
    // the same command finishes the rest; an object replaced meanwhile must be ingested first.
    const next =
      err instanceof ObjectChangedError
        ? `s3://${printable(err.bucket)}/${printable(err.key)} was replaced while relabel ran: ingest its prefix again, then the same command moves the rest`
        : 'the same command again finishes the rest (moving twice is moving once)';
    // (the moves left by a manifest are out of `moves` already; those left by the move itself are in it)
    if (done.length) w(`relabel ${o.dataset} stopped after ${done.length} of ${new Set(moves.map((m) => m.itemId)).size - (left - leftByManifest)}: ${summary()}; ${next}`);
    throw err;
  }
  if (o.dryRun) w(`relabel ${o.dataset}: ${summary()}; nothing moved (--dry-run)${count('moved') ? ': run it without --dry-run to move them' : ''}`);
  else w(`relabel ${o.dataset}: ${summary()}${count('moved') ? '; nothing to embed again. Train again to use the new labels.' : ''}`);
  if (count('missing')) throw new CliExit(EXIT.error, `${count('missing')} of the images named ${count('missing') === 1 ? 'is' : 'are'} not in ${o.dataset}`);
  // (finished, but not all of it: as ingest ends when some images failed)
  if (left) throw new CliExit(EXIT.failedItems, `transferline: ${left} of the suggested moves ${left === 1 ? 'was' : 'were'} left (said above, with why)`);
  return done;
}

/** What relabel says, before it moves them, of objects another dataset holds too. */
export function otherHolderWords(h: OtherHolder): string {
  const one = h.images === 1;
  const them = one ? 'it' : 'them';
  const held = `${h.images} of the objects to move ${one ? 'is' : 'are'}`;
  if (h.classify) return `${held} among the images classify labelled (${printable(h.dataset)}): the next classify of their prefix labels ${them} again under the new key${one ? '' : 's'} (nothing is embedded again)`;
  const inside = h.images - h.outside;
  const outsideWhy = `(${h.outside === 1 ? 'its new key lies' : 'their new keys lie'} outside its prefixes)`;
  const next = !h.outside
    ? `which finds ${them} moved (nothing is embedded again)`
    : !inside
      ? `which drops ${them} ${outsideWhy}`
      : `which finds ${inside} of them moved (nothing is embedded again) and drops the other ${h.outside} ${outsideWhy}`;
  return `${held} also in dataset ${printable(h.dataset)} (ingested from the same keys): it holds ${them} under the old key${one ? '' : 's'} and label${one ? '' : 's'} until it is ingested again, ${next}`;
}
