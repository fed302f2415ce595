import { createBullBoard } from '@bull-board/api';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { ExpressAdapter } from '@bull-board/express';
import type { Queue } from 'bullmq';
import type { Express, RequestHandler } from 'express';

/** Where the boards live: everyone sees the read-only one; the admin one needs credentials. */
export const BOARD_PATHS = { readOnly: '/queues', admin: '/admin/queues' } as const;

export interface QueueBoard {
  basePath: string;
  /** the board's express app, to mount at `basePath` */
  router: Express;
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
  const names = new Set<string>();
  const add = (q: Queue) => {
    if (names.has(q.name)) return;
    // readOnlyMode: the API answers 405 to every change, and the UI shows no action buttons
    // No "retry" button on completed jobs (a finished run is not trained again anyway: the train
    // job returns it as it is). bull-board's adapter reads allowCompletedRetries (base.js), but
    // its typings leave it out of QueueAdapterOptions.
    const options = { readOnlyMode: readOnly, allowCompletedRetries: false };
    api.addQueue(new BullMQAdapter(q, options));
    names.add(q.name);
  };
  return { board: { basePath, router: serverAdapter.getRouter() as Express, names: () => [...names] }, add };
}

/**
 * bull-board actions the admin board does not offer, with why: each breaks a promise the rest of
 * transferline keeps (every image ends embedded or failed, a job's data names its content, workers
 * scale by process count). Matched on the path under the board's `/api/queues/`.
 */
const REFUSED_ACTIONS: { path: RegExp; why: string }[] = [
  { path: /^[^/]+\/(empty|obliterate)$/, why: 'it drops jobs, and their images would wait for ever; remove the images from the bucket and ingest again instead' },
  { path: /^[^/]+\/clean\/(?!completed$|failed$)[^/]+$/, why: 'only completed and failed jobs can be cleaned: dropping waiting or running ones leaves their images waiting for ever' },
  { path: /^[^/]+\/(concurrency|rate-limit)$/, why: 'a queue-wide limit is kept in Redis and throttles every worker until someone removes it there; scale the worker processes instead' },
  { path: /^[^/]+\/(add|[^/]+\/update-data)$/, why: "a job's data names its content (bucket, key, ETag, hash): a hand-made or edited job would record an image under the wrong content; ingest and retry enqueue jobs" },
];

/** Answers 405, saying why, for the actions in REFUSED_ACTIONS; every other request goes on to bull-board. */
export const refuseUnsafeActions: RequestHandler = (req, res, next) => {
  if (req.method === 'GET' || req.method === 'HEAD') return next();
  const m = /^\/api\/queues\/(.+)$/.exec(req.path);
  const refused = m && REFUSED_ACTIONS.find((a) => a.path.test(m[1]!));
  if (!refused) return next();
  res.status(405).json({ error: 'not offered by transferline', message: `transferline does not offer this action: ${refused.why}` });
};

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
