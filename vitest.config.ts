import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';
import { BaseSequencer, type TestSpecification } from 'vitest/node';

const shared = fileURLToPath(new URL('./packages/shared/src/', import.meta.url));

/**
 * The files that take minutes, longest first (CI's timings: each spends most of it waiting on
 * the processes of its stack: hang times, restarts, lock expiries). Vitest runs the longest first
 * when it has timings of an earlier run; a fresh clone has none and it runs the largest files
 * first, which left a long one to run alone at the end. A stale entry costs only the order.
 */
const LONG_FILES = ['test/train-classify.test.ts', 'test/up-hang-wait.test.ts', 'test/cli-errors.test.ts', 'test/serve-export.test.ts', 'test/terminal-states.test.ts', 'test/up-process.test.ts'];

class LongFilesFirst extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    const sorted = await super.sort(files);
    const rank = (f: TestSpecification) => {
      const i = LONG_FILES.findIndex((l) => f.moduleId.endsWith(l));
      return i < 0 ? LONG_FILES.length : i;
    };
    // (a stable sort: the rest keep vitest's order)
    return sorted.sort((a, b) => rank(a) - rank(b));
  }
}

export default defineConfig({
  resolve: {
    // Tests run the TypeScript sources; the worker processes they spawn run the built dist/.
    alias: [
      { find: /^@transferline\/shared\/tf$/, replacement: `${shared}tf-runtime.ts` },
      { find: /^@transferline\/shared\/service-runtime$/, replacement: `${shared}service-runtime.ts` },
      { find: /^@transferline\/shared$/, replacement: `${shared}index.ts` },
    ],
  },
  test: {
    include: ['packages/*/src/**/*.test.ts', 'apps/*/src/**/*.test.ts', 'test/**/*.test.ts'],
    exclude: ['**/node_modules/**', '**/dist/**'],
    // Three files at a time, each in its own process, which runs its files in turn. A file spends
    // much of its time waiting on its stack's processes (workers, redis-server, S3: hang times,
    // restarts, lock expiries): two files at a time kept a 2-core machine 72 % busy (about 15
    // minutes), three 82-87 % (about 14, and now CPU-bound: a fourth would add nothing; the CLI
    // commands the tests run were a third of that CPU, and start lighter since: about 12.5). Every
    // file starts its own stack on ports of its own, so two never share a server.
    fileParallelism: true,
    maxWorkers: 3,
    sequence: { sequencer: LongFilesFirst },
    // Each file's own stack, clients and servers are its own (the leak guard checks that each
    // file stops what it started, among the children of its own process), while the modules
    // (BullMQ, the AWS SDK, TF.js, ONNX Runtime) load once per process, not once per file.
    isolate: false,
    testTimeout: 60_000,
    hookTimeout: 180_000,
    pool: 'forks',
  },
});
