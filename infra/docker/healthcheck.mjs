#!/usr/bin/env node
// Container health probe for the transferline workers: GET /healthz on the metrics port.
// Used by the compose healthchecks; the images have no curl or wget, and Node's fetch is enough.
//
//   node /app/infra/docker/healthcheck.mjs [port]
//
// The port is the argument, else TL_METRICS_PORT, else 9464. Exit 0 on HTTP 200, 1 otherwise.
const port = Number(process.argv[2] ?? process.env.TL_METRICS_PORT ?? 9464);
// empty (compose passes unset variables as empty) = the default
const timeoutMs = Number(process.env.TL_HEALTHCHECK_TIMEOUT_MS || 3000);

try {
  const res = await fetch(`http://127.0.0.1:${port}/healthz`, { signal: AbortSignal.timeout(timeoutMs) });
  if (!res.ok) {
    process.stderr.write(`healthz on port ${port}: HTTP ${res.status}\n`);
    process.exit(1);
  }
  process.exit(0);
} catch (err) {
  process.stderr.write(`healthz on port ${port}: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
}
