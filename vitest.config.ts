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
    testTimeout: 60_000,
    hookTimeout: 180_000,
    pool: 'forks',
  },
});
