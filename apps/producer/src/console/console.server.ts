import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import express, { type NextFunction, type Request, type RequestHandler, type Response } from 'express';
import { redactUrl, s3Refusal, TrainJob, type Config, type Logger, type Queues, type Services } from '@transferline/shared';
import { requireAdmin } from './console-auth.js';
import { deploymentQueues } from '../commands/status.command.js';
import { consoleDeps, loadDataset, loadOverview, loadReport, loadReview, thumbnail } from './console-data.js';
import { datasetPage, errorPage, notFoundPage, overviewPage } from './datasets.page.js';
import { seconds, type Access } from './html.js';
import { BOARD_PATHS, createQueueBoards } from './queue-boards.js';
import { reviewPage } from './review.page.js';
import { runPage } from './run.page.js';
import { hostHeaderIsLoopback, isLoopbackHost, reachableHost } from '../loopback-host.js';

export interface ConsoleOptions {
  services: Services;
  queues: Queues;
  /** the console's host, port and credentials are `config.console` */
  config: Config;
  log?: Logger;
  /** how often the embedding spaces are read again, to put new embed queues on the boards (default 30 s) */
  refreshMs?: number;
  /** longest a page waits for Redis and S3 before it says they do not answer (default 15 s) */
  pageDeadlineMs?: number;
  /** longest a page waits for a dataset's count before it shows the last one, or none yet (default half the page's deadline) */
  countWaitMs?: number;
}

export interface ConsoleHandle {
  /** e.g. http://127.0.0.1:9470/ */
  url: string;
  port: number;
  /** whether a password is configured, so that signed-in users can act on the queues */
  actionsEnabled: boolean;
  /** Stops listening and ends open connections; the clients passed in stay open (their owner closes them). */
  close: () => Promise<void>;
}

/** A page handler: the HTML, or what is missing (a 404 that says so). */
type PageLoader = (req: Request) => Promise<{ html: string } | { missing: string }>;

// Our pages run no script at all: a label that slipped through escaping still could not execute.
const PAGE_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
/**
 * bull-board's pages: its scripts, styles and API are all served from here; the one thing its
 * page asks of another origin, Google Fonts, is not fetched (a console offline, or one whose
 * operators' addresses should not reach a third party; the board falls back to system fonts).
 */
const BOARD_CSP = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; base-uri 'self'; form-action 'self'; frame-ancestors 'none'";

class DeadlineError extends Error {}

/** How long a queue board's page or poll waits for Redis to answer a PING before it says Redis does not answer. */
const BOARD_PING_MS = 3_000;


function withDeadline<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new DeadlineError(`${what} did not answer within ${seconds(ms)}`)), ms);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

/**
 * Why a page missed its deadline. A dataset's count waits only part of it (StatusMemo), so what
 * is left is Redis not answering, or (Redis answering a PING at once) most likely S3, where the
 * trained runs, their reports and the reviews are.
 */
async function whyLate(err: DeadlineError, redis: { ping: () => Promise<unknown> }): Promise<string> {
  const answers = await withDeadline(redis.ping(), 1_000, 'Redis').then(
    () => true,
    () => false,
  );
  if (!answers) return `${err.message}: Redis does not answer a PING either`;
  return `${err.message}; Redis answers a PING, so the wait is likely on S3 (the trained runs, their reports and the reviews are read from the bucket)`;
}

/** The URL to print for a bound address (a wildcard address is reached through loopback). */
function urlOf(host: string, port: number): string {
  return `http://${reachableHost(host)}:${port}/`;
}


/**
 * The web console: our own server-rendered pages (datasets, runs) and bull-board for every queue
 * of the deployment, read-only for everyone, with actions behind basic auth when
 * `config.console.password` is set. Listens on `config.console.host:port` (0 = any free port).
 */
export async function startConsole(o: ConsoleOptions): Promise<ConsoleHandle> {
  const { services, queues, config, log } = o;
  const creds = { user: config.console.user, password: config.console.password };
  const access: Access = { actionsConfigured: creds.password !== undefined };
  const boards = createQueueBoards({ adminEnabled: access.actionsConfigured });
  const pageDeadline = o.pageDeadlineMs ?? 15_000;
  // A dataset's count reads every item: a page waits for it only so long, then shows the last count.
  const deps = consoleDeps({ services, queues, config }, o.countWaitMs ?? pageDeadline / 2);

  // New embedding spaces appear when embed workers of another configuration start: re-read the
  // list (two cheap Redis reads) now and then and on every page or board request, sharing one
  // read between concurrent requests, and put their queues on the boards.
  let refreshing: Promise<void> | undefined;
  const refresh = (): Promise<void> => {
    refreshing ??= services.spaces
      .list()
      .then((spaces) => boards.sync(deploymentQueues(queues, spaces)))
      .finally(() => (refreshing = undefined));
    return refreshing;
  };
  // a Redis that does not answer fails the start, not a page later (worker-mode clients would wait for ever)
  await withDeadline(refresh(), pageDeadline, 'Redis');
  const timer = setInterval(() => void refresh().catch((err: unknown) => log?.warn({ err }, 'console: could not read the embedding spaces')), o.refreshMs ?? 30_000);
  timer.unref();

  const app = express();
  app.disable('x-powered-by');
  // Bound to loopback: only requests that name it (another site's name re-pointed at 127.0.0.1
  // would otherwise let its pages read the console from a browser on this machine).
  if (isLoopbackHost(config.console.host)) {
    app.use((req, res, next) => {
      if (hostHeaderIsLoopback(req.headers.host)) return next();
      res.status(421).type('text/plain').send('this console answers at localhost or 127.0.0.1 only\n');
    });
  }
  app.use((_req, res, next) => {
    res.set({ 'X-Frame-Options': 'DENY', 'X-Content-Type-Options': 'nosniff', 'Referrer-Policy': 'no-referrer' });
    next();
  });

  const servePage =
    (load: PageLoader): RequestHandler =>
    (req, res) => {
      res.set({ 'Content-Security-Policy': PAGE_CSP, 'Cache-Control': 'no-store' });
      withDeadline(
        refresh().then(() => load(req)),
        pageDeadline,
        'Redis or S3',
      ).then(
        (r) => void ('html' in r ? res.type('html').send(r.html) : res.status(404).type('html').send(notFoundPage(access, r.missing))),
        async (err: unknown) => {
          // (what S3 refuses names the setting: a TL_BUCKET that does not exist is no outage to wait out)
          const why = err instanceof DeadlineError ? await whyLate(err, services.redis) : (s3Refusal(err, config.s3) ?? (err as Error)).message;
          log?.warn({ err, path: req.path, why }, 'console: a page could not be read');
          res.status(503).type('html').send(errorPage(access, `could not read the deployment: ${why}`));
        },
      );
    };
  const param = (req: Request, name: string) => String(req.params[name] ?? '');

  app.get('/healthz', (_req, res) => void res.type('text/plain').send('ok\n'));
  app.get(
    '/',
    servePage(async () => ({ html: overviewPage(access, await loadOverview(deps)) })),
  );
  app.get(
    '/datasets/:dataset',
    servePage(async (req) => {
      const name = param(req, 'dataset');
      const d = name.length <= 200 ? await loadDataset(deps, name) : undefined;
      if (d && 'deletedWithRuns' in d) return { missing: `no dataset named ${name} now (deleted, or lost with Redis's data); its ${d.deletedWithRuns === 1 ? 'trained run stays' : `${d.deletedWithRuns} trained runs stay`} in the bucket, listed on the first page, and classify, serve and export still use ${d.deletedWithRuns === 1 ? 'it' : 'them'}` };
      return d ? { html: datasetPage(access, d) } : { missing: `no dataset named ${name}` };
    }),
  );
  app.get(
    '/datasets/:dataset/runs/:runId',
    servePage(async (req) => {
      const [name, runId] = [param(req, 'dataset'), param(req, 'runId')];
      // run ids are restricted (the train job's schema); anything else cannot name a run
      const r = TrainJob.shape.runId.safeParse(runId).success && name.length <= 200 ? await loadReport(deps, name, runId) : undefined;
      return r ? { html: runPage(access, r) } : { missing: `no run ${runId} of dataset ${name} in the bucket` };
    }),
  );

  app.get(
    '/datasets/:dataset/review',
    servePage(async (req) => {
      const name = param(req, 'dataset');
      const v = name.length <= 200 ? await loadReview(deps, name) : undefined;
      return v ? { html: reviewPage(access, v) } : { missing: `no review of ${name} yet: transferline review -d ${name}` };
    }),
  );
  // A small JPEG of an image of the dataset (only items of that dataset: not a window on the bucket).
  app.get('/datasets/:dataset/thumbnail', (req, res) => {
    const key = typeof req.query.key === 'string' ? req.query.key : '';
    withDeadline(thumbnail(deps, param(req, 'dataset'), key), pageDeadline, 'S3').then(
      (jpeg) => {
        if (!jpeg) return void res.status(404).type('text/plain').send('not an image of this dataset\n');
        res.set({ 'Cache-Control': 'private, max-age=300', 'Content-Security-Policy': "default-src 'none'" }).type('image/jpeg').send(jpeg);
      },
      (err: unknown) => {
        log?.warn({ err, path: req.path }, 'console: a thumbnail could not be made');
        res.status(503).type('text/plain').send('could not read the image\n');
      },
    );
  });

  // bull-board reads Redis for each page and poll with no deadline of its own, and the client
  // waits for Redis to come back: with Redis down, its pages and polls spun for ever (a trial).
  // Each is answered 503 at once, as the other pages are, while Redis does not answer a PING.
  // (not connected: said at once; else one PING at a time, shared by the requests that come meanwhile)
  let pinging: Promise<unknown> | undefined;
  const redisAnswers = (): Promise<unknown> => {
    if (services.redis.status !== 'ready') return Promise.reject(new Error(`Redis connection ${services.redis.status}`));
    return (pinging ??= withDeadline(services.redis.ping(), BOARD_PING_MS, 'Redis').finally(() => (pinging = undefined)));
  };
  const boardNeedsRedis: RequestHandler = (req, res, next) => {
    if (req.path.startsWith('/static/')) return next();
    redisAnswers().then(
      () => next(),
      () => {
        const why = `Redis at ${redactUrl(config.redis.url)} does not answer (stopped, unreachable, or refusing connections): the queues cannot be read now; this page works again once it does`;
        log?.warn({ path: req.path }, `console: ${why}`);
        res.set('Cache-Control', 'no-store');
        if (req.path.startsWith('/api/')) res.status(503).json({ error: why });
        else res.status(503).type('html').send(errorPage(access, why));
      },
    );
  };
  // bull-board's own page loads (not its API polls or static files) also pick up new spaces
  const refreshOnBoardPage: RequestHandler = (req, _res, next) => {
    if (req.method !== 'GET' || req.path.startsWith('/api/') || req.path.startsWith('/static/')) return next();
    withDeadline(refresh(), pageDeadline, 'Redis').then(
      () => next(),
      () => next(),
    );
  };
  const boardCsp: RequestHandler = (_req, res, next) => {
    res.set('Content-Security-Policy', BOARD_CSP);
    next();
  };
  app.use(BOARD_PATHS.readOnly, boardCsp, boardNeedsRedis, refreshOnBoardPage, boards.readOnly.router);
  const noStore: RequestHandler = (_req, res, next) => {
    res.set('Cache-Control', 'no-store');
    next();
  };
  if (boards.admin) app.use(BOARD_PATHS.admin, requireAdmin(creds, log), noStore, boardCsp, boardNeedsRedis, refreshOnBoardPage, boards.admin.router);
  else app.use(BOARD_PATHS.admin, requireAdmin(creds, log));

  app.use((_req, res) => void res.status(404).type('html').send(notFoundPage(access, 'no such page')));
  app.use((err: Error, req: Request, res: Response, _next: NextFunction) => {
    log?.error({ err, path: req.path }, 'console: request failed');
    if (!res.headersSent) res.status(500).type('text/plain').send('internal error\n');
  });

  const { host, port } = config.console;
  const server = await new Promise<Server>((resolve, reject) => {
    const s = app.listen(port, host);
    s.once('listening', () => resolve(s));
    s.once('error', (err: NodeJS.ErrnoException) => {
      clearInterval(timer);
      reject(
        err.code === 'EADDRINUSE'
          ? new Error(`the console cannot listen on ${host}:${port}: the port is in use (set TL_CONSOLE_PORT; 0 = any free port)`)
          : new Error(`the console cannot listen on ${host}:${port}: ${err.message}`),
      );
    });
  });
  const bound = (server.address() as AddressInfo).port;
  if (!isLoopbackHost(host) && !access.actionsConfigured) {
    log?.warn({ host }, 'console: listening beyond this machine without TL_CONSOLE_PASSWORD: anyone who can reach it sees job data (read-only)');
  }
  log?.debug({ host, port: bound, actionsEnabled: access.actionsConfigured }, 'console listening');
  let closed: Promise<void> | undefined;
  return {
    url: urlOf(host, bound),
    port: bound,
    actionsEnabled: access.actionsConfigured,
    close: () =>
      (closed ??= new Promise<void>((resolve) => {
        clearInterval(timer);
        server.close(() => resolve());
        // bull-board's UI polls over keep-alive connections: end them rather than wait
        server.closeAllConnections();
      })),
  };
}
