#!/usr/bin/env node
import { createLogger, loadConfig, runUntilSignal, startMetricsServer } from '@transferline/shared';
import { startEmbedRole } from './embed.worker.js';
import { startPreprocessRole } from './preprocess.worker.js';
import type { Role } from './role.js';

const DEFAULT_PORTS: Record<Role, number> = { preprocess: 9465, embed: 9466 };

async function main(): Promise<void> {
  const role = process.argv[2];
  if (role !== 'preprocess' && role !== 'embed') {
    process.stderr.write('usage: feature-worker <preprocess|embed>\n');
    process.exit(2);
  }
  const config = loadConfig(process.env);
  const log = createLogger(role, config.logLevel);
  const running = role === 'preprocess' ? await startPreprocessRole(config, log) : await startEmbedRole(config, log);
  const server = await startMetricsServer(running.metrics.registry, config.metrics.host, config.metrics.port ?? DEFAULT_PORTS[role], running.healthy);
  log.info({ metricsPort: server.port }, `serving /metrics and /healthz on port ${server.port}`);
  runUntilSignal(log, async () => {
    await running.stop();
    await server.close();
  });
}

main().catch((err: unknown) => {
  process.stderr.write(`feature-worker ${process.argv[2] ?? ''}: ${(err as Error).message}\n`);
  process.exit(1);
});
