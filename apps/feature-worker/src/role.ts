import type { createMetrics } from '@transferline/shared';

export type Role = 'preprocess' | 'embed';

/** A started worker role: its metrics, its health, and a clean stop. */
export interface RunningRole {
  metrics: ReturnType<typeof createMetrics>;
  healthy: () => boolean;
  stop: () => Promise<void>;
}
