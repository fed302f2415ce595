import { spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { repoRoot } from './support/stack.js';
import { guardLeaks } from './support/leak-guard.js';

guardLeaks();

/**
 * The preflight that `npm start` and `npm test` run first, on a machine without redis-server:
 * a PATH that holds only node and sh (plus, in one case, a stand-in apt-get that records what
 * it was asked to do, so nothing is really installed).
 */

const script = path.join(repoRoot, 'infra', 'preflight.mjs');
const dirs: string[] = [];
afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

function bareMachine(o: { aptGet?: boolean } = {}): { bin: string; log: string } {
  const bin = mkdtempSync(path.join(os.tmpdir(), 'tl-preflight-'));
  dirs.push(bin);
  symlinkSync(process.execPath, path.join(bin, 'node'));
  symlinkSync('/bin/sh', path.join(bin, 'sh'));
  const log = path.join(bin, 'apt-get.log');
  if (o.aptGet) {
    writeFileSync(path.join(bin, 'apt-get'), `#!/bin/sh\necho "$@" >> ${log}\nexit 0\n`);
    chmodSync(path.join(bin, 'apt-get'), 0o755);
  }
  return { bin, log };
}

const preflight = (mode: string, env: NodeJS.ProcessEnv) => spawnSync(process.execPath, [script, mode], { env, encoding: 'utf8', timeout: 30_000 });

describe('preflight', () => {
  it('without redis-server and without a package manager: says what is missing, why, and the command that installs it; exit 1', () => {
    const { bin } = bareMachine();
    const r = preflight('start', { PATH: bin, HOME: bin });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/preflight \(npm start\): this machine lacks one thing:/);
    expect(r.stderr).toMatch(/redis-server: the embedded stack keeps its queues and state in Redis/);
    expect(r.stderr).toMatch(/sudo apt-get update && sudo apt-get install -y --no-install-recommends redis-server/);
    expect(r.stderr).toMatch(/brew install redis/);
  });

  // As another user the preflight would go through sudo, which this test cannot stand in for.
  it.skipIf(process.getuid?.() !== 0)('with apt-get as root: asks apt-get for exactly the missing packages (here a stand-in), and checks again after', () => {
    const { bin, log } = bareMachine({ aptGet: true });
    const r = preflight('start', { PATH: bin, HOME: bin });
    expect(readFileSync(log, 'utf8').trim().split('\n')).toEqual(['update -qq', 'install -y -qq --no-install-recommends redis-server']);
    expect(r.stderr).toMatch(/installing with apt-get install -y --no-install-recommends redis-server/);
    // the stand-in installed nothing: the preflight notices instead of going on
    expect(r.stderr).toMatch(/still missing after the installation: redis-server/);
    expect(r.status).toBe(1);
  });

  it('needs no redis-server for npm start when REDIS_URL points at one', () => {
    const { bin } = bareMachine();
    const r = preflight('start', { PATH: bin, HOME: bin, REDIS_URL: 'redis://cache:6379' });
    expect(r.status).toBe(0);
    expect(r.stderr).toBe('');
  });

  it('passes on this machine for npm test (the suite is running)', () => {
    const r = preflight('test', process.env);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
  });
});
