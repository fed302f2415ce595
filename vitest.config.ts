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
    // Integration tests start real redis-server, S3 and worker processes: one file at a time on 2 cores.
    fileParallelism: false,
    // One process for every file, in turn: each file's own stack, clients and servers are its own
    // (the leak guard checks that each file stops what it started), while the modules (BullMQ,
    // the AWS SDK, TF.js, ONNX Runtime) load once, not once per file.
    isolate: false,
    testTimeout: 60_000,
    hookTimeout: 180_000,
    pool: 'forks',
  },
});
