import { chooseSpace, type CliContext } from '../cli-context.js';
import { CliExit, EXIT } from '../exit-codes.js';

/** `transferline cache rebuild-index`: restores the Redis index of the embedding cache from the shards in the bucket (after Redis lost it). */
export async function rebuildIndexCommand(ctx: CliContext, o: { embedder?: string } = {}): Promise<number> {
  const space = await chooseSpace(ctx, o.embedder);
  const before = await ctx.services.cache.size(space.id);
  const after = await ctx.services.cache.rebuildIndex(space.id);
  ctx.out.write(`embedding index for ${space.id}: ${before} → ${after} images, from s3://${ctx.config.s3.bucket}/${ctx.services.layout.embeddings(space.id)}\n`);
  return after;
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
