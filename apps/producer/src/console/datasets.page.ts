import { isClassifyDataset, queueName, relistCommand, UNLABELLED_SHOWN, type DatasetStatus, workerBackends } from '@transferline/shared';
import type { ModelRun } from '../commands/models.command.js';
import { settledWhy } from '../commands/status.command.js';
import { confusableLabelNotes } from '../report-words.js';
import type { DatasetCounts, DatasetPage, Overview, QueueSummary } from './console-data.js';
import type { Counted } from './status-memo.js';
import { BOARD_PATHS, html, page, pct, seconds, seg, type Access, type SafeHtml } from './html.js';
import { barChart } from './svg-chart.js';

/** The states a dataset's images are counted in, in the order shown (names are the `data-count` values). */
const COUNTS = ['total', 'embedded', 'cached', 'pending', 'orphaned', 'failed'] as const;
const COUNT_HELP: Record<(typeof COUNTS)[number], string> = {
  total: 'images in the dataset',
  embedded: 'embedding in the cache',
  cached: 'of those, already in the cache (not computed again)',
  pending: 'held by a live job',
  orphaned: 'job lost',
  failed: 'failed for good',
};

const boardLink = (queue: string, status?: string) => `${BOARD_PATHS.readOnly}/queue/${seg(queue)}${status ? `?status=${seg(status)}` : ''}`;
const datasetLink = (d: string) => `/datasets/${seg(d)}`;
const runLink = (d: string, run: string) => `/datasets/${seg(d)}/runs/${seg(run)}`;

function countCards(s: DatasetStatus): SafeHtml {
  return html`<div class="cards">${COUNTS.map(
    (k) => html`<div class="card" data-count="${k}"><b class="${k === 'failed' && s.failed > 0 ? 'bad' : ''}">${s[k]}</b>${k}<br><span class="muted">${k === 'orphaned' ? `${COUNT_HELP[k]}: ${relistCommand(s.dataset)}` : COUNT_HELP[k]}</span></div>`,
  )}</div>
<p class="muted">pending by stage: <span data-pending="preprocess">${s.pendingByStage.preprocess}</span> preprocess, <span data-pending="embed">${s.pendingByStage.embed}</span> embed</p>`;
}

function failuresByReason(s: DatasetStatus): SafeHtml {
  if (s.failuresByReason.length === 0) return html`<p class="muted" id="no-failures">no failures</p>`;
  return html`<table id="failures-by-reason"><tr><th>stage</th><th>reason</th><th class="n">images</th><th>jobs</th></tr>${s.failuresByReason.map(
    (f) =>
      html`<tr data-stage="${f.stage}" data-reason="${f.reason}"><td>${f.stage}</td><td><code>${f.reason}</code></td><td class="n" data-count="failures">${f.count}</td><td>${f.stage === 'preprocess' || s.space ? html`<a href="${boardLink(f.stage === 'preprocess' ? queueName('preprocess') : queueName('embed', s.space), 'failed')}">failed jobs</a>` : ''}</td></tr>`,
  )}</table>`;
}

/** The runs, with their datasets when `datasets` (those in Redis: a run of a deleted one is not linked to its page, which is gone) is given. */
function runsTable(runs: ModelRun[], datasets?: Set<string>): SafeHtml {
  const withDataset = datasets !== undefined;
  const datasetCell = (d: string) => (datasets?.has(d) ? html`<a href="${datasetLink(d)}">${d}</a>` : html`${d} <span class="muted" data-deleted="${d}" title="deleted, or lost with Redis's data: its runs stay in the bucket">(dataset gone)</span>`);
  if (runs.length === 0) return html`<p class="muted" id="no-runs">no trained runs yet: <code>transferline train --dataset NAME</code></p>`;
  return html`<table id="runs"><tr>${withDataset ? html`<th>dataset</th>` : ''}<th>run</th><th>created</th><th class="n">validation accuracy</th><th class="n">test accuracy</th><th class="n">classes</th><th>embedding space</th></tr>${runs.map(
    (r) =>
      html`<tr data-run="${r.runId}" data-run-dataset="${r.dataset}">${withDataset ? html`<td>${datasetCell(r.dataset)}</td>` : ''}<td><a href="${runLink(r.dataset, r.runId)}">${r.runId}</a>${r.latest ? html` <span class="muted" title="what classify --model uses">(latest)</span>` : ''}${r.partial ? html` <span class="bad">(partial)</span>` : ''}</td><td>${r.createdAt}</td><td class="n" data-metric="validation-accuracy" data-value="${r.validationAccuracy}">${pct(r.validationAccuracy)}</td><td class="n" data-metric="test-accuracy" data-value="${r.testAccuracy ?? ''}">${pct(r.testAccuracy)}</td><td class="n">${r.labels.length}</td><td><code>${r.embedderId}</code></td></tr>`,
  )}</table>`;
}

function queuesTable(queues: QueueSummary[]): SafeHtml {
  const c = (q: QueueSummary, k: string) => q.counts[k] ?? 0;
  return html`<table id="queues"><tr><th>queue</th><th class="n">waiting</th><th class="n">active</th><th class="n">delayed</th><th class="n">failed</th><th class="n" title="workers serving the queue (an embed queue: its space's live workers)">workers</th><th></th></tr>${queues.map(
    (q) =>
      html`<tr data-queue="${q.name}"><td><a href="${boardLink(q.name)}">${q.name}</a></td><td class="n">${c(q, 'waiting') + c(q, 'prioritized')}</td><td class="n">${c(q, 'active')}</td><td class="n">${c(q, 'delayed')}</td><td class="n">${c(q, 'failed') > 0 ? html`<a class="${c(q, 'failed') > (q.cancelled ?? 0) + (q.settled ?? 0) ? 'bad' : ''}" href="${boardLink(q.name, 'failed')}">${c(q, 'failed')}</a>` : '0'}${q.cancelled ? html` <span class="muted" data-cancelled="${q.cancelled}">(${q.cancelled} ${q.cancelled === 1 ? 'is a run' : 'are runs'} stopped with train --cancel)</span>` : ''}${q.settled ? html` <span class="muted" data-settled="${q.settled}">(${q.settled} ${q.settled === 1 ? 'needs' : 'need'} nothing more: ${settledWhy(q.settled)})</span>` : ''}</td><td class="n" data-count="workers">${q.workers > 0 ? q.workers : html`<span class="${c(q, 'waiting') + c(q, 'prioritized') + c(q, 'delayed') + c(q, 'active') > 0 ? 'bad' : 'muted'}">0</span>`}</td><td>${q.paused ? html`<b class="bad">paused</b>` : ''}</td></tr>`,
  )}</table>`;
}

/** Counts older than this say when they were read. */
const SAY_AGE_MS = 2_000;

/** When counts reused or kept from an earlier read were read, and what a read of them costs; nothing for fresh ones. */
function countedAge(c: Counted, now: number): SafeHtml | '' {
  const age = now - c.readAt;
  if (age < SAY_AGE_MS) return '';
  return html`<span class="muted" data-counted-ago="${Math.round(age / 1000)}">counted ${seconds(age)} ago (a count of its images takes ${seconds(c.tookMs)})</span>`;
}

/** A dataset whose first count is still under way: how many images it holds. */
function counting(items: number): SafeHtml {
  return html`<span class="muted" data-counting="${items}">counting its ${items} images… (reload in a few seconds)</span>`;
}

function datasetRow(d: DatasetCounts, now: number): SafeHtml {
  const name = html`<td><a href="${datasetLink(d.dataset)}">${d.dataset}</a></td>`;
  if ('counting' in d) return html`<tr data-dataset="${d.dataset}">${name}<td class="n" data-count="total">${d.counting}</td><td colspan="${COUNTS.length + 1}">${counting(d.counting)}</td></tr>`;
  const s = d.counted.status;
  return html`<tr data-dataset="${d.dataset}">${name}${COUNTS.map((k) => html`<td class="n${k === 'failed' && s[k] > 0 ? ' bad' : ''}" data-count="${k}">${s[k]}</td>`)}<td>${s.failuresByReason.map(
    (f) => html`<span data-reason="${f.reason}">${f.stage} <code>${f.reason}</code> ×${f.count}</span> `,
  )}${countedAge(d.counted, now)}</td><td><code>${s.space ?? '–'}</code></td></tr>`;
}

/** `/`: embedding spaces, queues, every dataset's counts and every trained run. */
export function overviewPage(access: Access, o: Overview, now = Date.now()): string {
  const spaces = o.spaces.length
    ? html`<table id="spaces"><tr><th>embedding space</th><th class="n">live embed workers</th><th>backends</th></tr>${o.spaces.map(
        (s) => html`<tr data-space="${s.space.id}"><td><code>${s.space.id}</code></td><td class="n">${s.workers.length}${s.starting.length ? html` <span class="muted" data-loading="${s.starting.length}">(${s.starting.length} loading the model)</span>` : ''}</td><td>${workerBackends(s.workers)}</td></tr>`,
      )}</table>`
    : html`<p class="muted">no embedding space published yet: start the stack (<code>transferline up</code>) or an embed worker</p>`;
  const datasets = o.datasets.length
    ? html`<table id="datasets"><tr><th>dataset</th>${COUNTS.map((k) => html`<th class="n">${k}</th>`)}<th>failures by reason</th><th>embedding space</th></tr>${o.datasets.map((d) => datasetRow(d, now))}</table>`
    : html`<p class="muted">no datasets yet: <code>transferline ingest s3://bucket/prefix --dataset NAME</code></p>`;
  const warnings = o.warnings.length ? html`<ul id="warnings" class="bad">${o.warnings.map((w) => html`<li>${w}</li>`)}</ul>` : '';
  const body = html`<h1>Datasets and models</h1><p class="muted" id="deployment">deployment: ${o.deployment}</p>${warnings}
<h2>Datasets</h2>${datasets}
<h2>Trained runs</h2>${runsTable(o.runs, new Set(o.datasets.map((d) => d.dataset)))}
<h2>Queues</h2><p class="muted" id="queue-actions">jobs per queue, and each job on the <a href="${BOARD_PATHS.readOnly}/">queue board</a>${
    access.actionsConfigured ? html`; pause, resume, retry and clean on the <a href="${BOARD_PATHS.admin}/">admin board</a> (sign in)` : html` (read-only)`
  }</p>${queuesTable(o.queues)}
<h2>Embedding spaces</h2>${spaces}`;
  return page({ ...access, title: 'datasets and models' }, body);
}

/** `/datasets/:name`: one dataset's counts, failures by reason (with the newest failures), labels and runs. */
export function datasetPage(access: Access, d: DatasetPage, now = Date.now()): string {
  if ('counting' in d) {
    const body = html`<section data-dataset="${d.dataset}"><h1>Dataset <span class="label">${d.dataset}</span></h1>
<p>${counting(d.counting)}</p>
<h2>Trained runs</h2>${runsTable(d.runs)}</section>`;
    return page({ ...access, title: `dataset ${d.dataset}` }, body);
  }
  const s = d.counted.status;
  const failures = s.failures.length
    ? html`<table id="failures"><tr><th>image</th><th>stage</th><th>reason</th><th class="n">attempts</th><th>message</th></tr>${s.failures.map(
        (f) => html`<tr data-item="${f.item}"><td class="label">${f.item}</td><td>${f.stage}</td><td><code>${f.reason}</code></td><td class="n">${f.attempts ?? ''}</td><td class="label">${f.detail ?? ''}</td></tr>`,
      )}</table>${s.failed > s.failures.length ? html`<p class="muted">the newest ${s.failures.length} of ${s.failed}: <code>transferline failures -d ${s.dataset}</code> lists all</p>` : ''}`
    : '';
  const body = html`<section data-dataset="${s.dataset}"><h1>Dataset <span class="label">${s.dataset}</span></h1>
<p>embedding space <code id="space">${s.space ?? '(none recorded)'}</code>${
    // (a classify set has no labels to review: review refuses its name)
    isClassifyDataset(s.dataset) ? '' : html` · <a href="/datasets/${seg(s.dataset)}/review" id="review-link">labels worth a second look</a> (from <code>transferline review -d ${s.dataset}</code>)`
  }</p>
${countCards(s)}${countedAge(d.counted, now) ? html`<p>${countedAge(d.counted, now)}</p>` : ''}
<h2>Failures by reason</h2>${failuresByReason(s)}${barChart('failures-chart', 'failures by reason', s.failuresByReason.map((f) => ({ name: `${f.stage} ${f.reason}`, value: f.count })), '#c0504d')}
${failures}
<h2>Images per label</h2>${
    s.labels.length
      ? html`<table id="labels"><tr><th>label</th><th class="n">images</th></tr>${s.labels.map((l, i) => html`<tr data-label-index="${i}"><td class="label">${l.unlabelled ? UNLABELLED_SHOWN : l.label}</td><td class="n">${l.count}</td></tr>`)}</table>${labelNotes(s)}`
      : html`<p class="muted">no images</p>`
  }
<h2>Trained runs</h2>${runsTable(d.runs)}</section>`;
  return page({ ...access, title: `dataset ${s.dataset}` }, body);
}

/** Labels that look like one folder name written two ways, as status says them. */
function labelNotes(s: DatasetStatus): SafeHtml | '' {
  const notes = confusableLabelNotes(new Map(s.labels.filter((l) => !l.unlabelled).map((l) => [l.label, l.count])));
  return notes.length ? html`<ul id="label-notes" class="bad">${notes.map((n) => html`<li>${n}</li>`)}</ul>` : '';
}

/** A page for a missing dataset or run (404). */
export function notFoundPage(access: Access, what: string): string {
  return page({ ...access, title: 'not found' }, html`<h1>Not found</h1><p id="not-found">${what}</p><p><a href="/">back to the datasets</a></p>`);
}

/** A page for a read that failed or timed out (Redis or S3 out of reach). */
export function errorPage(access: Access, message: string): string {
  return page({ ...access, title: 'unavailable' }, html`<h1>Unavailable</h1><p id="error" class="bad">${message}</p><p class="muted">the page shows again once the deployment answers; reload to retry</p>`);
}
