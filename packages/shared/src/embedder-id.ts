import type { Config } from './config.js';

/**
 * The id of an embedding space: model, weights (their MD5, so embeddings from other weights never
 * mix) and preprocessing (resize policy and size). Cache keys are (embedder id, content hash), and
 * every trained model records the id it was trained in. Seeded random weights say so in the id.
 */
export function embedderIdFromConfig(config: Pick<Config, 'embed' | 'preprocess'>): string {
  const weights = config.embed.weights === 'random' ? `random-seed${config.embed.seed}` : `imagenet-${config.embed.weightsMd5.slice(0, 8)}`;
  return `efficientnet-b0.${weights}.${config.preprocess.resize}224`;
}
