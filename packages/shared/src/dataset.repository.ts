import type { ChainableCommander, Redis } from 'ioredis';
import { EmbedFailure, ItemRecord, parseDocument } from './documents.js';
import type { RedisKeys } from './keys.js';
import { execPipeline, RedisScript } from './redis.client.js';

// Writes item records (ARGV[1] = 'worker' or 'ingest', then id, record pairs), keeping a `split`
// the stored record has when the new one names none: the split is known at ingest, and later
// stages rewrite the record without knowing it (a label manifest's row, or an ingest that takes
// an image from a manifest to folders, says the split itself: a row without one has none). A worker's write keeps the stored label (and the
// label manifest that gave it, which no job carries): the
// label is ingest's to give (a job carries the one of the listing that enqueued it, and an ingest
// of the parent prefix since gave the object another under the same job). A worker's write is skipped when the stored
// record is about other content than its job was for (another ETag: the object was overwritten
// and ingested again; another embedding space: ingested again into it), when there is no record
// (the item was removed since, or its whole dataset deleted), and when it would turn an image its
// own earlier run queued into "cached" (a job run twice finds the image it queued embedded by
// then): what ingest wrote since, and what the first run did, stand. Only a write that happened
// names the dataset in the set of datasets, so a job that finishes after its dataset was deleted
// does not bring the name back.
const PUT_ITEMS = new RedisScript('tlPutItems', `
local worker = ARGV[1] == 'worker'
local wrote = false
for i = 2, #ARGV, 2 do
  local rec = cjson.decode(ARGV[i + 1])
  local old = redis.call('HGET', KEYS[1], ARGV[i])
  -- no record: ingest writes one before any job, so the item was removed (its object deleted,
  -- or moved by relabel) since this job was enqueued
  local skip = worker and not old
  if old then
    local o = cjson.decode(old)
    if worker and ((o.etag and rec.etag and o.etag ~= rec.etag) or (o.space and rec.space and o.space ~= rec.space)) then
      skip = true
    elseif worker and rec.state == 'cached' and o.state == 'queued' and o.sha256 == rec.sha256 then
      skip = true
    else
      local kept = false
      if worker and o.label and rec.label ~= o.label then
        rec.label = o.label
        kept = true
      end
      if rec.split == nil and o.split and (worker or (rec.manifest == nil and o.manifest == nil)) then
        rec.split = o.split
        kept = true
      end
      if worker and rec.manifest == nil and o.manifest then
        rec.manifest = o.manifest
        kept = true
      end
      if kept then ARGV[i + 1] = cjson.encode(rec) end
    end
  end
  if not skip then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    wrote = true
  end
end
if wrote then redis.call('SADD', KEYS[2], KEYS[3]) end
return 1`, 3);

/** A dataset's members (`bucket/key` → label, hash, state), its embedding space, and the failures of its images, kept in Redis. */
export class DatasetRepository {
  constructor(
    private readonly redis: Redis,
    private readonly keys: RedisKeys,
  ) {
    // before any pipeline of this connection is made, so that those carry it too
    PUT_ITEMS.define(redis);
  }

  static itemId(bucket: string, key: string): string {
    return `${bucket}/${key}`;
  }

  /** `bucket/key` → `s3://bucket/key`, the object as a user names it. */
  static objectUrl(itemId: string): string {
    return `s3://${itemId}`;
  }

  /** `bucket/key` → its parts (bucket names have no `/`). */
  static parseItemId(id: string): { bucket: string; key: string } {
    const slash = id.indexOf('/');
    return { bucket: id.slice(0, slash), key: id.slice(slash + 1) };
  }

  async list(): Promise<string[]> {
    return (await this.redis.smembers(this.keys.datasets())).sort();
  }

  async exists(dataset: string): Promise<boolean> {
    return (await this.redis.sismember(this.keys.datasets(), dataset)) === 1;
  }

  /** The embedding space a dataset was last ingested into (what train uses). */
  async space(dataset: string): Promise<string | undefined> {
    return (await this.redis.hget(this.keys.datasetMeta(dataset), 'space')) ?? undefined;
  }

  async setSpace(dataset: string, space: string): Promise<void> {
    await this.redis.hset(this.keys.datasetMeta(dataset), 'space', space);
  }

  /**
   * A prefix as the dataset records its sources, `bucket/prefix` (item ids under it start with it;
   * a prefix ends in `/`, or is empty); a label manifest is recorded as `bucket/key` of its object.
   */
  static source(bucket: string, prefix: string): string {
    return `${bucket}/${prefix}`;
  }

  /** Records that `bucket/prefix` was ingested into the dataset. */
  async addSource(dataset: string, bucket: string, prefix: string): Promise<void> {
    await this.redis.sadd(this.keys.datasetSources(dataset), DatasetRepository.source(bucket, prefix));
  }

  /** Whether the dataset records `bucket/prefix` (or a manifest's `bucket/key`) as a source, and a space: what an ingest's first page records, and a deletion removes. */
  async holdsSource(dataset: string, bucket: string, prefix: string): Promise<boolean> {
    const [space, source] = await Promise.all([this.space(dataset), this.redis.sismember(this.keys.datasetSources(dataset), DatasetRepository.source(bucket, prefix))]);
    return space !== undefined && source === 1;
  }

  /** Every `bucket/prefix` ingested into the dataset. */
  async sources(dataset: string): Promise<string[]> {
    return this.redis.smembers(this.keys.datasetSources(dataset));
  }

  /** Records that an ingest of `bucket/prefix` into the dataset listed it to the end (every object seen). */
  async markListed(dataset: string, bucket: string, prefix: string): Promise<void> {
    await this.redis.sadd(this.keys.datasetListed(dataset), DatasetRepository.source(bucket, prefix));
  }

  /** Of the dataset's sources, every `bucket/prefix` an ingest listed to the end. */
  async listedSources(dataset: string): Promise<string[]> {
    return this.redis.smembers(this.keys.datasetListed(dataset));
  }

  /** Whether one of a dataset's sources is a label manifest (`bucket/key` of an object), not a prefix (which ends in `/`). */
  static isManifestSource(source: string): boolean {
    return !source.endsWith('/');
  }

  /** Of a dataset's `sources`, the prefix an item lies under (the longest, when they nest); a label manifest is no folder. */
  static sourceAmong(sources: string[], itemId: string): string | undefined {
    return sources.filter((s) => !DatasetRepository.isManifestSource(s) && itemId.startsWith(s)).sort((a, b) => b.length - a.length)[0];
  }

  /** The ingested prefix an item's key lies under (the longest, when they nest), or undefined. */
  async sourceOf(dataset: string, itemId: string): Promise<{ bucket: string; prefix: string } | undefined> {
    const found = DatasetRepository.sourceAmong(await this.sources(dataset), itemId);
    if (found === undefined) return undefined;
    const slash = found.indexOf('/');
    return { bucket: found.slice(0, slash), prefix: found.slice(slash + 1) };
  }

  /**
   * The other datasets that hold any of these objects (ingested, or classified, from the same
   * keys), and which each holds: what a move of the objects changes besides `except`.
   */
  async otherHolders(except: string, itemIds: string[]): Promise<{ dataset: string; held: string[]; manifests: Map<string, string> }[]> {
    const others = (await this.list()).filter((d) => d !== except);
    const held = new Map<string, string[]>(others.map((d) => [d, []]));
    // of those, the ones a label manifest labels there: id → the manifest
    const manifests = new Map<string, Map<string, string>>(others.map((d) => [d, new Map()]));
    // a thousand ids a round trip, whatever the move's size
    for (let at = 0; at < itemIds.length && others.length; at += 1_000) {
      const ids = itemIds.slice(at, at + 1_000);
      const pipe = this.redis.pipeline();
      for (const d of others) pipe.hmget(this.keys.datasetItems(d), ...ids);
      const replies = await execPipeline(pipe);
      others.forEach((d, i) =>
        (replies[i] as (string | null)[]).forEach((r, k) => {
          if (r === null) return;
          held.get(d)!.push(ids[k]!);
          const manifest = parseItem(r, d, ids[k]!).manifest;
          if (manifest !== undefined) manifests.get(d)!.set(ids[k]!, manifest);
        }),
      );
    }
    return [...held].filter(([, ids]) => ids.length > 0).map(([dataset, ids]) => ({ dataset, held: ids, manifests: manifests.get(dataset)! }));
  }

  async getItems(dataset: string, itemIds: string[]): Promise<(ItemRecord | undefined)[]> {
    if (itemIds.length === 0) return [];
    const raw = await this.redis.hmget(this.keys.datasetItems(dataset), ...itemIds);
    return raw.map((r, i) => (r === null ? undefined : parseItem(r, dataset, itemIds[i]!)));
  }

  /**
   * Writes item records, keeping a split the stored record has; with `pipe`, queues the write
   * there instead. `by: 'worker'` for a stage's job reporting on its item: skipped when the item
   * is gone or its record has moved on to other content (see PUT_ITEMS); ingest and relabel write
   * always.
   */
  async putItems(dataset: string, items: [itemId: string, record: ItemRecord][], pipe?: ChainableCommander, by: 'ingest' | 'worker' = 'ingest'): Promise<void> {
    if (items.length === 0) return;
    const keys = [this.keys.datasetItems(dataset), this.keys.datasets(), dataset];
    const args = [by, ...items.flatMap(([id, r]) => [id, JSON.stringify(r)])];
    if (pipe) PUT_ITEMS.queue(pipe, keys, args);
    else await PUT_ITEMS.run(this.redis, keys, args);
  }

  async putItem(dataset: string, itemId: string, record: ItemRecord, by: 'ingest' | 'worker' = 'ingest'): Promise<void> {
    await this.putItems(dataset, [[itemId, record]], undefined, by);
  }

  /** How many items the dataset holds. */
  async size(dataset: string): Promise<number> {
    return this.redis.hlen(this.keys.datasetItems(dataset));
  }

  /**
   * Takes items out of a dataset. Their objects were deleted: the objects' content hashes are
   * forgotten too; unless `objectsStay` (a manifest no longer names them, and they are still in
   * the bucket): an ingest that brings them back then knows their bytes without reading them.
   */
  async removeItems(dataset: string, itemIds: string[], o: { objectsStay?: boolean } = {}): Promise<void> {
    if (itemIds.length === 0) return;
    const tx = this.redis.multi().hdel(this.keys.datasetItems(dataset), ...itemIds);
    if (!o.objectsStay) tx.hdel(this.keys.objectHashes(), ...itemIds);
    await tx.exec();
  }

  /**
   * Forgets a dataset: its items, its facts, its sources and its name; and the remembered content
   * hashes of its objects that no other dataset holds. The objects themselves and their cached
   * embeddings stay (the cache is shared by content). Jobs of its images still on their way find
   * no record when they finish and write nothing (see PUT_ITEMS). Returns how many items it held.
   */
  async remove(dataset: string): Promise<number> {
    const items = this.keys.datasetItems(dataset);
    const held = await this.redis.hlen(items);
    const others = (await this.list()).filter((d) => d !== dataset);
    let cursor = '0';
    do {
      const [next, flat] = await this.redis.hscan(items, cursor, 'COUNT', 1000);
      cursor = next;
      let unshared = flat.filter((_, i) => i % 2 === 0);
      for (const other of others) {
        if (unshared.length === 0) break;
        const there = await this.redis.hmget(this.keys.datasetItems(other), ...unshared);
        unshared = unshared.filter((_, i) => there[i] === null);
      }
      if (unshared.length) await this.redis.hdel(this.keys.objectHashes(), ...unshared);
    } while (cursor !== '0');
    await this.redis.multi().del(items, this.keys.datasetMeta(dataset), this.keys.datasetSources(dataset), this.keys.datasetListed(dataset)).srem(this.keys.datasets(), dataset).exec();
    return held;
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

  async rememberHash(itemId: string, etag: string, sha256: string, pipe?: ChainableCommander): Promise<void> {
    if (pipe) pipe.hset(this.keys.objectHashes(), itemId, DatasetRepository.hashEntry(etag, sha256));
    else await this.redis.hset(this.keys.objectHashes(), itemId, DatasetRepository.hashEntry(etag, sha256));
  }

  /** An object's entry in `keys.objectHashes()` (field: its item id), as `knownHashes` reads it. */
  static hashEntry(etag: string, sha256: string): string {
    return `${etag} ${sha256}`;
  }

  /** For each content hash, its embedding failure in this space, if it failed for good. */
  async embedFailures(embedderId: string, hashes: string[]): Promise<(EmbedFailure | undefined)[]> {
    if (hashes.length === 0) return [];
    const raw = await this.redis.hmget(this.keys.embeddingFailures(embedderId), ...hashes);
    return raw.map((r) => (r === null ? undefined : parseEmbedFailure(r)));
  }

  async recordEmbedFailure(embedderId: string, sha256: string, failure: EmbedFailure): Promise<void> {
    await this.redis.hset(this.keys.embeddingFailures(embedderId), sha256, JSON.stringify(failure));
  }

  /** Forgets embedding failures (the images are about to be tried again). */
  async clearEmbedFailures(embedderId: string, hashes: string[], pipe?: ChainableCommander): Promise<void> {
    if (hashes.length === 0) return;
    if (pipe) pipe.hdel(this.keys.embeddingFailures(embedderId), ...hashes);
    else await this.redis.hdel(this.keys.embeddingFailures(embedderId), ...hashes);
  }

  /**
   * Every item of a dataset, streamed with HSCAN so a large dataset is never read in one reply.
   * The next page is asked for as soon as its cursor is known, so Redis reads it while the
   * caller works on this one (a status of 1,000,000 items is a thousand pages).
   */
  async *scan(dataset: string): AsyncGenerator<[string, ItemRecord][]> {
    const key = this.keys.datasetItems(dataset);
    const ask = (cursor: string) => {
      const reply = this.redis.hscan(key, cursor, 'COUNT', 1000);
      reply.catch(() => {}); // a caller that stops early leaves it unread; a failure is thrown where it is read
      return reply;
    };
    let reply = ask('0');
    for (;;) {
      const [next, flat] = await reply;
      if (next !== '0') reply = ask(next);
      const page: [string, ItemRecord][] = [];
      for (let i = 0; i + 1 < flat.length; i += 2) page.push([flat[i]!, parseItem(flat[i + 1]!, dataset, flat[i]!)]);
      if (page.length) yield page;
      if (next === '0') return;
    }
  }
}

function parseItem(raw: string, dataset: string, id: string): ItemRecord {
  return parseDocument(ItemRecord, JSON.parse(raw), `item ${id} of dataset ${dataset}`);
}

function parseEmbedFailure(raw: string): EmbedFailure {
  return parseDocument(EmbedFailure, JSON.parse(raw), 'an embedding failure');
}
