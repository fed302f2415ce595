import { BYTES_FAILURE_REASONS, DEFAULT_STALL_SECONDS, relistCommand, TRANSIENT_REASONS, type DatasetStatus, type ItemView, type Stage } from '@transferline/shared';
import type { CliContext } from '../cli-context.js';
import { noSuchDataset } from '../data-loss.js';
import { waitForDataset } from '../dataset-wait.js';
import { submit } from '../ingest.service.js';
import { printDatasetSummary } from './ingest.command.js';

export interface RetryOptions {
  dataset: string;
  /** only failures with this reason code (any code, bad input included); default: the transient ones */
  reason?: string;
  stage?: Stage;
  wait: boolean;
  stallSeconds?: number;
}

/**
 * `transferline retry -d NAME [--reason CODE] [--stage preprocess|embed]`: runs failed images
 * again and waits like ingest. Without --reason it takes the failures that are not the image's
 * (TRANSIENT_REASONS: attempts exhausted, stalled, pixels expired, …), which a re-ingest also retries; bad input
 * (empty, truncated, …) is retried only when --reason names it, e.g. after fixing a decoder.
 * Racing retries are safe: a failed job is moved back by one of them only.
 */
export async function retryCommand(ctx: CliContext, o: RetryOptions): Promise<{ retried: number; status?: DatasetStatus }> {
  const { datasets, inspector, spaces } = ctx.services;
  if (!(await datasets.exists(o.dataset))) throw await noSuchDataset(ctx, o.dataset);
  const spaceId = await datasets.space(o.dataset);
  const space = spaceId ? await spaces.get(spaceId) : undefined;
  if (!space) throw new Error(`dataset ${o.dataset} has no known embedding space: ingest it again`);
  const chosen = (v: ItemView) =>
    v.phase === 'failed' && (o.reason ? v.failure!.reason === o.reason : TRANSIENT_REASONS.has(v.failure!.reason)) && (!o.stage || v.failure!.stage === o.stage);
  const chosenViews: ItemView[] = [];
  let skipped = 0;
  /** the reasons of the failures left alone */
  const left: string[] = [];
  for await (const page of inspector.scan(o.dataset)) {
    for (const v of page) {
      if (chosen(v)) chosenViews.push(v);
      else if (v.phase === 'failed') {
        skipped++;
        // with --stage, a failure may be left alone for its stage alone: say which
        left.push(o.stage ? `${v.failure!.stage} ${v.failure!.reason}` : v.failure!.reason);
      }
    }
  }
  const retried = chosenViews.length;
  for (let i = 0; i < chosenViews.length; i += 1000) {
    const part = chosenViews.slice(i, i + 1000).map((v) => ({ id: v.id, etag: v.record.etag, label: v.record.label, ...(v.record.split && { split: v.record.split }), ...(v.record.manifest && { manifest: v.record.manifest }), previous: v }));
    await submit({ dataset: o.dataset, space }, { services: ctx.services, queues: ctx.queues }, part);
  }
  const what = o.reason ? `with reason ${o.reason}` : `that failed on an error that is not the image's (${[...TRANSIENT_REASONS].join(', ')})`;
  ctx.out.write(`retrying ${retried} failed image${retried === 1 ? '' : 's'} of ${o.dataset} ${what}${o.stage ? ` in ${o.stage}` : ''}`);
  const how = o.stage ? 'name one with --reason and its stage with --stage' : 'name one with --reason';
  // What mends those left alone, by reason (not the one --reason names: left for their stage):
  // a file's own bytes fail again on any retry (a user's trial took the hint and did), so it is
  // replaced or deleted; too many pixels, the workers' limit or the file; the rest, a retry.
  const reasonOf = (r: string) => r.split(' ').pop()!;
  const group = (r: string) => (reasonOf(r) === o.reason ? 'retry' : BYTES_FAILURE_REASONS.has(reasonOf(r)) ? 'bytes' : reasonOf(r) === 'too-many-pixels' ? 'pixels' : 'retry');
  const parts = (['bytes', 'pixels', 'retry'] as const).flatMap((g) => {
    const of = left.filter((r) => group(r) === g);
    if (of.length === 0) return [];
    const reasons = [...new Set(of)].sort().join(', ');
    const them = of.length === 1 ? 'it' : 'them';
    if (g === 'bytes') return [`${reasons}: the files' own bytes, which fail again: replace or delete ${them} and ${relistCommand(o.dataset)}`];
    if (g === 'pixels') return [`${reasons}: raise the preprocess workers' TL_MAX_INPUT_PIXELS (each failure names the limit of the worker that read it: start up again with it, and any worker started by hand) and retry with --reason too-many-pixels, or replace ${them}`];
    return [`${reasons}: ${how} to retry those`];
  });
  // nothing failed at all (a typo'd reason, or the wrong dataset): said, as `failures` does
  ctx.out.write(skipped ? `; ${skipped} other failure${skipped === 1 ? '' : 's'} left alone (${parts.join('; ')})\n` : retried ? '\n' : '; it has no failed images\n');
  if (!o.wait || retried === 0) return { retried };
  const status = await waitForDataset(ctx, o.dataset, { space: space.id, stallSeconds: o.stallSeconds ?? DEFAULT_STALL_SECONDS, ours: { count: retried, what: 'the images retried' } });
  printDatasetSummary(ctx, status);
  return { retried, status };
}
