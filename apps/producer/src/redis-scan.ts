import type { CliContext } from './cli-context.js';

/** A string matched literally in a SCAN pattern. */
export const globLiteral = (s: string): string => s.replace(/[*?[\]\\]/g, '\\$&');

/** The Redis keys matching `pattern` (SCAN, never KEYS: a large Redis is not blocked). */
export async function redisKeysMatching(ctx: CliContext, pattern: string): Promise<string[]> {
  const found: string[] = [];
  let cursor = '0';
  do {
    const [next, keys] = await ctx.services.redis.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
    cursor = next;
    found.push(...keys);
  } while (cursor !== '0');
  return found;
}
