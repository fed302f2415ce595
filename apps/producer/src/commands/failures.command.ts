import type { DatasetStatus } from '@transferline/shared';
import type { CliContext } from '../cli-context.js';
import { noSuchDataset } from '../data-loss.js';
import { printable } from '../terminal.js';

export type Failure = DatasetStatus['failures'][number];

/**
 * `transferline failures -d NAME [--reason CODE] [--label LABEL] [--json]`: every image of a
 * dataset that failed for good, newest first, with its label, stage, reason code, message and
 * attempts (status shows only the newest 20).
 */
export async function failuresCommand(ctx: CliContext, o: { dataset: string; reason?: string; label?: string; json?: boolean }): Promise<Failure[]> {
  if (!(await ctx.services.datasets.exists(o.dataset))) throw await noSuchDataset(ctx, o.dataset);
  const status = await ctx.services.inspector.status(o.dataset, Number.POSITIVE_INFINITY);
  const failures = status.failures.filter((f) => (!o.reason || f.reason === o.reason) && (o.label === undefined || f.label === o.label));
  if (o.json) {
    ctx.out.write(`${JSON.stringify(failures, null, 2)}\n`);
    return failures;
  }
  const byReason = new Map<string, number>();
  for (const f of failures) byReason.set(f.reason, (byReason.get(f.reason) ?? 0) + 1);
  const filters = [o.reason && `with ${o.reason}`, o.label !== undefined && `of label ${printable(o.label)}`].filter(Boolean).join(' ');
  // a reason nothing failed with (a typo?): the reasons there are; a label the dataset has not: its labels
  const labels = status.labels.map((l) => l.label);
  const others =
    o.label !== undefined && !labels.includes(o.label)
      ? `; it has no label ${printable(o.label)} (its labels: ${labels.map(printable).join(', ')})`
      : !filters || failures.length > 0
        ? ''
        : status.failed > 0
          ? `; its ${status.failed} failed with ${status.failuresByReason.map((r) => `${r.stage} ${r.reason} ${r.count}`).join(', ')}`
          : '; it has no failed images';
  ctx.out.write(`dataset ${o.dataset}: ${failures.length} failed${filters ? ` ${filters}` : ''}${byReason.size ? ` (${[...byReason].map(([r, n]) => `${r} ${n}`).join(', ')})` : ''}${others}\n`);
  for (const f of failures) {
    ctx.out.write(`  ${printable(f.object)}  ${f.stage} ${f.reason}${f.attempts ? ` after ${f.attempts} attempt${f.attempts === 1 ? '' : 's'}` : ''}${f.detail ? `  ${printable(f.detail)}` : ''}\n`);
  }
  return failures;
}
