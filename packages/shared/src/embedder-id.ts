import type { Config } from './config.js';

/**
 * The id of an embedding space: model, weights and preprocessing. Cache keys are
 * (embedder id, content hash), so embeddings made with other weights or another resize policy
 * never mix. Seeded random weights say so in the id.
 */
export function embedderIdFromConfig(config: Pick<Config, 'embed'>): string {
  const weights = config.embed.weights === 'random' ? `random-seed${config.embed.seed}` : config.embed.weights;
  return `efficientnet-b0.${weights}.squash224`;
}
