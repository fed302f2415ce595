// A long-running process's own runtime: its logger (pino), its metrics and their HTTP server
// (prom-client), and the bootstrap of a worker role. Kept out of the package's root, which every
// CLI command loads: each of these libraries adds to every command's start (see index.ts).
export * from './logger.js';
export * from './metrics.js';
export * from './role.bootstrap.js';
