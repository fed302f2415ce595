#!/usr/bin/env node
import { createLogger, loadConfig, runUntilSignal, startMetricsServer } from '@transferline/shared';
import { startTrainer } from './worker.js';

async function main(): Promise<void> {
  const config = loadConfig(process.env);
  const log = createLogger('train', config.logLevel);
  const running = await startTrainer(config, log);
  const server = await startMetricsServer(running.metrics.registry, config.metrics.host, config.metrics.port ?? 9467, running.healthy);
  log.info({ metricsPort: server.port }, `serving /metrics and /healthz on port ${server.port}`);
  runUntilSignal(log, async () => {
    await running.stop();
    await server.close();
  });
}

main().catch((err: unknown) => {
  process.stderr.write(`train-worker: ${(err as Error).message}\n`);
  process.exit(1);
});
