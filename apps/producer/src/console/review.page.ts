import type { ReviewLine } from '../review.service.js';
import { html, page, pct, seg, type Access } from './html.js';

/** What the review page shows: the newest review of a dataset from the bucket. */
export interface ReviewView {
  dataset: string;
  /** `s3://bucket/reviews/<dataset>/<time>.jsonl` */
  source: string;
  lines: ReviewLine[];
}

const MAX_ROWS = 100;

/** `/datasets/:dataset/review`: the images whose label looks wrong, then the most uncertain, with thumbnails. */
export function reviewPage(access: Access, v: ReviewView): string {
  const issues = v.lines.filter((l) => l.issue);
  const uncertain = [...v.lines].sort((a, b) => b.uncertainty - a.uncertainty).slice(0, 20);
  const thumb = (l: ReviewLine) => html`<img src="/datasets/${seg(v.dataset)}/thumbnail?key=${encodeURIComponent(l.key)}" width="96" height="96" alt="" loading="lazy">`;
  const row = (l: ReviewLine) =>
    html`<tr data-key="${l.key}"><td>${thumb(l)}</td><td class="label">${l.given}</td><td class="label">${l.suggested}</td><td class="n" data-value="${l.pGiven}">${pct(l.pGiven)}</td><td class="n">${pct(l.pSuggested)}</td><td><code>${l.key}</code></td></tr>`;
  const table = (id: string, rows: ReviewLine[]) =>
    html`<table id="${id}"><tr><th></th><th>given</th><th>suggested</th><th class="n">p(given)</th><th class="n">p(suggested)</th><th>key</th></tr>${rows.map(row)}</table>`;
  const body = html`<h1>Review of <a href="/datasets/${seg(v.dataset)}">${v.dataset}</a></h1>
<p class="muted">out-of-fold predictions on the cached embeddings, from <code>${v.source}</code>; move images with
<code>transferline relabel -d ${v.dataset} --from-review ${v.source}</code></p>
<h2>${issues.length} image${issues.length === 1 ? '' : 's'} whose label looks wrong${issues.length > MAX_ROWS ? ` (first ${MAX_ROWS})` : ''}</h2>
${issues.length ? table('issues', issues.slice(0, MAX_ROWS)) : html`<p class="muted" id="no-issues">none: every label agrees with the model</p>`}
<h2>The most uncertain</h2>
${table('uncertain', uncertain)}`;
  return page({ title: `review of ${v.dataset}`, ...access }, body);
}
