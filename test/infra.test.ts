import { execFile, execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { ConfigSchema } from '../packages/shared/src/config.js';
import { FEATURE_WORKER_NODE_FLAGS, STOP_GRACE_MS } from '../apps/producer/src/embedded/supervisor.js';
import { STOP_DEADLINE_MS } from '../packages/shared/src/lifecycle.js';
import { livenessProbeTiming } from '../packages/shared/src/supervised-workers.js';
import { loadConfig } from '../packages/shared/src/config.js';
import { freePort } from '../apps/producer/src/embedded/redis.server.js';
import { repoRoot } from './support/stack.js';

describe('deployment files', () => {
  it('pass the offline checks (compose config, promtool config/rules/tests, dashboard JSON, k8s YAML)', async () => {
    const { stdout } = await promisify(execFile)('bash', ['infra/validate.sh'], { cwd: repoRoot, timeout: 120_000 });
    expect(stdout).toMatch(/validate: \d+ passed, 0 failed/);
    // promtool is installed by .ci/run: the Prometheus rules must have been checked, not skipped
    expect(stdout).toMatch(/^ok\s+promtool check rules/m);
  }, 150_000);

  it("the dashboard's queue panels show each deployment's queue once, from the recording rules or without them (promtool; a review: the fallback added a second series)", () => {
    const dashboard = JSON.parse(readFileSync(path.join(repoRoot, 'infra', 'grafana', 'dashboards', 'transferline.json'), 'utf8')) as { panels: { title?: string; targets?: { expr: string }[] }[] };
    const exprOf = (title: string) => dashboard.panels.find((p) => p.title === title)!.targets![0]!.expr.replaceAll('$deployment', '.*');
    const input_series = [
      { series: 'tl_queue_jobs{deployment="a",role="preprocess",instance="a1",queue="preprocess",state="waiting"}', values: '5x10' },
      { series: 'tl_queue_jobs{deployment="a",role="preprocess",instance="a2",queue="preprocess",state="waiting"}', values: '5x10' },
      { series: 'tl_queue_jobs{deployment="b",role="preprocess",instance="b1",queue="preprocess",state="waiting"}', values: '7x10' },
    ];
    const cases = (name: (metric: string) => string) => [
      { expr: exprOf('Backlog by queue'), eval_time: '5m', exp_samples: [{ labels: `${name('tl:queue_backlog')}{deployment="a",queue="preprocess"}`, value: 5 }, { labels: `${name('tl:queue_backlog')}{deployment="b",queue="preprocess"}`, value: 7 }] },
      { expr: exprOf('Queue depth by queue and state'), eval_time: '5m', exp_samples: [{ labels: `${name('tl:queue_jobs')}{deployment="a",queue="preprocess",state="waiting"}`, value: 5 }, { labels: `${name('tl:queue_jobs')}{deployment="b",queue="preprocess",state="waiting"}`, value: 7 }] },
    ];
    // with the rules loaded (their series, named), and without (the panels' own aggregation, unnamed)
    const withRules = { rule_files: [path.join(repoRoot, 'infra', 'prometheus', 'rules', 'transferline.yml')], evaluation_interval: '1m', tests: [{ interval: '1m', input_series, promql_expr_test: cases((n) => n) }] };
    const without = { evaluation_interval: '1m', tests: [{ interval: '1m', input_series, promql_expr_test: cases(() => '') }] };
    for (const [name, test] of [["with", withRules], ["without", without]] as const) expect(promtoolTest(test), name).toMatch(/SUCCESS\s*$/);
  });

  it("KEDA's preprocess query asks for replicas by the backlog, and for as many as run while they hold jobs for the embed backlog (promtool; a trial: 787 waiting asked for 8 replicas, all held)", () => {
    const keda = readFileSync(path.join(repoRoot, 'infra', 'k8s', 'base', 'keda-scaledobjects.yaml'), 'utf8');
    const expr = /^\s+query: (.*tl_queue_jobs\{queue="preprocess".*)$/m.exec(keda)![1]!;
    // (the replicas held steady: their count times the target per replica, the trigger's threshold)
    const threshold = /query: .*tl_queue_jobs\{queue="preprocess"[\s\S]*?threshold: "(\d+)"/.exec(keda)![1]!;
    expect(expr).toContain(`* ${threshold})`);
    const series = (instance: string, state: string, values: string) => ({ series: `tl_queue_jobs{role="preprocess",instance="${instance}",queue="preprocess",state="${state}"}`, values });
    const test = {
      evaluation_interval: '1m',
      tests: [
        {
          interval: '1m',
          // two replicas export the same counts; from minute 5, one holds 16 jobs for the embed backlog
          input_series: [
            series('p1', 'waiting', '787x10'),
            series('p2', 'waiting', '787x10'),
            series('p1', 'delayed', '13x10'),
            series('p1', 'held', '0 0 0 0 0 16x5'),
            series('p2', 'held', '0x10'),
            ...['p1', 'p2'].map((instance) => ({ series: `tl_process_start_time_seconds{role="preprocess",instance="${instance}"}`, values: '1x10' })),
          ],
          promql_expr_test: [
            { expr, eval_time: '2m', exp_samples: [{ labels: '{}', value: 800 }] },
            // the replicas running (2) × the threshold (100): neither more nor fewer
            { expr, eval_time: '7m', exp_samples: [{ labels: '{}', value: 200 }] },
          ],
        },
      ],
    };
    expect(promtoolTest(test)).toMatch(/SUCCESS\s*$/);
  });

  it("the dashboard's count of training runs counts a run shorter than one scrape, a worker's restart, and leaves out a quiet dataset (promtool)", async () => {
    const dashboard = JSON.parse(readFileSync(path.join(repoRoot, 'infra', 'grafana', 'dashboards', 'transferline.json'), 'utf8')) as { panels: { title?: string; targets?: { expr: string }[] }[] };
    const panel = dashboard.panels.find((p) => p.title === 'Training runs in the time range');
    // as Grafana runs it, over the last hour and every dataset
    // (rounded: where a sample sits on the range's edge, Prometheus versions extrapolate apart)
    const rawExpr = panel!.targets![0]!.expr.replaceAll('$__range', '1h').replaceAll('$dataset', '.*').replaceAll('$deployment', '.*');
    const expr = `round(${rawExpr})`;
    const series = (dataset: string, outcome: string, values: string) => ({ series: `tl_train_runs_total{role="train",job="train",instance="t1",dataset="${dataset}",outcome="${outcome}"}`, values });
    const test = {
      evaluation_interval: '1m',
      tests: [
        {
          interval: '1m',
          input_series: [
            // its first scrape already at 1: a worker started within the hour whose run ended before it was scraped
            series('short', 'failed', '_x30 1x30'),
            series('seen', 'completed', '0x30 1x30'),
            // 3 runs before the hour; the worker restarted within it, then one more run
            series('restarted', 'completed', '3x20 0x20 1x20'),
            series('quiet', 'completed', '2x60'),
            // born within the hour, 2 runs, restarted (same instance), 1 more: 3
            series('twice', 'completed', '_x10 0x10 2x10 _x2 0x5 1x20'),
          ],
          promql_expr_test: [
            {
              expr,
              eval_time: '60m',
              exp_samples: [
                { labels: '{dataset="short",outcome="failed"}', value: 1 },
                { labels: '{dataset="seen",outcome="completed"}', value: 1 },
                { labels: '{dataset="restarted",outcome="completed"}', value: 1 },
                { labels: '{dataset="twice",outcome="completed"}', value: 3 },
              ],
            },
          ],
        },
        {
          // a worker started a minute ago, one run since, asked between two scrapes: exactly 1
          // (increase() alone would extrapolate a series this young to about 1.5)
          interval: '1m',
          input_series: [series('young', 'completed', '_x58 0 1')],
          promql_expr_test: [{ expr: rawExpr, eval_time: '59m30s', exp_samples: [{ labels: '{dataset="young",outcome="completed"}', value: 1 }] }],
        },
      ],
    };
    expect(promtoolTest(test)).toMatch(/SUCCESS\s*$/);
  });
});

/** `promtool test rules` of `test` (a rule-test file's content): what it printed, with the exit status when it is not 0 (a FAILED test, or a file it refused). */
function promtoolTest(test: object): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'tl-promtool-'));
  try {
    // (JSON is YAML)
    writeFileSync(path.join(dir, 'rules.test.yml'), JSON.stringify(test));
    const r = spawnSync('promtool', ['test', 'rules', path.join(dir, 'rules.test.yml')], { encoding: 'utf8' });
    return `${r.stdout}${r.stderr}${r.status === 0 ? '' : `\n(exit ${r.status})`}`;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe('the compose file', () => {
  it('passes every setting the application reads, but those that make no sense in containers', () => {
    // the embedded servers of `up`; the in-container ports compose publishes; the XDG fallback;
    // up's own liveness watch, and what up tells its workers of it (in containers, the
    // orchestrator's probes); the host names a serve bound to loopback answers (compose's binds
    // every address)
    const notApplicable = ['TL_REDIS_PORT', 'TL_S3_PORT', 'TL_CONSOLE_PORT', 'TL_SERVE_PORT', 'XDG_CACHE_HOME', 'TL_UP_HANG_SECONDS', 'TL_SUPERVISOR_HANG_MS', 'TL_SERVE_ALLOWED_HOSTS'];
    let schema: z.ZodType = ConfigSchema;
    // the schema's object, under its refinements and transforms
    for (let i = 0; i < 5 && !(schema instanceof z.ZodObject); i++) {
      const def = (schema as unknown as { def: { in?: z.ZodType; innerType?: z.ZodType; schema?: z.ZodType } }).def;
      schema = (def.in ?? def.innerType ?? def.schema)!;
    }
    const keys = Object.keys((schema as z.ZodObject).shape);
    expect(keys).toContain('TL_SERVE_API_KEY');
    const compose = readFileSync(path.join(repoRoot, 'docker-compose.yml'), 'utf8');
    const missing = keys.filter((k) => !notApplicable.includes(k) && !new RegExp(`^\\s+${k}:`, 'm').test(compose));
    expect(missing).toEqual([]);
  });
});

describe('liveness', () => {
  it('the Kubernetes probes give up on a worker after as long as up does, asking as often', () => {
    const hangSeconds = loadConfig({}).upHangSeconds;
    const { periodMs, timeoutMs } = livenessProbeTiming(hangSeconds * 1000);
    for (const role of ['preprocess', 'embed', 'train']) {
      const manifest = readFileSync(path.join(repoRoot, 'infra', 'k8s', 'base', `${role}.yaml`), 'utf8');
      const block = /^(\s+)livenessProbe:\n((?:\1\s+.*\n)+)/m.exec(manifest)?.[2];
      expect(block, role).toBeDefined();
      const field = (name: string) => Number(new RegExp(`^\\s+${name}: (\\d+)$`, 'm').exec(block!)?.[1]);
      expect(block, role).toMatch(/path: \/healthz/);
      expect({ role, period: field('periodSeconds'), timeout: field('timeoutSeconds'), hang: field('periodSeconds') * field('failureThreshold') }).toEqual({ role, period: periodMs / 1000, timeout: timeoutMs / 1000, hang: hangSeconds });
    }
  });
});

describe('stopping a worker', () => {
  it('up, the compose file and the Kubernetes manifests each give a worker longer than its own stop deadline', () => {
    // a worker still putting back its jobs ends its stop itself, and logs why, before it is killed
    const deadline = STOP_DEADLINE_MS / 1000;
    const resolved = execFileSync('docker-compose', ['-f', 'docker-compose.yml', 'config'], { cwd: repoRoot, encoding: 'utf8', timeout: 60_000 });
    const graces = Object.fromEntries(
      ['preprocess', 'embed', 'train'].map((role) => {
        const service = new RegExp(`^  ${role}:\n((?:    .*\n|\s*\n)+)`, 'm').exec(resolved)?.[1] ?? '';
        const compose = Number(/^    stop_grace_period: (\d+)s$/m.exec(service)?.[1]);
        const manifest = readFileSync(path.join(repoRoot, 'infra', 'k8s', 'base', `${role}.yaml`), 'utf8');
        const k8s = Number(/^\s+terminationGracePeriodSeconds: (\d+)$/m.exec(manifest)?.[1]);
        return [role, { compose: compose > deadline, k8s: k8s > deadline }];
      }),
    );
    expect({ up: STOP_GRACE_MS > STOP_DEADLINE_MS, ...graces }).toEqual({
      up: true,
      ...Object.fromEntries(['preprocess', 'embed', 'train'].map((role) => [role, { compose: true, k8s: true }])),
    });
  });
});

describe('feature-worker command lines', () => {
  // One home for the flags (the supervisor of `up`); every file that writes the command out must
  // say the same: every tracked file but the TypeScript, which builds its paths from parts.
  const SCRIPT = 'apps/feature-worker/dist/main.js';
  const files = () =>
    execFileSync('git', ['ls-files', '-z'], { cwd: repoRoot, encoding: 'utf8' })
      .split('\0')
      .filter((f) => f && !f.endsWith('.ts') && existsSync(path.join(repoRoot, f)))
      .map((f) => ({ file: f, text: readFileSync(path.join(repoRoot, f), 'utf8') }))
      .filter((f) => f.text.includes(SCRIPT));

  it('start the feature workers with the Node flags that up uses', () => {
    expect(FEATURE_WORKER_NODE_FLAGS.length).toBeGreaterThan(0);
    const found = files();
    expect(found.map((f) => f.file)).toEqual(expect.arrayContaining(['docker-compose.yml', 'infra/k8s/base/preprocess.yaml', 'infra/k8s/base/embed.yaml', 'infra/docker/Dockerfile.gpu']));
    let commands = 0;
    for (const { file, text } of found) {
      for (const line of text.split('\n').filter((l) => l.includes(SCRIPT))) {
        commands++;
        // JSON-array commands ("node", "--flag", "apps/…") and shell ones (node --flag apps/…)
        const words = line.replace(/[[\]",`|#]/g, ' ').trim().split(/\s+/);
        // (`node`, or a path to it: node_modules/.bin/node, the Node 22 that npm ci installs)
        const node = words.findIndex((w) => w === 'node' || w.endsWith('/node'));
        const script = words.indexOf(SCRIPT);
        expect(node, `${file}: ${line.trim()}`).toBeGreaterThanOrEqual(0);
        expect(words.slice(node + 1, script), `${file}: ${line.trim()}`).toEqual([...FEATURE_WORKER_NODE_FLAGS]);
      }
    }
    // compose (2), k8s (2), the CPU image's comment (2), the GPU image (comment + CMD), the infra README (2)
    expect(commands).toBeGreaterThanOrEqual(10);
  });
});

describe("the README's Prometheus config for up", () => {
  it('scrapes and evaluates every 15 s, as the compose one does, and loads the rules (a trial: at the default 1 m a run left one point)', async () => {
    const readme = readFileSync(path.join(repoRoot, 'README.md'), 'utf8');
    const block = readme.split('**Scraping `up` with your own Prometheus.**')[1]?.match(/```yaml\n([\s\S]*?)```/)?.[1];
    expect(block).toBeDefined();
    const dir = mkdtempSync(path.join(os.tmpdir(), 'tl-readme-prom-'));
    const port = await freePort();
    writeFileSync(path.join(dir, 'prometheus.yml'), block!.replace('/path/to/transferline', repoRoot));
    const prometheus = spawn('prometheus', [`--config.file=${path.join(dir, 'prometheus.yml')}`, `--storage.tsdb.path=${path.join(dir, 'data')}`, `--web.listen-address=127.0.0.1:${port}`], { stdio: 'ignore' });
    // (a Prometheus that is not there ends the wait for it as its exit would)
    const exited = new Promise((r) => {
      prometheus.once('exit', r);
      prometheus.once('error', r);
    });
    try {
      const api = async <T>(p: string): Promise<T | undefined> => fetch(`http://127.0.0.1:${port}${p}`).then(async (r) => (r.ok ? ((await r.json()) as { data: T }).data : undefined), () => undefined);
      let rules: { groups: unknown[] } | undefined;
      for (let i = 0; i < 100 && !rules; i++) {
        rules = await api<{ groups: unknown[] }>('/api/v1/rules');
        if (!rules) await new Promise((r) => setTimeout(r, 100));
      }
      // the rule groups the compose Prometheus loads, all of them
      const groups = readdirSync(path.join(repoRoot, 'infra/prometheus/rules')).reduce((n, f) => n + (readFileSync(path.join(repoRoot, 'infra/prometheus/rules', f), 'utf8').match(/^ {2}- name: /gm)?.length ?? 0), 0);
      expect(groups).toBeGreaterThan(0);
      expect(rules?.groups.length).toBe(groups);
      const compose = readFileSync(path.join(repoRoot, 'infra/prometheus/prometheus.yml'), 'utf8');
      const loaded = (await api<{ yaml: string }>('/api/v1/status/config'))!.yaml;
      for (const setting of ['scrape_interval', 'evaluation_interval']) {
        const want = compose.match(new RegExp(`^  ${setting}: (\\S+)$`, 'm'))?.[1];
        expect(want).toBe('15s');
        expect(loaded, setting).toMatch(new RegExp(`^  ${setting}: ${want}$`, 'm'));
      }
    } finally {
      prometheus.kill('SIGTERM');
      await exited;
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
