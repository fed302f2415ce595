import type { DatasetStatus } from '@transferline/shared';
import type { CliContext } from '../cli-context.js';
import { noSuchDataset } from '../data-loss.js';
import { printable } from '../terminal.js';

export type Failure = DatasetStatus['failures'][number];

/**
 * `transferline failures -d NAME [--reason CODE] [--json]`: every image of a dataset that failed
 * for good, with its stage, reason code, message and attempts (status shows only the first 20).
 */
export async function failuresCommand(ctx: CliContext, o: { dataset: string; reason?: string; json?: boolean }): Promise<Failure[]> {
  if (!(await ctx.services.datasets.exists(o.dataset))) throw await noSuchDataset(ctx, o.dataset);
  const status = await ctx.services.inspector.status(o.dataset, Number.POSITIVE_INFINITY);
  const failures = status.failures.filter((f) => !o.reason || f.reason === o.reason);
  if (o.json) {
    ctx.out.write(`${JSON.stringify(failures, null, 2)}\n`);
    return failures;
  }
  const byReason = new Map<string, number>();
  for (const f of failures) byReason.set(f.reason, (byReason.get(f.reason) ?? 0) + 1);
  // a reason nothing failed with (a typo?): the reasons there are
  const others = !o.reason || failures.length > 0 ? '' : status.failed > 0 ? `; its ${status.failed} failed with ${status.failuresByReason.map((r) => `${r.stage} ${r.reason} ${r.count}`).join(', ')}` : '; it has no failed images';
  ctx.out.write(`dataset ${o.dataset}: ${failures.length} failed${o.reason ? ` with ${o.reason}` : ''}${byReason.size ? ` (${[...byReason].map(([r, n]) => `${r} ${n}`).join(', ')})` : ''}${others}\n`);
  for (const f of failures) {
    ctx.out.write(`  ${printable(f.object)}  ${f.stage} ${f.reason}${f.attempts ? ` after ${f.attempts} attempt${f.attempts === 1 ? '' : 's'}` : ''}${f.detail ? `  ${printable(f.detail)}` : ''}\n`);
  }
  return failures;
}
