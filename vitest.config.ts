import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

const shared = fileURLToPath(new URL('./packages/shared/src/', import.meta.url));

export default defineConfig({
  resolve: {
    // Tests run the TypeScript sources; the worker processes they spawn run the built dist/.
    alias: [
      { find: /^@transferline\/shared\/tf$/, replacement: `${shared}tf-runtime.ts` },
      { find: /^@transferline\/shared$/, replacement: `${shared}index.ts` },
    ],
  },
  test: {
    include: ['packages/*/src/**/*.test.ts', 'apps/*/src/**/*.test.ts', 'test/**/*.test.ts'],
    exclude: ['**/node_modules/**', '**/dist/**'],
    // Two files at a time, each in its own process, which runs its files in turn. A file spends
    // about half its time waiting on its stack's processes (workers, redis-server, S3), which
    // hold one core on average across the suite: two files keep both cores of a 2-core machine
    // busy (about 13 minutes, where one at a time took about 17). Every file starts its own
    // stack on ports of its own, so two never share a server.
    fileParallelism: true,
    maxWorkers: 2,
    // Each file's own stack, clients and servers are its own (the leak guard checks that each
    // file stops what it started, among the children of its own process), while the modules
    // (BullMQ, the AWS SDK, TF.js, ONNX Runtime) load once per process, not once per file.
    isolate: false,
    testTimeout: 60_000,
    hookTimeout: 180_000,
    pool: 'forks',
  },
});
