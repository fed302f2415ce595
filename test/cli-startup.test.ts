import { spawnSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cliPath } from './support/stack.js';

/**
 * What a one-shot command loads before it does anything: the libraries of a long-running process
 * (the logger, metrics, image decoding, the model runtimes, the web servers) are loaded only by the
 * commands that use them. Each was part of every command's start (about a third of its CPU), and a
 * single static import from the wrong module brings one back without any other test noticing.
 */
const NOT_AT_START = ['pino', 'prom-client', 'sharp', 'onnxruntime-node', '@tensorflow/tfjs', '@tensorflow/tfjs-core', 'h5wasm', 'express', '@bull-board/api'];

let dir: string;
let hook: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'tl-startup-'));
  hook = path.join(dir, 'packages-loaded.mjs');
  // (Node's synchronous module hooks see every module, ESM or CommonJS, as it is resolved)
  await writeFile(
    hook,
    [
      `import { registerHooks } from 'node:module';`,
      `import { writeSync } from 'node:fs';`,
      `const seen = new Set();`,
      `registerHooks({ resolve(specifier, context, next) { const r = next(specifier, context); const m = /node_modules\\/((?:@[^/]+\\/)?[^/]+)\\//.exec(r.url); if (m) seen.add(m[1]); return r; } });`,
      `process.on('exit', () => writeSync(2, '\\nLOADED ' + JSON.stringify([...seen]) + '\\n'));`,
    ].join('\n'),
  );
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function packagesLoadedBy(args: string[]): { stdout: string; loaded: string[] } {
  const r = spawnSync(process.execPath, ['--import', hook, cliPath, ...args], { encoding: 'utf8', env: { PATH: process.env.PATH, HOME: dir, REDIS_URL: 'redis://127.0.0.1:1' }, timeout: 60_000 });
  const line = /^LOADED (.*)$/m.exec(r.stderr);
  if (!line) throw new Error(`no list of loaded packages (exit ${r.status}): ${r.stderr}`);
  return { stdout: r.stdout, loaded: JSON.parse(line[1]!) as string[] };
}

describe("a one-shot command's start", () => {
  it('loads the queue and S3 clients, not the logger, metrics, sharp, a model runtime or a web server', () => {
    for (const args of [['--version'], ['status', '--help'], ['ingest', 's3://photos/train/', '-d', 'x', '--interval', '5']]) {
      const { loaded } = packagesLoadedBy(args);
      // (the hook does see what loads: the command's own clients are there)
      expect(loaded).toEqual(expect.arrayContaining(['commander', 'bullmq', 'ioredis', '@aws-sdk/client-s3']));
      expect({ args, loaded: loaded.filter((p) => NOT_AT_START.includes(p)) }).toEqual({ args, loaded: [] });
    }
  });
});
