import { readFile, readdir } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { createMetrics, createServeMetrics, exportQueueDepths, startMetricsServer, startingMetrics } from './metrics.js';

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

describe('tl_queue_jobs of a process that cannot read Redis', () => {
  it('exports no counts rather than its last ones, which would win the deployment-wide max (a review: a false QueueStalled)', async () => {
    const metrics = createMetrics('preprocess');
    let answer: 'counts' | 'error' | 'never' = 'counts';
    const queue = {
      name: 'preprocess',
      getJobCounts: async () => {
        if (answer === 'error') throw new Error('Connection is closed.');
        if (answer === 'never') return new Promise<Record<string, number>>(() => {});
        return { waiting: 243, active: 16 };
      },
    };
    exportQueueDepths(metrics, async () => [queue], { timeoutMs: 50 });
    // the gate's own count of the jobs this process holds, which it keeps itself, stays
    metrics.queueJobs.set({ queue: 'preprocess', state: 'held' }, 3);
    const held = async () => /^tl_queue_jobs\{queue="preprocess",state="held",role="preprocess"\} (\d+)$/m.exec(await metrics.registry.metrics())?.[1];
    const waiting = async () => /^tl_queue_jobs\{queue="preprocess",state="waiting",role="preprocess"\} (\d+)$/m.exec(await metrics.registry.metrics())?.[1];
    expect(await waiting()).toBe('243');
    answer = 'never';
    expect(await waiting()).toBeUndefined();
    expect(await held()).toBe('3');
    answer = 'counts';
    expect(await waiting()).toBe('243');
    answer = 'error';
    expect(await waiting()).toBeUndefined();
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

describe('the metric names the deployment files and the README use', () => {
  /** Every series name a transferline process exports: each role's, serve's, a starting worker's. */
  const exported = async (): Promise<Set<string>> => {
    const registries = [...['producer', 'preprocess', 'embed', 'train'].map((role) => createMetrics(role).registry), createServeMetrics().registry, startingMetrics('embed')];
    const names = new Set<string>();
    for (const registry of registries) {
      for (const m of await registry.getMetricsAsJSON()) {
        names.add(m.name);
        if (String(m.type) === 'histogram') for (const s of ['_bucket', '_sum', '_count']) names.add(`${m.name}${s}`);
        if (String(m.type) === 'summary') for (const s of ['_sum', '_count']) names.add(`${m.name}${s}`);
      }
    }
    return names;
  };

  it('are all exported: the dashboard, the alerts and recording rules, compose, the k8s manifests and the README name no metric that is not', async () => {
    const root = path.resolve(fileURLToPath(import.meta.url), '../../../..');
    const infra = (await readdir(path.join(root, 'infra'), { recursive: true })).filter((f) => /\.(ya?ml|json)$/.test(f)).map((f) => path.join('infra', f));
    const files = ['README.md', 'docker-compose.yml', ...infra, path.join('infra', 'README.md')];
    expect(files).toContain(path.join('infra', 'grafana', 'dashboards', 'transferline.json'));
    const names = await exported();
    const unknown: string[] = [];
    for (const file of files) {
      const text = await readFile(path.join(root, file), 'utf8');
      for (const [name] of text.matchAll(/\btl_[a-z0-9_]+/g)) {
        // `tl_train_*`: a family, named by its prefix
        const known = name.endsWith('_') ? [...names].some((n) => n.startsWith(name)) : names.has(name);
        if (!known) unknown.push(`${file}: ${name}`);
      }
    }
    expect(unknown).toEqual([]);
  });
});
