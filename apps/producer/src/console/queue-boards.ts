import { createBullBoard } from '@bull-board/api';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { ExpressAdapter } from '@bull-board/express';
import type { Queue } from 'bullmq';
import { Router, type Express, type RequestHandler } from 'express';
import { BOARD_PATHS } from './html.js';

/** Where the boards live (everyone sees the read-only one; the admin one needs credentials): one home, in html.ts. */
export { BOARD_PATHS };

export interface QueueBoard {
  basePath: string;
  /** the board's express app, to mount at `basePath` (on the admin board, behind its refusals) */
  router: RequestHandler;
  /** names of the queues on the board */
  names: () => string[];
}

export interface QueueBoards {
  readOnly: QueueBoard;
  /** absent when no password is configured: nobody can act on the queues */
  admin?: QueueBoard;
  /** Puts every queue of `queues` not on the boards yet on both (new embedding spaces). */
  sync: (queues: Queue[]) => void;
}

function board(basePath: string, readOnly: boolean, links: { text: string; url: string }[]) {
  const serverAdapter = new ExpressAdapter();
  serverAdapter.setBasePath(basePath);
  const api = createBullBoard({
    queues: [],
    serverAdapter,
    options: {
      uiConfig: {
        boardTitle: readOnly ? 'transferline (read-only)' : 'transferline',
        miscLinks: links,
        // our own deployments only: no links out to the bull-board site
        hideDocsLink: true,
        ...(readOnly ? { environment: { label: 'read-only', color: '#69737f' } } : { environment: { label: 'actions enabled', color: '#b3261e' } }),
      },
    },
  });
  const queues = new Map<string, Queue>();
  const add = (q: Queue) => {
    if (queues.has(q.name)) return;
    // readOnlyMode: the API answers 405 to every change, and the UI shows no action buttons
    // No "retry" button on completed jobs (a finished run is not trained again anyway: the train
    // job returns it as it is). bull-board's adapter reads allowCompletedRetries (base.js), but
    // its typings leave it out of QueueAdapterOptions.
    const options = { readOnlyMode: readOnly, allowCompletedRetries: false };
    api.addQueue(new BullMQAdapter(q, options));
    queues.set(q.name, q);
  };
  const router = Router();
  if (!readOnly) router.use(refusals((name) => queues.get(name)));
  router.use(serverAdapter.getRouter() as Express);
  return { board: { basePath, router, names: () => [...queues.keys()] }, add };
}

const DROPS = 'it drops jobs, and their images would wait for ever; remove the images from the bucket and ingest again instead';
const LIMITS = 'a queue-wide limit is kept in Redis and throttles every worker until someone removes it there; scale the worker processes instead';
const CLEAN = 'only completed and failed jobs can be cleaned: dropping waiting or running ones leaves their images waiting for ever';
const DATA = "a job's data names its content (bucket, key, ETag, hash): a hand-made or edited job would record an image under the wrong content; ingest and retry enqueue jobs";
/** job states whose jobs can be cleaned (removed) without leaving an image waiting for ever */
const CLEANABLE = new Set(['completed', 'failed', 'unknown']);

/**
 * The bull-board actions the admin board does not offer, answered 405 with why: each breaks a
 * promise the rest of transferline keeps (every image ends embedded or failed, a job's data
 * names its content, workers scale by process count). An express Router of its own, mounted
 * ahead of bull-board's, so its paths match as bull-board's routes do (any case, a trailing slash).
 */
function refusals(queueOf: (name: string) => Queue | undefined): Router {
  const r = Router();
  const refuse =
    (why: string): RequestHandler =>
    (_req, res) =>
      void res.status(405).json({ error: 'not offered by transferline', message: `transferline does not offer this action: ${why}` });
  const q = '/api/queues/:queueName';
  r.put([`${q}/empty`, `${q}/obliterate`], refuse(DROPS));
  r.put([`${q}/concurrency`, `${q}/rate-limit`], refuse(LIMITS));
  r.all([`${q}/add`, `${q}/:jobId/update-data`], (req, res, next) => (req.method === 'GET' || req.method === 'HEAD' ? next() : refuse(DATA)(req, res, next)));
  // cleaning a whole state, and removing one job: completed and failed ones only
  r.put(`${q}/clean/:state`, (req, res, next) => (['completed', 'failed'].includes(String(req.params.state).toLowerCase()) ? next() : refuse(CLEAN)(req, res, next)));
  r.put(`${q}/:jobId/clean`, (req, res, next) => {
    const queue = queueOf(String(req.params.queueName));
    if (!queue) return next();
    queue.getJobState(String(req.params.jobId)).then(
      (state) => (CLEANABLE.has(state) ? next() : refuse(`${CLEAN} (this job is ${state})`)(req, res, next)),
      next,
    );
  });
  return r;
}

/**
 * bull-board for the deployment's queues, twice over the same Queue objects: a read-only board
 * (every adapter in bull-board's `readOnlyMode`) that anyone who can reach the console sees,
 * and, when a password is configured, a full board (pause, resume, retry, clean, add) behind
 * basic auth. Two boards rather than one that changes with the request: bull-board's read-only
 * mode is fixed per adapter, and a fixed URL per mode lets the browser's ordinary 401 challenge
 * ask for the credentials.
 */
export function createQueueBoards(o: { adminEnabled: boolean }): QueueBoards {
  const home = { text: 'datasets & models', url: '/' };
  const ro = board(BOARD_PATHS.readOnly, true, o.adminEnabled ? [home, { text: 'sign in for actions', url: `${BOARD_PATHS.admin}/` }] : [home]);
  const admin = o.adminEnabled ? board(BOARD_PATHS.admin, false, [home, { text: 'read-only board', url: `${BOARD_PATHS.readOnly}/` }]) : undefined;
  return {
    readOnly: ro.board,
    ...(admin && { admin: admin.board }),
    sync: (queues) => {
      for (const q of queues) {
        ro.add(q);
        admin?.add(q);
      }
    },
  };
}
