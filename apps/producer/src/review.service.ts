import pMap from 'p-map';
import {
  DatasetRepository,
  ObjectChangedError,
  ObjectNotFoundError,
  ObjectRefusedError,
  ObjectTooLargeError,
  conflictsLabelledBy,
  contentHash,
  groupCopies,
  isClassifyDataset,
  relabelKey,
  type ItemRecord,
  type ObjectInfo,
  type ReviewLine,
} from '@transferline/shared';
import { loadTfRuntime } from '@transferline/shared/tf';
import { fitHead, predictProba, type Matrix } from '@transferline/train-worker/head.trainer';
import type { CliContext } from './cli-context.js';
import { noSuchDataset } from './data-loss.js';
import { underTwoLabelsFix } from './report-words.js';

/**
 * What a review shows first (the CLI and the console alike): the first `issues` images whose label
 * looks wrong, in the review's order, then the `uncertain` most uncertain of the rest: an image
 * shown as mislabelled is not shown again among the uncertain ones.
 */
export function reviewHighlights(lines: readonly ReviewLine[], n: { issues: number; uncertain: number }): { issues: ReviewLine[]; uncertain: ReviewLine[] } {
  const issues = lines.filter((l) => l.issue).slice(0, n.issues);
  const shown = new Set(issues.map((l) => l.key));
  const uncertain = lines
    .filter((l) => !shown.has(l.key))
    .sort((a, b) => b.uncertainty - a.uncertainty)
    .slice(0, n.uncertain);
  return { issues, uncertain };
}

/** Below this share of out-of-fold predictions that agree with the labels, a review's suggestions need a look each. */
export const TRUSTED_AGREEMENT = 0.9;

/**
 * How far a review's suggestions can be trusted: the share of its images whose out-of-fold
 * prediction is their given label. A model wrong about many images itself flags good labels too
 * (a user's trial moved two well-labelled images on its word).
 */
export function reviewAgreement(lines: readonly ReviewLine[]): { share: number; trusted: boolean; words: string } {
  const share = lines.length ? lines.filter((l) => l.suggested === l.given).length / lines.length : 1;
  const trusted = share >= TRUSTED_AGREEMENT;
  const words =
    `the model behind these suggestions agrees with the given label on ${(share * 100).toFixed(1)}% of the ${lines.length} images (out of fold)` +
    (trusted ? '' : ': it is wrong about many images itself, so many it flags are labelled well: look at each before moving it');
  return { share, trusted, words };
}

/**
 * The label an image is likeliest to be besides its given one, and its probability: what an
 * uncertain image is confused with (its suggested label is often its given one).
 */
export function likeliestOther(l: ReviewLine): { label: string; p: number } | undefined {
  const [label, p] = Object.entries(l.probabilities).filter(([other]) => other !== l.given).sort((a, b) => b[1] - a[1])[0] ?? [];
  return label === undefined ? undefined : { label, p: p! };
}

/** A group of copies of the same bytes (groupCopies), with its label as a class index. */
export interface FoldGroup {
  first: number;
  members: number[];
  /** undefined when the copies are filed under different labels (fitted under neither) */
  label: number | undefined;
}

/**
 * Copies of the same bytes as one image, by the rule train uses (groupCopies). A review deals each
 * group to one fold, so no copy is scored by a head fitted on another, and fits it once.
 */
export function foldGroups(items: readonly { sha256: string; label: string }[], classOf: ReadonlyMap<string, number>): FoldGroup[] {
  return groupCopies(items).map((g) => ({ first: g.members[0]!, members: g.members, label: g.label === undefined ? undefined : classOf.get(g.label)! }));
}

/**
 * Stratified folds: each class's groups dealt round-robin in order; groups whose copies disagree
 * (fitted under neither label) dealt apart, so they take no class's turn and every fold keeps
 * images of every class to fit on. The fold of each group.
 */
export function dealFolds(groups: readonly FoldGroup[], classes: number, folds: number): Int32Array {
  const fold = new Int32Array(groups.length);
  const turns = new Array<number>(classes + 1).fill(0);
  groups.forEach((g, n) => (fold[n] = turns[g.label ?? classes]!++ % folds));
  return fold;
}

/**
 * Takes out of `items` and `labels` the labels with fewer than 2 distinct images (copies of the
 * same bytes are one), which no fold can hold out while another fits on them, so long as two
 * labels are left to review; returns them with their images. (A trial: one label of one image
 * refused the review of 19,000.) A label whose images are also filed under another label is not
 * left out: the refusal below names those copies and how to mend them, which adding images would not.
 */
function leaveOutSingletons(items: { label: string; sha256: string }[], labels: string[]): { label: string; images: number }[] {
  const images = new Map<string, number>();
  const distinct = new Map<string, Set<string>>();
  for (const i of items) {
    images.set(i.label, (images.get(i.label) ?? 0) + 1);
    let bytes = distinct.get(i.label);
    if (!bytes) distinct.set(i.label, (bytes = new Set()));
    bytes.add(i.sha256);
  }
  const few = new Set(labels.filter((l) => (distinct.get(l)?.size ?? 0) < 2));
  // (with fewer than two left, the review is refused below, naming them)
  if (few.size === 0 || labels.length - few.size < 2) return [];
  const kept = items.filter((i) => !few.has(i.label));
  // (in place, one at a time: a spread of millions of items overflows the stack)
  items.length = 0;
  for (const i of kept) items.push(i);
  const left = labels.filter((l) => !few.has(l));
  labels.length = 0;
  for (const l of left) labels.push(l);
  return [...few].map((label) => ({ label, images: images.get(label) ?? 0 }));
}

export interface Review {
  dataset: string;
  space: string;
  labels: string[];
  folds: number;
  /** set when there are fewer folds than asked: how many were, the label with the fewest fittable images, and how many */
  foldsLimitedBy?: { asked: number; label: string; images: number };
  /** distinct images among the lines: copies of the same bytes are one (one fold, fitted once) */
  distinct: number;
  /** issues first (least likely given label first), then the rest by pGiven */
  lines: ReviewLine[];
  issues: number;
  /** images not embedded yet (still on their way, or orphaned): left out of this review */
  notYetEmbedded: number;
  /** images that failed for good: left out of this review */
  failed: number;
  /** distinct images filed under more than one label: predicted, fitted under none */
  underTwoLabels: number;
  /** labels with fewer than 2 distinct images (none held out while another is fitted on), and their images: not reviewed */
  leftOutLabels?: { label: string; images: number }[];
  /** how to mend those: relabel their copies, or change their rows in the label manifests that give them */
  underTwoLabelsFix?: string;
  seconds: number;
}

/**
 * Out-of-fold predicted probabilities for every embedded image of a dataset (stratified k-fold on
 * the cached embeddings, the same softmax head `train` fits), and the images whose given label
 * the model finds least likely: confident learning's rule (Northcutt et al.), an image is a label
 * issue when some other class's probability reaches that class's mean self-confidence and beats
 * the given label. Nothing is re-embedded: seconds for thousands of images, a minute or two for
 * tens of thousands (k heads fitted on TF.js's wasm backend); `onFold` hears each fold finish.
 */
export async function reviewDataset(ctx: CliContext, o: { dataset: string; folds?: number; seed?: number; onFold?: (done: number, folds: number) => void }): Promise<Review> {
  const started = performance.now();
  const { datasets, inspector, cache } = ctx.services;
  if (!(await datasets.exists(o.dataset))) throw await noSuchDataset(ctx, o.dataset);
  const space = await datasets.space(o.dataset);
  if (!space) throw new Error(`dataset ${o.dataset} has not been ingested into an embedding space yet`);
  const items: { id: string; sha256: string; label: string; manifest?: string | undefined }[] = [];
  let notYetEmbedded = 0;
  let failed = 0;
  for await (const page of inspector.scan(o.dataset)) {
    for (const v of page) {
      if (v.phase === 'embedded' && v.space === space && v.record.sha256) items.push({ id: v.id, sha256: v.record.sha256, label: v.record.label, manifest: v.record.manifest });
      else if (v.phase === 'failed') failed++;
      else notYetEmbedded++;
    }
  }
  items.sort((a, b) => (a.sha256 < b.sha256 ? -1 : a.sha256 > b.sha256 ? 1 : a.id < b.id ? -1 : 1));
  const labels = [...new Set(items.map((i) => i.label))].sort();
  const leftOut = leaveOutSingletons(items, labels);
  const onTheirWay = notYetEmbedded ? ` (${notYetEmbedded} more are not embedded yet: review again once ingest is done)` : '';
  if (labels.length < 2) throw new Error(`dataset ${o.dataset} has ${labels.length} label(s) among its embedded images; a review needs two or more${onTheirWay}`);
  const classOf = new Map(labels.map((l, i) => [l, i]));
  const y = Int32Array.from(items, (i) => classOf.get(i.label)!);
  const groups = foldGroups(items, classOf);
  /** how to mend groups whose copies are filed under two labels: by what labels every copy */
  const mendTorn = (torn: typeof groups) => underTwoLabelsFix(conflictsLabelledBy(torn.flatMap((g) => g.members.map((i) => items[i]!))));
  const perClass = labels.map((_, c) => groups.filter((g) => g.label === c).length);
  const smallest = Math.min(...perClass);
  const asked = o.folds ?? 5;
  const folds = Math.min(asked, smallest);
  if (folds < 2) {
    const few = labels.filter((_, c) => perClass[c]! < 2).map((l) => {
      const c = classOf.get(l)!;
      const torn = groups.filter((g) => g.label === undefined && g.members.some((i) => y[i] === c));
      return `${l}: ${perClass[c]}${torn.length ? ` (and ${torn.length} filed under another label too, which are fitted under neither: ${mendTorn(torn)})` : ''}`;
    });
    throw new Error(`a review fits a head per fold, and needs at least 2 distinct embedded images per label (copies of the same bytes count once); ${o.dataset} has fewer: ${few.join('; ')}${onTheirWay}`);
  }

  const groupFold = dealFolds(groups, labels.length, folds);

  const x = await cache.load(space, groups.map((g) => items[g.first]!.sha256));
  const dim = x.dim || 1280;
  // wasm: about 2.3 times TF.js's plain-JS cpu backend on these fits
  const { tf } = await loadTfRuntime('wasm');
  const k = labels.length;
  const oof = new Float32Array(items.length * k);
  /** One row per group picked: its embedding, and its label (the first copy's for groups only predicted). */
  const rows = (pick: (n: number) => boolean): { m: Matrix; y: Int32Array; index: number[] } => {
    const index = groups.map((_, n) => n).filter(pick);
    const data = new Float32Array(index.length * dim);
    index.forEach((n, j) => data.set(x.data.subarray(n * dim, (n + 1) * dim), j * dim));
    return { m: { data, rows: index.length, dim }, y: Int32Array.from(index, (n) => groups[n]!.label ?? y[groups[n]!.first]!), index };
  };
  for (let f = 0; f < folds; f++) {
    const train = rows((n) => groupFold[n] !== f && groups[n]!.label !== undefined);
    const held = rows((n) => groupFold[n] === f);
    // enough optimiser steps on small sets too: about 300, at most 200 epochs
    const steps = Math.ceil(train.m.rows / 64);
    // (the held-out fold also picks the head's best epoch: a mild optimism, kept for now: heads
    // that it did not pick, by an inner fold or at their last epoch, ranked fewer of test/review's
    // misfiled images first: 4 of 6, against 5 or 6)
    const fit = await fitHead(tf, {
      train: { x: train.m, y: train.y },
      validation: { x: held.m, y: held.y },
      numClasses: k,
      options: { hiddenUnits: 0, dropout: 0, learningRate: 0.001, batchSize: 64, epochs: Math.min(200, Math.max(30, Math.ceil(300 / steps))), l2: 1e-4, patience: 0, classWeights: 'balanced', seed: (o.seed ?? 1) + f },
    });
    try {
      const p = await predictProba(tf, fit.model, held.m);
      held.index.forEach((n, j) => {
        for (const i of groups[n]!.members) oof.set(p.subarray(j * k, (j + 1) * k), i * k);
      });
    } finally {
      fit.model.dispose();
    }
    o.onFold?.(f + 1, folds);
  }

  // per-class thresholds: the mean probability of the class over the distinct images labelled with it
  const threshold = labels.map((_, c) => {
    let sum = 0;
    let n = 0;
    for (const g of groups) {
      if (!g.members.some((i) => y[i] === c)) continue;
      sum += oof[g.first * k + c]!;
      n++;
    }
    return sum / n;
  });
  const lines: ReviewLine[] = items.map((item, i) => {
    const p = oof.subarray(i * k, (i + 1) * k);
    const given = y[i]!;
    let best = 0;
    for (let c = 1; c < k; c++) if (p[c]! > p[best]!) best = c;
    let confident = -1;
    for (let c = 0; c < k; c++) if (p[c]! >= threshold[c]! && (confident < 0 || p[c]! > p[confident]!)) confident = c;
    const issue = confident >= 0 && confident !== given && p[confident]! > p[given]!;
    const suggested = issue ? confident : best;
    const { bucket, key } = DatasetRepository.parseItemId(item.id);
    return {
      key: `s3://${bucket}/${key}`,
      given: labels[given]!,
      suggested: labels[suggested]!,
      pGiven: p[given]!,
      pSuggested: p[suggested]!,
      issue,
      uncertainty: 1 - p[best]!,
      probabilities: Object.fromEntries(labels.map((l, c) => [l, p[c]!])),
      ...(item.manifest !== undefined && { manifest: item.manifest }),
    };
  });
  lines.sort((a, b) => Number(b.issue) - Number(a.issue) || a.pGiven - b.pGiven);
  // fewer folds than asked: each fold needs an image of every label
  const torn = groups.filter((g) => g.label === undefined);
  const fewest = labels[perClass.indexOf(smallest)]!;
  return { dataset: o.dataset, space, labels, folds, ...(leftOut.length && { leftOutLabels: leftOut }), ...(folds < asked && { foldsLimitedBy: { asked, label: fewest, images: smallest } }), lines, distinct: groups.length, underTwoLabels: torn.length, ...(torn.length && { underTwoLabelsFix: mendTorn(torn) }), issues: lines.filter((l) => l.issue).length, notYetEmbedded, failed, seconds: (performance.now() - started) / 1000 };
}

/** Where an object moves and what happened. */
export interface RelabelOutcome {
  from: string;
  to?: string;
  label: string;
  outcome: 'moved' | 'unchanged' | 'missing';
  /** what else the user should know of this move */
  note?: string;
}

/** Another dataset that holds objects a relabel moves. */
export interface OtherHolder {
  dataset: string;
  /** how many of the objects it holds */
  images: number;
  /** where classify keeps the images it labelled (with a model of `dataset`'s runs) */
  classify: boolean;
  /** how many of their new keys lie outside its prefixes (its next ingest drops those) */
  outside: number;
}

/** One move, planned: where the object is and where it goes. */
interface PlannedMove {
  itemId: string;
  newId: string;
  label: string;
  bucket: string;
  key: string;
  newKey: string;
}

/** A planned move with what it found: the item's record, the record at its destination, and whether only the end of an earlier run is left to do. */
interface InspectedMove extends PlannedMove {
  record: ItemRecord | undefined;
  there: ItemRecord | undefined;
  /** the new key holds the image and the old object is gone: only the old record is left */
  finish: boolean;
}

/**
 * Moves objects to another label folder (server-side copy, then delete) and updates the dataset
 * to match: the item keeps its content hash, so nothing is downloaded or embedded again. The new
 * key is recorded before the old object is deleted, so a crash in between leaves both keys: the
 * same move again finishes it (or the next ingest reconciles); moving twice is moving once.
 * Every move is checked before the first is made, and none is made when one cannot be: a key
 * outside the dataset's prefixes, a label that cannot be a folder, two moves to one key, a
 * destination that holds another image (in the dataset or only in the bucket) or that S3 will
 * not take, an object gone or changed since it was ingested. `onOutcome` hears of each move as
 * it is done, so a failure part way (S3 or Redis lost, an object replaced meanwhile) still
 * leaves the caller knowing what moved. With `dryRun`, every check is made and each move's
 * outcome told as it would be, and nothing is moved. With `onLeft`, a move that cannot be made
 * is left instead (nothing of it changes), and said there, and the others are made.
 */
export async function relabelItems(
  ctx: CliContext,
  dataset: string,
  moves: { itemId: string; label: string }[],
  onOutcome: (r: RelabelOutcome) => void = () => {},
  o: { dryRun?: boolean; onOtherHolders?: (holders: OtherHolder[]) => void; onLeft?: (left: { images: number; why: string[] }) => void } = {},
): Promise<RelabelOutcome[]> {
  const { datasets } = ctx.services;
  if (!(await datasets.exists(dataset))) throw await noSuchDataset(ctx, dataset);
  const problems: MoveProblem[] = [];
  // every move checked: refused whole, or (onLeft) those that cannot be made left out, and said
  const settle = <M extends { itemId: string }>(planned: M[]): M[] => {
    if (problems.length === 0) return planned;
    const said = problems.map((p) => p.what);
    if (!o.onLeft) throw new Error(`nothing was moved: ${said.length === 1 ? said[0] : `${said.length} of the moves cannot be made:\n  ${said.slice(0, 10).join('\n  ')}`}`);
    const left = new Set(problems.flatMap((p) => p.ids));
    o.onLeft({ images: left.size, why: said });
    problems.length = 0;
    return planned.filter((m) => !left.has(m.itemId));
  };
  let inspected = settle(await inspectMoves(ctx, dataset, await planMoves(ctx, dataset, moves, problems), problems));
  // The objects move in the bucket, for every dataset ingested from them: said before they move.
  const movesOf = (all: InspectedMove[]) => new Map(all.filter((m) => !outcomeOf(m)).map((m) => [m.itemId, m.newId]));
  let toMove = movesOf(inspected);
  let others = await datasets.otherHolders(dataset, [...toMove.keys()]);
  // another dataset's manifest naming the old key would name an object that is gone
  for (const { dataset: other, manifests } of others) for (const [id, manifest] of manifests) problems.push({ ids: [id], what: `s3://${id} is labelled in dataset ${other} by the manifest s3://${manifest}, whose row would name a key that is gone: change that row with the move, or leave it` });
  if (problems.length) {
    inspected = settle(inspected);
    toMove = movesOf(inspected);
    others = await datasets.otherHolders(dataset, [...toMove.keys()]);
  }
  const holders: OtherHolder[] = [];
  for (const { dataset: other, held } of others) {
    const sources = await datasets.sources(other);
    const outside = held.filter((id) => !DatasetRepository.sourceAmong(sources, toMove.get(id)!)).length;
    holders.push({ dataset: other, images: held.length, classify: isClassifyDataset(other), outside });
  }
  if (holders.length) o.onOtherHolders?.(holders);
  const out: RelabelOutcome[] = [];
  for (const move of inspected) {
    const r = o.dryRun ? outcomeOf(move) ?? { from: move.itemId, to: move.newId, label: move.label, outcome: 'moved' } : await applyMove(ctx, dataset, move);
    out.push(r);
    onOutcome(r);
  }
  return out;
}

/** Why moves cannot be made: the images (item ids) they would move. */
interface MoveProblem {
  ids: string[];
  what: string;
}

/** Each image once, with its new key; what cannot be a move goes to `problems`. */
async function planMoves(ctx: CliContext, dataset: string, moves: { itemId: string; label: string }[], problems: MoveProblem[]): Promise<PlannedMove[]> {
  const planned: PlannedMove[] = [];
  const targets = new Map<string, string>();
  const named = new Map<string, string>();
  // the moves' images that a label manifest labels here (a thousand records a read)
  const manifests = new Map<string, string>();
  for (let at = 0; at < moves.length; at += 1000) {
    const ids = moves.slice(at, at + 1000).map((m) => m.itemId);
    (await ctx.services.datasets.getItems(dataset, ids)).forEach((r, i) => r?.manifest !== undefined && manifests.set(ids[i]!, r.manifest));
  }
  for (const move of moves) {
    const label = move.label.normalize('NFC');
    // the same image named twice: once is enough, two labels is a contradiction
    const before = named.get(move.itemId);
    if (before !== undefined) {
      if (before !== label) problems.push({ ids: [move.itemId], what: `s3://${move.itemId} is named twice, for ${before} and for ${label}` });
      continue;
    }
    named.set(move.itemId, label);
    // (its label is a row of a manifest, not a folder: the row is what to change)
    const manifest = manifests.get(move.itemId);
    if (manifest !== undefined) {
      problems.push({ ids: [move.itemId], what: `s3://${move.itemId} takes its label from the manifest s3://${manifest}: change its row there and ingest the manifest again (nothing is embedded again)` });
      continue;
    }
    const source = await ctx.services.datasets.sourceOf(dataset, move.itemId);
    if (!source) {
      problems.push({ ids: [move.itemId], what: `s3://${move.itemId} is not under a prefix ingested into ${dataset}` });
      continue;
    }
    const { bucket, key } = DatasetRepository.parseItemId(move.itemId);
    let newKey: string;
    try {
      newKey = relabelKey(source.prefix, key, label);
    } catch (err) {
      problems.push({ ids: [move.itemId], what: `s3://${move.itemId}: ${(err as Error).message}` });
      continue;
    }
    const newId = DatasetRepository.itemId(bucket, newKey);
    const other = targets.get(newId);
    if (other !== undefined) problems.push({ ids: [move.itemId, other], what: `s3://${move.itemId} and s3://${other} would both move to s3://${newId}` });
    targets.set(newId, move.itemId);
    planned.push({ itemId: move.itemId, newId, label, bucket, key, newKey });
  }
  return planned;
}

/** How many moves are inspected at once (each two HEADs; a download or two when ETags cannot tell). */
const INSPECTIONS_AT_ONCE = 16;

/**
 * What each move finds (its record, what is at its destination); a move that would overwrite
 * another image, lose one, or copy bytes other than the ingested ones goes to `problems`.
 */
async function inspectMoves(ctx: CliContext, dataset: string, planned: PlannedMove[], problems: MoveProblem[]): Promise<InspectedMove[]> {
  const { datasets } = ctx.services;
  const records = planned.length ? await datasets.getItems(dataset, planned.flatMap((p) => [p.itemId, p.newId])) : [];
  return pMap(
    planned,
    async (p, i): Promise<InspectedMove> => {
      const record = records[2 * i];
      const there = records[2 * i + 1];
      // nothing to copy: not in the dataset, or under this label already
      if (!record || record.label === p.label) return { ...p, record, there, finish: false };
      // Listed by an ingest, its preprocess job on its way: that job records the old key, which
      // the move forgets, so the new key's record would wait for ever (a review: orphaned, and
      // train stalled on it).
      if (record.state === 'pending') {
        problems.push({ ids: [p.itemId], what: `s3://${p.itemId} is still on its way (its ingest listed it; no preprocess worker has read it yet): wait for it (transferline status -d ${dataset}; one it calls orphaned, its job lost, needs its prefix ingested again), then relabel it` });
        return { ...p, record, there, finish: false };
      }
      const found = await checkMove(ctx, dataset, p, record, there);
      if (found !== 'copy' && found !== 'finish') problems.push({ ids: [p.itemId], what: found });
      return { ...p, record, there, finish: found === 'finish' };
    },
    { concurrency: INSPECTIONS_AT_ONCE },
  );
}

/**
 * Whether a move can be made: 'copy' (copy, record, delete), 'finish' (an earlier run of it was
 * cut short after deleting the old object: only the old record is left), or why not.
 */
async function checkMove(ctx: CliContext, dataset: string, p: PlannedMove, record: ItemRecord, there: ItemRecord | undefined): Promise<'copy' | 'finish' | string> {
  const { store } = ctx.services;
  let source: ObjectInfo | undefined;
  let target: ObjectInfo | undefined;
  try {
    [source, target] = await Promise.all([store.headObject(p.bucket, p.key), store.headObject(p.bucket, p.newKey)]);
  } catch (err) {
    // S3 refuses to look at one of them (a key it will not take, no permission): the copy would be refused as well
    if (err instanceof ObjectRefusedError) return `s3://${p.itemId} cannot be moved to s3://${p.newId}: ${err.message}`;
    throw err;
  }
  // The copy must carry the bytes that were ingested: their content hash goes with them.
  const changed = `s3://${p.itemId} changed since it was ingested: ingest the prefix again first`;
  const overwrites = `s3://${p.itemId} would overwrite s3://${p.newId}, another image of ${dataset} (the same name in both folders: rename one, ingest again, then move it)`;
  const unknown = `cannot tell whether s3://${p.newId} holds the image of s3://${p.itemId} (S3 gave it another ETag, and there is no content hash or old object to compare it with, or it is over TL_MAX_OBJECT_BYTES): ingest the prefix again`;
  if (there) {
    // Recorded there: an earlier run of this move, cut short after recording the new key, when
    // it is this image. Copied again while the old object is there; without it, finished only
    // when the new key's object is the one recorded (else the image would be lost).
    if (there.label !== p.label) return overwrites;
    if (target && target.etag !== there.etag) return `s3://${p.newId} holds another object than the one recorded for it: ingest the prefix again first`;
    if (!source && !target) return `s3://${p.itemId} and s3://${p.newId} are both gone from the bucket: ingest the prefix again`;
    // (and before comparing anything with it: the old object must still be what was ingested)
    if (source && source.etag !== record.etag) return changed;
    const same = await recordsOneImage(ctx, p, record, there, source, target);
    if (same === 'unknown') return unknown;
    if (!same) return overwrites;
    return source ? 'copy' : 'finish';
  }
  if (!source) return `s3://${p.itemId} is gone from the bucket (deleted since it was ingested?): put it back, or ingest the prefix again`;
  if (source.etag !== record.etag) return changed;
  if (!target) return 'copy';
  // An object not in the dataset: ours only if it is this image's copy, left by a run cut short after copying.
  const ours = await holdsImage(ctx, p, record, source, target);
  if (ours === 'unknown') return unknown;
  return ours ? 'copy' : `s3://${p.itemId} would overwrite s3://${p.newId}, an object in the bucket that is not this image (rename one of the two, then move it)`;
}

/**
 * Whether the record at the new key is of this image: by content hash when both records have
 * one, else by ETag (a copy keeps it, unless S3 gave it another), else by the new key's bytes.
 */
async function recordsOneImage(ctx: CliContext, p: PlannedMove, record: ItemRecord, there: ItemRecord, source: ObjectInfo | undefined, target: ObjectInfo | undefined): Promise<boolean | 'unknown'> {
  if (record.sha256 !== undefined && there.sha256 !== undefined) return record.sha256 === there.sha256;
  if (there.etag === record.etag) return true;
  // the new key's object is the one recorded there (checked before): compare its bytes
  return target ? holdsImage(ctx, p, record, source, target) : false;
}

/**
 * Whether the object at the move's new key holds this image's bytes: by ETag, and when the ETags
 * differ (S3 gives the copy of an object uploaded in parts another ETag) by content: against the
 * image's content hash, or without one (not preprocessed yet) against the old object's bytes.
 * 'unknown' when neither is there to compare with, or an object is too large to read or changes
 * while it is read.
 */
async function holdsImage(ctx: CliContext, p: PlannedMove, record: ItemRecord, source: ObjectInfo | undefined, target: ObjectInfo): Promise<boolean | 'unknown'> {
  if (target.etag === record.etag) return true;
  if (source && source.size !== target.size) return false;
  if (!record.sha256 && !source) return 'unknown';
  const hashOf = async (key: string, etag: string) => contentHash(await ctx.services.store.getObject(p.bucket, key, ctx.config.preprocess.maxObjectBytes, { ifMatch: etag }));
  try {
    const copied = await hashOf(p.newKey, target.etag);
    return copied === (record.sha256 ?? (await hashOf(p.key, source!.etag)));
  } catch (err) {
    if (err instanceof ObjectTooLargeError || err instanceof ObjectChangedError || err instanceof ObjectNotFoundError) return 'unknown';
    throw err;
  }
}

/** The outcome of a move with nothing to do (its image not in the dataset, or under its label already); undefined when it moves. */
function outcomeOf(m: InspectedMove): RelabelOutcome | undefined {
  const { itemId, newId, label, record, there } = m;
  if (!record) return { from: itemId, to: newId, label, outcome: there?.label === label ? 'unchanged' : 'missing' };
  if (record.label === label) return { from: itemId, label, outcome: 'unchanged' };
  return undefined;
}

/** Makes one checked move: copy, record the new key, delete the old object, forget the old key. */
async function applyMove(ctx: CliContext, dataset: string, m: InspectedMove): Promise<RelabelOutcome> {
  const { datasets, store } = ctx.services;
  const nothing = outcomeOf(m);
  if (nothing) return nothing;
  const { itemId, newId, label, bucket, key, newKey, there, finish } = m;
  const record = m.record!; // (a move without one has an outcome above)
  if (!finish) {
    // Only the content checked (and ingested): S3 refuses the copy if the object was replaced since.
    const etag = await store.copyObject(bucket, key, newKey, { ifMatch: record.etag });
    await datasets.putItems(dataset, [[newId, { ...record, label, etag }]]);
    if (record.sha256) await datasets.rememberHash(newId, etag, record.sha256);
  } else if (record.sha256 && there?.etag) await datasets.rememberHash(newId, there.etag, record.sha256);
  // The old object only while it holds what was moved: an upload to its key meanwhile stays (the
  // next ingest takes it); on a server that ignores the condition it goes, as without it.
  const kept = await store.deleteObject(bucket, key, { ifMatch: record.etag }).then(
    () => false,
    (err: unknown) => {
      if (err instanceof ObjectChangedError) return true;
      throw err;
    },
  );
  await datasets.removeItems(dataset, [itemId]);
  const note = `s3://${itemId} was written again while it moved: the new object is left there, for the next ingest`;
  return { from: itemId, to: newId, label, outcome: 'moved', ...(kept ? { note } : {}) };
}
