import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { openCliContext } from '@transferline/producer/cli-context';
import { trainCommand } from '@transferline/producer/commands/train.command';
import { startTempStack } from '@transferline/producer/embedded/temp-stack';
import { seededRandom, type ItemRecord } from '@transferline/shared';
import { machine, type Row, type SuiteResult } from '../report.js';

const quiet = { write: () => true } as unknown as NodeJS.WritableStream;
const DIM = 1280;

/**
 * Issue 5's scale check: N cached embeddings (synthetic, 10 classes, in 4,096-row shards as
 * `cache compact` leaves them) trained by the real train worker; its resident memory is sampled
 * from its own /metrics while it runs. N × 1280 × 4 bytes held once is the floor.
 */
export async function headScaleBench(o: { n: number; epochs: number }): Promise<SuiteResult> {
  const startedAt = new Date().toISOString();
  const stack = await startTempStack({ TL_MODEL_WEIGHTS: 'random', TL_LOG_LEVEL: 'warn' }, { preprocess: 0, embed: 0, train: 1 });
  const rows: Row[] = [];
  try {
    const ctx = await openCliContext(stack.config, quiet);
    try {
      const rand = seededRandom(7);
      const shardRows = 4096;
      const t0 = performance.now();
      const items: [string, ItemRecord][] = [];
      const { space } = await ctx.services.spaces.resolve();
      await ctx.services.datasets.setSpace('scale', space.id);
      for (let start = 0; start < o.n; start += shardRows) {
        const n = Math.min(shardRows, o.n - start);
        const hashes: string[] = [];
        const data = new Float32Array(n * DIM);
        for (let r = 0; r < n; r++) {
          const label = (start + r) % 10;
          const sha256 = randomBytes(32).toString('hex');
          hashes.push(sha256);
          // class signal in a few dimensions, noise in all
          for (let d = 0; d < DIM; d++) data[r * DIM + d] = rand() * 2 + (d % 10 === label && d < 100 ? 1.5 : 0);
          items.push([`synthetic/${start + r}.jpg`, { label: `class-${label}`, etag: 'x', sha256, state: 'cached', space: space.id }]);
        }
        await ctx.services.cache.writeShard(space.id, hashes, data, DIM);
        if (items.length >= 20_000) await ctx.services.datasets.putItems('scale', items.splice(0));
      }
      await ctx.services.datasets.putItems('scale', items.splice(0));
      const setupSeconds = (performance.now() - t0) / 1000;
      process.stderr.write(`head-scale: ${o.n} embeddings cached in ${setupSeconds.toFixed(0)} s\n`);

      const rssOf = async () => Number(/^tl_process_resident_memory_bytes\{[^}]*\} (\d+)/m.exec(await fetch(`http://127.0.0.1:${stack.ports.train}/metrics`).then((r) => r.text(), () => ''))?.[1] ?? 0);
      const idle = await rssOf();
      let peak = 0;
      let sampling = true;
      const sampler = (async () => {
        while (sampling) {
          const text = await fetch(`http://127.0.0.1:${stack.ports.train}/metrics`).then((r) => r.text(), () => '');
          const rss = Number(/^tl_process_resident_memory_bytes\{[^}]*\} (\d+)/m.exec(text)?.[1] ?? 0);
          peak = Math.max(peak, rss);
          await new Promise((r) => setTimeout(r, 200));
        }
      })();
      const t1 = performance.now();
      const run = await trainCommand(ctx, { dataset: 'scale', wait: true, epochs: o.epochs, patience: 0, batchSize: 256, learningRate: 0.001 });
      const seconds = (performance.now() - t1) / 1000;
      sampling = false;
      await sampler;
      const floor = (o.n * DIM * 4) / 2 ** 20;
      rows.push(
        { name: `train run on ${o.n.toLocaleString('en')} cached embeddings (${o.epochs} epochs, incl. load + report + save)`, value: seconds, unit: 's' },
        { name: 'embeddings held once (N × 1280 × 4 bytes)', value: floor, unit: 'MiB' },
        { name: 'train worker RSS when idle', value: idle / 2 ** 20, unit: 'MiB' },
        { name: 'train worker RSS peak', value: peak / 2 ** 20, unit: 'MiB' },
        { name: 'train worker RSS peak − idle', value: (peak - idle) / 2 ** 20, unit: 'MiB', vs: 'embeddings held once (N × 1280 × 4 bytes)', target: '< 2× (never held twice)' },
        { name: 'validation accuracy (synthetic classes)', value: run.result?.validationAccuracy ?? Number.NaN, unit: 'fraction' },
      );
    } finally {
      await ctx.close();
    }
  } catch (err) {
    const log = await readFile(path.join(stack.dataDir, 'logs', 'train.log'), 'utf8').catch(() => '');
    process.stderr.write(`head-scale failed; the train worker's log ends:\n${log.split('\n').slice(-15).join('\n')}\n`);
    throw err;
  } finally {
    await stack.destroy();
  }
  const withRatio = rows.map((r) => (r.vs ? { ...r, ratio: r.value / rows.find((c) => c.name === r.vs)!.value } : r));
  return { suite: 'head-scale', startedAt, machine: machine(), rows: withRatio };
}
