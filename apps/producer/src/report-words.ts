import { confusableLabels, type ConflictsLabelledBy, type EmbeddingSpace, type EvaluationReport, type ReportDoc } from '@transferline/shared';

/**
 * The end of a report's coverage line (the CLI's report, the console's run page) for the prefixes a
 * --partial run left out because Redis lost its data and they were not ingested again.
 */
export function notIngestedAgain(coverage: ReportDoc['coverage'], show: (s: string) => string = (s) => s): string {
  const left = coverage.notIngestedAgain;
  return left?.length ? `; not ingested again to the end after Redis lost its data, so left out: ${left.map(show).join(', ')}` : '';
}

/** Fewer validation images of a class than this leave a two-class threshold little to go on. */
const FEW_FOR_THRESHOLD = 10;

/**
 * A caution for a two-class threshold chosen on few validation images of a class (a small
 * dataset's run): the cutoff between so few scores may not hold on new images. Undefined when
 * there is no threshold or enough images.
 */
export function thresholdCaution(v: ReportDoc['validation'], labels: readonly string[], show: (s: string) => string = (s) => s): string | undefined {
  if (!v.binary) return undefined;
  const perClass = v.confusionMatrix.map((row) => row.reduce((a, b) => a + b, 0));
  const fewest = Math.min(...perClass);
  if (fewest >= FEW_FOR_THRESHOLD) return undefined;
  const label = labels[perClass.indexOf(fewest)] ?? '?';
  return `the threshold was chosen on ${v.examples} validation images, ${fewest} of them "${show(label)}": too few to place it well; more images (or a larger --validation-fraction) make it steadier`;
}

/**
 * A class's precision, recall and F1 as figures to show (the CLI's report, the console's run
 * page): each undefined where the split gives it nothing to measure, which the report stores as 0.
 * Recall and F1 need an image of the class in the split (a label of one image has none in
 * validation); precision needs an image predicted as it. A class never predicted, though there,
 * has recall and F1 0: the model never finds it.
 */
export function classFigures(ev: EvaluationReport, c: number): { precision?: number; recall?: number; f1?: number } {
  const x = ev.perClass[c]!;
  const predicted = ev.confusionMatrix.reduce((n, row) => n + (row[c] ?? 0), 0);
  return { ...(predicted > 0 && { precision: x.precision }), ...(x.support > 0 && { recall: x.recall, f1: x.f1 }) };
}

/**
 * What train, review and classify say of work in an embedding space of seeded random weights
 * (none otherwise): `what` names what it means for them ("its figures", say).
 */
export function randomSpaceNote(space: Pick<EmbeddingSpace, 'id' | 'weights' | 'seed'> | undefined, what: string): string | undefined {
  if (space?.weights !== 'random') return undefined;
  return `note: ${randomWeights(space.seed)} in embedding space ${space.id}: ${what} ${RANDOM_IS_FOR_SHAPES}`;
}

export const randomWeights = (seed: number | undefined) => `EfficientNet-B0 runs with SEEDED RANDOM weights${seed === undefined ? '' : ` (seed ${seed})`}`;
export const RANDOM_IS_FOR_SHAPES = "fine for the demo's shapes, not for real photos";

/**
 * How a run's held-out splits were made, when the bucket's split folders (or a manifest's split
 * column) gave any of them: "validation from the given split for a, cut by --validation-fraction
 * for b; test cut by --test-fraction"; undefined when the fractions alone made them.
 */
export function heldOutWords(split: ReportDoc['split'], labels: readonly string[], show: (s: string) => string = (s) => s): string | undefined {
  if (!split.explicit || !split.heldOut) return undefined;
  const list = (l: string[]) => l.map(show).join(', ');
  const one = (name: 'validation' | 'test', flag: string) => {
    const { folders, fraction } = split.heldOut![name];
    const none = labels.filter((l) => !folders.includes(l) && !fraction.includes(l));
    if (none.length === labels.length) return name === 'test' ? 'no test split (none given: no test/ folder, nor test rows in a label manifest)' : undefined;
    // each part names its classes unless it is of them all
    const of = (l: string[]) => (l.length === labels.length ? '' : ` for ${list(l)}`);
    const parts = [folders.length > 0 && `from the given split${of(folders)}`, fraction.length > 0 && `cut by ${flag}${of(fraction)}`, none.length > 0 && `none for ${list(none)}`].filter(Boolean);
    return `${name} ${parts.join(', ')}`;
  };
  return [one('validation', '--validation-fraction'), one('test', '--test-fraction')].filter(Boolean).join('; ');
}

/** A split of fewer images than this moves its accuracy by more than 3 points an image: said beside the figures. */
export const FEW_TO_MEASURE = 30;

/** What the CLI says of a validation or test split too small for its accuracy to mean much (a tiny dataset's 100%). */
export function fewToMeasure(split: { validation: number; test: number }): string[] {
  return (['validation', 'test'] as const)
    .filter((k) => split[k] > 0 && split[k] < FEW_TO_MEASURE)
    .map((k) => {
      const n = split[k];
      return `${k} holds ${n} image${n === 1 ? '' : 's'}: one image moves its accuracy by ${Math.round(100 / n)} points, so take it as rough (more images a class give steadier figures)`;
    });
}

/**
 * Labels that look like one folder name written two ways (confusableLabels), each pair with its
 * images: said by ingest's summary and by train, before a misspelt label (a folder, a manifest's rows) trains as a class.
 */
export function confusableLabelNotes(counts: ReadonlyMap<string, number>, show: (s: string) => string = (s) => s): string[] {
  const pairs = confusableLabels(counts);
  const notes = pairs.slice(0, CONFUSABLE_NAMED).map(
    ({ a, b, how }) =>
      `labels ${show(a)} (${counts.get(a)} image${counts.get(a) === 1 ? '' : 's'}) and ${show(b)} (${counts.get(b)}) differ ${how}: a misspelt label? Its images make a class of their own; move them into the right folder and ingest again (nothing is embedded again), or move them with transferline relabel; for images a label manifest labels, mend their rows there and ingest it again`,
  );
  return pairs.length > CONFUSABLE_NAMED ? [...notes, `and ${pairs.length - CONFUSABLE_NAMED} more pairs of labels that look alike`] : notes;
}

/**
 * Images in a held-out split whose bytes are also where they would be trained on (a train/ folder,
 * or no split): said, with the first few, since training loses them (and nothing is tested on what
 * it learnt); no lines when there are none.
 */
export function heldOutCopiesWords(split: Pick<ReportDoc['split'], 'copiesHeldOut' | 'heldOutCopies'>, show: (s: string) => string = (s) => s): string[] {
  const n = split.copiesHeldOut ?? 0;
  if (n === 0) return [];
  const named = split.heldOutCopies ?? [];
  return [
    `note: ${n} image${n === 1 ? '' : 's'} held out in val/ or test/ (or by a manifest's split) also ${n === 1 ? 'has a copy' : 'have copies'} (the same bytes) where ${n === 1 ? 'it' : 'they'} would be trained on (train/, or no split): every copy is held out, so ${n === 1 ? 'it is' : 'they are'} not trained on; delete the copy you did not mean`,
    ...named.map((copies) => `  ${copies.map(show).join(' = ')}`),
    ...(named.length && n > named.length ? [`  and ${n - named.length} more`] : []),
  ];
}

/** How many pairs of look-alike labels are named, at most. */
export const CONFUSABLE_NAMED = 5;

/** Fewer training images than this in a class, while the others have four times as many, is said. */
export const FEW_TO_LEARN = 5;

/**
 * A run whose every class had fewer than FEW_TO_LEARN training images (a first try on a handful
 * of photos: fewToLearn names a class only beside larger ones), or undefined.
 */
export function fewInAll(r: Pick<ReportDoc, 'train'>): string | undefined {
  const counts = r.train.perClass.map((c) => c.support);
  if (counts.length === 0 || Math.max(...counts) >= FEW_TO_LEARN) return undefined;
  const least = Math.min(...counts);
  const most = Math.max(...counts);
  return `every class has fewer than ${FEW_TO_LEARN} training images (${least === most ? most : `${least} to ${most}`}): too few to learn from, and the figures above say little about new images; add images to each label (its folder, or rows of its manifest) and ingest again`;
}

/**
 * Classes a run had too few training images of to learn, beside the others (a misspelt folder, a
 * label just begun), with the weight `--class-weights balanced` gave each of their images.
 */
export function fewToLearn(r: Pick<ReportDoc, 'labels' | 'train' | 'classWeights' | 'params'>, show: (s: string) => string = (s) => s): string[] {
  const counts = r.train.perClass.map((c) => c.support);
  return r.labels.flatMap((label, i) => {
    const n = counts[i]!;
    const others = counts.filter((_, j) => j !== i).sort((a, b) => a - b);
    const median = others[Math.floor(others.length / 2)] ?? 0;
    if (n >= FEW_TO_LEARN || n * 4 > median) return [];
    const weight = r.params.classWeights === 'balanced' && r.classWeights[i] !== undefined ? `, and --class-weights balanced makes ${n === 1 ? 'it' : 'each'} count ${r.classWeights[i]!.toFixed(1)} times as much as an image of a class of average size` : '';
    const range = others[0] === others[others.length - 1] ? `${others[0]}` : `${others[0]} to ${others[others.length - 1]}`;
    return [`${show(label)} has ${n} training image${n === 1 ? '' : 's'}, the other ${others.length === 1 ? 'class' : 'classes'} ${range}: too few to learn it${weight}`];
  });
}

/**
 * A decision threshold as printed: three decimals, or as many as it takes not to read as 0 or 1
 * (seeded random weights can put it at 0.00004, which "0.000" would call "always").
 */
export function thresholdText(t: number): string {
  for (let digits = 3; digits < 10; digits++) {
    const s = t.toFixed(digits);
    if (!((t > 0 && Number(s) === 0) || (t < 1 && Number(s) === 1))) return s;
  }
  return t.toPrecision(3);
}

/** Label manifests (`bucket/key`) as a sentence names them: "the label manifest s3://…", or "… manifests …, …". */
export function manifestsNamed(manifests: readonly string[], show: (s: string) => string = (s) => s): string {
  return `the label manifest${manifests.length === 1 ? '' : 's'} ${manifests.map((m) => `s3://${show(m)}`).join(', ')}`;
}

/**
 * How to mend images whose bytes are filed under two labels (train's report, the console's run
 * page, review), from what labels their copies: relabel moves those in label folders (`folders`);
 * a label manifest's (`bucket/key`) are mended in its rows, as relabel refuses them.
 */
export function underTwoLabelsFix(by: ConflictsLabelledBy, show: (s: string) => string = (s) => s): string {
  const relabel = 'move the copies to their label with transferline relabel';
  if (by.manifests.length === 0) return relabel;
  const named = manifestsNamed(by.manifests, show);
  const it = by.manifests.length === 1 ? 'it' : 'them';
  if (!by.folders) return `change the copies' rows in ${named} and ingest ${it} again`;
  return `${relabel}; for those that ${named} ${by.manifests.length === 1 ? 'labels' : 'label'}, change their rows there and ingest ${it} again`;
}

/** A copy of bytes filed under two labels, as train and the console's run page name it: its object, its label, and the manifest that gives it. */
export function conflictCopy(c: { object: string; label: string; manifest?: string | undefined }, show: (s: string) => string = (s) => s): string {
  return `${show(c.object)} (${show(c.label)}${c.manifest === undefined ? '' : `, labelled by s3://${show(c.manifest)}`})`;
}

/**
 * Review's advice when every image it flags takes its label from label manifests (`bucket/key`):
 * their rows to change, as relabel (which moves label folders) would move none of them.
 */
export function manifestRowsAdvice(manifests: readonly string[], images: number, show: (s: string) => string = (s) => s): string {
  const whose = images === 1 ? 'it takes its label' : 'they take their labels';
  const change = images === 1 ? 'change its row there if it is wrong' : 'change the rows of those that are wrong there';
  return `${whose} from ${manifestsNamed(manifests, show)}: ${change}, and ingest ${manifests.length === 1 ? 'it' : 'them'} again (relabel moves label folders)`;
}

/**
 * What to say beside relabel's advice (review's hint, the console's review page) when label
 * manifests (`bucket/key`) label images of the dataset: relabel moves folders, not their rows.
 */
export function manifestRelabelNote(manifests: readonly string[], show: (s: string) => string = (s) => s): string | undefined {
  if (manifests.length === 0) return undefined;
  return `images that ${manifestsNamed(manifests, show)} ${manifests.length === 1 ? 'labels' : 'label'} are not moved by relabel: change their rows there and ingest ${manifests.length === 1 ? 'it' : 'them'} again`;
}
