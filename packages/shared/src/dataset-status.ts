import { QueueKeys } from 'bullmq';
import type { Redis } from 'ioredis';
import { DatasetRepository } from './dataset.repository.js';
import { EmbedFailure, parseDocument, type ItemRecord, type Stage } from './documents.js';
import { isClassifyDataset, jobIds, queueName, UNLABELLED } from './jobs.catalog.js';
import type { RedisKeys } from './keys.js';
import { sleep } from './lifecycle.js';

/**
 * How long an item whose job BullMQ has just failed is given for its worker to record why (one
 * round trip after the job moved, normally a millisecond or two).
 */
const FAILURE_RECORD_GRACE_MS = 500;
/**
 * Only a job failed this recently (its failed-set score is when, on its worker's clock: room for
 * skew between machines) can still be having its failure recorded; an older one's was lost.
 */
const JUST_FAILED_MS = 30_000;

/**
 * Where an item stands. `embedded`: its embedding is in the space's index. `failed`: failed for
 * good (stage, reason). `preprocess` / `embed`: a live job of that stage holds it. `orphaned`:
 * neither done nor held by any live job (Redis lost the job, someone removed it, or it failed
 * without its failure being recorded): nothing will move it until a re-ingest re-enqueues it.
 */
export type ItemPhase = 'embedded' | 'failed' | 'preprocess' | 'embed' | 'orphaned';

export interface ItemFailureView {
  stage: Stage;
  reason: string;
  detail?: string;
  attempts?: number;
  /** when it failed for good (ISO, the worker's clock); absent from failures recorded before it was */
  failedAt?: string;
}

type ListedFailure = { item: string; object: string; label: string } & ItemFailureView;

/** Where `f` goes in `sorted` (newest first), after those equal to it. */
function sortedIndex(sorted: ListedFailure[], f: ListedFailure): number {
  let lo = 0;
  let hi = sorted.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (newestFailureFirst(sorted[mid]!, f) <= 0) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** Newest failure first (those of unknown time last), then by object: what an ingest just met is listed first. */
export function newestFailureFirst(a: ListedFailure, b: ListedFailure): number {
  return timeOf(b) - timeOf(a) || (a.object < b.object ? -1 : a.object > b.object ? 1 : 0);
}

/** A failure's time in ms (-Infinity when unknown), parsed once per failure: a sort of a million compares each many times. */
const failedAtMs = new WeakMap<ListedFailure, number>();
function timeOf(f: ListedFailure): number {
  let t = failedAtMs.get(f);
  if (t === undefined) failedAtMs.set(f, (t = f.failedAt === undefined ? -Infinity : Date.parse(f.failedAt) || -Infinity));
  return t;
}

export interface ItemView {
  id: string;
  record: ItemRecord;
  phase: ItemPhase;
  /** the space the item belongs to (its record's, else the dataset's) */
  space?: string;
  failure?: ItemFailureView;
}

export interface DatasetStatus {
  dataset: string;
  /** the embedding space the dataset was last ingested into */
  space?: string;
  total: number;
  embedded: number;
  /** embedded images whose embedding existed before (served from the cache) */
  cached: number;
  failed: number;
  /** held by a live job, by stage */
  pending: number;
  pendingByStage: { preprocess: number; embed: number };
  orphaned: number;
  /** the newest failures, newest first (up to the limit asked for): the item id (`bucket/key`), its object's `s3://` URL and its label */
  failures: ListedFailure[];
  failuresByReason: { stage: Stage; reason: string; count: number }[];
  /**
   * Images per label, sorted by label; how many of them failed for good (when any: train leaves
   * those out), are on their way (`pending`, when any: held by a live job), and `ready`: how many
   * are embedded in the dataset's space (what a run started now learns from; `elsewhere` counts
   * those in another). `unlabelled`: the images of a classify dataset, which carry no label
   * (`label` is then UNLABELLED).
   */
  labels: { label: string; count: number; failed?: number; pending?: number; ready: number; unlabelled?: true }[];
  /**
   * Embedded images (counted in `embedded`) whose embedding is in another space than the
   * dataset's (a later ingest of some of its prefixes moved the dataset to another space): train
   * cannot use them. By space, with the ingested prefixes (`bucket/prefix`) they lie under.
   */
  elsewhere: { space: string; count: number; sources: string[] }[];
}

/**
 * The one reading of a dataset's state, shared by `status`, `failures`, the ingest wait, `train`
 * and re-ingest: every item is classified from its record, the space's index and failure hash,
 * and whether its job still exists in BullMQ.
 */
export class DatasetInspector {
  private readonly queueKeys: QueueKeys;

  constructor(
    private readonly redis: Redis,
    private readonly keys: RedisKeys,
    queuePrefix: string,
    private readonly datasets = new DatasetRepository(redis, keys),
  ) {
    this.queueKeys = new QueueKeys(queuePrefix);
  }

  /**
   * Classifies one page of items (a few pipelined round trips per page). The page was read
   * before its jobs were looked up: an item that moved on in between (its preprocess job done
   * and removed, its record now `queued`) would look orphaned. A stage writes an item's next
   * record before its job leaves the queue, so an item whose job is gone is read again, and
   * classified from its record as it is now; only one whose record has not changed is orphaned.
   * (An embed job's result is its index entry, looked up after the job: see classifyAsRead.)
   */
  async classify(dataset: string, page: [string, ItemRecord][], datasetSpace?: string): Promise<ItemView[]> {
    const { views, jobFailedAt } = await this.classifyAsRead(dataset, page, datasetSpace);
    /** Reads the records of `at` again and classifies those that `take` (record as read, as now) keeps. */
    const again = async (at: number[], take: (before: ItemRecord, now: ItemRecord) => boolean) => {
      const now = await this.datasets.getItems(dataset, at.map((i) => page[i]![0]));
      const keep = at.flatMap((i, k) => (now[k] && take(page[i]![1], now[k]!) ? [{ i, entry: [page[i]![0], now[k]!] as [string, ItemRecord] }] : []));
      if (keep.length === 0) return;
      const read = await this.classifyAsRead(dataset, keep.map((e) => e.entry), datasetSpace);
      keep.forEach((e, k) => {
        views[e.i] = read.views[k]!;
        jobFailedAt[e.i] = read.jobFailedAt[k]!;
      });
    };
    const suspects = views.flatMap((v, i) => (v.phase === 'orphaned' ? [i] : []));
    if (suspects.length === 0) return views;
    await again(suspects, (before, now) => JSON.stringify(now) !== JSON.stringify(before));
    // BullMQ has just failed the job for good and its worker writes why right after (the item's
    // record, or the space's failure hash): give it a moment. A failure still unrecorded then
    // (or failed long ago) was lost with its worker, and the item is orphaned indeed (a re-ingest
    // runs it again).
    const clock = Date.now();
    const recording = views.flatMap((v, i) => {
      const at = jobFailedAt[i] ?? null;
      return v.phase === 'orphaned' && at !== null && Math.abs(clock - at) < JUST_FAILED_MS ? [i] : [];
    });
    if (recording.length === 0) return views;
    await sleep(FAILURE_RECORD_GRACE_MS);
    await again(recording, () => true);
    return views;
  }

  /**
   * Each item as read, and when its job entered BullMQ's failed set, if it is there (its failure
   * about to be recorded, or lost). Results first, for the whole page (two HMGETs per embedding space): most
   * items of a dataset are done, and a done item needs nothing more (an index entry or a failure,
   * once written, stays). Then, for the rest only, the job and, after it, the result once more:
   * Redis runs a pipeline's commands in order, and a stage writes its result (the index, a
   * failure) before its job leaves the queue, so a job found gone there has its result found.
   */
  private async classifyAsRead(dataset: string, page: [string, ItemRecord][], datasetSpace?: string): Promise<{ views: ItemView[]; jobFailedAt: (number | null)[] }> {
    const spaceOf = (r: ItemRecord) => r.space ?? datasetSpace;
    const open = page.map(([, r]) => r.state !== 'failed' && spaceOf(r) !== undefined);
    const result: { index: string | null; fail: string | null }[] = page.map(() => ({ index: null, fail: null }));
    const bySpace = new Map<string, number[]>();
    page.forEach(([, r], i) => {
      if (!open[i] || !r.sha256) return;
      const at = bySpace.get(spaceOf(r)!);
      if (at) at.push(i);
      else bySpace.set(spaceOf(r)!, [i]);
    });
    if (bySpace.size > 0) {
      const pipe = this.redis.pipeline();
      for (const [space, at] of bySpace) {
        const hashes = at.map((i) => page[i]![1].sha256!);
        pipe.hmget(this.keys.embeddingIndex(space), ...hashes);
        pipe.hmget(this.keys.embeddingFailures(space), ...hashes);
      }
      const res = (await pipe.exec()) ?? [];
      [...bySpace.values()].forEach((at, k) => {
        const index = (res[2 * k]?.[1] ?? []) as (string | null)[];
        const fail = (res[2 * k + 1]?.[1] ?? []) as (string | null)[];
        at.forEach((i, j) => (result[i] = { index: index[j] ?? null, fail: fail[j] ?? null }));
      });
    }
    const jobFailedAt = page.map((): number | null => null);
    const live = page.map(() => false);
    const rest = page.flatMap(([id, r], i) => (open[i] && result[i]!.index === null && result[i]!.fail === null ? [{ i, job: this.jobOf(dataset, id, r, spaceOf(r)!) }] : []));
    if (rest.length > 0) {
      const pipe = this.redis.pipeline();
      for (const { i, job } of rest) {
        if (job) {
          pipe.exists(this.queueKeys.toKey(job.queue, job.id));
          pipe.zscore(this.queueKeys.toKey(job.queue, 'failed'), job.id);
        }
        const r = page[i]![1];
        if (r.sha256) {
          pipe.hget(this.keys.embeddingIndex(spaceOf(r)!), r.sha256);
          pipe.hget(this.keys.embeddingFailures(spaceOf(r)!), r.sha256);
        }
      }
      const res = (await pipe.exec()) ?? [];
      let n = 0;
      const next = () => (res[n++]?.[1] ?? null) as string | number | null;
      for (const { i, job } of rest) {
        if (job) {
          const exists = next();
          const failedScore = next();
          jobFailedAt[i] = failedScore === null ? null : Number(failedScore);
          live[i] = exists === 1 && failedScore === null;
        }
        if (page[i]![1].sha256) result[i] = { index: next() as string | null, fail: next() as string | null };
      }
    }
    const views = page.map(([id, record], i): ItemView => {
      const space = spaceOf(record);
      const base = { id, record, ...(space && { space }) };
      if (record.state === 'failed') {
        return { ...base, phase: 'failed', failure: { stage: record.stage ?? 'preprocess', reason: record.reason ?? 'unknown', ...(record.detail && { detail: record.detail }), ...(record.attempts && { attempts: record.attempts }), ...(record.failedAt && { failedAt: record.failedAt }) } };
      }
      const { index, fail } = result[i]!;
      if (index !== null) return { ...base, phase: 'embedded' };
      if (fail !== null) {
        const f = parseDocument(EmbedFailure, JSON.parse(fail), `embedding failure of ${id}`);
        return { ...base, phase: 'failed', failure: { stage: 'embed', ...f } };
      }
      if (!live[i]) return { ...base, phase: 'orphaned' };
      return { ...base, phase: record.state === 'pending' ? 'preprocess' : 'embed' };
    });
    return { views, jobFailedAt };
  }

  /** The job that should hold an item that is not done: its preprocess job, or its embed job once the pixels went to embed. */
  private jobOf(dataset: string, id: string, r: ItemRecord, space: string): { queue: string; id: string } | undefined {
    if (r.state === 'pending') {
      const { bucket, key } = DatasetRepository.parseItemId(id);
      return { queue: queueName('preprocess'), id: jobIds.preprocess({ dataset, bucket, key, etag: r.etag, embedderId: space }) };
    }
    if (r.sha256) return { queue: queueName('embed', space), id: jobIds.embed({ sha256: r.sha256, embedderId: space }) };
    return undefined;
  }

  /** Every item of a dataset, classified, page by page. */
  async *scan(dataset: string): AsyncGenerator<ItemView[]> {
    const space = await this.datasets.space(dataset);
    for await (const page of this.datasets.scan(dataset)) yield this.classify(dataset, page, space);
  }

  /**
   * Counts a dataset's items by phase, with its newest `maxFailuresListed` failures (newest first); with
   * `within` (`bucket/prefix`), only the items whose object lies under it.
   */
  async status(dataset: string, maxFailuresListed = 20, within?: string): Promise<DatasetStatus> {
    const space = await this.datasets.space(dataset);
    const s: DatasetStatus = {
      dataset,
      ...(space && { space }),
      total: 0,
      embedded: 0,
      cached: 0,
      failed: 0,
      pending: 0,
      pendingByStage: { preprocess: 0, embed: 0 },
      orphaned: 0,
      failures: [],
      failuresByReason: [],
      labels: [],
      elsewhere: [],
    };
    const labels = new Map<string, { count: number; failed: number; pending: number; ready: number }>();
    const elsewhere = new Map<string, { count: number; sources: Set<string> }>();
    let sources: string[] | undefined; // read at the first such image
    const reasons = new Map<string, { stage: Stage; reason: string; count: number }>();
    for await (const page of this.scan(dataset)) {
      for (const v of page) {
        if (within !== undefined && !v.id.startsWith(within)) continue;
        s.total++;
        const l = labels.get(v.record.label) ?? { count: 0, failed: 0, pending: 0, ready: 0 };
        l.count++;
        if (v.phase === 'failed') l.failed++;
        labels.set(v.record.label, l);
        if (v.phase === 'embedded') {
          s.embedded++;
          if (v.record.state === 'cached') s.cached++;
          if (!(space && v.space && v.space !== space)) l.ready++;
          else {
            const e = elsewhere.get(v.space) ?? { count: 0, sources: new Set<string>() };
            e.count++;
            // (a manifest's image: the manifest is what to ingest again)
            const source = v.record.manifest ?? DatasetRepository.sourceAmong((sources ??= await this.datasets.sources(dataset)), v.id);
            if (source) e.sources.add(source);
            elsewhere.set(v.space, e);
          }
        } else if (v.phase === 'failed') {
          s.failed++;
          const f = v.failure!;
          // the newest `maxFailuresListed` (a trial: an ingest listed 20 old failures, and not the one it had just met)
          const listed = { item: v.id, object: DatasetRepository.objectUrl(v.id), label: v.record.label, ...f };
          const last = s.failures[s.failures.length - 1];
          if (maxFailuresListed === Number.POSITIVE_INFINITY) s.failures.push(listed); // (every one: sorted once, below)
          else if (s.failures.length < maxFailuresListed || (last && newestFailureFirst(listed, last) < 0)) {
            if (s.failures.length >= maxFailuresListed) s.failures.pop();
            s.failures.splice(sortedIndex(s.failures, listed), 0, listed);
          }
          const k = `${f.stage} ${f.reason}`;
          const r = reasons.get(k) ?? { stage: f.stage, reason: f.reason, count: 0 };
          r.count++;
          reasons.set(k, r);
        } else if (v.phase === 'orphaned') s.orphaned++;
        else {
          l.pending++;
          s.pending++;
          s.pendingByStage[v.phase]++;
        }
      }
    }
    // (in a training dataset, a folder may be named `?`: a label like any other)
    const unlabelled = isClassifyDataset(dataset);
    s.labels = [...labels].map(([label, l]) => ({ label, count: l.count, ...(l.failed && { failed: l.failed }), ...(l.pending && { pending: l.pending }), ready: l.ready, ...(unlabelled && label === UNLABELLED && { unlabelled: true as const }) })).sort((a, b) => (a.label < b.label ? -1 : a.label > b.label ? 1 : 0));
    if (maxFailuresListed === Number.POSITIVE_INFINITY) s.failures.sort(newestFailureFirst);
    s.failuresByReason = [...reasons.values()].sort((a, b) => b.count - a.count);
    s.elsewhere = [...elsewhere].map(([sp, e]) => ({ space: sp, count: e.count, sources: [...e.sources].sort() }));
    return s;
  }
}
