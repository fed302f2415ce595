import { parseS3Url, type DatasetStatus } from '@transferline/shared';
import type { CliContext } from '../cli-context.js';
import { ingestPrefix, type IngestCounts } from '../ingest.service.js';
import { createProgress } from '../progress.js';

export interface IngestOptions {
  dataset: string;
  wait: boolean;
  /** seconds without progress before the CLI says the workers may not be running */
  stallHintSeconds?: number;
}

export interface IngestOutcome {
  counts: IngestCounts;
  status?: DatasetStatus;
}

/** `transferline ingest s3://bucket/prefix --dataset NAME`: list, enqueue, then follow the dataset until every item is embedded or failed. */
export async function ingestCommand(ctx: CliContext, url: string, o: IngestOptions): Promise<IngestOutcome> {
  const { bucket, prefix } = parseS3Url(url);
  const listing = createProgress('listing');
  let counts: IngestCounts;
  try {
    counts = await ingestPrefix(
      { bucket, prefix, dataset: o.dataset, embedderId: ctx.embedderId },
      { services: ctx.services, preprocessQueue: ctx.queues.preprocess },
      (c) => listing.update(c.listed, c.listed, `listed, ${c.enqueued} enqueued`),
    );
  } catch (err) {
    const name = (err as Error).name;
    if (name === 'NoSuchBucket') throw new Error(`bucket ${bucket} does not exist at ${ctx.config.s3.endpoint}`);
    throw err;
  } finally {
    listing.stop();
  }
  const w = (s: string) => ctx.out.write(`${s}\n`);
  w(
    `ingest s3://${bucket}/${prefix} → dataset ${o.dataset}: ${counts.listed} objects listed, ${counts.enqueued} enqueued, ` +
      `${counts.fromCache} already embedded, ${counts.unchanged} unchanged` +
      (counts.unlabelled ? `, ${counts.unlabelled} skipped (not in a label folder: use <prefix>/<label>/<file>)` : ''),
  );
  if (!o.wait) return { counts };
  const status = await waitForDataset(ctx, o.dataset, o.stallHintSeconds ?? 30);
  printDatasetSummary(ctx, status);
  return { counts, status };
}

/** Polls a dataset until nothing is pending, with a progress bar. */
export async function waitForDataset(ctx: CliContext, dataset: string, stallHintSeconds: number): Promise<DatasetStatus> {
  const bar = createProgress(`embedding ${dataset}`);
  let lastDone = -1;
  let lastChange = Date.now();
  let hinted = false;
  try {
    for (;;) {
      const s = await ctx.services.datasets.status(dataset, ctx.embedderId);
      const done = s.embedded + s.failed;
      bar.update(done, s.total, `embedded ${s.embedded} (cached ${s.cached}), failed ${s.failed}`);
      if (s.pending === 0) return s;
      if (done !== lastDone) {
        lastDone = done;
        lastChange = Date.now();
      } else if (!hinted && Date.now() - lastChange > stallHintSeconds * 1000) {
        hinted = true;
        const workers = await Promise.all([ctx.queues.preprocess.getWorkersCount(), ctx.queues.embed.getWorkersCount()]);
        ctx.out.write(
          `\nno progress for ${stallHintSeconds} s; workers connected: preprocess ${workers[0]}, embed ${workers[1]}` +
            (workers[0] && workers[1] ? ' (still working?)\n' : ' — start them with "transferline up" or the feature-worker processes\n'),
        );
      }
      // Each poll scans the dataset's records: poll a large dataset less often (200,000 → every 2.5 s).
      await new Promise((r) => setTimeout(r, Math.min(10_000, 500 + s.total / 100)));
    }
  } finally {
    bar.stop();
  }
}

export function printDatasetSummary(ctx: CliContext, s: DatasetStatus): void {
  const w = (line: string) => ctx.out.write(`${line}\n`);
  w(`dataset ${s.dataset}: ${s.total} images, ${s.embedded} embedded (${s.cached} served from cache), ${s.failed} failed, ${s.pending} pending`);
  const labels = Object.entries(s.labels).sort(([a], [b]) => a.localeCompare(b));
  if (labels.length) w(`  labels: ${labels.map(([l, n]) => `${l} (${n})`).join(', ')}`);
  for (const f of s.failures) w(`  failed ${f.item}: ${f.reason}${f.detail ? ` — ${f.detail}` : ''}`);
  if (s.failed > s.failures.length) w(`  … and ${s.failed - s.failures.length} more failures`);
}
