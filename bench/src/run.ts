import { embedBench } from './suites/embed.bench.js';
import { headBench } from './suites/head.bench.js';
import { headScaleBench } from './suites/head-scale.bench.js';
import { pipelineBench } from './suites/pipeline.bench.js';
import { preprocessBench } from './suites/preprocess.bench.js';
import { queueMemoryBench } from './suites/queue-memory.bench.js';
import { serveBench } from './suites/serve.bench.js';
import { save, table, type SuiteResult } from './report.js';

/**
 * `npm run bench [-- suite …]`: runs the named suites (all by default), prints a table per suite
 * and writes bench/results/<suite>.json.
 */
const SUITES: Record<string, () => Promise<SuiteResult>> = {
  pipeline: () => pipelineBench({ perClass: 300 }),
  preprocess: () => preprocessBench(),
  embed: () => embedBench({ images: 256 }),
  head: () => headBench({ embedTrain: 1000, embedTest: 500 }),
  serve: () => serveBench(),
  'queue-memory': () => queueMemoryBench({ images: Number(process.env.TL_BENCH_QUEUE_IMAGES ?? 20_000), bound: 2048 }),
  'head-scale': () => headScaleBench({ n: Number(process.env.TL_BENCH_SCALE_N ?? 200_000), epochs: 3 }),
};

// The AWS SDK's notice that its 2027 releases need Node 22 would interrupt the output.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

const wanted = process.argv.slice(2).filter((a) => !a.startsWith('-'));
const unknown = wanted.filter((w) => !(w in SUITES));
if (unknown.length) {
  process.stderr.write(`unknown suite(s): ${unknown.join(', ')}; available: ${Object.keys(SUITES).join(', ')}\n`);
  process.exit(2);
}
// A suite that cannot run (a missing photo package, say) is named with why, and the others run.
const failed: string[] = [];
for (const name of wanted.length ? wanted : Object.keys(SUITES)) {
  try {
    const result = await SUITES[name]!();
    const file = await save(result);
    process.stdout.write(`${table(result)}\n(${file})\n\n`);
  } catch (err) {
    failed.push(name);
    process.stderr.write(`bench: suite ${name} failed: ${(err as Error).message}\n`);
  }
}
if (failed.length) process.stderr.write(`bench: ${failed.length} suite(s) failed: ${failed.join(', ')}\n`);
process.exit(failed.length ? 1 : 0);
