import { recordedStorage, storageAdvice } from '@transferline/shared';
import type { CliContext } from './cli-context.js';

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
