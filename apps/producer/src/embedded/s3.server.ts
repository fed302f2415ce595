import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { reachableHost } from '../loopback-host.js';
import { EMBEDDED_S3_HEALTH_PATH } from './s3-gate.js';
import { ANOTHER_UP, SupervisedProcess } from './supervisor.js';

export interface EmbeddedS3 {
  endpoint: string;
  port: number;
  accessKeyId: string;
  secretAccessKey: string;
  /** the server's process (tests kill it to play a crash) */
  process: SupervisedProcess;
  stop: () => Promise<void>;
}

/** The dev pair the embedded server accepts unless S3_ACCESS_KEY_ID / S3_SECRET_ACCESS_KEY choose others. */
export const EMBEDDED_S3_DEV_CREDENTIALS = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' } as const;

// The built script, whether this module runs from dist/ or (in tests) from src/.
const script = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'dist', 'embedded', 's3.main.js');
const START_DEADLINE_MS = 20_000;

/**
 * An S3-compatible server (s3rver behind our signature and key gate, `s3-gate.ts`) on a local
 * folder, for one machine without an S3 service: path-style URLs, Signature V4 with the given
 * credentials (anonymous and wrongly signed requests are refused). It runs as a supervised child
 * process: restarted on the same port if it dies, and gone when this process goes. Port 0 picks a
 * free one. Its log is `<directory>.log` unless `logFile` says otherwise.
 */
export async function startEmbeddedS3(o: {
  directory: string;
  port: number;
  host?: string;
  buckets?: string[];
  credentials?: { accessKeyId: string; secretAccessKey: string };
  logFile?: string;
  onEvent?: (line: string) => void;
  /** restarted when it has not answered its health URL for this long (stopped, wedged); 0: never */
  hangMs?: number;
}): Promise<EmbeddedS3> {
  await mkdir(o.directory, { recursive: true });
  const logFile = o.logFile ?? `${o.directory}.log`;
  await mkdir(path.dirname(logFile), { recursive: true });
  const creds = o.credentials ?? EMBEDDED_S3_DEV_CREDENTIALS;
  const host = o.host ?? '127.0.0.1';
  let port = o.port;
  let up = false;
  let output = '';
  let proc!: SupervisedProcess;
  const ready = new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the embedded S3 server did not start within ${START_DEADLINE_MS / 1000} s: ${output.trim().split('\n').slice(-3).join(' | ')}`)), START_DEADLINE_MS);
    proc = new SupervisedProcess(
      {
        name: 's3',
        logFile,
        // its own session, as Redis: a SIGTERM to up's whole process group (systemd, `timeout`)
        // reaches the workers, which still need S3 to put their jobs back; up stops it last
        node: { script, execArgv: ['--openssl-legacy-provider'], session: true },
        args: [],
        env: () => ({
          PATH: process.env.PATH,
          TL_S3_DIR: o.directory,
          TL_S3_HOST: host,
          TL_S3_PORT: String(port),
          TL_S3_BUCKETS: (o.buckets ?? []).join(','),
          TL_S3_ACCESS_KEY_ID: creds.accessKeyId,
          TL_S3_SECRET_ACCESS_KEY: creds.secretAccessKey,
        }),
        onOutput: (chunk) => (output = (output + chunk).slice(-4000)),
        onMessage: (m) => {
          const msg = m as { listening?: number; error?: string };
          if (msg.listening !== undefined) {
            port = msg.listening; // a restart binds the same port
            up = true;
            clearTimeout(timer);
            resolve(port);
          } else if (msg.error && !up) {
            clearTimeout(timer);
            reject(new Error(msg.error === 'EADDRINUSE' ? `port ${port} for the embedded S3 server is in use, ${ANOTHER_UP}; else set TL_S3_PORT, or S3_ENDPOINT to use a running server` : `the embedded S3 server failed: ${msg.error}`));
          }
        },
        ...(o.hangMs && { liveness: { url: () => `http://${reachableHost(host)}:${port}${EMBEDDED_S3_HEALTH_PATH}`, hangMs: o.hangMs } }),
        // Never came up: report it rather than retry for ever.
        onExit: (code, signal) => {
          if (up) return true;
          clearTimeout(timer);
          reject(new Error(`the embedded S3 server exited (${signal ?? code}) before it listened: ${output.trim().split('\n').slice(-3).join(' | ')}`));
          return false;
        },
      },
      o.onEvent ?? (() => {}),
    );
  });
  try {
    await ready;
  } catch (err) {
    await proc.stop(2_000);
    throw err;
  }
  return {
    endpoint: `http://${host}:${port}`,
    port,
    accessKeyId: creds.accessKeyId,
    secretAccessKey: creds.secretAccessKey,
    process: proc,
    stop: () => proc.stop(5_000),
  };
}
