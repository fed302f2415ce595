import type { Redis } from 'ioredis';
import type { RedisKeys } from './keys.js';
import type { Split } from './labels.js';

/**
 * What a dataset knows of one object. `pending`: enqueued, hash not known yet; `queued`: pixels
 * handed to embed; `cached`: its embedding already existed; `failed`: a permanent failure with a
 * reason code. Whether a queued item is embedded is read from the embedding index, not stored,
 * so there is one source of truth and running a job twice cannot make the counts drift.
 */
export interface ItemRecord {
  label: string;
  etag: string;
  state: 'pending' | 'queued' | 'cached' | 'failed';
  sha256?: string;
  reason?: string;
  detail?: string;
  /** the split the bucket's layout gave it (train/, val/, test/ folders), kept across updates */
  split?: Split;
}

// Writes item records, keeping a `split` the stored record has when the new one names none:
// the split is known at ingest, and later stages rewrite the record without knowing it.
const PUT_ITEMS = `
for i = 1, #ARGV, 2 do
  local rec = cjson.decode(ARGV[i + 1])
  if rec.split == nil then
    local old = redis.call('HGET', KEYS[1], ARGV[i])
    if old then
      local o = cjson.decode(old)
      if o.split then
        rec.split = o.split
        ARGV[i + 1] = cjson.encode(rec)
      end
    end
  end
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('SADD', KEYS[2], KEYS[3])
return #ARGV / 2`;

export interface DatasetStatus {
  dataset: string;
  total: number;
  embedded: number;
  cached: number;
  pending: number;
  failed: number;
  failures: { item: string; reason: string; detail?: string }[];
  labels: Record<string, number>;
}

/** A dataset's members (`bucket/key` → label, hash, state), kept in Redis. */
export class DatasetRepository {
  constructor(
    private readonly redis: Redis,
    private readonly keys: RedisKeys,
  ) {}

  static itemId(bucket: string, key: string): string {
    return `${bucket}/${key}`;
  }

  async list(): Promise<string[]> {
    return (await this.redis.smembers(this.keys.datasets())).sort();
  }

  async exists(dataset: string): Promise<boolean> {
    return (await this.redis.sismember(this.keys.datasets(), dataset)) === 1;
  }

  async getItems(dataset: string, itemIds: string[]): Promise<(ItemRecord | undefined)[]> {
    if (itemIds.length === 0) return [];
    const raw = await this.redis.hmget(this.keys.datasetItems(dataset), ...itemIds);
    return raw.map((r) => (r === null ? undefined : (JSON.parse(r) as ItemRecord)));
  }

  async putItems(dataset: string, items: [itemId: string, record: ItemRecord][]): Promise<void> {
    if (items.length === 0) return;
    await this.redis.eval(PUT_ITEMS, 3, this.keys.datasetItems(dataset), this.keys.datasets(), dataset, ...items.flatMap(([id, r]) => [id, JSON.stringify(r)]));
  }

  async putItem(dataset: string, itemId: string, record: ItemRecord): Promise<void> {
    await this.putItems(dataset, [[itemId, record]]);
  }

  /** Known content hashes of objects, keyed by `bucket/key`, valid only while the ETag matches. */
  async knownHashes(itemIds: string[]): Promise<({ etag: string; sha256: string } | undefined)[]> {
    if (itemIds.length === 0) return [];
    const raw = await this.redis.hmget(this.keys.objectHashes(), ...itemIds);
    return raw.map((r) => {
      if (r === null) return undefined;
      const [etag, sha256] = r.split(' ');
      return etag !== undefined && sha256 ? { etag, sha256 } : undefined;
    });
  }

  async rememberHash(itemId: string, etag: string, sha256: string): Promise<void> {
    await this.redis.hset(this.keys.objectHashes(), itemId, `${etag} ${sha256}`);
  }

  /** For each content hash, whether its embedding failed for good in this embedding space (and may be tried again). */
  async embeddingFailed(embedderId: string, hashes: string[]): Promise<boolean[]> {
    if (hashes.length === 0) return [];
    return (await this.redis.hmget(this.keys.embeddingFailures(embedderId), ...hashes)).map((v) => v !== null);
  }

  /** Every item of a dataset, streamed with HSCAN so a large dataset is never read in one reply. */
  async *scan(dataset: string): AsyncGenerator<[string, ItemRecord][]> {
    let cursor = '0';
    do {
      const [next, flat] = await this.redis.hscan(this.keys.datasetItems(dataset), cursor, 'COUNT', 1000);
      cursor = next;
      const page: [string, ItemRecord][] = [];
      for (let i = 0; i + 1 < flat.length; i += 2) page.push([flat[i]!, JSON.parse(flat[i + 1]!) as ItemRecord]);
      if (page.length) yield page;
    } while (cursor !== '0');
  }

  /**
   * Counts a dataset's items by outcome. An item is embedded when its hash is in the embedding
   * index of `embedderId`; an item whose embedding failed for good counts as failed.
   */
  async status(dataset: string, embedderId: string, maxFailuresListed = 20): Promise<DatasetStatus> {
    const s: DatasetStatus = { dataset, total: 0, embedded: 0, cached: 0, pending: 0, failed: 0, failures: [], labels: {} };
    const addFailure = (item: string, reason: string, detail?: string) => {
      s.failed++;
      if (s.failures.length < maxFailuresListed) s.failures.push(detail ? { item, reason, detail } : { item, reason });
    };
    for await (const page of this.scan(dataset)) {
      const hashes = page.map(([, r]) => r.sha256 ?? '');
      const withHash = hashes.filter(Boolean);
      const pipe = this.redis.pipeline();
      if (withHash.length) {
        pipe.hmget(this.keys.embeddingIndex(embedderId), ...withHash);
        pipe.hmget(this.keys.embeddingFailures(embedderId), ...withHash);
      }
      const res = withHash.length ? await pipe.exec() : [];
      const indexed = (res?.[0]?.[1] as (string | null)[] | undefined) ?? [];
      const failedEmb = (res?.[1]?.[1] as (string | null)[] | undefined) ?? [];
      let j = 0;
      for (const [id, r] of page) {
        s.total++;
        s.labels[r.label] = (s.labels[r.label] ?? 0) + 1;
        const k = r.sha256 ? j++ : -1;
        if (r.state === 'failed') addFailure(id, r.reason ?? 'unknown', r.detail);
        else if (k >= 0 && indexed[k] !== null && indexed[k] !== undefined) {
          s.embedded++;
          if (r.state === 'cached') s.cached++;
        } else if (k >= 0 && failedEmb[k]) addFailure(id, failedEmb[k]!.split(' ')[0]!, failedEmb[k]!.split(' ').slice(1).join(' ') || undefined);
        else s.pending++;
      }
    }
    return s;
  }
}
