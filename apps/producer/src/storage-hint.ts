import { otherStorageWords, ownedElsewhereWords, recordedStorage, sameStorage, storageAdvice, storageOwners, type Storage } from '@transferline/shared';
import type { CliContext } from './cli-context.js';
import { printable } from './terminal.js';

/**
 * Refuses a command whose TL_BUCKET/TL_PREFIX are not its deployment's, before it reads or
 * changes anything: a trial of two teams on one Redis and one bucket found `delete dataset`,
 * `cache compact` and `rebuild-index`, `promote`, `delete run`, `ingest` and `retry`, in a shell
 * with one team's TL_QUEUE_PREFIX and the other's TL_PREFIX (or one of them left out), reading,
 * changing and deleting the other team's data, where only an empty answer had been checked.
 * `status` and the console warn instead (storageMismatch).
 */
export async function refuseOtherStorage(ctx: CliContext): Promise<void> {
  const mismatch = await storageMismatch(ctx);
  if (mismatch) throw new Error(`${mismatch.words} Nothing was done.`);
}

/**
 * Why this shell's TL_BUCKET/TL_PREFIX are not its deployment's, with the settings to set; undefined
 * when they are (or nothing says otherwise). The deployment's storage is the one it recorded
 * (claimStorage), else the one its live embed workers all say (a deployment of a version before
 * the record). A queue prefix with neither, whose storage another prefix's deployment recorded, is
 * a mistyped TL_QUEUE_PREFIX: its commands would see none of that deployment's records (`delete
 * space` found its cache unused). Live workers that disagree among themselves are `status`'s to
 * name; which is right is not this check's to say.
 */
export async function storageMismatch(ctx: CliContext): Promise<StorageMismatch | undefined> {
  const { redis, keys, spaces } = ctx.services;
  const own: Storage = { bucket: ctx.config.s3.bucket, prefix: ctx.config.s3.prefix };
  const settings = { prefix: printable(ctx.config.redis.prefix) };
  /** another prefix's deployment keeps this shell's storage: named, as the likelier mistake */
  const owners = async () => (await storageOwners(redis, ctx.config.redis.prefix, own)).map((o) => ({ ...o, prefix: printable(o.prefix) }));
  const other = async (theirs: Storage, source: string) => {
    const elsewhere = await owners();
    const also = elsewhere.length ? ` (s3://${own.bucket}/${own.prefix} is the deployment's under ${elsewhere.map((o) => `TL_QUEUE_PREFIX=${o.prefix}`).join(', ')}: set that TL_QUEUE_PREFIX to work on it.)` : '';
    return { kind: 'storage' as const, words: `${otherStorageWords(theirs, source, own, settings, 'this shell', "as the deployment's workers have it")}${also}` };
  };
  const recorded = await recordedStorage(redis, keys);
  if (recorded) return sameStorage(recorded, own) ? undefined : other(recorded, `as recorded by its first process (${recorded.by}, ${recorded.at})`);
  const live = [...new Map((await spaces.liveWorkers()).flatMap((w) => (w.storage ? [[`${w.storage.bucket}/${w.storage.prefix}`, w.storage] as const] : []))).values()];
  if (live.length === 1 && !sameStorage(live[0]!, own)) return other(live[0]!, 'as its live embed workers say (no record yet)');
  if (live.length > 0) return undefined;
  const elsewhere = await owners();
  return elsewhere.length ? { kind: 'queue-prefix', words: ownedElsewhereWords(elsewhere, own, settings, 'this shell') } : undefined;
}

/** A shell that is not on one deployment: its storage is not its queue prefix's deployment's, or its queue prefix holds none and its storage is another's. */
export interface StorageMismatch {
  kind: 'storage' | 'queue-prefix';
  words: string;
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
