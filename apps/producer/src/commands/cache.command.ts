import { SpaceResolutionError } from '@transferline/shared';
import { chooseSpace, type CliContext } from '../cli-context.js';
import { CliExit, EXIT } from '../exit-codes.js';
import { recordLossBeforeRebuild } from '../data-loss.js';

/** `transferline cache rebuild-index`: restores the Redis index of the embedding cache from the shards in the bucket (after Redis lost it). */
export async function rebuildIndexCommand(ctx: CliContext, o: { embedder?: string } = {}): Promise<{ indexed: number; dropped: number }> {
  const id = await spaceToRebuild(ctx, o.embedder);
  const before = await ctx.services.cache.size(id);
  await recordLossBeforeRebuild(ctx, id);
  const r = await ctx.services.cache.rebuildIndex(id);
  ctx.out.write(`embedding index for ${id}: ${before} → ${r.indexed} images, from s3://${ctx.config.s3.bucket}/${ctx.services.layout.embeddings(id)}\n`);
  if (r.dropped) {
    ctx.out.write(`  ${r.dropped} entr${r.dropped === 1 ? 'y' : 'ies'} dropped: their shard, or its data (.npy), is no longer in the bucket; ingest their datasets again to embed those images again\n`);
  }
  return r;
}

/**
 * The space whose index to rebuild. After Redis lost its data no space may be published there
 * until a worker of it starts: one named with --embedder whose shards are in the bucket is
 * rebuilt all the same (the bucket is the source of truth).
 */
async function spaceToRebuild(ctx: CliContext, embedder?: string): Promise<string> {
  try {
    return (await chooseSpace(ctx, embedder)).id;
  } catch (err) {
    if (!embedder || !(err instanceof SpaceResolutionError)) throw err;
    const { bucket } = ctx.config.s3;
    const folder = ctx.services.layout.embeddings(embedder);
    for await (const _ of ctx.services.store.listObjects(bucket, folder)) {
      ctx.out.write(`embedding space ${embedder} is not published in Redis (no worker of it has started since Redis lost its data?); its shards are in s3://${bucket}/${folder}\n`);
      return embedder;
    }
    throw err;
  }
}

/** A shard write takes seconds; data an hour old that no manifest names will never get one. */
export const DEFAULT_ORPHAN_MINUTES = 60;

/**
 * `transferline cache compact`: merges the small shards the embed stage writes into large ones, so
 * training reads few large objects; then deletes shard data that no manifest names (left by a
 * write cut short) once it is `orphansOlderThan` minutes old, so a write in progress keeps its data.
 */
export async function compactCommand(
  ctx: CliContext,
  o: { rows: number; embedder?: string; orphansOlderThan?: number },
): Promise<{ shardsBefore: number; shardsAfter: number; rows: number; orphans: number }> {
  if (!(o.rows >= 2)) throw new CliExit(EXIT.usage, 'transferline: --rows must be at least 2');
  const orphanMinutes = o.orphansOlderThan ?? DEFAULT_ORPHAN_MINUTES;
  if (!(orphanMinutes >= 0)) throw new Error('--orphans-older-than must be 0 or more minutes');
  const space = await chooseSpace(ctx, o.embedder);
  const r = await ctx.services.cache.compact(space.id, o.rows);
  const orphans = await ctx.services.cache.sweepOrphans(space.id, orphanMinutes * 60_000);
  ctx.out.write(`embedding cache ${space.id}: ${r.rows} rows, ${r.shardsBefore} shard${r.shardsBefore === 1 ? '' : 's'} → ${r.shardsAfter}`);
  ctx.out.write(orphans ? `; ${orphans} leftover .npy without a manifest deleted\n` : '\n');
  return { ...r, orphans };
}
