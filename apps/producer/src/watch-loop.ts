import { isRedisUnavailable, redactUrl, S3UnreachableError, sleep } from '@transferline/shared';
import type { CliContext } from './cli-context.js';
import { CliExit } from './exit-codes.js';

/**
 * A later round's finding that ends the watch rather than be tried again at the next interval:
 * what it watches for is gone (its dataset deleted, its model deleted), and going on would do
 * harm (ingest it all again as a new dataset) or nothing (classify with no model) unseen.
 */
export class WatchEnded extends CliExit {}

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
 * so. A watch is left to run unattended: an outage must not end it. A round that finds what it
 * watches for gone ends it (WatchEnded).
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
        if (err instanceof WatchEnded) throw err;
        if (ctx.signal?.aborted) break;
        const { headline, detail } = roundFailure(ctx, err);
        // one kind of failure whatever its figures ("12 images have not moved", then 11): said
        // once; the lines it names (a manifest's bad rows) as they are, so other rows are said again
        const kind = [headline.replace(/\d+(\.\d+)?/g, '#'), ...detail].join('\n');
        if (failing?.kind !== kind) ctx.out.write(`watch: round ${n} failed: ${headline}; trying again every ${o.intervalSeconds} s (Ctrl-C to stop)\n${detail.map((l) => `${l}\n`).join('')}`);
        failing = { since: failing?.since ?? n, rounds: (failing?.rounds ?? 0) + 1, kind };
      }
    }
    if ((o.maxRounds !== undefined && n >= o.maxRounds) || ctx.signal?.aborted) break;
    await sleep(o.intervalSeconds * 1000, ctx.signal);
    if (ctx.signal?.aborted) break;
  }
}

/** A failed round's error in a line, and the indented lines under it that name what is wrong (a refused manifest's rows). */
function roundFailure(ctx: CliContext, err: unknown): { headline: string; detail: string[] } {
  const s3 = S3UnreachableError.from(err, ctx.config.s3.endpoint);
  if (s3) return { headline: s3.message, detail: [] };
  if (isRedisUnavailable(err)) return { headline: `cannot reach Redis at ${redactUrl(ctx.config.redis.url)}`, detail: [] };
  // (a command's refusal, worded for the end of a command, starts with its name)
  // (a stall's message starts on a line of its own)
  const [headline, ...rest] = (err instanceof Error ? err.message : String(err)).trimStart().replace(/^transferline: /, '').split('\n');
  return { headline: headline!, detail: rest.filter((l) => /^ {2}(line \d+:|… and \d+ more)/.test(l)) };
}
