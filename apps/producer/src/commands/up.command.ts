import { readdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createQueues, createServices, loadConfig, redactUrl, ReportDoc, resolveWeights, sleep, spaceSettings, stackSettings, WeightsUnavailableError, processOfName, withDeadline, type Queues, type Services } from '@transferline/shared';
import type { Queue } from 'bullmq';
import { createLogger } from '@transferline/shared/service-runtime';
import { startConsole, type ConsoleHandle } from '../console/console.server.js';
import { consoleBanner } from './console.command.js';
import { openCliContext, type CliContext } from '../cli-context.js';
import { SAMPLE_CLASSES, writeSampleSet } from '../demo/sample-images.js';
import { EMBEDDED_S3_DEV_CREDENTIALS } from '../embedded/s3.server.js';
import { dataDirHeld } from '../embedded/data-dir.lock.js';
import { childPorts, DEFAULT_PORTS, DEFAULT_REPLICAS, SERVERS_NOW_MS, startStack, type Replicas, type StackPorts } from '../embedded/stack.js';
import { changedAnything, ingestCommand } from './ingest.command.js';
import type { IngestCounts } from '../ingest.service.js';
import { latestRun } from './models.command.js';
import { trainCommand } from './train.command.js';
import { uploadCommand } from './upload.command.js';
import { createProgress } from '../progress.js';
import { workerIdOf } from '../dataset-wait.js';
import { EXIT, onBrokenPipe } from '../exit-codes.js';
import { printable, shellQuote } from '../terminal.js';

export { metricsPortsOverflow, portsFrom } from '../embedded/stack.js';

export interface UpOptions {
  demo: boolean;
  ports?: Partial<StackPorts>;
  /** processes per worker role (default one each) */
  replicas?: Partial<Replicas>;
  /** stop after the demo instead of serving until Ctrl-C (for scripts and tests) */
  exitAfterDemo?: boolean;
}

const DEMO_BUCKET = 'photos';

/**
 * The workers connected to the deployment's queues that are not up's own children (started by
 * hand, on this machine or another): "role worker host:pid", one each.
 */
async function workersNotStarted(queues: Queues, services: Pick<Services, 'spaces'>, childPids: number[]): Promise<string[]> {
  const spaces = (await services.spaces.list()).map((s) => s.space.id);
  const roles = new Map<string, Set<string>>();
  const byRole: [string, Queue][] = [['preprocess', queues.preprocess], ...spaces.map((id): [string, Queue] => ['embed', queues.embed(id)]), ['train', queues.train], ['train', queues.classify]];
  for (const [role, queue] of byRole) {
    for (const client of await queue.getWorkers()) {
      const id = workerIdOf(client);
      if (!id) continue;
      const { host, pid } = processOfName(id);
      if (host === os.hostname() && childPids.includes(pid)) continue;
      const key = `${host}:${pid}`;
      roles.set(key, (roles.get(key) ?? new Set()).add(role));
    }
  }
  return [...roles].map(([where, r]) => `${[...r].join(' and ')} worker ${where}`);
}

/**
 * Fetches the ImageNet weights into the cache once, with a progress bar, before any worker
 * starts (the workers then find them there). Offline, the demo goes on with seeded random
 * weights and says so; without --demo that is an error that says where to put the file.
 */
async function ensureWeights(env: NodeJS.ProcessEnv, demo: boolean, w: (s: string) => void): Promise<NodeJS.ProcessEnv> {
  const config = loadConfig(env);
  if (config.embed.weights !== 'imagenet' || config.embed.weightsSource.startsWith('s3://')) return env;
  const bar = createProgress('EfficientNet-B0 weights');
  try {
    const file = await resolveWeights(config.embed, { onProgress: (r, t) => bar.update(Math.round(r / 1e5) / 10, t ? Math.round(t / 1e5) / 10 : 0, 'MB') });
    bar.stop();
    if (file.downloaded) w(`downloaded the EfficientNet-B0 ImageNet weights to ${file.path} (MD5 verified)`);
    return env;
  } catch (err) {
    bar.stop();
    if (!(err instanceof WeightsUnavailableError) || !demo) throw err;
    w(`\n!! ${err.message}`);
    w('!! The demo goes on with SEEDED RANDOM WEIGHTS (TL_MODEL_WEIGHTS=random): features good enough for the');
    w('!! coloured-shape demo, not for real photos. Logs, metrics and the trained model all say "random".\n');
    return { ...env, TL_MODEL_WEIGHTS: 'random' };
  }
}
const DEMO_PREFIX = 'train/';

/** Longest the demo waits for the stack's embed worker to load its model before it ingests anyway. */
const EMBED_LIVE_DEADLINE_MS = 180_000;

/**
 * A user's own images put under the demo's prefix (the README's example once did) join the demo's
 * dataset and its training: said, with the folders the demo did not make.
 */
export function foreignDemoFolders(labels: string[]): string | undefined {
  const foreign = labels.filter((l) => !Object.hasOwn(SAMPLE_CLASSES, l));
  if (foreign.length === 0) return undefined;
  const named = `${foreign.slice(0, 5).map(printable).join(', ')}${foreign.length > 5 ? ` and ${foreign.length - 5} more` : ''}`;
  return (
    `demo: s3://${DEMO_BUCKET}/${DEMO_PREFIX} also holds folders the demo did not make (${named}): they are in the demo's dataset and its training; ` +
    `keep your own images under another prefix (s3://${DEMO_BUCKET}/mine/, say) and ingest them into a dataset of their own`
  );
}

/** Where the banner says each embed worker names its backend (its log: one per replica), or that none runs here. */
export function embedBackendWhere(supervisor: { logFile: (role: 'embed', replica?: number) => string }, children: { role: string; replica: number }[]): string {
  const logs = children.filter((c) => c.role === 'embed').map((c) => supervisor.logFile('embed', c.replica));
  if (logs.length === 0) return ' (no embed worker here: --embed-workers 0)';
  return `, backend: see ${logs.length === 1 ? logs[0] : `${logs.map((l) => path.basename(l)).join(', ')} in ${path.dirname(logs[0]!)}/`}`;
}

/**
 * Waits until an embed worker of the stack's space is live (it publishes itself once its model is
 * loaded: seconds, or a minute the first time it builds its model), so the demo's ingest does not
 * begin with "no embed worker is live". Gives up at the deadline or when the stack stops; the
 * ingest then says what it finds, and its own stall timeout applies.
 */
async function embedWorkerLive(workers: () => Promise<number>, w: (s: string) => void, stopping: () => boolean): Promise<void> {
  const deadline = Date.now() + EMBED_LIVE_DEADLINE_MS;
  let said = false;
  while (Date.now() < deadline && !stopping()) {
    if ((await workers()) > 0) return;
    if (!said) w('demo: waiting for the embed worker to load EfficientNet-B0…');
    said = true;
    await sleep(250);
  }
}

/**
 * `transferline up [--demo]`: the whole stack on this machine. With --demo and an empty demo
 * bucket, it makes a labelled sample set, drops it into s3://photos/train/, ingests, trains and
 * prints the report, so the first command shows the product working end to end.
 */
/**
 * The demo's training: a run, unless its images are those of the dataset's latest run (a second
 * `npm start` changes nothing, and trained another identical run each time: a user's trial).
 */
export async function demoTrain(ctx: CliContext, demo: { dataset: string; url: string; counts: IngestCounts }, w: (line: string) => void): Promise<void> {
  const latest = !changedAnything(demo.counts) && demo.counts.unchangedInFlight === 0 ? await latestRun(ctx, demo.dataset) : undefined;
  if (!latest) {
    await trainCommand(ctx, { dataset: demo.dataset, wait: true, epochs: 40 });
    return;
  }
  const report = await ctx.services.store.getDocument(ReportDoc, ctx.config.s3.bucket, ctx.services.layout.runFile(demo.dataset, latest.runId, 'report.json'));
  const accuracy = report ? ` (validation accuracy ${(report.validation.accuracy * 100).toFixed(1)}%)` : '';
  w(`\ndemo: nothing changed in ${demo.url} since run ${latest.runId}${accuracy}, the latest of ${demo.dataset}: not trained again (another run: npx transferline train --dataset ${demo.dataset})`);
}

export async function upCommand(env: NodeJS.ProcessEnv, o: UpOptions, out: NodeJS.WritableStream = process.stdout): Promise<void> {
  // Once the reader of the output is gone (`up | head`), the stack still stops in order, silently.
  let outGone = false;
  const w = (s: string) => void (outGone || out.write(`${s}\n`));
  // From the first line on: a reader gone while the stack starts (a worker's restart said
  // before the banner) must not end this process before it can stop what it started.
  let whenGone = (): void => {};
  onBrokenPipe(() => {
    outGone = true;
    whenGone();
  });
  const replicas = { ...DEFAULT_REPLICAS, ...o.replicas };
  // (no embed worker here, --embed-workers 0: nothing to fetch weights for; nor when another up
  // holds the data directory: the start below refuses, naming it, and a download first only
  // delayed that, or said it failed offline: a user's trial)
  if (replicas.embed > 0 && !dataDirHeld(loadConfig(env).dataDir)) env = await ensureWeights(env, o.demo, w);
  const ports0 = { ...DEFAULT_PORTS, ...o.ports };
  const stack = await startStack(env, ports0, (line) => w(`[up] ${line}`), childPorts(ports0, replicas));
  const { config, ports, children } = stack;
  const log = createLogger('producer', config.logLevel);
  // The console's own clients, in worker mode: they wait out a Redis restart.
  const consoleServices = createServices(config, 'worker');
  const consoleQueues = createQueues(consoleServices.redis, config);
  let web: ConsoleHandle | undefined;
  let webError: string | undefined;
  try {
    web = await startConsole({ services: consoleServices, queues: consoleQueues, config, log });
  } catch (err) {
    webError = (err as Error).message; // e.g. its port in use: the stack still runs
  }
  let stopping = false;
  /** a second Ctrl-C came: the stop under way (which may finish first) exits 130 too */
  let exitingNow = false;
  const stop = async (code: number) => {
    if (stopping) return;
    stopping = true;
    // first: a process that exits on a signal of its own meanwhile (the whole group got it) stays stopped
    stack.holdRestarts();
    w('\nstopping the stack…');
    // Workers started by hand against the stack's own Redis lose it as it stops (a user's trial:
    // up said nothing of them, and they went on logging their lost connection).
    if (stack.servers.redis) {
      const others = await withDeadline(workersNotStarted(consoleQueues, consoleServices, Object.values(stack.supervisor.pids())), 3_000).catch(() => []);
      if (others.length) {
        const one = others.length === 1;
        w(`note: ${others.length} worker${one ? '' : 's'} up did not start ${one ? 'is' : 'are'} connected to its Redis (${others.join(', ')}): ${one ? 'it loses' : 'they lose'} it now, and ${one ? 'waits' : 'wait'} for the next up (stop ${one ? 'it' : 'them'} if the stack is not coming back)`);
      }
    }
    await web?.close();
    await consoleQueues.close();
    await consoleServices.close();
    await stack.stop();
    w('stopped.');
    process.exit(exitingNow ? 130 : code);
  };
  // The children leave the terminal's Ctrl-C to this process (lifecycle.ts: stopSignals), so a
  // second Ctrl-C is passed on (StopMessage `now`): the workers exit at once; Redis and the S3
  // server are waited for (a few seconds at most), so the data directory's lock goes with the
  // last process that writes to it, not before (a next `up` would start its own Redis on files
  // the old one still writes). A third does not wait for them.
  process.on('SIGINT', () => {
    if (!stopping) return void stop(0);
    if (exitingNow) {
      w('third Ctrl-C: Redis and the S3 server killed');
      for (const server of [stack.servers.redis, stack.servers.s3]) server?.kill('SIGKILL');
      process.exit(130);
    }
    exitingNow = true;
    w(`second Ctrl-C: exiting now; jobs in hand run again when the stack is next up (Redis and the S3 server get up to ${SERVERS_NOW_MS / 1000} s to close their files; Ctrl-C again not to wait)`);
    void stack.stopNow().finally(() => process.exit(130));
  });
  process.on('SIGTERM', () => void stop(0));
  whenGone = () => void stop(EXIT.brokenPipe);
  if (outGone) whenGone();
  // the terminal closed: nothing can be written to it any more (a write fails with EIO), and the
  // workers leave its SIGHUP to this process, which stops them in order
  process.on('SIGHUP', () => {
    outGone = true;
    void stop(0);
  });

  // The embedded server's public dev pair is shown (the README documents it); a secret of the
  // user's own never reaches the terminal, nor a password inside the Redis URL.
  const devPair = config.s3.accessKeyId === EMBEDDED_S3_DEV_CREDENTIALS.accessKeyId && config.s3.secretAccessKey === EMBEDDED_S3_DEV_CREDENTIALS.secretAccessKey;
  const secretShown = devPair ? config.s3.secretAccessKey : '*** (S3_SECRET_ACCESS_KEY)';
  const secretEnv = devPair ? config.s3.secretAccessKey : '"$S3_SECRET_ACCESS_KEY"';
  w('transferline is up');
  w(`  S3 (path-style)  ${redactUrl(config.s3.endpoint)}   access key ${config.s3.accessKeyId} / secret ${secretShown}${devPair && config.s3.embedded ? ' (public dev pair)' : ''}${config.s3.embedded ? `   data: ${path.join(config.dataDir, 's3')}` : ''}`);
  w(`  Redis            ${redactUrl(config.redis.url)} (TL_QUEUE_PREFIX=${config.redis.prefix})${config.redis.embedded ? `   data: ${path.join(config.dataDir, 'redis')}` : ''}`);
  w(`  metrics/health   producer :${ports.producer}  ${children.map((c) => `${c.role}${c.replica > 1 ? `#${c.replica}` : ''} :${c.metricsPort}`).join('  ')}   (/metrics, /healthz)`);
  if (web) for (const line of consoleBanner(web, config.console.user)) w(`  ${line}`);
  else w(`  console          not started: ${webError}`);
  w(`  model            EfficientNet-B0, ${config.embed.weights === 'random' ? `SEEDED RANDOM weights (seed ${config.embed.seed})` : `ImageNet weights (MD5 ${config.embed.weightsMd5})`}${embedBackendWhere(stack.supervisor, children)}`);
  w(`  worker logs      ${path.join(config.dataDir, 'logs')}/`);
  w(`  bucket for embeddings and models: s3://${config.s3.bucket}/${config.s3.prefix}`);

  if (o.demo) {
    try {
      const ctx = await openCliContext(config, out);
      try {
        let existing = 0;
        await ctx.services.store.ensureBucket(DEMO_BUCKET);
        for await (const _ of ctx.services.store.listObjects(DEMO_BUCKET, DEMO_PREFIX)) {
          existing++;
          break;
        }
        if (existing === 0) {
          const dir = path.join(config.dataDir, 'demo-photos');
          const have = await readdir(dir).catch(() => []);
          if (have.length === 0) {
            const n = await writeSampleSet(dir, 30);
            w(`\ndemo: generated ${n} labelled sample images (circle, square, triangle) in ${dir}`);
          }
          await uploadCommand(ctx, dir, `s3://${DEMO_BUCKET}/${DEMO_PREFIX}`);
        } else {
          w(`\ndemo: s3://${DEMO_BUCKET}/${DEMO_PREFIX} already has images; using them`);
        }
        if (children.some((c) => c.role === 'embed')) await embedWorkerLive(() => ctx.services.spaces.workersOf(stack.space.id), w, () => stopping);
        // the stack's own space, whatever other spaces a shared Redis holds
        const demo = await ingestCommand(ctx, `s3://${DEMO_BUCKET}/${DEMO_PREFIX}`, { dataset: 'demo', wait: true, embedder: stack.space.id, embedderReason: "this stack's" });
        const foreign = foreignDemoFolders(demo.status?.labels.map((l) => l.label) ?? []);
        if (foreign) w(foreign);
        await demoTrain(ctx, { dataset: 'demo', url: `s3://${DEMO_BUCKET}/${DEMO_PREFIX}`, counts: demo.counts }, w);
      } finally {
        await ctx.close();
      }
    } catch (err) {
      log.error({ err: (err as Error).message }, 'demo failed');
      w(`demo failed: ${(err as Error).message}`);
      await stop(1);
      return;
    }
  }
  if (o.exitAfterDemo) {
    await stop(0);
    return;
  }
  // The hints' any-S3-client line copies into s3://photos/, which only `upload` would create:
  // made here on the embedded server (a bucket of the user's own S3 is theirs to name and make).
  // (`config` is the children's, which name the embedded servers as if they were the user's own.)
  const own = loadConfig(env);
  if (own.s3.embedded) {
    await consoleServices.store.ensureBucket(DEMO_BUCKET).catch((err: unknown) => w(`  (could not create s3://${DEMO_BUCKET}: ${(err as Error).message})`));
  }
  // Every line below pastes into a shell as it is (the test runs them through one).
  w('\nthe stack keeps running; in another terminal try:');
  // npx finds transferline in the project's own node_modules
  w(`  cd ${shellQuote(PROJECT_ROOT)}`);
  // settings that are not the defaults: the other terminal's commands reach this stack only with
  // them; a port given as 0 (any free one) is the one the server got
  const settings = stackSettings({
    ...env,
    ...(own.redis.embedded && { TL_REDIS_PORT: new URL(config.redis.url).port }),
    ...(own.s3.embedded && { TL_S3_PORT: new URL(config.s3.endpoint).port }),
  });
  const shown = settings.filter((s) => s.value !== undefined).map((s) => `${s.name}=${shellQuote(s.value!)}`);
  const hidden = settings.filter((s) => s.value === undefined).map((s) => s.name);
  if (shown.length) w(`  export ${shown.join(' ')}`);
  if (hidden.length) w(`  # and ${hidden.join(', ')} as set here (not shown)`);
  // (the CLI reads the embedding space from Redis; a worker started by hand computes its own)
  const forWorkers = spaceSettings(stack.space).map((s) => `${s.name}=${shellQuote(s.value)}`);
  if (forWorkers.length) w(`  # an embed worker started by hand for this stack also needs ${forWorkers.join(' ')}`);
  w('  npx transferline status');
  w(`  npx transferline upload ./photos s3://${DEMO_BUCKET}/mine/   # a folder per label; or with any S3 client:`);
  w(`  AWS_ACCESS_KEY_ID=${shellQuote(config.s3.accessKeyId)} AWS_SECRET_ACCESS_KEY=${secretEnv} aws --endpoint-url ${config.s3.endpoint} s3 cp --recursive ./photos s3://${DEMO_BUCKET}/mine/`);
  // (two lines, not `&&`: ingest exits 3 when some images failed, and train takes the others)
  w(`  npx transferline ingest s3://${DEMO_BUCKET}/mine/ --dataset mine   # exits 3 if some images failed (it lists them); train takes the rest`);
  w('  npx transferline train --dataset mine');
  w(`  npx transferline upload ./new s3://${DEMO_BUCKET}/incoming/ --unlabelled && npx transferline classify s3://${DEMO_BUCKET}/incoming/ --model mine   # images to classify`);
  w('Ctrl-C stops everything.');
}

/** The project's root, where `npx transferline` finds the CLI (from src/ or dist/ of apps/producer). */
const PROJECT_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..', '..');
