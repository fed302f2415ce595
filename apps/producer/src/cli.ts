#!/usr/bin/env node
import { readFileSync } from 'node:fs';
import { Command, InvalidArgumentError, Option, type CommanderError } from 'commander';
import { AnyDatasetName, ConfigError, DatasetName, DEFAULT_STALL_SECONDS, loadConfig, ObjectStore, parseS3Url, rangeWords, s3Refusal, S3UnreachableError, ITEM_FAILURE_REASONS, TrainJob, TRANSIENT_REASONS } from '@transferline/shared';
import { openCliContext, sayWhenS3IsSlow, type CliContext } from './cli-context.js';
import { brokenPipe, CliExit, EXIT } from './exit-codes.js';
import { DEFAULT_ORPHAN_MINUTES, compactCommand, rebuildIndexCommand } from './commands/cache.command.js';
import { classifyCommand } from './commands/classify.command.js';
import { downloadCommand } from './commands/download.command.js';
import { deleteDatasetCommand, deleteRunCommand, deleteSpaceCommand, terminalConfirm, type DeleteOptions } from './commands/delete.command.js';
import { failuresCommand } from './commands/failures.command.js';
import { ingestCommand, watchIngest } from './commands/ingest.command.js';
import { modelsCommand, parseModelSpec, parseRunSpec, promoteCommand } from './commands/models.command.js';
import { retryCommand } from './commands/retry.command.js';
import { statusCommand } from './commands/status.command.js';
import { cancelRun, followRun, trainCommand, type TrainOptions } from './commands/train.command.js';
import { uploadCommand } from './commands/upload.command.js';
import { refuseOtherStorage } from './storage-hint.js';
import { printableMessage } from './terminal.js';

// A reader that goes away (`transferline status | head -3`) ends the command as it ends any Unix
// tool: quietly, with the status of a SIGPIPE (141), not a stack trace and exit 1; and not 0, which
// would hide from a script that a wait was cut short. (The workers go on with what it enqueued.)
let pipeBroken = false;
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (err: NodeJS.ErrnoException) => {
    // (a write racing the first EPIPE finds the stream destroyed: the same broken pipe)
    if (pipeBroken && err.code === 'ERR_STREAM_DESTROYED') return;
    // (EIO: the terminal it wrote to was closed, as a closed pipe)
    if (err.code !== 'EPIPE' && err.code !== 'EIO') throw err;
    if (pipeBroken) return;
    pipeBroken = true;
    brokenPipe();
  });
}

/** A whole number of at least `min` (0 unless said: an option whose 0 would be refused later says so here). */
const int =
  (name: string, min = 0) =>
  (v: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`${name} must be a whole number, at least ${min}`);
    return n;
  };
/** A TCP port: 0 (any free one) to 65535. */
const port = (name: string) => (v: string) => {
  const n = int(name)(v);
  if (n > 65_535) throw new InvalidArgumentError(`${name} must be a port number, 0 to 65535`);
  return n;
};
/** --interval is how often --watch looks: given without --watch, it would be ignored. */
const intervalOption = (what: string) => ['--interval <seconds>', `with --watch: how often it ${what} (default 10)`, positive('--interval')] as const;
const watchInterval = (o: { watch?: boolean; interval?: number }): number => {
  if (o.interval !== undefined && !o.watch) throw usage('--interval goes with --watch (how often it looks again)');
  return o.interval ?? 10;
};
/** An s3://bucket/prefix argument, refused as bad usage when it is not one. */
const s3url = (v: string) => {
  try {
    parseS3Url(v);
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
  return v;
};
const positive = (name: string) => (v: string) => {
  const n = Number(v);
  if (!(n > 0)) throw new InvalidArgumentError(`${name} must be a positive number`);
  return n;
};
/** An option's value checked against a name schema: commander shows the schema's message. */
const named = (schema: typeof DatasetName | typeof AnyDatasetName) => (v: string) => {
  const r = schema.safeParse(v);
  if (!r.success) throw new InvalidArgumentError(r.error.issues[0]?.message ?? 'bad dataset name');
  return v;
};
const dataset = named(DatasetName);
/** `-m DATASET[@RUN]` (parseModelSpec): bad usage, said before Redis is asked. */
const modelSpec = (v: string): string => {
  try {
    parseModelSpec(v);
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message.replace(/^transferline: /, ''));
  }
  return v;
};
/** A dataset to look at or retry: a user's, or `_classify.<model>` (where classify keeps its images). */
const anyDataset = named(AnyDatasetName);

const embedderOption = ['--embedder <id>', 'the embedding space to use, when the deployment runs several (see "transferline status")'] as const;
const stallOption = ['--stall-timeout <seconds>', 'give up waiting (exit code 4) after this long without progress when no worker can move the rest', int('--stall-timeout'), DEFAULT_STALL_SECONDS] as const;

/**
 * Runs a one-shot command with clients built from the environment, closed afterwards. Ctrl-C
 * aborts its waits at once (the work goes on in the workers); a second Ctrl-C exits at once.
 */
async function withContext(fn: (ctx: CliContext) => Promise<unknown>, o: { otherStorage?: 'refuse' | 'warn' } = {}): Promise<void> {
  const interrupt = new AbortController();
  process.once('SIGINT', () => {
    interrupt.abort();
    process.once('SIGINT', () => process.exit(EXIT.interrupted));
  });
  const ctx = await openCliContext(loadConfig(process.env), process.stdout, interrupt.signal);
  try {
    // (status and the console say which deployment they read and warn of a storage not its own)
    if (o.otherStorage !== 'warn') await refuseOtherStorage(ctx);
    await fn(ctx);
  } finally {
    await ctx.close();
  }
}

/**
 * Runs a command that needs S3 alone (upload, download: they ask nothing of Redis, which need not
 * be running), with a store built from the environment and closed afterwards.
 */
async function withStoreAlone(run: (store: ObjectStore, config: ReturnType<typeof loadConfig>) => Promise<unknown>): Promise<void> {
  const config = loadConfig(process.env);
  const store = new ObjectStore(config.s3);
  sayWhenS3IsSlow(store, config.s3);
  try {
    await run(store, config);
  } finally {
    store.close();
  }
}

/** Bad usage as the CLI itself finds it (a value out of range, options that do not go together): exit 2. */
const usage = (message: string) => new CliExit(EXIT.usage, `transferline: ${message}`);

// The commands that bring in a model runtime, an HTTP server or the queue board (TF.js, ONNX,
// h5wasm, express, bull-board: most of a second) are loaded when they run, so that every other
// command (and --help, and a usage error) starts without them.
const up = () => import('./commands/up.command.js');
const exporting = () => import('./commands/export.command.js');
const serving = () => import('./commands/serve.command.js');
const reviewing = () => import('./commands/review.command.js');
const consoling = () => import('./commands/console.command.js');

/**
 * Where `up` puts the stack (a user's trial: with port 9000 taken, --help named none of these),
 * as this shell's environment sets them now; the README's "Configuration" has every setting.
 */
function stackEnvironmentHelp(): string {
  let now: ReturnType<typeof loadConfig>;
  let whose = 'the values as this shell has them';
  try {
    now = loadConfig(process.env);
  } catch (err) {
    now = loadConfig({});
    whose = `the defaults: this shell's settings are refused (${err instanceof Error ? err.message : String(err)})`;
  }
  return [
    '',
    `Environment (README "Configuration" lists every setting; ${whose}):`,
    `  TL_DATA_DIR      where up keeps the buckets, Redis's data and logs; one up at a time per directory (${now.dataDir})`,
    `  TL_S3_PORT       the S3-compatible server's port, 0: any free port (${now.s3.embedded ? now.s3.embeddedPort : 'not used: S3_ENDPOINT is set, and up uses that server'})`,
    `  TL_REDIS_PORT    Redis's port (${now.redis.embedded ? now.redis.embeddedPort : 'not used: REDIS_URL is set, and up uses that Redis'})`,
    `  TL_CONSOLE_PORT  the web console's port, 0: any free port (${now.console.port})`,
  ].join('\n');
}

const program = new Command('transferline')
  .description('A bucket of labelled images in, a trained image classifier out (EfficientNet-B0 embeddings + a trained head).')
  .version((JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version, '-V, --version', 'print the version')
  .showHelpAfterError()
  .addHelpText('after', "\nThe stack's data directory and ports (TL_DATA_DIR, TL_S3_PORT, TL_REDIS_PORT, TL_CONSOLE_PORT): transferline up --help")
  // Commander's own errors (unknown command or option, missing argument, a value its parser
  // refuses) exit 2, as the README says; --help and --version exit 0. Subcommands inherit this.
  .exitOverride((err: CommanderError) => process.exit(err.exitCode === 0 ? 0 : EXIT.usage));

program
  .command('up')
  .description('start the embedded stack on this machine: S3-compatible server, Redis, every worker, metrics')
  .option('--demo', 'make a labelled sample set, ingest it, train a classifier and print the report')
  .option('--exit-after-demo', 'stop the stack when the demo is done')
  .option('--metrics-port <n>', 'first metrics port: producer n, preprocess n+1, embed n+2, train n+3 (+10 per extra replica; default 9464; 0: any free ports)', port('--metrics-port'))
  .option('--preprocess-workers <n>', 'preprocess processes (default 1)', int('--preprocess-workers'))
  .option('--embed-workers <n>', 'embed processes (default 1); they share the cores, each running one forward pass per thread at once, at most 4 (TL_EMBED_STREAMS)', int('--embed-workers'))
  .addHelpText('after', () => stackEnvironmentHelp())
  .action(async (o: { demo?: boolean; exitAfterDemo?: boolean; preprocessWorkers?: number; embedWorkers?: number; metricsPort?: number }) => {
    const commands = await up();
    const replicas = { ...(o.preprocessWorkers !== undefined && { preprocess: o.preprocessWorkers }), ...(o.embedWorkers !== undefined && { embed: o.embedWorkers }) };
    const overflow = o.metricsPort === undefined ? undefined : commands.metricsPortsOverflow(o.metricsPort, replicas);
    if (overflow) throw usage(overflow);
    await commands.upCommand(process.env, {
      demo: !!o.demo,
      ...(o.metricsPort !== undefined && { ports: commands.portsFrom(o.metricsPort) }),
      exitAfterDemo: !!o.exitAfterDemo,
      replicas,
    });
  });

program
  .command('upload')
  .description('copy a local folder (one sub-folder per label; with --manifest, images a label manifest labels; with --unlabelled, images to classify) into the bucket')
  .argument('<dir>', 'local folder, e.g. ./photos with photos/cats/*.jpg, photos/dogs/*.jpg (with --unlabelled or --manifest: any layout)')
  .argument('<s3url>', 'destination, e.g. s3://photos/train/', s3url)
  .addOption(new Option('--copies', 'also send files whose bytes are already under another key of the prefix (by default skipped: relabel moved them there)').conflicts(['unlabelled', 'manifest']))
  .option('--unlabelled', 'images to classify: no label folders needed, every file keeps its path under <dir>')
  .addOption(
    new Option('--manifest <file>', 'a label manifest (.csv, .tsv, .jsonl, .ndjson) that labels the images: checked first, sent after them (at its path under <dir>, or beside them), for ingest to read; no label folders needed').conflicts('unlabelled'),
  )
  .action((dir: string, url: string, o: { copies?: boolean; unlabelled?: boolean; manifest?: string }) =>
    withStoreAlone((store, config) => uploadCommand({ services: { store }, out: process.stdout, config }, dir, url, { copies: !!o.copies, unlabelled: !!o.unlabelled, ...(o.manifest !== undefined && { manifest: o.manifest }) })),
  );

program
  .command('download')
  .description("copy from the bucket to this machine: one object to a file (- for stdout), or every object under a prefix into a folder (classify's results, say)")
  .argument('<s3url>', 'an object (s3://photos/results/pets/RUN/TIME.jsonl), or a prefix ending in / (s3://photos/results/pets/)')
  .argument('[dest]', 'a file or folder (default: its name, here); - writes the one object to stdout')
  .action((url: string, dest: string | undefined) =>
    withStoreAlone((store) => downloadCommand({ services: { store }, out: dest === '-' ? process.stderr : process.stdout, stdout: process.stdout }, url, dest)),
  );

program
  .command('ingest')
  .description('add every image under an s3:// prefix to a dataset (label = first folder below the prefix), or every image a label manifest names (…/labels.csv or .jsonl: key,label rows), and wait until embedded')
  .argument('<s3url>', 'e.g. s3://photos/train/, or s3://photos/labels.csv', s3url)
  .requiredOption('-d, --dataset <name>', 'dataset name', dataset)
  .option(...embedderOption)
  .option('--no-wait', 'enqueue and return without waiting for the embeddings')
  .option('--watch', 'keep picking up new and changed objects under the prefix until Ctrl-C')
  .option(...intervalOption('lists the prefix'))
  .option(...stallOption)
  .action((url: string, o: { dataset: string; embedder?: string; wait: boolean; watch?: boolean; interval?: number; stallTimeout: number }) => {
    const interval = watchInterval(o);
    return withContext(async (ctx) => {
      const settings = { dataset: o.dataset, wait: o.wait, stallSeconds: o.stallTimeout, ...(o.embedder && { embedder: o.embedder }) };
      if (o.watch) {
        const watched = await watchIngest(ctx, url, { ...settings, intervalSeconds: interval });
        if (watched.failed) process.exitCode = EXIT.failedItems;
        // Ctrl-C between two rounds of --watch ends as Ctrl-C does everywhere else.
        if (ctx.signal?.aborted) throw new CliExit(EXIT.interrupted, `\ninterrupted; the workers go on with ${o.dataset}`);
        return;
      }
      const r = await ingestCommand(ctx, url, settings);
      if ((r.status && r.status.failed > 0) || r.counts.missing) process.exitCode = EXIT.failedItems;
      // Nothing under the prefix, or nothing in a label folder (a prefix one level too deep), for
      // a dataset that does not exist: a typo, most likely; a script's next step (train) would
      // fail on it. Watching a prefix that is empty for now is fine.
      if (r.counts.enqueued + r.counts.fromCache === 0 && !(await ctx.services.datasets.exists(o.dataset))) {
        const what = r.counts.listed === 0 ? 'nothing to ingest under' : `none of the ${r.counts.listed} objects is in a label folder under`;
        throw new CliExit(EXIT.error, `transferline: ${what} ${printableMessage(url)}, so dataset ${o.dataset} was not created`);
      }
    });
  });

program
  .command('retry')
  .description('run failed images of a dataset again and wait until they are embedded or fail again')
  .requiredOption('-d, --dataset <name>', 'dataset name', anyDataset)
  .addOption(new Option('--reason <code>', `retry failures with this reason code (bad input included); default: the ones that are not the image's fault (${[...TRANSIENT_REASONS].join(', ')})`).choices(ITEM_FAILURE_REASONS))
  .option('--stage <stage>', 'only failures of this stage: preprocess or embed')
  .option('--no-wait', 'enqueue and return without waiting')
  .option(...stallOption)
  .action((o: { dataset: string; reason?: string; stage?: string; wait: boolean; stallTimeout: number }) => {
    if (o.stage !== undefined && o.stage !== 'preprocess' && o.stage !== 'embed') throw usage('--stage is preprocess or embed');
    return withContext(async (ctx) => {
      const r = await retryCommand(ctx, {
        dataset: o.dataset,
        wait: o.wait,
        stallSeconds: o.stallTimeout,
        ...(o.reason && { reason: o.reason }),
        ...(o.stage && { stage: o.stage as 'preprocess' | 'embed' }),
      });
      if (r.status && r.status.failed > 0) process.exitCode = EXIT.failedItems;
    });
  });

/**
 * A training setting checked, as it is parsed, against the train job's own schema (the one home
 * of its bounds): a bad value is refused before Redis is asked anything, in the words of the
 * check the run would fail.
 */
type NumericSetting = 'hiddenUnits' | 'dropout' | 'epochs' | 'learningRate' | 'batchSize' | 'l2' | 'patience' | 'validationFraction' | 'testFraction' | 'seed';
const setting = (name: string, field: NumericSetting) => (v: string) => {
  const n = v.trim() === '' ? NaN : Number(v);
  const checked = TrainJob.shape[field].safeParse(n);
  if (checked.success) return n;
  const issue = checked.error.issues[0]!;
  const kind = TrainJob.shape[field].unwrap().isInt ? 'a whole number' : 'a number';
  const range = Number.isNaN(n) ? undefined : rangeWords(issue);
  throw new InvalidArgumentError(`${name} must be ${kind}${range ? `, ${range}` : ''}`);
};

program
  .command('train')
  .description("fit a classification head on a dataset's cached embeddings; the model and report land in the bucket")
  .option('-d, --dataset <name>', 'dataset name', dataset)
  .option('--hidden-units <n>', 'add one ReLU hidden layer of n units (default 0: a softmax head, i.e. logistic regression)', setting('--hidden-units', 'hiddenUnits'))
  .option('--dropout <rate>', 'dropout after the hidden layer (default 0.2)', setting('--dropout', 'dropout'))
  .option('--epochs <n>', 'most epochs (default 100; early stopping usually ends sooner)', setting('--epochs', 'epochs'))
  .option('--learning-rate <lr>', 'Adam learning rate (default 0.001)', setting('--learning-rate', 'learningRate'))
  .option('--batch-size <n>', 'mini-batch size (default 64)', setting('--batch-size', 'batchSize'))
  .option('--l2 <x>', 'L2 penalty on the weights (default 0.0001)', setting('--l2', 'l2'))
  .option('--patience <n>', 'stop after n epochs without a better validation loss (default 10; 0 = off); either way the best epoch is kept', setting('--patience', 'patience'))
  .option('--class-weights <mode>', 'balanced (default: weight rare classes up) or none')
  .option('--validation-fraction <x>', 'share of each class held out for validation, 0.05 to 0.5 (default 0.2)', setting('--validation-fraction', 'validationFraction'))
  .option('--test-fraction <x>', 'share of each class held out for the test report, 0 to 0.5 (default 0.1)', setting('--test-fraction', 'testFraction'))
  .option('--seed <n>', 'seed of initial weights, shuffles and dropout (default 1): same data + same seed = same figures', setting('--seed', 'seed'))
  .option('--run-id <id>', 'name of the run (default: a timestamp); refused if it exists')
  .option('--partial', 'train now on the images embedded so far, although some are still pending (the report records it)')
  .option('--no-promote', "do not make the run the dataset's latest (what classify, serve and export use without @run); transferline promote does it later")
  .option('--follow <run>', 'follow a run started elsewhere instead of starting one')
  .option('--cancel <run>', 'stop a run for good, writing no model: removed if no worker started it, else at the end of an epoch, within about a second')
  .option('--no-wait', 'enqueue the run and return without following it (it still waits for the images to be embedded, unless --partial)')
  .option(...stallOption)
  .action((o: TrainOptions & { dataset?: string; follow?: string; cancel?: string; classWeights?: string; stallTimeout: number }, cmd: Command) => {
    if (o.cancel) {
      const given = cmd.options.filter((opt) => !['cancel', 'dataset'].includes(opt.attributeName()) && cmd.getOptionValueSource(opt.attributeName()) === 'cli');
      if (given.length) throw usage(`--cancel takes the run id alone (and --dataset, to check it is that dataset's): ${given.map((opt) => opt.long).join(', ')} cannot go with it`);
      // (a run of this queue prefix's, whatever this shell's storage: a runaway run is stopped, not refused)
      return withContext((ctx) => cancelRun(ctx, o.cancel!, undefined, o.dataset), { otherStorage: 'warn' });
    }
    if (!o.follow && !o.dataset) throw usage('train needs --dataset NAME (or --follow RUN, or --cancel RUN)');
    if (o.classWeights !== undefined && o.classWeights !== 'balanced' && o.classWeights !== 'none') throw usage('--class-weights is balanced or none');
    if (o.follow) {
      // A run's settings were fixed when it started: one given here would be silently ignored.
      const given = cmd.options.filter((opt) => !['dataset', 'follow', 'stallTimeout'].includes(opt.attributeName()) && cmd.getOptionValueSource(opt.attributeName()) === 'cli');
      if (given.length) throw usage(`--follow follows a run as it was started: ${given.map((opt) => opt.long).join(', ')} cannot change it`);
    }
    return withContext(async (ctx) => {
      if (o.follow) return followRun(ctx, o.follow, o.stallTimeout, o.dataset);
      const { follow: _follow, stallTimeout, ...rest } = o;
      return trainCommand(ctx, { ...rest, dataset: o.dataset!, stallSeconds: stallTimeout, classWeights: o.classWeights as 'balanced' | 'none' | undefined });
    });
  });

program
  .command('status')
  .description('jobs per queue, workers connected, and each dataset\'s progress and failures')
  .option('-d, --dataset <name>', 'only this dataset', anyDataset)
  .option('--json', 'machine-readable output')
  .action((o: { dataset?: string; json?: boolean }) => withContext((ctx) => statusCommand(ctx, o), { otherStorage: 'warn' }));

program
  .command('failures')
  .description('every image of a dataset that failed for good, newest first, with its reason code and message')
  .requiredOption('-d, --dataset <name>', 'dataset name', anyDataset)
  .addOption(new Option('--reason <code>', 'only failures with this reason code').choices(ITEM_FAILURE_REASONS))
  .option('--label <label>', 'only the failed images of this label')
  .option('--json', 'machine-readable output')
  .action((o: { dataset: string; reason?: string; label?: string; json?: boolean }) => withContext((ctx) => failuresCommand(ctx, o)));

program
  .command('classify')
  .description('label the images under an s3:// prefix with a trained model; results as JSON Lines in the bucket')
  .argument('<s3url>', 'e.g. s3://photos/incoming/', s3url)
  .requiredOption('-m, --model <name[@run]>', 'the dataset whose latest run to use, or dataset@run', modelSpec)
  .option('--watch', 'keep classifying new objects under the prefix')
  .option(...intervalOption('looks for new objects'))
  .option(...stallOption)
  .action((url: string, o: { model: string; watch?: boolean; interval?: number; stallTimeout: number }) => {
    const intervalSeconds = watchInterval(o);
    return withContext(async (ctx) => {
      const rounds = await classifyCommand(ctx, url, { model: o.model, watch: !!o.watch, intervalSeconds, stallSeconds: o.stallTimeout });
      if (rounds.some((r) => r.failed > 0 || (r.skippedFailed ?? 0) > 0)) process.exitCode = EXIT.failedItems;
      if (ctx.signal?.aborted) throw new CliExit(EXIT.interrupted, '\ninterrupted');
    });
  });

program
  .command('export')
  .description('write a trained model as one ONNX file: uint8 RGB images in, class probabilities out (labels and threshold in its metadata)')
  .requiredOption('-m, --model <name[@run]>', 'the dataset whose latest run to export, or dataset@run', modelSpec)
  .addOption(new Option('--format <format>', 'the file format').choices(['onnx']).default('onnx'))
  .option('-o, --output <file>', 'the file to write, or a folder to write <dataset>-<run>.onnx in (default: that file here)')
  .action((o: { model: string; format: string; output?: string }) => withContext(async (ctx) => (await exporting()).exportCommand(ctx, o)));

program
  .command('serve')
  .description('an HTTP classifier: POST image bytes (or multipart files, or JSON s3:// keys) to /v1/classify, labels and probabilities back')
  .requiredOption('-m, --model <name[@run]>', 'the dataset whose latest run to serve (followed as new runs land), or dataset@run', modelSpec)
  .option('--host <host>', 'interface to listen on (default TL_SERVE_HOST, 127.0.0.1)')
  .option('--port <n>', 'port (default TL_SERVE_PORT, 9480; 0 = any free port)', port('--port'))
  .option('--threads <n>', 'ONNX Runtime threads (default TL_SERVE_THREADS, else the cores)', int('--threads', 1))
  .option('--streams <n>', 'forward passes at once, sharing the threads (default TL_SERVE_STREAMS, else one per thread, at most 4)', int('--streams'))
  .option('--follow-interval <s>', 'with -m DATASET: how often to look for a newer latest run, in seconds (default 30; 0 = only on SIGHUP or POST /v1/models/reload)', int('--follow-interval'))
  .action((o: { model: string; host?: string; port?: number; threads?: number; streams?: number; followInterval?: number }) => withContext(async (ctx) => (await serving()).serveCommand(ctx, o)));

program
  .command('review')
  .description("rank the images whose given label the model finds least likely (out-of-fold, confident learning), and the most uncertain")
  .requiredOption('-d, --dataset <name>', 'dataset name', dataset)
  .option('--top <n>', 'how many to print of each list: the label issues, the most uncertain of the others (default 20)', int('--top'))
  .option('--folds <k>', 'folds of the out-of-fold predictions (default 5, at least 2)', (v: string) => {
    const k = int('--folds')(v);
    if (k < 2) throw new InvalidArgumentError('--folds must be 2 or more (each image is predicted by a model that did not see it)');
    return k;
  })
  .option('--json', 'machine-readable output')
  .action((o: { dataset: string; top?: number; folds?: number; json?: boolean }) => withContext(async (ctx) => (await reviewing()).reviewCommand(ctx, o)));

program
  .command('relabel')
  .description('move images to another label folder and update the dataset (nothing is embedded again)')
  .argument('[keys...]', 's3://bucket/key of each image to move')
  .requiredOption('-d, --dataset <name>', 'dataset name', dataset)
  .option('--to <label>', 'the new label: one the dataset has, unless --new-label')
  .option('--new-label', 'with --to: the label is a new one (else a label the dataset lacks is refused as a likely typo)')
  .option('--keys-from <file>', 'with --to: the images to move, one s3://bucket/key per line, from a local file (- for standard input; blank lines and # comments skipped), with or instead of the keys given')
  .option('--from-review <s3url>', 'move the label issues of a review file to their suggested labels')
  .option('--top <n>', 'with --from-review: only the first n issues', int('--top'))
  .option('--dry-run', 'check every move and print what would move, moving nothing')
  .action((keys: string[], o: { dataset: string; to?: string; newLabel?: boolean; keysFrom?: string; fromReview?: string; top?: number; dryRun?: boolean }) =>
    // (a list file that cannot be read, or is not one, is said before Redis is asked anything)
    (async () => {
      const { keysFromFile, relabelCommand } = await reviewing();
      const listed = o.keysFrom === undefined ? [] : await keysFromFile(o.keysFrom);
      return withContext((ctx) => relabelCommand(ctx, { ...o, keys: [...new Set([...keys, ...listed])] }));
    })(),
  );

program
  .command('models')
  .description('trained runs with their validation and test accuracy')
  .option('-d, --dataset <name>', 'only this dataset', dataset)
  .option('--json', 'machine-readable output')
  .action((o: { dataset?: string; json?: boolean }) => withContext((ctx) => modelsCommand(ctx, o)));

program
  .command('promote')
  .description("make a trained run its dataset's latest: what classify, serve and export use without @run (a serve following the dataset switches within its follow interval)")
  .argument('<dataset@run>', 'the run, named in full (see "transferline models")')
  .action((spec: string) => {
    parseRunSpec('promote', spec); // a bad one is bad usage, said before Redis is asked
    return withContext((ctx) => promoteCommand(ctx, spec));
  });

program
  .command('console')
  .description('web console: datasets, trained runs and every queue (bull-board); read-only unless TL_CONSOLE_PASSWORD is set and given')
  .option('--host <host>', 'interface to listen on (default TL_CONSOLE_HOST, 127.0.0.1)')
  .option('--port <n>', 'port (default TL_CONSOLE_PORT, 9470; 0 = any free port)', port('--port'))
  .action((o: { host?: string; port?: number }) => withContext(async (ctx) => (await consoling()).consoleCommand(ctx, o), { otherStorage: 'warn' }));

const cache = program.command('cache').description('the embedding cache in the bucket');
cache
  .command('rebuild-index')
  .description('restore the Redis index of the embedding cache from the shards in the bucket (after Redis lost its data)')
  .option(...embedderOption)
  .action((o: { embedder?: string }) => withContext((ctx) => rebuildIndexCommand(ctx, o)));
cache
  .command('compact')
  .description('merge the small shards the embed stage writes into large ones, so training reads few large objects; then delete shard data that no manifest names')
  .option('--rows <n>', 'rows per merged shard', int('--rows'), 4096)
  .option('--orphans-older-than <minutes>', `delete shard data that no manifest names (a write cut short) once it is this old (default ${DEFAULT_ORPHAN_MINUTES}); below a few minutes only while no embed worker writes: a write in progress has its data before its manifest`, int('--orphans-older-than'))
  .option(...embedderOption)
  .action((o: { rows: number; embedder?: string; orphansOlderThan?: number }) => withContext((ctx) => compactCommand(ctx, o)));

const del = program.command('delete').description('delete a trained run, a dataset (with its runs if asked), or an unused embedding space: prints what goes and what stays, and deletes with --yes');
const deleteOptions = (c: Command, results: string) =>
  c
    .option('--results', results)
    .option('--dry-run', 'print what would be deleted; delete nothing')
    .option('-y, --yes', 'delete without asking (required when not on a terminal)');
deleteOptions(
  del
    .command('run')
    .description("a trained run: its model files and classify's record of what it classified; if it was the latest, the newest run left that is not an unpromoted --no-promote run becomes the latest")
    .argument('<dataset@run>', 'the run, named in full (see "transferline models")'),
  'the classify results written with it, too',
).action((spec: string, o: DeleteOptions) => {
  parseRunSpec('delete run', spec); // a bad one is bad usage, said before Redis is asked
  return withContext((ctx) => deleteRunCommand(ctx, spec, o, terminalConfirm()));
});
deleteOptions(
  del
    .command('dataset')
    .description('a dataset: its records in Redis (the images and their cached embeddings stay); with --runs its trained runs too')
    .argument('<name>', 'the dataset (or _classify.<model>: classify then labels every image again)', anyDataset)
    .option('--runs', "its trained runs too, with classify's records of what they labelled and the images classify kept for them"),
  'the classify results and label reviews written for it, too',
).action((name: string, o: DeleteOptions & { runs?: boolean }) => withContext((ctx) => deleteDatasetCommand(ctx, name, o, terminalConfirm())));
del
  .command('space')
  .description("an embedding space nothing uses (a worker started once with other settings published it): its cached embeddings, queue and records; refused while a worker of it is live, a dataset or trained run uses it, or jobs wait for it")
  .argument('<id>', 'the embedder id, as status lists it')
  .option('--dry-run', 'print what would be deleted; delete nothing')
  .option('-y, --yes', 'delete without asking (required when not on a terminal)')
  .action((id: string, o: DeleteOptions) => withContext((ctx) => deleteSpaceCommand(ctx, id, o, terminalConfirm())));

// A command that finished has closed every client it opened, so the process ends by itself
// (the test suite runs each command as a child process and requires that it exits).
program.parseAsync(process.argv).catch((err: unknown) => {
  const e = err as Error;
  // Errors quote keys, labels and file contents: printed, they must not drive the terminal.
  if (e instanceof CliExit) {
    process.stderr.write(`${printableMessage(e.message)}\n`);
    process.exit(e.code);
  }
  // S3 that does not answer is said as Redis that does not answer is, not as a socket's error;
  // what S3 refuses (credentials, a bucket that is not there) names the setting to look at
  let s3: Error | undefined;
  try {
    const config = e instanceof ConfigError ? undefined : loadConfig(process.env).s3;
    s3 = config && (S3UnreachableError.from(e, config.endpoint) ?? s3Refusal(e, config));
  } catch {
    // (a configuration that does not load: the error is told as it is)
  }
  // an error without a message (Node's AggregateError of a refused dual-stack host) says its code
  const message = (s3 ?? e).message || (e as NodeJS.ErrnoException).code || e.name;
  process.stderr.write(`${printableMessage(e instanceof ConfigError ? e.message : `transferline: ${message}`)}\n`);
  process.exit(EXIT.error);
});
