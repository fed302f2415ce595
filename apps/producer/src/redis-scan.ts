import { scanKeys } from '@transferline/shared';
import type { CliContext } from './cli-context.js';

export { globLiteral } from '@transferline/shared';

/** The Redis keys matching `pattern` (SCAN, never KEYS: a large Redis is not blocked). */
export function redisKeysMatching(ctx: CliContext, pattern: string): Promise<string[]> {
  return scanKeys(ctx.services.redis, pattern);
}
