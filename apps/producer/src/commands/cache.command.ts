import type { CliContext } from '../cli-context.js';

/** `transferline cache rebuild-index`: restores the Redis index of the embedding cache from the shards in the bucket (after Redis lost it). */
export async function rebuildIndexCommand(ctx: CliContext): Promise<number> {
  const before = await ctx.services.cache.size(ctx.embedderId);
  const after = await ctx.services.cache.rebuildIndex(ctx.embedderId);
  ctx.out.write(`embedding index for ${ctx.embedderId}: ${before} → ${after} images, from s3://${ctx.config.s3.bucket}/${ctx.config.s3.prefix}embeddings/${ctx.embedderId}/\n`);
  return after;
}

/** `transferline cache compact`: merges the small per-batch shards into large ones, so training reads few large objects. */
export async function compactCommand(ctx: CliContext, targetRows: number): Promise<{ shardsBefore: number; shardsAfter: number; rows: number }> {
  const r = await ctx.services.cache.compact(ctx.embedderId, targetRows);
  ctx.out.write(`embedding cache ${ctx.embedderId}: ${r.rows} rows, ${r.shardsBefore} shards → ${r.shardsAfter}\n`);
  return r;
}
