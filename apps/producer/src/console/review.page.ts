import { conflictsLabelledBy, type ReviewLine } from '@transferline/shared';
import { manifestRelabelNote, manifestRowsAdvice } from '../report-words.js';
import { likeliestOther, reviewAgreement, reviewHighlights } from '../review.service.js';
import { html, page, pct, seg, type Access } from './html.js';

/** What the review page shows: the newest review of a dataset from the bucket. */
export interface ReviewView {
  dataset: string;
  /** `s3://bucket/reviews/<dataset>/<time>.jsonl` */
  source: string;
  lines: ReviewLine[];
  /** lines of the file that are not review lines: their number (from 1) and what is wrong */
  unreadable: { line: number; reason: string }[];
  /** keys of the review no longer in the dataset under the label it gave them (relabelled or deleted since) */
  moved?: ReadonlySet<string>;
  /** the label manifests (`bucket/key`) that label images of the review: relabel does not move those */
  manifests?: readonly string[];
}

const MAX_ROWS = 100;

/** `/datasets/:dataset/review`: the images whose label looks wrong, then the most uncertain, with thumbnails. */
export function reviewPage(access: Access, v: ReviewView): string {
  const { issues: shown, uncertain } = reviewHighlights(v.lines, { issues: MAX_ROWS, uncertain: 20 });
  // (relabel moves label folders: images that manifests label all, their rows are what to change)
  const shownBy = conflictsLabelledBy(shown);
  const issues = v.lines.filter((l) => l.issue).length;
  const agree = reviewAgreement(v.lines);
  const gone = (l: ReviewLine) => v.moved?.has(l.key) ?? false;
  const manifestNote = manifestRelabelNote(v.manifests ?? []);
  const thumb = (l: ReviewLine) =>
    gone(l) ? html`<span class="muted">moved or gone since</span>` : html`<img src="/datasets/${seg(v.dataset)}/thumbnail?key=${encodeURIComponent(l.key)}" width="96" height="96" alt="" loading="lazy">`;
  // a label issue with the label suggested; an uncertain image with the label it is confused with (its suggested one is often its own)
  const row = (l: ReviewLine, other: { label: string; p: number } | undefined) =>
    html`<tr data-key="${l.key}"><td>${thumb(l)}</td><td class="label">${l.given}</td><td class="label">${other?.label ?? '–'}</td><td class="n" data-value="${l.pGiven}">${pct(l.pGiven)}</td><td class="n">${pct(other?.p)}</td><td><code>${l.key}</code></td></tr>`;
  const table = (id: string, rows: ReviewLine[], suggested: boolean) =>
    html`<table id="${id}"><tr><th></th><th>given</th><th>${suggested ? 'suggested' : 'or else'}</th><th class="n">p(given)</th><th class="n">${suggested ? 'p(suggested)' : 'p(or else)'}</th><th>key</th></tr>${rows.map((l) =>
      row(l, suggested ? { label: l.suggested, p: l.pSuggested } : likeliestOther(l)),
    )}</table>`;
  const body = html`<h1>Review of <a href="/datasets/${seg(v.dataset)}">${v.dataset}</a></h1>
<p class="muted" id="source">out-of-fold predictions on the cached embeddings, from <code>${v.source}</code>${
    // the images shown below, as review's own hint names those it printed: not every issue of a long list unseen
    shown.length && !shownBy.folders
      ? html`; the ${shown.length === 1 ? 'image' : `${shown.length} images`} below: ${manifestRowsAdvice(shownBy.manifests, shown.length)}`
      : shown.length
        ? html`; once you have looked at them, move the ${shown.length === 1 ? 'image' : `${shown.length} images`} below to their suggested labels with
<code>transferline relabel -d ${v.dataset} --from-review ${v.source} --top ${shown.length}</code> (add <code>--dry-run</code> to see each move first)${manifestNote ? `; ${manifestNote}` : ''}`
        : ''
  }</p>
<p class="${agree.trusted ? 'muted' : 'bad'}" id="agreement">${agree.words}</p>
${v.moved?.size ? html`<p class="bad" id="moved">${v.moved.size} image${v.moved.size === 1 ? '' : 's'} of this review ${v.moved.size === 1 ? 'is' : 'are'} no longer in ${v.dataset} under the label it gave (relabelled or deleted since): <code>transferline review -d ${v.dataset}</code> again for a current list</p>` : ''}
${v.unreadable.length ? html`<p class="bad" id="unreadable">${v.unreadable.length} line${v.unreadable.length === 1 ? '' : 's'} of this file ${v.unreadable.length === 1 ? 'is' : 'are'} not review lines and ${v.unreadable.length === 1 ? 'is' : 'are'} left out (line ${v.unreadable[0]!.line}: ${v.unreadable[0]!.reason}); <code>relabel --from-review</code> refuses the file until ${v.unreadable.length === 1 ? 'it is' : 'they are'} mended, or run <code>transferline review -d ${v.dataset}</code> again</p>` : ''}
<h2>${issues} image${issues === 1 ? '' : 's'} whose label looks wrong${issues > MAX_ROWS ? ` (first ${MAX_ROWS})` : ''}</h2>
${issues ? table('issues', shown, true) : html`<p class="muted" id="no-issues">none: every label agrees with the model</p>`}
<h2>The most uncertain${issues ? ' of the others' : ''}</h2>
${table('uncertain', uncertain, false)}`;
  return page({ title: `review of ${v.dataset}`, ...access }, body);
}
