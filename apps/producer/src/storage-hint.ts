import { otherStorageWords, recordedStorage, redisKeys, sameStorage, storageAdvice, type Storage, type StorageRecord } from '@transferline/shared';
import type { CliContext } from './cli-context.js';
import { globLiteral, redisKeysMatching } from './redis-scan.js';
import { printable } from './terminal.js';

/**
 * Refuses a command whose TL_BUCKET/TL_PREFIX are not its deployment's, before it reads or
 * changes anything: a trial of two teams on one Redis and one bucket found `delete dataset`,
 * `cache compact` and `rebuild-index`, `promote`, `delete run`, `ingest` and `retry`, in a shell
 * with one team's TL_QUEUE_PREFIX and the other's TL_PREFIX (or one of them left out), reading,
 * changing and deleting the other team's data, where only an empty answer had been checked. The
 * deployment's storage is the one it recorded (claimStorage), else the one its live embed workers
 * all say (a deployment of a version before the record). A queue prefix that holds no deployment
 * (nothing recorded, no dataset, no worker) whose storage is another prefix's recorded one is
 * refused too: a mistyped TL_QUEUE_PREFIX would see none of that deployment's records, and
 * `delete space` found its cache unused. `status` and `console` warn instead (storageHint).
 */
export async function refuseOtherStorage(ctx: CliContext): Promise<void> {
  const { redis, keys, spaces, datasets } = ctx.services;
  const own: Storage = { bucket: ctx.config.s3.bucket, prefix: ctx.config.s3.prefix };
  /** the other queue prefixes whose deployments recorded this shell's storage as theirs (a SCAN: only on the way to a refusal) */
  const recordedElsewhere = async () => {
    const tail = keys.storage().slice(ctx.config.redis.prefix.length);
    const found: { prefix: string; record: StorageRecord }[] = [];
    for (const key of await redisKeysMatching(ctx, `*${globLiteral(tail)}`)) {
      if (key === keys.storage() || !key.endsWith(tail)) continue;
      const prefix = key.slice(0, -tail.length);
      const record = await recordedStorage(redis, redisKeys(prefix)).catch(() => undefined);
      if (record && sameStorage(record, own)) found.push({ prefix, record });
    }
    return found;
  };
  const refuse = async (theirs: Storage, source: string) => {
    const others = await recordedElsewhere();
    const other = others.length ? ` (s3://${own.bucket}/${own.prefix} is the deployment's under ${others.map((o) => `TL_QUEUE_PREFIX=${printable(o.prefix)}`).join(', ')}: set that TL_QUEUE_PREFIX for it.)` : '';
    return new Error(`${otherStorageWords(theirs, source, own, keys, ctx.config.redis, 'this shell')}${other} Nothing was done.`);
  };
  const recorded = await recordedStorage(redis, keys);
  if (recorded) {
    if (!sameStorage(recorded, own)) throw await refuse(recorded, `as recorded by its first process (${recorded.by}, ${recorded.at})`);
    return;
  }
  const live = [...new Map((await spaces.liveWorkers()).flatMap((w) => (w.storage ? [[`${w.storage.bucket}/${w.storage.prefix}`, w.storage] as const] : []))).values()];
  // (live workers that disagree among themselves: status names each; which is right is not for this check to say)
  if (live.length === 1 && !sameStorage(live[0]!, own)) throw await refuse(live[0]!, 'as its live embed workers say (no record yet)');
  if (live.length > 0 || (await datasets.list()).length > 0) return;
  const [theirs] = await recordedElsewhere();
  if (theirs) {
    throw new Error(
      `s3://${own.bucket}/${own.prefix} is where the deployment under TL_QUEUE_PREFIX=${printable(theirs.prefix)} on this Redis keeps its embeddings and models (recorded by its first process, ${theirs.record.by}, ${theirs.record.at}), and this shell's TL_QUEUE_PREFIX=${printable(ctx.config.redis.prefix)} holds no deployment: ` +
        `set TL_QUEUE_PREFIX=${printable(theirs.prefix)} as its workers have it, or another TL_BUCKET or TL_PREFIX for a deployment of its own. Nothing was done.`,
    );
  }
}

/**
 * What a command says when the bucket has nothing for it: `base` with the settings to mend when
 * this shell's TL_BUCKET/TL_PREFIX are none of the live workers' (then looking elsewhere, not
 * training, is the answer), else `base` with its usual `advice`.
 */
export async function nothingHere(ctx: CliContext, base: string, advice: string | (() => Promise<string>)): Promise<string> {
  const hint = await storageHint(ctx);
  if (hint) return `${base}: ${hint}`;
  return `${base}${typeof advice === 'string' ? advice : await advice()}`;
}

/**
 * The storage advice for this shell, from the live workers, or with none live from the storage the
 * deployment recorded (claimStorage); undefined when there is none to give.
 */
export async function storageHint(ctx: CliContext): Promise<string | undefined> {
  const { spaces, redis, keys } = ctx.services;
  const hint = async () => {
    const workers = await spaces.liveWorkers();
    if (workers.some((w) => w.storage)) return storageAdvice(ctx.config.s3, workers);
    const recorded = await recordedStorage(redis, keys);
    if (recorded === undefined) return undefined;
    return storageAdvice(ctx.config.s3, [{ storage: recorded }], { keep: 'this deployment keeps', have: 'as its first process recorded it' });
  };
  // (a Redis that does not answer: the usual advice, and the command goes on to say so)
  return hint().catch(() => undefined);
}

/**
 * For a command given a prefix with nothing under it: whether its URL, without the "/" the
 * prefix was given, names one object (a file, or a manifest, given where a folder is asked for).
 */
export async function namesOneObject(ctx: Pick<CliContext, 'services'>, url: string, bucket: string, prefix: string): Promise<boolean> {
  if (url.endsWith('/')) return false;
  return (await ctx.services.store.headObject(bucket, prefix.slice(0, -1)).catch(() => undefined)) !== undefined;
}
