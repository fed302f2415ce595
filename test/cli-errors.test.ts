import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { RedisNotFoundError, startEmbeddedRedis } from '../apps/producer/src/embedded/redis.server.js';
import { runCli } from './support/stack.js';

const baseEnv = { PATH: process.env.PATH, HOME: process.env.HOME };

describe('what a user sees when something is wrong', () => {
  it('a bad setting stops the CLI with a message naming the variable', async () => {
    const r = await runCli(['status'], { ...baseEnv, TL_EMBED_BATCH_SIZE: 'lots', TL_RESIZE: 'stretch' });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^invalid configuration:\n {2}TL_EMBED_BATCH_SIZE: .*\(got "lots"\)\n {2}TL_RESIZE: .*\(got "stretch"\)/);
  });

  it('a one-shot command fails fast, saying where it looked, when Redis is not there', async () => {
    const started = Date.now();
    const r = await runCli(['status'], { ...baseEnv, REDIS_URL: 'redis://127.0.0.1:1' });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/cannot reach Redis at redis:\/\/127\.0\.0\.1:1: .*Is it running\?/);
    expect(Date.now() - started).toBeLessThan(15_000);
  });

  it('up without redis-server on the PATH says how to install it', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'tl-noredis-'));
    const saved = process.env.PATH;
    process.env.PATH = dir; // a PATH with no redis-server on it
    try {
      const err = await startEmbeddedRedis({ directory: path.join(dir, 'redis'), port: 0 }).then(() => undefined, (e: unknown) => e as Error);
      expect(err).toBeInstanceOf(RedisNotFoundError);
      expect(err!.message).toMatch(/apt-get install redis-server.*brew install redis.*REDIS_URL/);
    } finally {
      process.env.PATH = saved;
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('a command without its required option shows the help for it', async () => {
    const r = await runCli(['ingest', 's3://photos/train/'], baseEnv);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/required option '-d, --dataset <name>' not specified/);
  });
});
