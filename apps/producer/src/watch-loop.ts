import { isRedisUnavailable, redactUrl, S3UnreachableError, sleep } from '@transferline/shared';
import type { CliContext } from './cli-context.js';

export interface WatchLoopOptions {
  intervalSeconds: number;
  /** for tests: stop after this many rounds */
  maxRounds?: number;
}

/**
 * Runs `round` now and then every `intervalSeconds`, until Ctrl-C (or `maxRounds`): the loop of
 * `ingest --watch` and `classify --watch`. The first round's error ends the command (a wrong
 * prefix, no such model: the user is there to read it). A later round that fails (Redis or S3
 * restarting, the stack stopped overnight, no worker connected for a while) is said, once per
 * kind of failure, and tried again at the next interval; the round that goes through again says
 * so. A watch is left to run unattended: an outage must not end it.
 */
export async function watchRounds(ctx: CliContext, o: WatchLoopOptions, round: (n: number) => Promise<void>): Promise<void> {
  let failing: { since: number; kind: string; rounds: number } | undefined;
  for (let n = 1; ; n++) {
    if (n === 1) await round(n);
    else {
      try {
        await round(n);
        if (failing) {
          ctx.out.write(`watch: round ${n} went through; ${failing.rounds} round${failing.rounds === 1 ? '' : 's'} since round ${failing.since} had failed\n`);
          failing = undefined;
        }
      } catch (err) {
        if (ctx.signal?.aborted) break;
        const message = roundFailure(ctx, err);
        // one kind of failure whatever its figures ("12 images have not moved", then 11): said once
        const kind = message.replace(/\d+(\.\d+)?/g, '#');
        if (failing?.kind !== kind) ctx.out.write(`watch: round ${n} failed: ${message}; trying again every ${o.intervalSeconds} s (Ctrl-C to stop)\n`);
        failing = { since: failing?.since ?? n, rounds: (failing?.rounds ?? 0) + 1, kind };
      }
    }
    if ((o.maxRounds !== undefined && n >= o.maxRounds) || ctx.signal?.aborted) break;
    await sleep(o.intervalSeconds * 1000, ctx.signal);
    if (ctx.signal?.aborted) break;
  }
}

function roundFailure(ctx: CliContext, err: unknown): string {
  const s3 = S3UnreachableError.from(err, ctx.config.s3.endpoint);
  if (s3) return s3.message;
  if (isRedisUnavailable(err)) return `cannot reach Redis at ${redactUrl(ctx.config.redis.url)}`;
  return (err instanceof Error ? err.message : String(err)).split('\n')[0]!;
}
