import { ConfigError, createServices, redactUrl, RedisUnreachableError, S3UnreachableError, slowRequestAfterMs, DEFAULT_IDLE_TIMEOUT_MS, S3_ATTEMPTS } from '@transferline/shared';
import { createLogger } from '@transferline/shared/service-runtime';
import { CliExit, EXIT } from '../exit-codes.js';
import type { CliContext } from '../cli-context.js';
import { latestRun, listModelRuns } from './models.command.js';
import { backgroundNote, randomWeightsNote } from '../classifier-model.js';
import type { ClassifierMetadata } from '@transferline/feature-worker/classifier.export';
import { startClassifierServer, type ClassifierServer } from '../serve/classifier.server.js';
import { printable } from '../terminal.js';
import { isLoopbackHost } from '../loopback-host.js';
import { thresholdText } from '../report-words.js';

export interface ServeOptions {
  /** `dataset` (its latest run, followed as new runs land) or `dataset@run` (that run only) */
  model: string;
  host?: string;
  port?: number;
  /** ONNX Runtime intra-op threads (default: the machine's cores) */
  threads?: number;
  /** forward passes at once, sharing the threads (default: one per thread, at most 4) */
  streams?: number;
  /** how often to look for a newer run when serving a dataset's latest (seconds, default 30; 0 = only when asked: SIGHUP, POST /v1/models/reload) */
  followInterval?: number;
  /** called once the server listens (tests); the command then runs until Ctrl-C or SIGTERM */
  onListening?: (server: ClassifierServer) => void;
}

/** What moved a dataset's latest run, as serve's follow loop says it (the pointer records its writer). */
const SET_BY = {
  train: 'a new run finished',
  promote: 'promoted',
  delete: 'the previous latest run was deleted',
  // a pointer written before the writer was recorded (or by a writer this version does not know)
  unknown: 'a new run, promote, or delete run',
} as const;

/**
 * `transferline serve -m NAME[@run]`: an HTTP classifier on 127.0.0.1 (TL_SERVE_HOST,
 * TL_SERVE_PORT), until Ctrl-C or SIGTERM. Serving a dataset's latest run, it swaps to a newer
 * run when one lands (and on SIGHUP), without dropping requests in flight. It serves for hours,
 * so its clients are in worker mode (they wait out a Redis or S3 restart).
 */
export async function serveCommand(ctx: CliContext, o: ServeOptions): Promise<void> {
  const log = createLogger('serve', ctx.config.logLevel);
  const services = createServices(ctx.config, 'worker');
  const long: CliContext = { ...ctx, services };
  const stop = new AbortController();
  const onStop = () => stop.abort();
  ctx.signal?.addEventListener('abort', onStop, { once: true });
  process.once('SIGTERM', onStop);
  if (!ctx.signal) process.once('SIGINT', onStop);
  let server: ClassifierServer | undefined;
  let timer: NodeJS.Timeout | undefined;
  const w = (s: string) => ctx.out.write(`${s}\n`);
  // One line per load, naming what asked for it (a signal, a new latest run, POST
  // /v1/models/reload; one that comes while a load is under way joins it), in place of the
  // server's log line: a terminal shows one account of each.
  const onSwap = (m: ClassifierMetadata, was: string, cause: string) => {
    w(`${cause}: ${m.runId === was ? `reloaded ${m.dataset}@${m.runId} (the same run)` : `now serving ${m.dataset}@${m.runId} (was ${was})`}`);
    // said of each run it now serves, as at start: the new run may be of another embedding space
    if (m.runId !== was) for (const note of [randomWeightsNote(m), backgroundNote(ctx.config, m)]) if (note) w(`  ${note}`);
  };
  // (a trial: "could not load the new model" for a reload of the same run, with the raw error
  // where the HTTP client was told in words)
  const reloadFailed = (err: Error, cause: string) => {
    const m = server!.model();
    w(`${cause}: the model was not loaded, still serving ${m.dataset}@${m.runId}: ${outageWords(err) ?? err.message}`);
  };
  /** Loads the model again; true when it did, else why not (said, unless `quietly` says it was said already). */
  const swap = async (cause: string, quietly?: (err: Error) => boolean): Promise<true | Error> => {
    try {
      await server!.reload(cause);
      return true;
    } catch (err) {
      if (!quietly?.(err as Error)) reloadFailed(err as Error, cause);
      return err as Error;
    }
  };
  /** Why a load failed when it is an outage of S3 or Redis (passing: tried again), else undefined. */
  const outageWords = (err: Error): string | undefined => {
    const s3 = S3UnreachableError.from(err, ctx.config.s3.endpoint);
    if (s3) return `S3 at ${redactUrl(ctx.config.s3.endpoint)} does not answer (${s3.problem})`;
    if (err instanceof RedisUnreachableError) return `Redis at ${err.where}, which names the model's embedding space, does not answer (${err.problem})`;
    return undefined;
  };
  // A load waiting on an S3 that takes connections and answers nothing is said within seconds
  // (a trial: "loading …" alone for 3 minutes, where the other commands say so); not the requests
  // of the images served, which answer for themselves.
  let loading = true;
  const idleMs = ctx.config.s3.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS;
  services.store.onSlowRequest(slowRequestAfterMs(idleMs), () => {
    if (!loading) return false;
    w(`waiting for S3 at ${redactUrl(ctx.config.s3.endpoint)} while loading the model: no answer yet (a request is tried ${S3_ATTEMPTS} times, each given ${idleMs / 1000} s without a byte: TL_S3_IDLE_TIMEOUT_MS)`);
  });
  const loadingFor = async (work: () => Promise<true | Error>) => {
    loading = true;
    try {
      return await work();
    } finally {
      loading = false;
    }
  };
  const onHup = () => void loadingFor(() => swap('SIGHUP'));
  try {
    // said once the port is taken: a port in use is said before any loading
    const onListening = () => w(`loading ${o.model} (EfficientNet-B0 + head, one ONNX model)…`);
    server = await startClassifierServer(long, { model: o.model, log, onSwap, onReloadFailed: reloadFailed, onListening, ...(o.host && { host: o.host }), ...(o.port !== undefined && { port: o.port }), ...(o.threads !== undefined && { threads: o.threads }), ...(o.streams !== undefined && { streams: o.streams }) }).catch((err: unknown) => {
      // the flags refused (more --streams than --threads): bad usage, as any flag out of range
      if (err instanceof ConfigError && /^--(streams|threads) /.test(err.message)) throw new CliExit(EXIT.usage, `transferline: ${err.message}`);
      throw err;
    });
    loading = false;
    const m = server.model();
    w(`serving ${m.dataset}@${m.runId} (${m.labels.map(printable).join(', ')}${m.threshold !== undefined ? `; threshold ${thresholdText(m.threshold)}` : ''}) on ${server.url}`);
    for (const note of [randomWeightsNote(m), backgroundNote(ctx.config, m)]) if (note) w(`  ${note}`);
    // open to others with no key: whoever reaches the port has any object its S3 credentials reach classified (a trial: nothing said so)
    const host = o.host ?? ctx.config.serve.host;
    if (!isLoopbackHost(host) && !ctx.config.serve.apiKey) {
      w(`  warning: bound to ${host} with no TL_SERVE_API_KEY: whoever reaches this port can classify images, and have any object this process's S3 credentials can read classified by its s3:// key (set TL_SERVE_API_KEY, and give serve credentials that read only the image buckets and the models)`);
    }
    w(`  curl --data-binary @photo.jpg -H 'Content-Type: image/jpeg' ${server.url}/v1/classify${ctx.config.serve.apiKey ? ' -H "Authorization: Bearer $TL_SERVE_API_KEY"' : ''}`);
    w(`  ${server.url}/v1/models   ${server.url}/metrics   ${server.url}/healthz`);
    // the pid: through `npx`, a signal sent to the job's pid reaches npm, not this process
    w(`Ctrl-C stops it; kill -HUP ${process.pid} reloads the model.`);
    process.on('SIGHUP', onHup);
    const follow = o.followInterval ?? 30;
    if (!o.model.includes('@') && follow > 0) {
      let orphaned = false;
      /** the latest run, when it failed to load */
      let failedRun: string | undefined;
      /** the latest run could not be read (S3 or Redis out of reach): said once until it can */
      let unread = false;
      /** the run whose load an outage cut short, and how: said once, tried each round */
      let passing: string | undefined;
      /** a round under way: the next waits for it (a load longer than the interval) */
      let round: Promise<void> | undefined;
      timer = setInterval(() => {
        if (round) return;
        round = (async () => {
          const latest = await latestRun(long, m.dataset).catch((err: unknown) => err as Error);
          if (latest instanceof Error) {
            // (a trial: nothing said while S3 was out of reach)
            if (!unread) w(`follow: cannot read the latest run of ${m.dataset} (${outageWords(latest) ?? latest.message}): still serving ${m.dataset}@${server!.model().runId}; looking again every ${follow} s`);
            unread = true;
            return;
          }
          if (unread) w(`follow: the latest run of ${m.dataset} can be read again`);
          unread = false;
          const was = server!.model().runId;
          // its runs deleted, or none left the latest: said once, and served as it is until a run
          // is trained or promoted (then loaded, though it may carry the id of the one served)
          if (!latest && !orphaned) {
            const left = (await listModelRuns(long, m.dataset).catch(() => [])).filter((r) => r.dataset === m.dataset);
            w(
              left.length
                ? `follow: ${m.dataset} has no latest run any more (make one the latest: transferline promote ${m.dataset}@${left[0]!.runId}): still serving ${m.dataset}@${was}`
                : `follow: ${m.dataset} has no trained run in the bucket any more (deleted?): still serving ${m.dataset}@${was} until a run of it is trained or promoted`,
            );
          }
          const wasOrphaned = orphaned;
          orphaned = !latest;
          // (a run that failed to load is not tried again each round, nor said again: a review)
          if (latest && (latest.runId !== was || wasOrphaned) && latest.runId !== failedRun) {
            const cause = latest.insteadOf ? `the latest run of ${m.dataset}, ${latest.insteadOf}, is no longer in the bucket` : `the latest run of ${m.dataset} is now ${latest.runId} (${SET_BY[latest.setBy !== undefined && Object.hasOwn(SET_BY, latest.setBy) ? (latest.setBy as keyof typeof SET_BY) : 'unknown']})`;
            // a load cut short by an outage is tried again each round, said once (a trial read the
            // code: one S3 hiccup pinned the old run until a restart); one that failed on the run
            // itself is not tried again
            const outageOf = (err: Error) => {
              const why = outageWords(err);
              return why === undefined ? undefined : `${latest.runId} ${why}`;
            };
            const loaded = await loadingFor(() => swap(cause, (err) => passing !== undefined && outageOf(err) === passing));
            const cut = loaded === true ? undefined : outageOf(loaded);
            if (cut !== undefined && cut !== passing) w(`follow: ${m.dataset}@${latest.runId} is tried again every ${follow} s until it loads`);
            passing = cut;
            failedRun = loaded === true || cut !== undefined ? undefined : latest.runId;
            if (loaded !== true && cut === undefined) w(`follow: ${m.dataset}@${latest.runId} is not tried again until another run is the latest (kill -HUP ${process.pid} tries it now)`);
          }
          // (another run the latest since, the one served say: the failed one is tried when it is the latest again)
          if (latest && latest.runId !== failedRun) failedRun = undefined;
        })().finally(() => (round = undefined));
      }, follow * 1000);
    } else if (follow > 0) {
      // pinned to a run: its files deleted from the bucket are said once (a trial: nothing said,
      // /v1/models as before, until a reload failed); served as loaded meanwhile
      let gone = false;
      const runJson = long.services.layout.runFile(m.dataset, m.runId, 'run.json');
      timer = setInterval(() => {
        void long.services.store.headObject(long.config.s3.bucket, runJson, { bucketToo: true }).then(
          (head) => {
            if (!head && !gone) w(`${m.dataset}@${m.runId} is no longer in the bucket (deleted?): still serving it as loaded; a reload or restart cannot load it again (serve another run: -m ${m.dataset}, or -m ${m.dataset}@RUN)`);
            if (head && gone) w(`${m.dataset}@${m.runId} is in the bucket again`);
            gone = !head;
          },
          () => undefined,
        );
      }, follow * 1000);
    }
    o.onListening?.(server);
    await new Promise<void>((resolve) => {
      if (stop.signal.aborted) return resolve();
      stop.signal.addEventListener('abort', () => resolve(), { once: true });
    });
    w('\nstopping…');
  } finally {
    clearInterval(timer);
    process.off('SIGHUP', onHup);
    process.off('SIGTERM', onStop);
    process.off('SIGINT', onStop);
    ctx.signal?.removeEventListener('abort', onStop);
    await server?.close();
    await services.close();
  }
}
