import { describe, expect, it } from 'vitest';
import { createMetrics, startMetricsServer, startingMetrics } from './metrics.js';

describe("a worker's /metrics while its role starts", () => {
  it('answers with tl_role_ready 0 and the process start time (so Prometheus keeps up=1), /healthz 503, then the role', async () => {
    let role: ReturnType<typeof createMetrics> | undefined;
    const server = await startMetricsServer(() => role?.registry, '127.0.0.1', 0, () => role !== undefined, startingMetrics('embed'));
    const get = (p: string) => fetch(`http://127.0.0.1:${server.port}${p}`).then(async (r) => ({ status: r.status, text: await r.text() }));
    try {
      const starting = await get('/metrics');
      expect(starting.status).toBe(200);
      expect(starting.text).toMatch(/^tl_role_ready\{role="embed"\} 0$/m);
      expect(starting.text).toMatch(/^tl_process_start_time_seconds\{role="embed"\} \d+/m);
      expect(starting.text).not.toMatch(/tl_jobs_total/);
      expect((await get('/healthz')).status).toBe(503);

      role = createMetrics('embed');
      const ready = await get('/metrics');
      expect(ready.text).toMatch(/^tl_role_ready\{role="embed"\} 1$/m);
      expect(ready.text).toMatch(/^# TYPE tl_jobs_total counter$/m);
      expect((await get('/healthz')).status).toBe(200);
    } finally {
      await server.close();
    }
  });
});

describe('the metrics of each role', () => {
  it('show the embed histograms on the embed role only, not empty on the others', async () => {
    for (const role of ['producer', 'preprocess', 'train']) {
      const text = await createMetrics(role).registry.metrics();
      expect(text, role).not.toMatch(/tl_embed_batch_size|tl_embed_forward_seconds/);
      expect(text, role).toMatch(/^# TYPE tl_jobs_total counter$/m);
    }
    const embed = createMetrics('embed');
    embed.embedBatch.observe(8);
    expect(await embed.registry.metrics()).toMatch(/^tl_embed_batch_size_count\{role="embed"\} 1$/m);
    expect(await embed.registry.metrics()).toMatch(/^# TYPE tl_embed_forward_seconds histogram$/m);
  });
});
