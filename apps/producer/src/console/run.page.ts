import { conflictsLabelledBy, type EvaluationReport, type ReportDoc } from '@transferline/shared';
import { fixed3, html, page, pct, seg, type Access, type SafeHtml } from './html.js';
import { lineChart } from './svg-chart.js';
import { classFigures, conflictCopy, heldOutWords, notIngestedAgain, thresholdText, underTwoLabelsFix } from '../report-words.js';

/**
 * confusion[true][predicted] as a table with the labels on both sides; each cell carries
 * `data-true`/`data-pred` (label indices) and its count, shaded by its share of the row.
 */
function confusionTable(id: string, labels: string[], m: number[][]): SafeHtml {
  const header = labels.map((l, j) => html`<th class="label" data-label-index="${j}" scope="col">${l}</th>`);
  const rows = m.map((row, i) => {
    const total = row.reduce((a, b) => a + b, 0);
    const cells = row.map((n, j) => {
      const share = total > 0 ? n / total : 0;
      const colour = i === j ? `rgba(46,125,50,${(0.12 + 0.6 * share).toFixed(2)})` : n > 0 ? `rgba(179,38,30,${(0.1 + 0.6 * share).toFixed(2)})` : 'transparent';
      return html`<td class="n" data-true="${i}" data-pred="${j}" data-value="${n}" style="background:${colour}">${n}</td>`;
    });
    return html`<tr data-true="${i}"><th class="label" data-label-index="${i}" scope="row">${labels[i] ?? ''}</th>${cells}<td class="n muted">${total}</td></tr>`;
  });
  return html`<table id="${id}"><tr><th>true ↓ / predicted →</th>${header}<th class="n">total</th></tr>${rows}</table>`;
}

/** Precision, recall, F1 and support per class, in label order (`data-value` holds the exact figure). */
function perClassTable(id: string, r: EvaluationReport): SafeHtml {
  // (n/a where the split has nothing to measure: see classFigures)
  const metric = (name: string, v: number | undefined) => html`<td class="n" data-metric="${name}" data-value="${v ?? ''}">${v === undefined ? 'n/a' : fixed3(v)}</td>`;
  return html`<table id="${id}"><tr><th>label</th><th class="n">precision</th><th class="n">recall</th><th class="n">F1</th><th class="n">support</th></tr>${r.perClass.map((c, i) => {
    const f = classFigures(r, i);
    return html`<tr data-label-index="${i}"><td class="label">${c.label}</td>${metric('precision', f.precision)}${metric('recall', f.recall)}${metric('f1', f.f1)}<td class="n" data-metric="support" data-value="${c.support}">${c.support}</td></tr>`;
  })}</table>`;
}

function card(metric: string, title: string, value: string, exact?: number | string): SafeHtml {
  return html`<div class="card" data-metric="${metric}"${exact !== undefined ? html` data-value="${exact}"` : ''}><b>${value}</b>${title}</div>`;
}

/** `/datasets/:dataset/runs/:run`: how one trained head did, from its report.json. */
export function runPage(access: Access, r: ReportDoc): string {
  const v = r.validation;
  const epochs = r.history.map((e) => e.epoch);
  const series = (name: string, colour: string, pick: (e: ReportDoc['history'][number]) => number, dashed = false) => ({ name, colour, dashed, points: r.history.map((e) => ({ x: e.epoch, y: pick(e) })) });
  const curves = r.history.length
    ? html`<div class="charts">${lineChart({ id: 'curve-loss', title: 'loss per epoch', series: [series('loss', '#4a78c2', (e) => e.loss), series('valLoss', '#c0504d', (e) => e.valLoss, true)], markX: r.bestEpoch })}${lineChart({
        id: 'curve-accuracy',
        title: 'accuracy per epoch',
        series: [series('accuracy', '#4a78c2', (e) => e.accuracy), series('valAccuracy', '#c0504d', (e) => e.valAccuracy, true)],
        yRange: [0, 1],
        markX: r.bestEpoch,
      })}</div><p class="muted">${epochs.length} epochs; the dotted line marks the best epoch (${r.bestEpoch})${r.stoppedEarly ? ', where early stopping restored the weights' : ''}</p>`
    : html`<p class="muted" id="no-history">no training history in the report</p>`;
  const binary = (b: ReportDoc['validation']['binary']) =>
    b ? html`<p id="binary">two classes: ROC AUC <b data-value="${b.rocAuc ?? ''}">${b.rocAuc === null ? 'n/a' : fixed3(b.rocAuc)}</b> for <span class="label">${b.positiveLabel}</span>; threshold chosen on validation ${thresholdText(b.threshold)} (accuracy there ${pct(b.accuracyAtThreshold)})</p>` : '';
  const test = r.test
    ? html`<h2>Test split (${r.test.examples} images)</h2>${confusionTable('confusion-test', r.labels, r.test.confusionMatrix)}${perClassTable('per-class-test', r.test)}`
    : html`<p class="muted">no test split in this run</p>`;
  const p = r.params;
  const params: [string, string | number | boolean][] = [
    ['hidden units', p.hiddenUnits],
    // (a softmax head has no hidden layer to drop units of: train refuses --dropout for it)
    ['dropout', p.hiddenUnits > 0 ? p.dropout : 'none (no hidden layer)'],
    ['epochs (most)', p.epochs],
    ['learning rate', p.learningRate],
    ['batch size', p.batchSize],
    ['L2', p.l2],
    ['patience', p.patience],
    ['class weights', `${p.classWeights} (${r.classWeights.map((w) => w.toFixed(2)).join(', ')})`],
    ['validation / test fraction', `${p.validationFraction} / ${p.testFraction}`],
    ['seed', p.seed],
  ];
  const c = r.coverage;
  // what was trained on: copies of the same bytes are one example, and bytes under two labels are left out (as train prints)
  const distinct = r.split.train + r.split.validation + r.split.test;
  const conflicts = r.split.conflictsLeftOut;
  const body = html`<section data-run="${r.runId}" data-run-dataset="${r.dataset}">
<h1>Run <span class="label">${r.runId}</span> of <a class="label" href="/datasets/${seg(r.dataset)}">${r.dataset}</a></h1>
<p>created ${r.createdAt}; embedding space <code>${r.embedderId}</code>; ${r.labels.length} classes</p>
<div class="cards">${card('validation-accuracy', 'validation accuracy', pct(v.accuracy), v.accuracy)}${card('test-accuracy', 'test accuracy', pct(r.test?.accuracy), r.test?.accuracy ?? '')}${card('train-accuracy', 'train accuracy', pct(r.train.accuracy), r.train.accuracy)}${card(
    'split',
    'train / validation / test images',
    `${r.split.train} / ${r.split.validation} / ${r.split.test}`,
  )}${card('best-epoch', `best epoch${r.stoppedEarly ? ' (stopped early)' : ''}`, String(r.bestEpoch), r.bestEpoch)}</div>
<p id="coverage" class="${c.partial ? 'bad' : 'muted'}">${c.embedded} of ${c.total} images embedded (${c.pending} pending, ${c.failed} failed)${c.partial ? ' — a partial run (--partial)' : ''}${notIngestedAgain(c)}; trained on ${distinct} distinct images${
    c.embedded > distinct ? html` (copies of the same bytes count once${conflicts ? `; ${conflicts} left out: their bytes are filed under more than one label` : ''})` : ''
  }${r.split.explicit ? `; splits as ingested (split folders, or a label manifest's split column)${heldOutWords(r.split, r.labels) ? `: ${heldOutWords(r.split, r.labels)}` : ''}` : ''}</p>
${conflicting(r.split)}
<h2>Validation (${v.examples} images)</h2>${binary(v.binary)}
${confusionTable('confusion', r.labels, v.confusionMatrix)}
${perClassTable('per-class', v)}
<h2>Training curves</h2>${curves}
${test}
<h2>Settings</h2><table id="params">${params.map(([k, val]) => html`<tr><th>${k}</th><td>${String(val)}</td></tr>`)}</table></section>`;
  return page({ ...access, title: `run ${r.runId}` }, body);
}

/** The images left out because their bytes are filed under two labels, each copy with its label (as train prints them). */
function conflicting(split: ReportDoc['split']): SafeHtml | string {
  const named = split.conflicting ?? [];
  if (!named.length) return '';
  const more = split.conflictsLeftOut - named.length;
  return html`<p>Left out, their bytes filed under more than one label (${underTwoLabelsFix(split.conflictsLabelledBy ?? conflictsLabelledBy(named.flat()))}):</p>
<ul id="conflicting">${named.map((copies) => html`<li>${copies.map((c) => conflictCopy(c)).join(', ')}</li>`)}${more > 0 ? html`<li>and ${more} more</li>` : ''}</ul>`;
}
