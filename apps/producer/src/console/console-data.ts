import { Writable } from 'node:stream';
import sharp from 'sharp';
import { DatasetRepository, deploymentOf, ReportDoc, ReviewLine, parseJsonLines, type Config, type Queues, type Services, type SpaceWorkers } from '@transferline/shared';
import type { Queue } from 'bullmq';
import type { CliContext } from '../cli-context.js';
import { listModelRuns, type ModelRun, type ReadReports } from '../commands/models.command.js';
import { cancelledRuns, deploymentQueues, deploymentWarnings, servingWorkers, settledPreprocessFailures, unpublishedSpaces } from '../commands/status.command.js';
import type { ReviewView } from './review.page.js';
import { StatusMemo, type Counted } from './status-memo.js';

/** What the console reads: the deployment's clients (it owns none of them). */
export interface ConsoleDeps {
  services: Services;
  queues: Queues;
  config: Config;
  /** the datasets' counts, shared by the pages (one read at a time per dataset) */
  statuses: StatusMemo;
  /** how long a page waits for a dataset's count before it shows the last one (or none yet) */
  countWaitMs: number;
  /** the trained runs' reports read so far: each is read once */
  reports: ReadReports;
  /** how many of the train queue's `failed` failed jobs are cancelled runs (read again when that number changes, or after a while) */
  cancelledRuns: (failed: number) => Promise<number>;
  /** how many of the preprocess queue's `failed` failed jobs need nothing more (settledPreprocessFailures; read as cancelledRuns is) */
  settledFailures: (failed: number) => Promise<number>;
}

/** How long a count read from a queue's failed jobs is reused while their number stays. */
const FAILED_NOTE_TTL_MS = 30_000;

/**
 * A count read from up to a thousand of a queue's failed jobs, read again only when the queue's
 * failed count changes or after FAILED_NOTE_TTL_MS: not again for every page while nothing failed since.
 */
function whileFailedStays(read: () => Promise<number>): (failed: number) => Promise<number> {
  let last: { failed: number; at: number; count: Promise<number> } | undefined;
  return (failed) => {
    if (!last || last.failed !== failed || Date.now() - last.at > FAILED_NOTE_TTL_MS) {
      const count = read();
      last = { failed, at: Date.now(), count };
      count.catch(() => (last = undefined));
    }
    return last.count;
  };
}

/** The console's reads of a deployment, its pages waiting up to `countWaitMs` for a dataset's count. */
export function consoleDeps(d: Pick<ConsoleDeps, 'services' | 'queues' | 'config'>, countWaitMs: number): ConsoleDeps {
  return {
    ...d,
    statuses: new StatusMemo((dataset) => d.services.inspector.status(dataset, 100)),
    countWaitMs,
    reports: new Map(),
    cancelledRuns: whileFailedStays(() => cancelledRuns(d.queues)),
    settledFailures: whileFailedStays(async () => (await settledPreprocessFailures(d)).settled),
  };
}

/** A dataset's counts, or, while its first read goes on past the page's wait, how many images it holds. */
export type DatasetCounts = { dataset: string; counted: Counted } | { dataset: string; counting: number };

export interface QueueSummary {
  /** the BullMQ queue name (bull-board's too) */
  name: string;
  counts: Record<string, number>;
  paused: boolean;
  /** how many workers serve it (as status counts them) */
  workers: number;
  /** the train queue: how many of its failed jobs are runs stopped with train --cancel (no failures) */
  cancelled?: number;
  /** the preprocess queue: how many of its failed jobs need nothing more (settledPreprocessFailures) */
  settled?: number;
}

export interface Overview {
  spaces: SpaceWorkers[];
  queues: QueueSummary[];
  datasets: DatasetCounts[];
  runs: ModelRun[];
  /** what `status` warns of (Redis may evict keys; what Redis losing its data left, and what brings it back) */
  warnings: string[];
  /** the deployment this console reads, as `status` says it first (passwords hidden) */
  deployment: string;
}

export type DatasetPage = DatasetCounts & { runs: ModelRun[] };

async function summarise(q: Queue, d: ConsoleDeps, spaces: SpaceWorkers[]): Promise<QueueSummary> {
  const [counts, paused, connected] = await Promise.all([q.getJobCounts('waiting', 'prioritized', 'active', 'delayed', 'failed', 'completed'), q.isPaused(), q.getWorkers()]);
  // as status says: runs stopped with train --cancel end as failed jobs, and are no failure
  const cancelled = q === d.queues.train && counts.failed ? await d.cancelledRuns(counts.failed) : 0;
  // and a preprocess job whose object was replaced since keeps its failure in BullMQ, needing nothing
  // (a note: a read that fails leaves it out of this page, not the page, and is read again for the next)
  const settled = q === d.queues.preprocess && counts.failed ? await d.settledFailures(counts.failed).catch(() => 0) : 0;
  return { name: q.name, counts, paused, workers: servingWorkers(q, connected, spaces), ...(cancelled && { cancelled }), ...(settled && { settled }) };
}

// listModelRuns and deploymentWarnings are written for the CLI; they read config and services (and
// the latter remembers a loss it finds in Redis, as status does); nothing is printed.
function runsContext(d: ConsoleDeps): CliContext {
  const out = new Writable({ write: (_chunk, _enc, cb) => cb() });
  return { config: d.config, services: d.services, queues: d.queues, out, close: async () => {} };
}

export async function loadOverview(d: ConsoleDeps): Promise<Overview> {
  const spaces = await d.services.spaces.list();
  const names = await d.services.datasets.list();
  d.statuses.keepOnly(names);
  // (and the queues of spaces datasets are in that no worker has published, as status lists them)
  const unpublished = await unpublishedSpaces(d.services.datasets, names, spaces);
  const [queues, datasets, runs, { warnings }] = await Promise.all([
    Promise.all(deploymentQueues(d.queues, spaces, unpublished).map((q) => summarise(q, d, spaces))),
    Promise.all(names.map((n) => countsOf(d, n))),
    listModelRuns(runsContext(d), undefined, d.reports),
    recentWarnings(
      d,
      spaces.map((s) => s.space.id),
    ),
  ]);
  return { spaces, queues, datasets, runs, warnings, deployment: deploymentOf(d.config).words };
}

/** How long the front page reuses the warnings it found: they read the bucket, and pages reload. */
const WARNINGS_TTL_MS = 30_000;
const warningsSeen = new WeakMap<Services, { at: number; found: ReturnType<typeof deploymentWarnings> }>();

/** status's warnings (deploymentWarnings), found at most once per WARNINGS_TTL_MS per deployment. */
function recentWarnings(d: ConsoleDeps, spaces: string[]): ReturnType<typeof deploymentWarnings> {
  const seen = warningsSeen.get(d.services);
  if (seen && Date.now() - seen.at < WARNINGS_TTL_MS) return seen.found;
  const found = deploymentWarnings(runsContext(d), spaces);
  warningsSeen.set(d.services, { at: Date.now(), found });
  found.catch(() => warningsSeen.delete(d.services));
  return found;
}

/** One dataset with its newest failures, or undefined when there is no such dataset. */
export async function loadDataset(d: ConsoleDeps, dataset: string): Promise<DatasetPage | { deletedWithRuns: number } | undefined> {
  if (!(await d.services.datasets.exists(dataset))) {
    // deleted (or lost with Redis's data) while its runs stay in the bucket: said, not "no such dataset"
    const runs = (await listModelRuns(runsContext(d), dataset, d.reports)).filter((r) => r.dataset === dataset).length;
    return runs ? { deletedWithRuns: runs } : undefined;
  }
  const [counts, runs] = await Promise.all([countsOf(d, dataset), listModelRuns(runsContext(d), dataset, d.reports)]);
  return { ...counts, runs: runs.filter((r) => r.dataset === dataset) };
}

/** A dataset's counts (its newest failures too) within the page's wait, else how many images it holds. */
async function countsOf(d: ConsoleDeps, dataset: string): Promise<DatasetCounts> {
  const counted = await d.statuses.get(dataset, d.countWaitMs);
  return counted ? { dataset, counted } : { dataset, counting: await d.services.datasets.size(dataset) };
}

/** A run's report.json, or undefined when the bucket has none. */
export async function loadReport(d: ConsoleDeps, dataset: string, runId: string): Promise<ReportDoc | undefined> {
  return d.services.store.getDocument(ReportDoc, d.config.s3.bucket, d.services.layout.runFile(dataset, runId, 'report.json'));
}

/** The newest review of a dataset (`reviews/<dataset>/`), or undefined when there is none. */
export async function loadReview(deps: ConsoleDeps, dataset: string): Promise<ReviewView | undefined> {
  const { store, layout } = deps.services;
  const { bucket } = deps.config.s3;
  const folder = layout.reviews(dataset);
  let newest: string | undefined;
  for await (const o of store.listObjects(bucket, folder)) if (o.key.endsWith('.jsonl') && (!newest || o.key > newest)) newest = o.key;
  if (!newest) return undefined;
  const text = (await store.getObject(bucket, newest)).toString();
  // A line that is not a review line (edited by hand, cut short) is named on the page; the rest still shows.
  const { values: lines, bad } = parseJsonLines(ReviewLine, text);
  // images moved (relabel) or deleted since the review: said on the page, not shown with a broken thumbnail
  const items = await deps.services.datasets.getItems(dataset, lines.map((l) => l.key.replace(/^s3:\/\//, '')));
  const moved = new Set(lines.flatMap((l, i) => (items[i]?.label === l.given ? [] : [l.key])));
  const manifests = [...new Set(items.flatMap((r) => (r?.manifest === undefined ? [] : [r.manifest])))].sort();
  return { dataset, source: `s3://${bucket}/${newest}`, lines, unreadable: bad, moved, manifests };
}

/** A 96-pixel JPEG of an image of the dataset (`s3://bucket/key`), or undefined when it is not one of its items. */
export async function thumbnail(deps: ConsoleDeps, dataset: string, key: string): Promise<Buffer | undefined> {
  const id = key.replace(/^s3:\/\//, '');
  if (!id || id.length > 2048) return undefined;
  const [item] = await deps.services.datasets.getItems(dataset, [id]);
  if (!item) return undefined;
  const { bucket, key: objectKey } = DatasetRepository.parseItemId(id);
  const bytes = await deps.services.store.getObject(bucket, objectKey, deps.config.preprocess.maxObjectBytes);
  return sharp(bytes, { limitInputPixels: deps.config.preprocess.maxInputPixels }).rotate().resize(96, 96, { fit: 'cover' }).jpeg({ quality: 70 }).toBuffer();
}
