import type { DatasetStatus, ReportDoc } from '@transferline/shared';
import { describe, expect, it } from 'vitest';
import { datasetPage, overviewPage } from './datasets.page.js';
import { escapeHtml, html } from './html.js';
import { reviewPage } from './review.page.js';
import { runPage } from './run.page.js';
import { classFigures } from '../report-words.js';

const EVIL = ['<script>alert(1)</script>', '__proto__', `"'><img src=x onerror=alert(2)>`];
const access = { actionsConfigured: true };

function report(labels: string[]): ReportDoc {
  const ev = { examples: 9, accuracy: 2 / 3, confusionMatrix: [[2, 1, 0], [0, 3, 0], [1, 1, 1]], perClass: labels.map((label, i) => ({ label, precision: 0.5 + i / 10, recall: 0.25 * (i + 1), f1: 0.4, support: 3 })) };
  return {
    dataset: 'pets',
    runId: 'r1',
    embedderId: 'efficientnet-b0.random-seed42.squash224',
    createdAt: '2026-01-01T00:00:00Z',
    labels,
    split: { train: 20, validation: 9, test: 0, explicit: false, conflictsLeftOut: 0 },
    coverage: { total: 29, embedded: 29, pending: 0, failed: 0, partial: false },
    params: { hiddenUnits: 0, dropout: 0.2, epochs: 5, learningRate: 0.001, batchSize: 64, l2: 1e-4, patience: 10, classWeights: 'balanced', validationFraction: 0.2, testFraction: 0.1, seed: 1, partial: false },
    classWeights: [1, 1, 1],
    bestEpoch: 2,
    stoppedEarly: false,
    history: [1, 2, 3].map((epoch) => ({ epoch, loss: 1 / epoch, accuracy: epoch / 4, valLoss: 1.1 / epoch, valAccuracy: epoch / 5, bestValLoss: 0.3, learningRate: 0.001, examplesPerSecond: 100 })),
    validation: ev,
    train: ev,
  };
}

describe('html', () => {
  it('escapes every interpolation unless it is another template', () => {
    expect(html`<p title="${'"x"'}">${'<b>'}${html`<i>${'&'}</i>`}${[1, '<', undefined, false]}</p>`.value).toBe('<p title="&quot;x&quot;">&lt;b&gt;<i>&amp;</i>1&lt;</p>');
    expect(escapeHtml(`<>&"'`)).toBe('&lt;&gt;&amp;&quot;&#39;');
  });
});

describe('pages', () => {
  it('render hostile labels as text: no tag, no attribute breaks out', () => {
    const out = runPage(access, report(EVIL));
    expect(out).not.toContain('<script>alert');
    expect(out).not.toContain('<img src=x');
    expect(out).toContain('&lt;script&gt;alert(1)&lt;/script&gt;');
    expect(out).toContain('__proto__');
    expect(out).toContain('id="confusion"');
    expect(out).toContain('data-true="2" data-pred="0" data-value="1"');
    expect(out).toContain('id="curve-loss"');
    expect(out).toContain('data-series="valAccuracy" data-points="3"');
  });

  it('show a dataset with hostile labels, keys and messages escaped', () => {
    const status: DatasetStatus = {
      dataset: 'pets',
      space: 'efficientnet-b0.random-seed42.squash224',
      total: 3,
      embedded: 1,
      cached: 0,
      failed: 1,
      pending: 1,
      pendingByStage: { preprocess: 1, embed: 0 },
      orphaned: 0,
      elsewhere: [],
      failures: [{ item: `photos/${EVIL[0]}/x.jpg`, object: `s3://photos/${EVIL[0]}/x.jpg`, label: EVIL[0]!, stage: 'preprocess', reason: 'not-an-image', detail: EVIL[2], attempts: 1 }],
      failuresByReason: [{ stage: 'preprocess', reason: 'not-an-image', count: 1 }],
      labels: EVIL.map((label) => ({ label, count: 1, ready: 0 })),
    };
    const out = datasetPage(access, { dataset: 'pets', counted: { status, readAt: 1_000, tookMs: 5 }, runs: [] }, 1_010);
    expect(out).not.toMatch(/<script>|<img /);
    expect(out).toContain('data-count="failed"><b class="bad">1</b>');
    expect(out).toContain('href="/queues/queue/preprocess?status=failed"');
    // fresh counts say nothing of when; counts read a while ago say when, and what a count costs
    expect(out).not.toContain('data-counted-ago');
    const kept = datasetPage(access, { dataset: 'pets', counted: { status, readAt: 1_000, tookMs: 8_100 }, runs: [] }, 43_000);
    expect(kept).toContain('<span class="muted" data-counted-ago="42">counted 42 s ago (a count of its images takes 8.1 s)</span>');
    const counting = datasetPage(access, { dataset: 'pets', counting: 1_000_000, runs: [] });
    expect(counting).toContain('data-counting="1000000">counting its 1000000 images… (reload in a few seconds)');
    expect(counting).not.toContain('data-count=');
    // labels that look like one folder written two ways: said under the labels, as status says it
    // (a user's trial: the console had no word of it); none without such a pair
    const typo = datasetPage(access, { dataset: 'pets', counted: { status: { ...status, labels: [{ label: 'cat', count: 2, ready: 2 }, { label: 'cats', count: 20, ready: 20 }] }, readAt: 1_000, tookMs: 5 }, runs: [] }, 1_010);
    expect(typo).toMatch(/<ul id="label-notes" class="bad"><li>labels cat \(2 images\) and cats \(20\) differ [^<]*: a misspelt label\?[^<]*<\/li><\/ul>/);
    expect(out).not.toContain('id="label-notes"');
  });
});

describe('the run page', () => {
  it('says how many distinct images the run trained on, and why fewer than were embedded, as train prints it', () => {
    const plain = runPage(access, report(['a', 'b', 'c']));
    expect(plain).toMatch(/id="coverage" class="muted">29 of 29 images embedded \(0 pending, 0 failed\); trained on 29 distinct images<\/p>/);
    const r = report(['a', 'b', 'c']);
    const copies = runPage(access, { ...r, coverage: { ...r.coverage, total: 33, embedded: 33 }, split: { ...r.split, conflictsLeftOut: 2 } });
    expect(copies).toContain('33 of 33 images embedded (0 pending, 0 failed); trained on 29 distinct images (copies of the same bytes count once; 2 left out: their bytes are filed under more than one label)');
    // named where the report names them, as train prints them (escaped: keys are the user's)
    const conflicting = [[{ object: 's3://p/a/x<1>.jpg', label: 'a' }, { object: 's3://p/b/x.jpg', label: 'b' }]];
    const named = runPage(access, { ...r, coverage: { ...r.coverage, total: 33, embedded: 33 }, split: { ...r.split, conflictsLeftOut: 2, conflicting } });
    expect(named).toMatch(/<ul id="conflicting"><li>s3:\/\/p\/a\/x&lt;1&gt;\.jpg \(a\), s3:\/\/p\/b\/x\.jpg \(b\)<\/li><li>and 1 more<\/li><\/ul>/);
    expect(named).toContain('Left out, their bytes filed under more than one label (move the copies to their label with transferline relabel):');
    // a copy that a label manifest labels is mended in its row (relabel refuses it), and named with it
    const listed = [[{ object: 's3://p/a/x.jpg', label: 'a', manifest: 'p/labels.csv' }, { object: 's3://p/b/x.jpg', label: 'b' }]];
    const mixed = runPage(access, { ...r, split: { ...r.split, conflictsLeftOut: 1, conflicting: listed } });
    expect(mixed).toContain('(move the copies to their label with transferline relabel; for those that the label manifest s3://p/labels.csv labels, change their rows there and ingest it again):');
    expect(mixed).toContain('<li>s3://p/a/x.jpg (a, labelled by s3://p/labels.csv), s3://p/b/x.jpg (b)</li>');
    // the advice is the report's, from every copy of every conflict, not only from those it names
    const beyond = runPage(access, { ...r, split: { ...r.split, conflictsLeftOut: 11, conflicting: [[{ object: 's3://p/a/y.jpg', label: 'a' }, { object: 's3://p/b/y.jpg', label: 'b' }]], conflictsLabelledBy: { manifests: ['p/labels.csv'], folders: true } } });
    expect(beyond).toContain('(move the copies to their label with transferline relabel; for those that the label manifest s3://p/labels.csv labels, change their rows there and ingest it again):');
  });

  it("shows the dropout a head with a hidden layer was trained with, and none for a softmax head (a user's trial: 0.2 for every run)", () => {
    const r = report(['a', 'b']);
    expect(runPage(access, r)).toContain('<tr><th>hidden units</th><td>0</td></tr><tr><th>dropout</th><td>none (no hidden layer)</td></tr>');
    expect(runPage(access, { ...r, params: { ...r.params, hiddenUnits: 64, dropout: 0.3 } })).toContain('<tr><th>hidden units</th><td>64</td></tr><tr><th>dropout</th><td>0.3</td></tr>');
  });

  it('shows n/a, not 0, where validation has nothing to measure: a label with no image there, or none predicted as it', () => {
    const r = report(['a', 'b', 'c']);
    // c has no validation image and is never predicted; b is there but never predicted
    const v = { examples: 5, accuracy: 0.6, confusionMatrix: [[3, 0, 0], [2, 0, 0], [0, 0, 0]], perClass: [
      { label: 'a', precision: 0.6, recall: 1, f1: 0.75, support: 3 },
      { label: 'b', precision: 0, recall: 0, f1: 0, support: 2 },
      { label: 'c', precision: 0, recall: 0, f1: 0, support: 0 },
    ] };
    expect([0, 1, 2].map((c) => classFigures(v, c))).toEqual([{ precision: 0.6, recall: 1, f1: 0.75 }, { recall: 0, f1: 0 }, {}]);
    const cells = (label: string) => [...new RegExp(`<td class="label">${label}</td>((?:<td[^>]*>[^<]*</td>){4})`).exec(runPage(access, { ...r, validation: v }))![1]!.matchAll(/<td[^>]*>([^<]*)<\/td>/g)].map((m) => m[1]);
    expect(cells('a')).toEqual(['0.600', '1.000', '0.750', '3']);
    expect(cells('b')).toEqual(['n/a', '0.000', '0.000', '2']);
    expect(cells('c')).toEqual(['n/a', 'n/a', 'n/a', '0']);
  });
});

describe('the overview', () => {
  it('offers queue actions only where there are some: the admin board with a password, else none', () => {
    const o = { datasets: [], runs: [], queues: [], spaces: [], warnings: [], deployment: 'd' } as unknown as Parameters<typeof overviewPage>[1];
    const readOnly = overviewPage({ actionsConfigured: false }, o);
    expect(readOnly).toMatch(/id="queue-actions">jobs per queue, and each job on the <a href="\/queues\/">queue board<\/a> \(read-only\)</);
    // the header says how to enable them
    expect(readOnly).toMatch(/id="mode">read-only \(set TL_CONSOLE_PASSWORD to enable queue actions\)/);
    expect(readOnly).not.toContain('href="/admin/queues/">admin board');
    expect(overviewPage({ actionsConfigured: true }, o)).toMatch(/pause, resume, retry and clean on the <a href="\/admin\/queues\/">admin board<\/a> \(sign in\)/);
    expect(readOnly).not.toContain('id="warnings"');
  });

  it('counts the workers of a space loading the model beside the live ones', () => {
    const worker = (id: string, backend: string) => ({ workerId: id, space: 'sp', backend, host: 'h', pid: 1, startedAt: '2026-01-01T00:00:00Z' });
    const space = { id: 'sp', model: 'efficientnet-b0', weights: 'random', seed: 1, resize: 'squash', inputSize: 224, dim: 1280 };
    const o = (starting: number) =>
      ({ datasets: [], runs: [], queues: [], warnings: [], deployment: 'd', spaces: [{ space, workers: [worker('a', 'onnx')], starting: Array.from({ length: starting }, (_, i) => ({ worker: worker(`s${i}`, 'loading'), startingMs: 1_000 })) }] }) as unknown as Parameters<typeof overviewPage>[1];
    expect(overviewPage(access, o(2))).toContain('<tr data-space="sp"><td><code>sp</code></td><td class="n">1 <span class="muted" data-loading="2">(2 loading the model)</span></td><td>onnx</td></tr>');
    expect(overviewPage(access, o(0))).toContain('<tr data-space="sp"><td><code>sp</code></td><td class="n">1</td><td>onnx</td></tr>');
  });

  it('shows a dataset still being counted by its number of images, and counts kept from an earlier read with their age', () => {
    const status = { dataset: 'kept', space: 's', total: 7, embedded: 7, cached: 0, failed: 0, pending: 0, pendingByStage: { preprocess: 0, embed: 0 }, orphaned: 0, elsewhere: [], failures: [], failuresByReason: [], labels: [] } satisfies DatasetStatus;
    const o = { datasets: [{ dataset: 'big', counting: 2_000_000 }, { dataset: 'kept', counted: { status, readAt: 0, tookMs: 1_500 } }], runs: [], queues: [], spaces: [], warnings: [] } as unknown as Parameters<typeof overviewPage>[1];
    const out = overviewPage(access, o, 10_000);
    expect(out).toContain('<tr data-dataset="big"><td><a href="/datasets/big">big</a></td><td class="n" data-count="total">2000000</td><td colspan="7"><span class="muted" data-counting="2000000">counting its 2000000 images… (reload in a few seconds)</span></td></tr>');
    expect(out).toMatch(/<tr data-dataset="kept">.*<td class="n" data-count="embedded">7<\/td>.*data-counted-ago="10">counted 10 s ago \(a count of its images takes 1\.5 s\)/);
  });

  it("says which of the train queue's failed jobs are cancelled runs, as status does, and does not mark them as failures", () => {
    const q = (name: string, failed: number, cancelled?: number) => ({ name, counts: { failed }, paused: false, ...(cancelled && { cancelled }) });
    const o = { datasets: [], runs: [], queues: [q('train', 1, 1), q('classify', 2)], spaces: [], warnings: [] } as unknown as Parameters<typeof overviewPage>[1];
    const out = overviewPage(access, o);
    expect(out).toContain('<a class="" href="/queues/queue/train?status=failed">1</a> <span class="muted" data-cancelled="1">(1 is a run stopped with train --cancel)</span>');
    expect(out).toContain('<a class="bad" href="/queues/queue/classify?status=failed">2</a></td>');
  });

  it("says which of the preprocess queue's failed jobs need nothing more, as status does, and marks only the others as failures", () => {
    const q = (failed: number, settled: number) => ({ name: 'preprocess', counts: { failed }, paused: false, settled });
    const page = (queue: ReturnType<typeof q>) => overviewPage(access, { datasets: [], runs: [], queues: [queue], spaces: [], warnings: [] } as unknown as Parameters<typeof overviewPage>[1]);
    expect(page(q(1, 1))).toContain('<a class="" href="/queues/queue/preprocess?status=failed">1</a> <span class="muted" data-settled="1">(1 needs nothing more: its object was replaced, embedded or moved to another embedding space since, or left its dataset)</span>');
    expect(page(q(3, 2))).toContain('<a class="bad" href="/queues/queue/preprocess?status=failed">3</a> <span class="muted" data-settled="2">(2 need nothing more: their objects were replaced, embedded or moved to another embedding space since, or left their datasets)</span>');
  });

  it('shows how many workers serve each queue, and marks none where jobs wait', () => {
    const q = (name: string, workers: number, waiting: number) => ({ name, counts: { waiting }, paused: false, workers });
    const out = overviewPage(access, { datasets: [], runs: [], queues: [q('preprocess', 2, 5), q('train', 0, 1), q('classify', 0, 0)], spaces: [], warnings: [] } as unknown as Parameters<typeof overviewPage>[1]);
    expect(out).toMatch(/<tr data-queue="preprocess">.*<td class="n" data-count="workers">2<\/td>/);
    expect(out).toMatch(/<tr data-queue="train">.*<td class="n" data-count="workers"><span class="bad">0<\/span><\/td>/);
    expect(out).toMatch(/<tr data-queue="classify">.*<td class="n" data-count="workers"><span class="muted">0<\/span><\/td>/);
  });

  it("says first which deployment it reads, as status does, then status's warnings, escaped", () => {
    const o = { datasets: [], runs: [], queues: [], spaces: [], deployment: 'Redis redis://h:6379 (TL_QUEUE_PREFIX=<tl>)', warnings: ['dataset <b>x</b> lost its records: transferline ingest s3://p/x/ -d x'] } as unknown as Parameters<typeof overviewPage>[1];
    expect(overviewPage({ actionsConfigured: false }, o)).toContain(
      '<h1>Datasets and models</h1><p class="muted" id="deployment">deployment: Redis redis://h:6379 (TL_QUEUE_PREFIX=&lt;tl&gt;)</p><ul id="warnings" class="bad"><li>dataset &lt;b&gt;x&lt;/b&gt; lost its records: transferline ingest s3://p/x/ -d x</li></ul>',
    );
  });

  it("links a run to its dataset's page only while the dataset is there (a user's trial: a deleted one's link went to a 404)", () => {
    const run = (dataset: string) => ({ dataset, runId: `${dataset}-1`, createdAt: '2026-01-01T00:00:00Z', embedderId: 'sp', labels: ['a', 'b'], validationAccuracy: 0.5, partial: false, params: {}, bestEpoch: 1, candidate: false, latest: true });
    const o = { datasets: [{ dataset: 'kept', counting: 3 }], runs: [run('kept'), run('gone')], queues: [], spaces: [], warnings: [] } as unknown as Parameters<typeof overviewPage>[1];
    const out = overviewPage({ actionsConfigured: false }, o);
    expect(out).toContain('<tr data-run="kept-1" data-run-dataset="kept"><td><a href="/datasets/kept">kept</a></td><td><a href="/datasets/kept/runs/kept-1">kept-1</a>');
    expect(out).toContain('<tr data-run="gone-1" data-run-dataset="gone"><td>gone <span class="muted" data-deleted="gone" title="deleted, or lost with Redis\'s data: its runs stay in the bucket">(dataset gone)</span></td><td><a href="/datasets/gone/runs/gone-1">gone-1</a>');
    expect(out).not.toContain('href="/datasets/gone"');
  });
});

describe('the review page', () => {
  const line = (i: number, issue: boolean) => ({ key: `s3://photos/train/cat/${i}.jpg`, given: 'cat', suggested: 'dog', pGiven: 0.1, pSuggested: 0.9, issue, uncertainty: 0.1, probabilities: { cat: 0.1, dog: 0.9 } });
  const source = 's3://tl/reviews/pets/2026.jsonl';
  it('names the images it shows in the relabel command it suggests (--top), not every issue of the list', () => {
    const page = reviewPage(access, { dataset: 'pets', source, lines: Array.from({ length: 103 }, (_, i) => line(i, true)), unreadable: [] });
    expect(page).toContain(`move the 100 images below to their suggested labels with\n<code>transferline relabel -d pets --from-review ${source} --top 100</code>`);
    const none = reviewPage(access, { dataset: 'pets', source, lines: [line(0, false)], unreadable: [] });
    expect(none).not.toContain('transferline relabel');
    // images a label manifest labels: relabel leaves them, and the page says where to change them
    expect(reviewPage(access, { dataset: 'pets', source, lines: [line(0, true)], unreadable: [] })).not.toContain('manifest');
    const listed = reviewPage(access, { dataset: 'pets', source, lines: [line(0, true)], unreadable: [], manifests: ['photos/labels.csv'] });
    expect(listed).toContain('(add <code>--dry-run</code> to see each move first); images that the label manifest s3://photos/labels.csv labels are not moved by relabel: change their rows there and ingest it again</p>');
    // every image it shows is a manifest's: no relabel command that would move none of them
    const rows = reviewPage(access, { dataset: 'pets', source, lines: [{ ...line(0, true), manifest: 'photos/labels.csv' }], unreadable: [], manifests: ['photos/labels.csv'] });
    expect(rows).not.toContain('transferline relabel');
    expect(rows).toContain('; the image below: it takes its label from the label manifest s3://photos/labels.csv: change its row there if it is wrong, and ingest it again (relabel moves label folders)</p>');
  });

  it("says how often the model agrees with the given labels, and below 90% to look at each image before moving it, as review's CLI does", () => {
    // line(i, true) disagrees (suggests dog for a cat); line(i, false) is taken to agree here
    const agreeing = (i: number) => ({ ...line(i, false), suggested: 'cat', pGiven: 0.9, pSuggested: 0.9 });
    const good = reviewPage(access, { dataset: 'pets', source, lines: [line(0, true), ...Array.from({ length: 9 }, (_, i) => agreeing(i + 1))], unreadable: [] });
    expect(good).toContain('<p class="muted" id="agreement">the model behind these suggestions agrees with the given label on 90.0% of the 10 images (out of fold)</p>');
    const poor = reviewPage(access, { dataset: 'pets', source, lines: [line(0, true), line(1, true), ...Array.from({ length: 8 }, (_, i) => agreeing(i + 2))], unreadable: [] });
    expect(poor).toContain('<p class="bad" id="agreement">the model behind these suggestions agrees with the given label on 80.0% of the 10 images (out of fold): it is wrong about many images itself, so many it flags are labelled well: look at each before moving it</p>');
  });

  it('says which of its images were relabelled or deleted since, with no thumbnail that would not load', () => {
    const page = reviewPage(access, { dataset: 'pets', source, lines: [line(0, true), line(1, true)], unreadable: [], moved: new Set([line(0, true).key]) });
    expect(page).toContain('<p class="bad" id="moved">1 image of this review is no longer in pets under the label it gave (relabelled or deleted since): <code>transferline review -d pets</code> again for a current list</p>');
    expect(page).toContain(`<tr data-key="${line(0, true).key}"><td><span class="muted">moved or gone since</span></td>`);
    expect(page).toContain(`<tr data-key="${line(1, true).key}"><td><img src=`);
  });
});
