import {
  DatasetRepository,
  enqueue,
  jobIds,
  itemFromKey,
  type ItemRecord,
  type ObjectInfo,
  type PreprocessJob,
  type Services,
} from '@transferline/shared';
import type { Queue } from 'bullmq';

export interface IngestRequest {
  bucket: string;
  prefix: string;
  dataset: string;
  embedderId: string;
  /** 'folders' (default): label = first folder below the prefix; 'none': every object, unlabelled (classify) */
  labels?: 'folders' | 'none';
}

/** The label an unlabelled image carries (images to classify). */
export const UNLABELLED = '?';

export interface IngestCounts {
  listed: number;
  /** objects at the prefix root or folder markers: no label, not ingested */
  unlabelled: number;
  /** already in the dataset with the same ETag: nothing to do */
  unchanged: number;
  /** hash known and embedding cached: added without any job */
  fromCache: number;
  /** preprocess jobs enqueued */
  enqueued: number;
}

export interface IngestDeps {
  services: Pick<Services, 'store' | 'datasets' | 'cache'>;
  preprocessQueue: Queue;
}

/**
 * Lists `s3://bucket/prefix` page by page and makes the dataset match it. Per page of up to 1,000
 * keys: one HMGET for the dataset's records, one for known content hashes, one for the cache,
 * then one addBulk. An object already ingested with the same ETag costs nothing; one whose
 * bytes were seen before (under any key) and are embedded is added without a job; only new
 * content is enqueued, with a content-derived job id, so running ingest twice enqueues nothing new.
 */
export async function ingestPrefix(req: IngestRequest, deps: IngestDeps, onPage?: (c: IngestCounts) => void): Promise<IngestCounts> {
  const { store, datasets, cache } = deps.services;
  const counts: IngestCounts = { listed: 0, unlabelled: 0, unchanged: 0, fromCache: 0, enqueued: 0 };
  let page: ObjectInfo[] = [];
  const flush = async () => {
    const labelled = page.flatMap((o) => {
      const item = req.labels === 'none' ? (o.key.endsWith('/') ? undefined : { label: UNLABELLED }) : itemFromKey(req.prefix, o.key);
      if (item === undefined) counts.unlabelled++;
      return item === undefined ? [] : [{ ...o, ...item, id: DatasetRepository.itemId(req.bucket, o.key) }];
    });
    page = [];
    const existing = await datasets.getItems(req.dataset, labelled.map((o) => o.id));
    // An item whose embedding failed for good (its pixels expired before embed ran, say) is
    // processed again: ingesting twice is how a user retries.
    const failedEmbedding = await datasets.embeddingFailed(req.embedderId, existing.map((r) => r?.sha256 ?? '0'.repeat(64)));
    const fresh = labelled.filter((o, i) => {
      const r = existing[i];
      // A pending record is enqueued again: if its job still exists the id makes that a no-op,
      // if the job was lost (Redis flushed) this is how the item recovers.
      const same = r !== undefined && r.etag === o.etag && r.label === o.label && r.split === o.split && r.state !== 'pending' && !failedEmbedding[i];
      if (same) counts.unchanged++;
      return !same;
    });
    const known = await datasets.knownHashes(fresh.map((o) => o.id));
    const knownSha = fresh.map((o, i) => (known[i]?.etag === o.etag ? known[i]!.sha256 : undefined));
    const cached = await cache.has(req.embedderId, knownSha.map((s) => s ?? '0'.repeat(64)));
    const records: [string, ItemRecord][] = [];
    const jobs: { id: string; payload: PreprocessJob }[] = [];
    fresh.forEach((o, i) => {
      const sha256 = knownSha[i];
      if (sha256 && cached[i]) {
        records.push([o.id, { label: o.label, etag: o.etag, sha256, state: 'cached', ...(o.split && { split: o.split }) }]);
        counts.fromCache++;
      } else {
        records.push([o.id, { label: o.label, etag: o.etag, state: 'pending', ...(o.split && { split: o.split }) }]);
        const payload: PreprocessJob = { dataset: req.dataset, bucket: req.bucket, key: o.key, etag: o.etag, label: o.label, embedderId: req.embedderId };
        jobs.push({ id: jobIds.preprocess(payload), payload });
      }
    });
    // Records first: a fast worker must find the item when its job runs.
    await datasets.putItems(req.dataset, records);
    await enqueue(deps.preprocessQueue, 'preprocess', jobs);
    counts.enqueued += jobs.length;
    onPage?.({ ...counts });
  };
  for await (const o of store.listObjects(req.bucket, req.prefix)) {
    counts.listed++;
    page.push(o);
    if (page.length >= 1000) await flush();
  }
  if (page.length) await flush();
  return counts;
}
