import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { createRedis, DatasetRepository, loadConfig, queueName, redactUrl, redisKeys, SpaceRegistry, spaceFromConfig } from '../packages/shared/src/index.js';
import { Worker } from 'bullmq';
import pMap from 'p-map';
import { describe, expect, it } from 'vitest';
import { renderSample } from '../apps/producer/src/demo/sample-images.js';
import { lockDataDir } from '../apps/producer/src/embedded/data-dir.lock.js';
import { RedisNotFoundError, startEmbeddedRedis } from '../apps/producer/src/embedded/redis.server.js';
import { cliPath, freeRun, NO_WORKERS, processesWithEnv, repoRoot, runCli, stackForFile, until } from './support/stack.js';
import { guardLeaks } from './support/leak-guard.js';

guardLeaks();

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
    // why, in words: not ioredis's "max retries per request" for a server that is not there
    expect(r.stderr).toMatch(/cannot reach Redis at redis:\/\/127\.0\.0\.1:1: connection refused\. Is it running\?/);
    expect(r.stderr).not.toMatch(/maxRetriesPerRequest/);
    expect(Date.now() - started).toBeLessThan(15_000);
  });

  it('a Redis that takes the connection and answers nothing (SIGSTOPped, wedged) is said so within seconds, not waited on for ever', async () => {
    const held: net.Socket[] = [];
    const mute = net.createServer((socket) => void held.push(socket.on('error', () => undefined)));
    await new Promise<void>((resolve) => mute.listen(0, '127.0.0.1', resolve));
    try {
      const url = `redis://127.0.0.1:${(mute.address() as net.AddressInfo).port}`;
      const r = await runCli(['status'], { ...baseEnv, REDIS_URL: url }, 60_000);
      expect({ code: r.code, timedOut: r.timedOut }).toEqual({ code: 1, timedOut: false });
      expect(r.stderr).toContain(`cannot reach Redis at ${url}: it took the connection but did not answer within 10 s (stopped, wedged, or busy with a long command?)`);
    } finally {
      for (const socket of held) socket.destroy();
      await new Promise((resolve) => mute.close(resolve));
    }
  });

  it('a REDIS_URL whose port is another kind of server (the S3 port, say) is said so, not as a protocol error to report', async () => {
    // (an HTTP server's answer to bytes it cannot parse, the connection kept open: whether a real
    // one closes it before or after the client reads the answer is a race)
    const other = net.createServer((socket) => {
      socket.on('error', () => undefined);
      socket.once('data', () => socket.write('HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n'));
    });
    await new Promise<void>((resolve) => other.listen(0, '127.0.0.1', resolve));
    try {
      const url = `redis://127.0.0.1:${(other.address() as net.AddressInfo).port}`;
      const r = await runCli(['status'], { ...baseEnv, REDIS_URL: url });
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(`cannot reach Redis at ${url}: something answers there, but not as Redis does (an HTTP server? check the port).`);
      expect(r.stderr).not.toMatch(/Please report this/);
    } finally {
      await new Promise((resolve) => other.close(resolve));
    }
  });

  it('a Redis that is there but refuses the password is not called unreachable', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'tl-authredis-'));
    const server = await startEmbeddedRedis({ directory: path.join(dir, 'redis'), port: 0, persist: false });
    try {
      const admin = createRedis(server.url, 'oneshot');
      await admin.config('SET', 'requirepass', 'sekrit');
      await admin.quit().catch(() => undefined);
      const port = new URL(server.url).port;
      const wrong = await runCli(['status'], { ...baseEnv, REDIS_URL: `redis://:guess@127.0.0.1:${port}` });
      expect(wrong.code).toBe(1);
      expect(wrong.stderr).toMatch(new RegExp(`Redis at redis://:\\*\\*\\*@127\\.0\\.0\\.1:${port} refused the connection: WRONGPASS .*\\(check REDIS_URL\\)`));
      expect(wrong.stderr).not.toMatch(/guess|Is it running/);
      const none = await runCli(['status'], { ...baseEnv, REDIS_URL: `redis://127.0.0.1:${port}` });
      expect(none.stderr).toMatch(/refused the connection: NOAUTH/);
    } finally {
      await server.stop();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('S3 that is not there: a command says where it looked, in words; status says what it could not check', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'tl-nos3-'));
    const server = await startEmbeddedRedis({ directory: path.join(dir, 'redis'), port: 0, persist: false });
    try {
      const env = { ...baseEnv, REDIS_URL: server.url, S3_ENDPOINT: 'http://127.0.0.1:1' };
      const models = await runCli(['models'], env);
      expect(models.code).toBe(1);
      expect(models.stderr).toBe('transferline: cannot reach S3 at http://127.0.0.1:1: connection refused. Is it running? (set S3_ENDPOINT or TL_S3_PORT, or run "transferline up")\n');
      const status = await runCli(['status'], env);
      expect({ code: status.code, stderr: status.stderr }).toEqual({ code: 0, stderr: '' });
      expect(status.stdout).toContain('warning: cannot read s3://transferline/, so whether Redis lost data is not checked: cannot reach S3 at http://127.0.0.1:1: connection refused.');
      // and nothing it could not check is called lost
      expect(status.stdout).not.toContain('Redis lost its data');
      expect(status.stdout).toContain('no datasets yet: transferline ingest');
    } finally {
      await server.stop();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('S3 that accepts connections and never answers: a command gives up and says so, where it waited for ever', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'tl-muteS3-'));
    const server = await startEmbeddedRedis({ directory: path.join(dir, 'redis'), port: 0, persist: false });
    // a server that takes every connection and answers nothing (a SIGSTOPped or wedged S3)
    const held: net.Socket[] = [];
    const mute = net.createServer((socket) => void held.push(socket));
    await new Promise<void>((resolve) => mute.listen(0, '127.0.0.1', resolve));
    const endpoint = `http://127.0.0.1:${(mute.address() as net.AddressInfo).port}`;
    try {
      const env = { ...baseEnv, REDIS_URL: server.url, S3_ENDPOINT: endpoint, TL_S3_IDLE_TIMEOUT_MS: '1000' };
      const models = await runCli(['models'], env, 60_000);
      expect(models.timedOut).toBe(false);
      expect(models.code).toBe(1);
      // said while it waits (a user's trial: minutes with nothing on screen, at the default timeout), then why it gave up
      expect(models.stderr).toBe(
        `waiting for S3 at ${endpoint}: no answer yet (a request is tried 5 times, each given 1 s without a byte: TL_S3_IDLE_TIMEOUT_MS; Ctrl-C stops)\n` +
          `transferline: cannot reach S3 at ${endpoint}: it did not answer in time (a server that accepts connections but never answers is stopped or wedged). Is it running? (set S3_ENDPOINT or TL_S3_PORT, or run "transferline up")\n`,
      );
      const status = await runCli(['status'], env, 60_000);
      expect({ timedOut: status.timedOut, code: status.code }).toEqual({ timedOut: false, code: 0 });
      expect(status.stdout).toContain(`warning: cannot read s3://transferline/, so whether Redis lost data is not checked: cannot reach S3 at ${endpoint}: it did not answer`);
      // at the default idle timeout (30 s, tried 5 times): status does not wait minutes to say so,
      // nor for the bucket's word on a dataset's failed run (a user's trial: 190 s)
      const redis = createRedis(server.url, 'oneshot');
      const trainQueue = queueName('train');
      try {
        await new DatasetRepository(redis, redisKeys('tl')).putItem('broken', 'photos/x/a/1.jpg', { label: 'a', etag: 'e', state: 'pending' });
        const { Queue } = await import('bullmq');
        const q = new Queue(trainQueue, { connection: redis, prefix: 'tl' });
        await q.add('train', { dataset: 'broken', runId: 'r1' }, { jobId: 'r1', attempts: 1 });
        await q.close();
        // (a connection given to BullMQ is not closed by it: closed here, or it would try this
        // Redis again for ever once it stops, in whatever test this process runs next)
        const connection = redis.duplicate({ maxRetriesPerRequest: null });
        const w = new Worker(trainQueue, () => Promise.reject(new Error('no-data: nothing to train on')), { connection, prefix: 'tl' });
        try {
          await until('the run to fail', async () => (await redis.zcard(`tl:${trainQueue}:failed`)) === 1, 20);
        } finally {
          await w.close();
          connection.disconnect();
        }
      } finally {
        redis.disconnect();
      }
      const { TL_S3_IDLE_TIMEOUT_MS: _, ...patient } = env;
      const quick = await runCli(['status'], patient, 30_000);
      expect({ timedOut: quick.timedOut, code: quick.code }).toEqual({ timedOut: false, code: 0 });
      expect(quick.stdout).toMatch(/run r1 of broken failed/);
      expect(quick.stdout).toContain(`warning: cannot read s3://transferline/, so whether Redis lost data is not checked: cannot reach S3 at ${endpoint}: it did not answer within 5 s`);
      // one that drops every connection is not called mute (the SDK names a reset a timeout too)
      const rude = net.createServer((socket) => socket.destroy());
      await new Promise<void>((resolve) => rude.listen(0, '127.0.0.1', resolve));
      try {
        const at = `http://127.0.0.1:${(rude.address() as net.AddressInfo).port}`;
        const reset = await runCli(['models'], { ...env, S3_ENDPOINT: at }, 60_000);
        expect(reset.code).toBe(1);
        expect(reset.stderr).not.toContain('did not answer in time');
      } finally {
        await new Promise((resolve) => rude.close(resolve));
      }
    } finally {
      for (const socket of held) socket.destroy();
      await new Promise((resolve) => mute.close(resolve));
      await server.stop();
      await rm(dir, { recursive: true, force: true });
    }
  }, 120_000);

  describe('against a stack of Redis and S3 alone', () => {
    const file = stackForFile({}, NO_WORKERS);

    it('S3 that refuses: a bucket that is not there, or credentials it rejects, is said with the setting to look at; upload needs S3 alone', async () => {
      const { stack } = file;
      const at = stack.config.s3.endpoint;
      // a deployment of its own (a queue prefix of its own) whose TL_BUCKET is not there: not created yet, or mistyped
      const missingBucket = { ...stack.env, TL_BUCKET: 'not-the-workers', TL_QUEUE_PREFIX: 'new-deployment' };
      const models = await runCli(['models'], missingBucket);
      expect({ code: models.code, stderr: models.stderr }).toEqual({ code: 1, stderr: `transferline: bucket not-the-workers does not exist at ${at}: it is this process's TL_BUCKET, where the workers keep embeddings and models; set TL_BUCKET as the workers have it, or, if they have this one, create it (aws s3 mb s3://not-the-workers)\n` });
      // (the same TL_BUCKET beside this deployment's TL_QUEUE_PREFIX is not its storage: refused as such, below)
      expect((await runCli(['models'], { ...stack.env, TL_BUCKET: 'not-the-workers' })).stderr).toContain("this shell has s3://not-the-workers/");
      // status goes on without the bucket, and says which setting it could not read
      const status = await runCli(['status'], missingBucket);
      expect(status.stdout).toContain(`warning: cannot read s3://not-the-workers/, so whether Redis lost data is not checked: ${models.stderr.replace(/^transferline: /, '')}`);
      // commands that read one run's files, where a missing file means "no such run", say the same
      for (const args of [['promote', 'photos@r1'], ['classify', 's3://photos/incoming/', '-m', 'photos@r1']]) {
        const r = await runCli(args, missingBucket);
        expect({ args, code: r.code, stderr: r.stderr }).toEqual({ args, code: 1, stderr: models.stderr });
      }
      // a bucket of the user's, named in the command
      const ingest = await runCli(['ingest', 's3://no-such-photos/train/', '-d', 'photos'], stack.env);
      expect({ code: ingest.code, stderr: ingest.stderr }).toEqual({ code: 1, stderr: `transferline: bucket no-such-photos does not exist at ${at}\n` });
      // a wrong secret: the settings named, not S3's words about signatures
      const secret = await runCli(['models'], { ...stack.env, S3_SECRET_ACCESS_KEY: 'not-the-secret' });
      expect({ code: secret.code, stderr: secret.stderr }).toEqual({ code: 1, stderr: `transferline: S3 at ${at} rejects this process's credentials (SignatureDoesNotMatch): check S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY\n` });
      // upload asks nothing of Redis: it fills a bucket with no Redis running
      const dir = await mkdtemp(path.join(os.tmpdir(), 'tl-upload-'));
      try {
        await mkdir(path.join(dir, 'cat'));
        // (an image: upload sends only what ingest could read as one)
        await writeFile(path.join(dir, 'cat', 'a.jpg'), await renderSample('circle', 1, 1, 32));
        const upload = await runCli(['upload', dir, 's3://no-redis/train/'], { ...stack.env, REDIS_URL: 'redis://127.0.0.1:1' });
        expect(upload.code, upload.stderr).toBe(0);
        expect(upload.stderr).not.toMatch(/Redis/);
        expect(upload.stdout).toContain('uploaded 1 file to s3://no-redis/train/\n');
        // its first request is a HEAD of the bucket, whose refusal has no body: said as the others
        const refused = await runCli(['upload', dir, 's3://no-redis/train/'], { ...stack.env, REDIS_URL: 'redis://127.0.0.1:1', S3_SECRET_ACCESS_KEY: 'not-the-secret' });
        expect({ code: refused.code, stderr: refused.stderr }).toEqual({ code: 1, stderr: `transferline: S3 at ${at} rejects this process's credentials (SignatureDoesNotMatch): check S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY\n` });
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    });

    it("a shell whose TL_QUEUE_PREFIX is not the workers': status says so, not that Redis lost its data, and records no loss", async () => {
      const { stack, ctx } = file;
      // the workers' cache: a shard in the bucket, indexed under the workers' prefix
      await ctx.services.cache.writeShard(stack.space.id, ['a'.repeat(64)], new Float32Array(4), 4);
      const other = await runCli(['status'], { ...stack.env, TL_QUEUE_PREFIX: 'elsewhere' });
      expect({ code: other.code, stderr: other.stderr }).toEqual({ code: 0, stderr: '' });
      expect(other.stdout).toContain(`warning: the embedding index of ${stack.space.id} is empty, and nothing was lost: this process's queue prefix is TL_QUEUE_PREFIX=elsewhere, and this Redis holds the index under TL_QUEUE_PREFIX=${stack.config.redis.prefix}: set TL_QUEUE_PREFIX as the workers have it\n`);
      expect(other.stdout).not.toContain('Redis lost its data');
      // nor that there is nothing yet, as if to start over
      expect(other.stdout).toContain("  none published under this shell's TL_QUEUE_PREFIX (elsewhere): the workers' is another, as said above\n");
      expect(other.stdout).toContain("no datasets under this shell's TL_QUEUE_PREFIX (elsewhere): the workers' is another, as said above\n");
      expect(other.stdout).not.toMatch(/none published yet|no datasets yet/);
      // no loss recorded under the prefix it looked in
      const there = redisKeys('elsewhere');
      expect(await ctx.services.redis.exists(there.dataLossRecorded(), there.datasetsLost(), there.datasetsLostSources())).toBe(0);
      // with the workers' prefix, nothing to say of it
      expect((await runCli(['status'], stack.env)).stdout).not.toContain(`embedding index of ${stack.space.id}`);
      // a deployment of that prefix, sharing this Redis, whose workers publish the space there: its
      // empty index is a loss, whatever the other prefix holds
      const beat = await new SpaceRegistry(ctx.services.redis, there).startHeartbeat(stack.space, 'test', () => undefined);
      await beat.stop();
      const lost = await runCli(['status'], { ...stack.env, TL_QUEUE_PREFIX: 'elsewhere' });
      expect(lost.stdout).toContain(`warning: the embedding index of ${stack.space.id} is empty while its shards are in s3://${stack.config.s3.bucket}/`);
      expect(lost.stdout).not.toContain('TL_QUEUE_PREFIX as the workers have it');
    });

    it("a shell whose REDIS_URL is not the workers' (an empty Redis): status says that may be why the index looks lost", async () => {
      const { stack, ctx } = file;
      await ctx.services.cache.writeShard(stack.space.id, ['b'.repeat(64)], new Float32Array(4), 4);
      const dir = await mkdtemp(path.join(os.tmpdir(), 'tl-otherredis-'));
      const other = await startEmbeddedRedis({ directory: path.join(dir, 'redis'), port: 0, persist: false });
      try {
        const status = await runCli(['status'], { ...stack.env, REDIS_URL: other.url });
        expect({ code: status.code, stderr: status.stderr }).toEqual({ code: 0, stderr: '' });
        // the likelier cause first, then what looks lost
        const hint = `warning: no embed worker has sent a heartbeat to this Redis (${other.url}) since it began (a running one does within seconds): if the workers use another Redis, or another database of it, what follows is no loss; set REDIS_URL as they have it\n`;
        expect(status.stdout).toContain(hint);
        const lost = status.stdout.indexOf(`warning: the embedding index of ${stack.space.id} is empty while its shards are in s3://`);
        expect(lost).toBeGreaterThan(status.stdout.indexOf(hint));
        // nothing written into that Redis: it may be no deployment's, and had no loss
        const keys = redisKeys(stack.config.redis.prefix);
        const foreign = createRedis(other.url, 'oneshot');
        try {
          expect(await foreign.exists(keys.dataLossRecorded(), keys.datasetsLost(), keys.datasetsLostSources())).toBe(0);
        } finally {
          await foreign.quit().catch(() => undefined);
        }
        // another database of the workers' own server: the same, and none of their workers is counted as its own
        const connection = createRedis(stack.config.redis.url, 'worker');
        const worker = new Worker(ctx.queues.preprocess.name, null, { connection, prefix: stack.config.redis.prefix, autorun: false });
        try {
          await worker.waitUntilReady();
          const workers = async (url: string) => (JSON.parse((await runCli(['status', '--json'], { ...stack.env, REDIS_URL: url })).stdout) as { queues: Record<string, { workers: number }> }).queues[queueName('preprocess')]!.workers;
          expect({ db0: await workers(stack.config.redis.url), db3: await workers(`${stack.config.redis.url}/3`) }).toEqual({ db0: 1, db3: 0 });
        } finally {
          await worker.close();
          await connection.quit().catch(() => undefined);
        }
        // the workers' own Redis, where they beat: nothing of the kind
        expect((await runCli(['status'], stack.env)).stdout).not.toContain('no embed worker has sent a heartbeat');
      } finally {
        await other.stop();
        await rm(dir, { recursive: true, force: true });
      }
    });

    it("a shell whose TL_QUEUE_PREFIX is not the workers': delete dataset --runs deletes nothing of a live dataset, and the commands of a dataset name the setting", async () => {
      const { stack, ctx } = file;
      const { bucket } = stack.config.s3;
      const { store, layout, datasets } = ctx.services;
      // a dataset of the workers, with a trained run in the bucket
      await datasets.putItem('prefixed', 's3://photos/prefixed/cat/a.jpg', { label: 'cat', etag: 'e', space: stack.space.id, state: 'pending' });
      await store.putJson(bucket, layout.runFile('prefixed', 'r1', 'run.json'), { dataset: 'prefixed' });
      const elsewhere = { ...stack.env, TL_QUEUE_PREFIX: 'elsewhere' };
      // the shell's storage is the deployment's under another prefix, and its own prefix holds none: every command but status is refused, naming the setting
      const refused = (shellPrefix: string) => ({
        code: 1,
        stderr: expect.stringMatching(
          new RegExp(
            `^transferline: s3://${bucket}/${stack.config.s3.prefix} is where the deployment under TL_QUEUE_PREFIX=${stack.config.redis.prefix} on this Redis keeps its embeddings and models \\(recorded by its first process, [^)]+\\), and this shell's TL_QUEUE_PREFIX=${shellPrefix} has no deployment recorded: set TL_QUEUE_PREFIX=${stack.config.redis.prefix} as its workers have it, or another TL_BUCKET or TL_PREFIX for a deployment of its own\\. Nothing was done\\.\n$`,
          ),
        ),
      });
      const del = await runCli(['delete', 'dataset', 'prefixed', '--runs', '--yes'], elsewhere);
      expect({ code: del.code, stderr: del.stderr }).toEqual(refused('elsewhere'));
      // ingest chooses no space there: the setting is named (a live worker's), not a worker to start
      const beat = await ctx.services.spaces.startHeartbeat(stack.space, 'test', () => undefined);
      try {
        // (a prefix of its own: an earlier test left a space published under 'elsewhere')
        const ingest = await runCli(['ingest', 's3://photos/prefixed/', '-d', 'another'], { ...stack.env, TL_QUEUE_PREFIX: 'unused' });
        expect({ code: ingest.code, stderr: ingest.stderr }).toEqual(refused('unused'));
        // and with a storage of its own (a deployment beside this one, before its workers start): the live workers' prefix named
        const own = await runCli(['ingest', 's3://photos/prefixed/', '-d', 'another'], { ...stack.env, TL_QUEUE_PREFIX: 'unused', TL_PREFIX: 'unused/' });
        expect({ code: own.code, stderr: own.stderr }).toEqual({
          code: 1,
          stderr: `transferline: no embedding space is published under this prefix: this process's queue prefix is TL_QUEUE_PREFIX=unused, and this Redis holds the live embed workers under TL_QUEUE_PREFIX=${stack.config.redis.prefix}: set TL_QUEUE_PREFIX as the workers have it\n`,
        });
        // and status says so too, on a fresh deployment (nothing in its bucket yet, so no index looks lost): a trial was told to start the stack
        await ctx.services.store.ensureBucket('fresh-deployment');
        // (with a password in its Redis URL: Redis's default user, with none set, takes any)
        const unusedEnv = { ...stack.env, TL_QUEUE_PREFIX: 'unused', TL_BUCKET: 'fresh-deployment', REDIS_URL: stack.env.REDIS_URL!.replace('redis://', 'redis://default:s3cr3t@') };
        const status = await runCli(['status'], unusedEnv);
        expect(status.code).toBe(0);
        // what it looked at, first (an operator's trial: nothing said it), as the workers log it, the password hidden
        const shell = loadConfig(unusedEnv);
        const redisShown = stack.env.REDIS_URL!.replace('redis://', 'redis://default:***@');
        expect(status.stdout.split('\n')[0]).toBe(`deployment: Redis ${redisShown} (TL_QUEUE_PREFIX=unused), S3 ${shell.s3.endpoint}, embeddings and models in s3://fresh-deployment/${shell.s3.prefix}`);
        const json = JSON.parse((await runCli(['status', '--json'], unusedEnv)).stdout) as { deployment: unknown };
        expect(json.deployment).toEqual({ redis: redisShown, queuePrefix: 'unused', s3: shell.s3.endpoint, storage: `s3://fresh-deployment/${shell.s3.prefix}` });
        // and said before anything that can fail: a dataset this deployment lacks, where it looked named too (a review)
        const missing = await runCli(['status', '-d', 'nosuch'], unusedEnv);
        expect({ code: missing.code, first: missing.stdout.split('\n')[0], stderr: missing.stderr }).toEqual({
          code: 1,
          first: status.stdout.split('\n')[0],
          stderr: `transferline: no dataset named nosuch in Redis ${redisShown} under TL_QUEUE_PREFIX=unused; known: (none)\n`,
        });
        expect(status.stdout + missing.stdout + missing.stderr).not.toContain('s3cr3t');
        expect(status.stdout).toContain(`warning: no embedding space is published under this prefix: this process's queue prefix is TL_QUEUE_PREFIX=unused, and this Redis holds the live embed workers under TL_QUEUE_PREFIX=${stack.config.redis.prefix}: set TL_QUEUE_PREFIX as the workers have it (or, for a deployment of its own beside them, start its workers)\n`);
        expect(status.stdout).toContain("  none published under this shell's TL_QUEUE_PREFIX (unused): the workers' is another, as said above\n");
        expect(status.stdout).not.toMatch(/none published yet/);
        // and the mistaken prefix is left as it was: no key under it (BullMQ's queue meta included)
        expect((await runCli(['status'], { ...stack.env, TL_QUEUE_PREFIX: 'unused' })).code).toBe(0);
        expect(await ctx.services.redis.keys('unused:*')).toEqual([]);
      } finally {
        await beat.stop();
      }
      // delete run too: its files would go, and its classify records under the workers' prefix stay
      const run = await runCli(['delete', 'run', 'prefixed@r1', '--yes'], elsewhere);
      expect({ code: run.code, stderr: run.stderr }).toEqual(refused('elsewhere'));
      expect(await store.headObject(bucket, layout.runFile('prefixed', 'r1', 'run.json'))).toBeDefined();
      expect(await datasets.exists('prefixed')).toBe(true);
      for (const args of [['failures', '-d', 'prefixed'], ['retry', '-d', 'prefixed'], ['train', '-d', 'prefixed', '--no-wait'], ['delete', 'space', stack.space.id, '--yes'], ['cache', 'compact'], ['cache', 'rebuild-index']]) {
        const r = await runCli(args, elsewhere);
        expect({ args, code: r.code, stderr: r.stderr }).toEqual({ args, ...refused('elsewhere') });
      }
      // status says it, and goes on (what a user asks to find out why)
      const words = `no dataset named prefixed here: this process's queue prefix is TL_QUEUE_PREFIX=elsewhere, and this Redis holds it under TL_QUEUE_PREFIX=${stack.config.redis.prefix}: set TL_QUEUE_PREFIX as the workers have it`;
      const status = await runCli(['status', '-d', 'prefixed'], elsewhere);
      expect({ code: status.code, stderr: status.stderr }).toEqual({ code: 1, stderr: `transferline: ${words}\n` });
      // a prefix with datasets of its own (a deployment sharing this Redis, with a storage of its own): a name it lacks is just missing
      const there = new DatasetRepository(ctx.services.redis, redisKeys('elsewhere'));
      await there.putItem('theirs', 's3://photos/theirs/cat/a.jpg', { label: 'cat', etag: 'e', space: stack.space.id, state: 'pending' });
      const own = await runCli(['failures', '-d', 'prefixed'], { ...elsewhere, TL_PREFIX: 'elsewhere/' });
      expect({ code: own.code, stderr: own.stderr }).toEqual({ code: 1, stderr: 'transferline: no dataset named prefixed; known: theirs\n' });
      // and with this deployment's storage, even with datasets of its own: two deployments in one storage would share a cache with one index each
      expect(await runCli(['failures', '-d', 'prefixed'], elsewhere)).toMatchObject(refused('elsewhere'));
      await there.remove('theirs');
      await datasets.remove('prefixed');
      await store.deleteObject(bucket, layout.runFile('prefixed', 'r1', 'run.json'));
    });

    it("a shell whose TL_BUCKET or TL_PREFIX is not the deployment's: every command is refused, naming the settings; status warns, and records or forgets nothing of a loss from it", async () => {
      const { stack, ctx } = file;
      const { bucket, prefix } = stack.config.s3;
      const refusal = `this deployment (TL_QUEUE_PREFIX=${stack.config.redis.prefix} on its Redis) keeps its embeddings and models in s3://${bucket}/${prefix}, as recorded by its first process (`;
      // the live embed worker of this deployment, saying where it keeps embeddings and models
      const beat = await ctx.services.spaces.startHeartbeat(stack.space, 'test', () => undefined, { bucket, prefix });
      try {
        // the user's photo bucket, set as TL_BUCKET by mistake: it exists, and holds no models
        await ctx.services.store.ensureBucket('their-photos');
        const shell = { ...stack.env, TL_BUCKET: 'their-photos' };
        const hint = `this shell looks in s3://their-photos/${prefix}, but the live embed workers keep embeddings and models in s3://${bucket}/${prefix}: set TL_BUCKET=${bucket} as the workers have it`;
        // every command but status is refused before it reads or changes anything (a trial of two teams on one Redis and bucket: a shell with
        // one's queue prefix and the other's storage deleted, compacted and promoted the other's), naming the setting from the deployment's record
        const fix = `this shell has s3://their-photos/${prefix}, which is not this deployment's: set TL_BUCKET=${bucket} as the deployment's workers have it, or another TL_QUEUE_PREFIX for a deployment of its own.`;
        const classified = ctx.services.keys.classified('photos', 'r1');
        await ctx.services.redis.hset(classified, 'a'.repeat(64), '{}');
        try {
          for (const args of [['models'], ['promote', 'photos@r1'], ['classify', 's3://their-photos/incoming/', '-m', 'photos@r1'], ['classify', 's3://their-photos/incoming/', '-m', 'photos'], ['delete', 'run', 'photos@r1', '--yes'], ['delete', 'run', 'photos@r1', '--dry-run']]) {
            const r = await runCli(args, shell);
            expect({ args, code: r.code, stdout: r.stdout }).toEqual({ args, code: 1, stdout: '' });
            expect(r.stderr.startsWith(`transferline: ${refusal}`), r.stderr).toBe(true);
            expect(r.stderr).toContain(fix);
            expect(r.stderr.endsWith(' Nothing was done.\n'), r.stderr).toBe(true);
          }
          // (delete run found only the run's classify records, in Redis: they stay)
          expect(await ctx.services.redis.hlen(classified)).toBe(1);
        } finally {
          await ctx.services.redis.unlink(classified);
        }
        // status warns, and from such a shell records or forgets nothing of a loss (a review: it forgot the deployment's lost datasets, read against the other storage)
        const { keys, redis } = ctx.services;
        await redis.sadd(keys.datasetsLost(), 'ghost');
        await redis.set(keys.dataLossRecorded(), '1');
        try {
          expect((await runCli(['status'], shell)).stdout).toContain(`warning: ${hint}\n`);
          expect({ lost: await redis.smembers(keys.datasetsLost()), recorded: await redis.get(keys.dataLossRecorded()) }).toEqual({ lost: ['ghost'], recorded: '1' });
        } finally {
          await redis.del(keys.datasetsLost(), keys.dataLossRecorded());
        }
        // a prefix of its own too: both settings named
        const both = await runCli(['models'], { ...shell, TL_PREFIX: 'mine/' });
        expect(both.stderr).toContain(`this shell has s3://their-photos/mine/, which is not this deployment's: ${prefix === '' ? `set TL_BUCKET=${bucket} and unset TL_PREFIX` : `set TL_BUCKET=${bucket} and TL_PREFIX=${prefix}`} as the deployment's workers have it`);
        // the workers' own settings: nothing of the kind
        const own = await runCli(['models'], stack.env);
        expect(own.stdout).toBe('no trained models yet: transferline train --dataset NAME\n');
        // of a dataset that exists: its name in the command to run
        await ctx.services.datasets.putItem('untrained', 's3://photos/untrained/cat/a.jpg', { label: 'cat', etag: 'e', space: stack.space.id, state: 'pending' });
        expect((await runCli(['models', '-d', 'untrained'], stack.env)).stdout).toBe('no trained models yet for untrained: transferline train --dataset untrained\n');
        await ctx.services.datasets.remove('untrained');
        expect((await runCli(['status'], stack.env)).stdout).not.toContain('this shell looks in');
      } finally {
        await beat.stop();
      }
      // no embed worker live: the storage the deployment recorded says the same, and status warns of it
      const alone = await runCli(['models'], { ...stack.env, TL_BUCKET: 'their-photos' });
      expect({ code: alone.code, refused: alone.stderr.startsWith(`transferline: ${refusal}`) }).toEqual({ code: 1, refused: true });
      expect((await runCli(['status'], { ...stack.env, TL_BUCKET: 'their-photos' })).stdout).toContain(
        `warning: this shell looks in s3://their-photos/${prefix}, but this deployment keeps embeddings and models in s3://${bucket}/${prefix}: set TL_BUCKET=${bucket} as its first process recorded it\n`,
      );
    });

    it("a deployment's storage record that cannot be read is named with its key; a Redis that refuses SCAN does not stop the commands", async () => {
      const { stack, ctx } = file;
      const { redis } = ctx.services;
      await redis.set('damaged:storage', 'not json');
      try {
        const r = await runCli(['models'], { ...stack.env, TL_QUEUE_PREFIX: 'damaged' });
        expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 1, stderr: expect.stringContaining("the deployment's recorded storage (Redis key damaged:storage) is not a valid document") });
        expect(r.stderr).toContain('delete it (redis-cli DEL damaged:storage) and the next embed or train worker, or up, records it again');
        // status says it too, and goes on (a review: it took the record for a match)
        const status = await runCli(['status'], { ...stack.env, TL_QUEUE_PREFIX: 'damaged' });
        expect({ code: status.code, said: status.stdout.includes("warning: the deployment's recorded storage (Redis key damaged:storage) is not a valid document") }).toEqual({ code: 0, said: true });
        // another prefix's, read while looking for the owners of a storage: left out, not a failure
        expect((await runCli(['models'], { ...stack.env, TL_QUEUE_PREFIX: 'fresh-deployment', TL_PREFIX: 'fresh/' })).code).toBe(0);
      } finally {
        await redis.del('damaged:storage');
      }
      // a user whose ACL refuses SCAN (a review: every command of a fresh deployment failed with NOPERM)
      await redis.call('ACL', 'SETUSER', 'tl-noscan', 'on', '>noscan-pw', '~*', '&*', '+@all', '-scan');
      try {
        const url = stack.env.REDIS_URL!.replace('redis://', 'redis://tl-noscan:noscan-pw@');
        const r = await runCli(['models'], { ...stack.env, REDIS_URL: url, TL_QUEUE_PREFIX: 'noscan', TL_PREFIX: 'noscan/' });
        expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: '' });
      } finally {
        await redis.call('ACL', 'DELUSER', 'tl-noscan');
      }
    });

    it("a worker whose TL_BUCKET or TL_PREFIX is not the deployment's refuses to start, naming the settings (it would file embeddings where no other process looks)", async () => {
      const { stack, ctx } = file;
      const { bucket, prefix } = stack.config.s3;
      const worker = (role: 'embed' | 'train' | 'preprocess', env: NodeJS.ProcessEnv) => {
        const script = role === 'train' ? ['apps/train-worker/dist/main.js'] : ['apps/feature-worker/dist/main.js', role];
        const child = spawn(process.execPath, script, { cwd: repoRoot, env: { ...stack.env, TL_METRICS_HOST: '127.0.0.1', TL_METRICS_PORT: '0', TL_SUPERVISOR_HANG_MS: '0', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
        let stderr = '';
        child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
        const exited = new Promise<{ code: number | null; stderr: string }>((resolve) => child.once('exit', (code) => resolve({ code, stderr })));
        // (a worker that started after all is stopped by the deadline, and the test fails on its exit)
        const deadline = setTimeout(() => child.kill('SIGKILL'), 60_000);
        return { child, exited: exited.finally(() => clearTimeout(deadline)) };
      };
      // the deployment recorded where it keeps embeddings and models when it started (up does; so does
      // the first embed or train worker of a deployment started by hand)
      expect(JSON.parse((await ctx.services.redis.get(ctx.services.keys.storage()))!)).toMatchObject({ bucket, prefix });
      try {
        // one started with another TL_PREFIX (a user's trial: its embeddings were indexed where no one
        // looked, and every run failed after), or another TL_BUCKET, even with no other worker live
        // (the four refusals at once: each is a process start)
        const dirs = await Promise.all([0, 1].map(() => mkdtemp(path.join(os.tmpdir(), 'tl-upstorage-'))));
        const upWith = (dir: string, env: NodeJS.ProcessEnv) => runCli(['up', '--metrics-port', '0'], { ...stack.env, TL_DATA_DIR: dir, TL_MODEL_WEIGHTS: 'random', ...env }, 60_000);
        try {
          const [elsewhere, train, up, typo, prefixTypo, preprocessTypo] = await Promise.all([
            worker('embed', { TL_PREFIX: 'tl2/' }).exited,
            worker('train', { TL_BUCKET: 'their-photos' }).exited,
            // an up on the deployment's Redis with another TL_PREFIX: refused before it starts a worker
            // (each would be refused in turn, and restarted for ever)
            upWith(dirs[0]!, { TL_PREFIX: 'tl2/' }),
            // a mistyped TL_BUCKET: refused before it makes that bucket
            upWith(dirs[1]!, { TL_BUCKET: 'tl-typo-bucket' }),
            // a mistyped TL_QUEUE_PREFIX beside the deployment's storage: not a deployment of its own there (a review: its
            // record, once made, let every command of that prefix work on the other's storage)
            worker('embed', { TL_QUEUE_PREFIX: 'tl-typo' }).exited,
            // and a preprocess worker so (an operator's trial: it started, and sat idle)
            worker('preprocess', { TL_QUEUE_PREFIX: 'tl-typo' }).exited,
          ]);
          expect(elsewhere.code).toBe(1);
          expect(elsewhere.stderr).toContain(`embed worker: this deployment (TL_QUEUE_PREFIX=${stack.config.redis.prefix} on its Redis) keeps its embeddings and models in s3://${bucket}/${prefix}, as recorded by its first process (`);
          expect(elsewhere.stderr).toContain(`this worker has s3://${bucket}/tl2/, which is not this deployment's: ${prefix === '' ? 'unset TL_PREFIX' : `set TL_PREFIX=${prefix}`} as the others have it, or another TL_QUEUE_PREFIX for a deployment of its own.`);
          // it never said it was starting: no command waits on it
          expect(await ctx.services.spaces.startingWorkers(stack.space.id)).toEqual([]);
          expect(train.code).toBe(1);
          expect(train.stderr).toContain(`train worker: this deployment (TL_QUEUE_PREFIX=${stack.config.redis.prefix} on its Redis) keeps its embeddings and models in s3://${bucket}/${prefix}`);
          expect(train.stderr).toContain(`: set TL_BUCKET=${bucket} as the others have it`);
          expect(up.code).toBe(1);
          expect(up.stderr).toContain(`this up has s3://${bucket}/tl2/, which is not this deployment's`);
          // how to record another, on the Redis it uses
          expect(up.stderr).toContain(`delete the record, redis-cli -u ${stack.config.redis.url} DEL ${ctx.services.keys.storage()}`);
          expect(typo.code).toBe(1);
          expect(typo.stderr).toContain(`set TL_BUCKET=${bucket} as the others have it`);
          expect(await ctx.services.store.bucketExists('tl-typo-bucket')).toBe(false);
          expect(prefixTypo.code).toBe(1);
          expect(prefixTypo.stderr).toContain(
            `embed worker: s3://${bucket}/${prefix} is where the deployment under TL_QUEUE_PREFIX=${stack.config.redis.prefix} on this Redis keeps its embeddings and models (recorded by its first process, `,
          );
          expect(prefixTypo.stderr).toContain(`and this worker's TL_QUEUE_PREFIX=tl-typo has no deployment recorded: set TL_QUEUE_PREFIX=${stack.config.redis.prefix} as its workers have it, or another TL_BUCKET or TL_PREFIX for a deployment of its own.`);
          expect(await ctx.services.redis.get('tl-typo:storage')).toBeNull();
          expect(preprocessTypo.code).toBe(1);
          expect(preprocessTypo.stderr).toContain(`preprocess worker: s3://${bucket}/${prefix} is where the deployment under TL_QUEUE_PREFIX=${stack.config.redis.prefix} on this Redis keeps its embeddings and models (recorded by its first process, `);
          expect(preprocessTypo.stderr).toContain(`and this worker's TL_QUEUE_PREFIX=tl-typo has no deployment recorded: set TL_QUEUE_PREFIX=${stack.config.redis.prefix} as its workers have it`);
          for (const dir of dirs) expect(processesWithEnv('TL_DATA_DIR', dir)).toEqual([]);
        } finally {
          for (const dir of dirs) await rm(dir, { recursive: true, force: true });
        }
        // nothing changed it
        expect(JSON.parse((await ctx.services.redis.get(ctx.services.keys.storage()))!)).toMatchObject({ bucket, prefix });
        // no record (a deployment of an older version, a Redis that lost its data): the live embed
        // workers' storage stands for it, and the first worker to start does not win against them
        await ctx.services.redis.del(ctx.services.keys.storage());
        const beat = await ctx.services.spaces.startHeartbeat(stack.space, 'test', () => undefined, { bucket, prefix });
        try {
          const late = await worker('train', { TL_PREFIX: 'tl2/' }).exited;
          expect(late.code).toBe(1);
          expect(late.stderr).toContain(`keeps its embeddings and models in s3://${bucket}/${prefix}, as its live embed workers say (no record yet); this worker has s3://${bucket}/tl2/`);
          expect(await ctx.services.redis.get(ctx.services.keys.storage())).toBeNull();
        } finally {
          await beat.stop();
        }
        // a deployment started by hand, with no up: its first worker records it
        const first = worker('train', {});
        await until('the first worker to record the storage', async () => (await ctx.services.redis.get(ctx.services.keys.storage())) !== null, 60);
        first.child.kill('SIGKILL');
        await first.exited;
        expect(JSON.parse((await ctx.services.redis.get(ctx.services.keys.storage()))!)).toMatchObject({ bucket, prefix, by: expect.stringContaining(`:${first.child.pid}:`) });
      } finally {
        await ctx.services.redis.set(ctx.services.keys.storage(), JSON.stringify({ bucket, prefix, by: 'test', at: new Date().toISOString() }));
      }
    });

    it("an embed worker started without the deployment's settings says how to join its live workers before how to get the ImageNet weights", async () => {
      // (a user's trial: a worker started by hand without the banner's TL_MODEL_WEIGHTS=random led with the download)
      const { stack, ctx } = file;
      const { bucket, prefix } = stack.config.s3;
      const theirs = spaceFromConfig(loadConfig({ ...stack.env, TL_MODEL_WEIGHTS: 'random' }));
      expect(theirs.id).not.toBe(stack.space.id);
      const beat = await ctx.services.spaces.startHeartbeat(theirs, 'test', () => undefined, { bucket, prefix });
      const cache = await mkdtemp(path.join(os.tmpdir(), 'tl-noweights-'));
      try {
        const child = spawn(process.execPath, ['apps/feature-worker/dist/main.js', 'embed'], {
          cwd: repoRoot,
          env: { ...stack.env, TL_METRICS_HOST: '127.0.0.1', TL_METRICS_PORT: '0', TL_SUPERVISOR_HANG_MS: '0', TL_MODEL_CACHE_DIR: cache, TL_MODEL_WEIGHTS_SOURCE: path.join(cache, 'nowhere.h5') },
          stdio: ['ignore', 'ignore', 'pipe'],
        });
        let stderr = '';
        child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
        const deadline = setTimeout(() => child.kill('SIGKILL'), 60_000);
        const code = await new Promise<number | null>((resolve) => child.once('exit', resolve)).finally(() => clearTimeout(deadline));
        expect(code).toBe(1);
        // what it is connected to, said first (an operator's trial: nothing said it; a password in the URL would be redacted)
        const said = stderr.split('\n').flatMap((l) => (l.startsWith('{') ? [JSON.parse(l) as { msg: string; queuePrefix?: string }] : []));
        expect(said.find((l) => l.msg.startsWith('deployment: '))).toMatchObject({
          msg: `deployment: Redis ${redactUrl(stack.config.redis.url)} (TL_QUEUE_PREFIX=${stack.config.redis.prefix}), S3 ${stack.config.s3.endpoint}, embeddings and models in s3://${bucket}/${prefix}`,
          queuePrefix: stack.config.redis.prefix,
        });
        expect(stderr).toContain(
          `this deployment's live embed workers run ${theirs.id} (TL_MODEL_WEIGHTS=random), and this one was started for ${stack.space.id}: start it with their settings to join them (up's banner prints them). To run ${stack.space.id} beside them: could not get the EfficientNet-B0 weights from ${path.join(cache, 'nowhere.h5')}`,
        );
      } finally {
        await beat.stop();
        await rm(cache, { recursive: true, force: true });
      }
    });

    it("classify of a dataset whose first run is on its way names that run, not 'train first'", async () => {
      const { ctx } = file;
      const job = await ctx.queues.train.add('train', { dataset: 'coming', runId: 'r-coming', promote: true }, { jobId: 'train-r-coming' });
      try {
        const r = await runCli(['classify', 's3://their-photos/incoming/', '-m', 'coming'], file.stack.env);
        expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 1, stderr: 'transferline: no trained model for coming yet: run r-coming is queued (follow it: transferline train --follow r-coming), and coming has its model once it ends\n' });
        // a shell looking in another bucket than the deployment's is told that first: the run's model
        // will be where it does not look
        const elsewhere = await runCli(['classify', 's3://their-photos/incoming/', '-m', 'coming'], { ...file.stack.env, TL_BUCKET: 'their-photos' });
        expect(elsewhere.stderr).toMatch(/^transferline: this deployment .* this shell has s3:\/\/their-photos\/.*, which is not this deployment's: set TL_BUCKET=.* as the deployment's workers have it.* Nothing was done\.\n$/);
        // a run that will not be the latest (--no-promote) is no such promise; and with no dataset
        // of that name, "train it first" would be no help: a typo, most likely (a user's trial)
        await job.updateData({ dataset: 'coming', runId: 'r-coming', promote: false });
        expect((await runCli(['classify', 's3://their-photos/incoming/', '-m', 'coming'], file.stack.env)).stderr).toMatch(
          /^transferline: no trained model for coming, and no dataset is named so(?: \(models: [^)]+\)|: ingest one, then train it)\n$/,
        );
        // a dataset that exists, with no model yet: train it
        await ctx.services.datasets.putItem('coming', 'their-photos/incoming/a.jpg', { etag: 'e', label: 'a', state: 'pending' });
        expect((await runCli(['classify', 's3://their-photos/incoming/', '-m', 'coming'], file.stack.env)).stderr).toBe('transferline: no trained model for coming: run "transferline train --dataset coming" first\n');
      } finally {
        await job.remove();
        await ctx.services.datasets.remove('coming');
      }
    });

    it('status names the jobs left active by a worker that stopped, when no worker of their queue is connected', async () => {
      const { stack, ctx } = file;
      // a worker takes a job and goes away without finishing it (as a killed one does)
      const connection = createRedis(stack.config.redis.url, 'worker');
      const worker = new Worker(ctx.queues.preprocess.name, null, { connection, prefix: stack.config.redis.prefix, autorun: false });
      try {
        await ctx.queues.preprocess.add('preprocess', { any: 'payload' }, { jobId: 'held-by-the-gone' });
        expect((await worker.getNextJob('a-token'))?.id).toBe('held-by-the-gone');
        await worker.close(true);
        const status = await runCli(['status'], stack.env);
        expect(status.code).toBe(0);
        expect(status.stdout).toMatch(/^preprocess +0 +0 +1 /m);
        expect(status.stdout).toContain('\n  preprocess: 1 active job and no worker connected: held by a worker that stopped; a worker of this queue takes it up again once it starts (a job stalled too often fails as stalled)\n');
      } finally {
        await worker.close(true);
        connection.disconnect();
      }
    });

    it('status names the runs and jobs that wait while no worker of their queue is connected (they stay queued until one is)', async () => {
      const { stack, ctx } = file;
      // (a stack of Redis and S3 alone: no worker of any role)
      const run = await ctx.queues.train.add('train', { dataset: 'unworked', runId: 'r-unworked', promote: true }, { jobId: 'train-r-unworked' });
      const jobs = await Promise.all(['a', 'b'].map((k) => ctx.queues.preprocess.add('preprocess', { any: 'payload' }, { jobId: `unworked-${k}` })));
      try {
        const status = await runCli(['status'], stack.env);
        expect(status.code).toBe(0);
        expect(status.stdout).toContain('\n  train: 1 run waits and no train worker is connected: start one (transferline up, or a train worker: README, "A worker more"); it stays queued until then\n');
        expect(status.stdout).toContain('\n  preprocess: 2 jobs wait and no preprocess worker is connected: start one (transferline up, or a preprocess worker: README, "A worker more"); they stay queued until then\n');
        expect(status.stdout).not.toMatch(/^ {2}classify: .* no train worker is connected/m);
      } finally {
        await run.remove();
        for (const job of jobs) await job.remove();
      }
    });
  });

  it('output piped into a reader that stops early (| head) ends quietly, with the status of a SIGPIPE (141)', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'tl-epipe-'));
    const server = await startEmbeddedRedis({ directory: path.join(dir, 'redis'), port: 0, persist: false });
    try {
      const child = spawn(process.execPath, [cliPath, 'status'], { env: { ...baseEnv, REDIS_URL: server.url }, stdio: ['ignore', 'pipe', 'pipe'] });
      child.stdout.destroy(); // the reader is gone before the first line
      let stderr = '';
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
      expect(stderr).toBe('');
      expect(code).toBe(141);
    } finally {
      await server.stop();
      await rm(dir, { recursive: true, force: true });
    }
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

  it('up with REDIS_URL or S3_ENDPOINT set to a server that does not answer says which variable, and leaves nothing running', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'tl-upext-'));
    try {
      const env = { ...baseEnv, TL_DATA_DIR: dir, TL_MODEL_WEIGHTS: 'random', AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true' };
      const redis = await runCli(['up', '--metrics-port', '0'], { ...env, REDIS_URL: 'redis://127.0.0.1:1', S3_ENDPOINT: 'http://127.0.0.1:1' }, 60_000);
      expect(redis.code).toBe(1);
      expect(redis.stderr).toMatch(/^transferline: REDIS_URL is set \(redis:\/\/127\.0\.0\.1:1\), so up uses that Redis and starts none; it does not answer \(connection refused\): unset REDIS_URL and S3_ENDPOINT/m);
      // its own Redis, an S3_ENDPOINT left over from another terminal
      const s3 = await runCli(['up', '--metrics-port', '0'], { ...env, TL_REDIS_PORT: '0', S3_ENDPOINT: 'http://127.0.0.1:1' }, 60_000);
      expect(s3.code).toBe(1);
      expect(s3.stderr).toMatch(/^transferline: S3_ENDPOINT is set \(http:\/\/127\.0\.0\.1:1\), so up uses that S3 server and starts none; it does not answer \(.*ECONNREFUSED.*\): unset REDIS_URL/m);
      // with no embed worker here, the ImageNet weights are none of up's business (offline: it refused on them)
      const { TL_MODEL_WEIGHTS: _, ...imagenet } = env;
      const noEmbed = await runCli(['up', '--embed-workers', '0', '--metrics-port', '0'], { ...imagenet, TL_MODEL_WEIGHTS_SOURCE: path.join(dir, 'nowhere.h5'), TL_MODEL_CACHE_DIR: path.join(dir, 'cache'), REDIS_URL: 'redis://127.0.0.1:1', S3_ENDPOINT: 'http://127.0.0.1:1' }, 60_000);
      expect(noEmbed.code).toBe(1);
      expect(noEmbed.stderr).toMatch(/^transferline: REDIS_URL is set \(redis:\/\/127\.0\.0\.1:1\), so up uses that Redis/m);
      expect(noEmbed.stderr).not.toMatch(/weights/i);
      expect(processesWithEnv('TL_DATA_DIR', dir)).toEqual([]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('a second up on the data directory of one that runs refuses, naming it, and starts nothing', async () => {
    // (a user's trial: a second up on other ports started on the first one's ./data, its Redis
    // appending to the same file). The running up here: this test's own process, a Node process.
    const dir = await mkdtemp(path.join(os.tmpdir(), 'tl-twoups-'));
    try {
      await writeFile(path.join(dir, 'up.pid'), `${JSON.stringify({ pid: process.pid, startedAt: '2026-12-03T01:00:00.000Z', ports: 'metrics port 9464, Redis port 6390, S3 port 9000' })}\n`);
      const env = { ...baseEnv, TL_DATA_DIR: dir, TL_MODEL_WEIGHTS: 'random', TL_REDIS_PORT: '0', TL_S3_PORT: '0', AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true' };
      const second = await runCli(['up', '--metrics-port', '0'], env, 60_000);
      expect(second.code).toBe(1);
      expect(second.stderr).toContain(`transferline: ${dir} is in use by another transferline up (pid ${process.pid}, started 2026-12-03T01:00:00.000Z, metrics port 9464, Redis port 6390, S3 port 9000): two would share one Redis's files, one S3 server's directory, the worker logs. Stop that one (Ctrl-C in its terminal), or give this one a data directory of its own with TL_DATA_DIR`);
      expect(existsSync(path.join(dir, 'redis'))).toBe(false);
      expect(processesWithEnv('TL_DATA_DIR', dir)).toEqual([]);
      // with the ImageNet weights asked for (the default) and none here: refused the same, before
      // any download (a user's trial: offline, the download's failure was said first)
      const { TL_MODEL_WEIGHTS: _random, ...imagenet } = env;
      const again = await runCli(['up', '--metrics-port', '0'], imagenet, 60_000);
      expect(again.code).toBe(1);
      expect(again.stderr).toContain(`transferline: ${dir} is in use by another transferline up (pid ${process.pid}, `);
      expect(again.stdout + again.stderr).not.toMatch(/weights/i);
      // one left by an up that is gone (SIGKILLed): taken over
      const gone = spawn(process.execPath, ['-e', '']);
      await new Promise((resolve) => gone.on('exit', resolve));
      await writeFile(path.join(dir, 'up.pid'), `${JSON.stringify({ pid: gone.pid, startedAt: '2026-12-03T01:00:00.000Z', ports: 'metrics port 9464' })}\n`);
      const lock = await lockDataDir(dir, { ports: 'metrics port 1', shares: 'the worker logs' });
      expect(JSON.parse(await readFile(path.join(dir, 'up.pid'), 'utf8'))).toMatchObject({ pid: process.pid, ports: 'metrics port 1' });
      await lock.release();
      expect(existsSync(path.join(dir, 'up.pid'))).toBe(false);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('an up refused for a Redis port in use leaves no empty folder behind, and keeps the log that says why', async () => {
    // (a user's trial: a refused up left empty logs/ and redis/ folders in a fresh data directory)
    const dir = path.join(await mkdtemp(path.join(os.tmpdir(), 'tl-refused-')), 'data');
    const taken = net.createServer();
    await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
    try {
      const port = (taken.address() as net.AddressInfo).port;
      const env = { ...baseEnv, TL_DATA_DIR: dir, TL_MODEL_WEIGHTS: 'random', TL_REDIS_PORT: String(port), TL_S3_PORT: '0', AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true' };
      const r = await runCli(['up', '--metrics-port', '0'], env, 60_000);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(`port ${port} for the embedded Redis is in use`);
      expect(existsSync(path.join(dir, 'redis'))).toBe(false);
      expect(existsSync(path.join(dir, 's3'))).toBe(false);
      expect(await readFile(path.join(dir, 'logs', 'redis.log'), 'utf8')).toMatch(/Redis/);
    } finally {
      await new Promise((resolve) => taken.close(resolve));
      await rm(path.dirname(dir), { recursive: true, force: true });
    }
  });

  it('an up whose metrics port is also its Redis port refuses before it starts anything', async () => {
    // (else the worker on it failed at each restart for ever, its /healthz answered by Redis)
    const dir = path.join(await mkdtemp(path.join(os.tmpdir(), 'tl-sameport-')), 'data');
    try {
      const p = await freeRun(4);
      const env = { ...baseEnv, TL_DATA_DIR: dir, TL_MODEL_WEIGHTS: 'random', TL_REDIS_PORT: String(p + 1), TL_S3_PORT: '0', AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true' };
      const r = await runCli(['up', '--metrics-port', String(p)], env, 60_000);
      expect({ code: r.code, stderr: r.stderr }).toEqual({
        code: 1,
        stderr: `transferline: metrics port ${p + 1} (preprocess) is also the port of the embedded Redis (TL_REDIS_PORT): choose other ports with --metrics-port P (the stack uses P to P+3, and +10 for each further replica of a role), or set TL_REDIS_PORT to another\n`,
      });
      expect(processesWithEnv('TL_DATA_DIR', dir)).toEqual([]);
      expect(existsSync(path.join(dir, 'redis'))).toBe(false);
      // nor the data directory it would have made (its lock is taken first: a review)
      expect(existsSync(dir)).toBe(false);
    } finally {
      await rm(path.dirname(dir), { recursive: true, force: true });
    }
  });

  it("up's Redis does not take another redis-server's answer on its port for its own", async () => {
    // Another `up` starting at the same moment takes the port first: ours fails to bind (here: a
    // redis-server that never binds, so the failure cannot win the race) while the other answers.
    const dir = await mkdtemp(path.join(os.tmpdir(), 'tl-racedredis-'));
    const other = await startEmbeddedRedis({ directory: path.join(dir, 'other'), port: 0, persist: false });
    const bin = path.join(dir, 'bin');
    await mkdir(bin);
    await writeFile(path.join(bin, 'redis-server'), '#!/bin/sh\n[ "$1" = --version ] && echo "Redis server v=7" && exit 0\nexec sleep 20\n', { mode: 0o755 });
    const saved = process.env.PATH;
    process.env.PATH = `${bin}:${saved}`;
    try {
      const port = Number(new URL(other.url).port);
      const err = await startEmbeddedRedis({ directory: path.join(dir, 'ours'), port, persist: false }).then(
        (r) => (void r.stop(), undefined),
        (e: unknown) => e as Error,
      );
      expect(err?.message).toMatch(new RegExp(`port ${port} for the embedded Redis is in use, by another "transferline up" perhaps.* \\(redis-server pid ${other.process.pid} answers on it\\)$`));
    } finally {
      process.env.PATH = saved;
      await other.stop();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('a command without its required option shows the help for it, and exits 2 (bad usage)', async () => {
    const r = await runCli(['ingest', 's3://photos/train/'], baseEnv);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/required option '-d, --dataset <name>' not specified/);
  });

  it('every kind of bad usage exits 2, before anything is asked of Redis; --help exits 0', async () => {
    // baseEnv's Redis is not there: a usage error must not get as far as trying it (that exits 1)
    const cases: [string[], RegExp][] = [
      [['ingest', 's3://photos/train/', '-d', 'x', '--bogus'], /unknown option '--bogus'/],
      [['no-such-command'], /unknown command 'no-such-command'/],
      [['train', '-d', 'x', '--epochs', 'abc'], /--epochs must be a whole number/],
      // the least it takes, said as the range it is (a user's trial: "0 or more" for -1, then "at least 1" for 0)
      [['train', '-d', 'x', '--epochs', '0'], /--epochs must be a whole number, at least 1$/m],
      // every setting of a run is checked against the run's own schema as it is parsed, before Redis is asked
      [['train', '-d', 'x', '--epochs', '2.5'], /--epochs must be a whole number$/m],
      [['train', '-d', 'x', '--validation-fraction', '0.01'], /--validation-fraction must be a number, at least 0\.05$/m],
      [['train', '-d', 'x', '--test-fraction', '0.7'], /--test-fraction must be a number, at most 0\.5$/m],
      [['train', '-d', 'x', '--learning-rate', '0'], /--learning-rate must be a number, above 0$/m],
      [['train', '-d', 'x', '--hidden-units', '9000'], /--hidden-units must be a whole number, at most 8192$/m],
      [['ingest', 's3://photos/', '-d', 'x', '--stall-timeout', '-5'], /--stall-timeout must be a whole number, at least 0$/m],
      // (0 threads was taken, then dropped for the default)
      [['serve', '-m', 'x', '--threads', '0'], /--threads must be a whole number, at least 1$/m],
      [['ingest', 'photos/train', '-d', 'x'], /not an s3:\/\/ URL: "photos\/train" \(expected s3:\/\/bucket\/prefix\)/],
      [['classify', 'photos/incoming', '-m', 'x'], /not an s3:\/\/ URL/],
      [['upload', '.', 'photos'], /not an s3:\/\/ URL/],
      [['export', '-m', 'x', '--format', 'tflite'], /argument 'tflite' is invalid\. Allowed choices are onnx/],
      // (a trial: these exited 1, after Redis was asked)
      [['export', '-m', '@r1'], /argument '@r1' is invalid\. --model needs a dataset name, optionally @run \(got "@r1"\)/],
      [['serve', '-m', 'pets@'], /--model needs a dataset name, optionally @run \(got "pets@"\)/],
      [['classify', 's3://photos/incoming/', '-m', 'a/b@r1'], /--model needs a dataset name, optionally @run/],
      [['ingest', 's3://photos/train/', '-d', 'x', '--watch', '--interval', '0'], /--interval must be a positive number/],
      // (was zod's words on the run's settings, after Redis was asked)
      [['train', '-d', 'x', '--l2', 'abc'], /--l2 must be a number$/m],
      [['train', '-d', 'x', '--l2', '-0.1'], /--l2 must be a number, at least 0$/m],
      [['retry', '-d', 'x', '--stage', 'train'], /--stage is preprocess or embed/],
      // how often --watch looks, given without --watch, would be ignored
      [['ingest', 's3://photos/train/', '-d', 'x', '--interval', '5'], /--interval goes with --watch/],
      [['classify', 's3://photos/incoming/', '-m', 'x', '--interval', '5'], /--interval goes with --watch/],
      [['serve', '-m', 'x', '--port', '99999'], /--port must be a port number, 0 to 65535/],
      [['console', '--port', '70000'], /--port must be a port number, 0 to 65535/],
      // up's processes take P to P+3, and +10 for each further replica
      [['up', '--metrics-port', '65534'], /--metrics-port 65534 leaves no room: the stack uses P to P\+3, and \+10 for each further replica of a role \(up to 65537 here, past 65535\)/],
      [['up', '--metrics-port', '65530', '--preprocess-workers', '2'], /--metrics-port 65530 leaves no room: .*\(up to 65541 here/],
      // a reason code no image fails with (a typo) retries or lists nothing: said, not taken
      [['retry', '-d', 'x', '--reason', 'bogus'], /argument 'bogus' is invalid\. Allowed choices are empty, not-an-image, .*attempts-exhausted/],
      [['failures', '-d', 'x', '--reason', 'truncate'], /argument 'truncate' is invalid\. Allowed choices are .*truncated/],
      [['train', '--epochs', '3'], /train needs --dataset NAME/],
      [['train', '-d', 'x', '--class-weights', 'heavy'], /--class-weights is balanced or none/],
      [['review', '-d', 'x', '--folds', '1'], /--folds must be 2 or more/],
      // a run that would name another folder of the bucket
      [['delete', 'run', 'x@..'], /delete run needs DATASET@RUN, the run named in full/],
      [['promote', 'x@../y'], /promote needs DATASET@RUN/],
      // a followed run keeps the settings it started with
      [['train', '--follow', 'r1', '--epochs', '5', '--no-wait'], /--follow follows a run as it was started: --epochs, --no-wait cannot change it/],
    ];
    // (two at a time: each is a process of its own, about 0.7 s of CPU)
    await pMap(cases, async ([args, message]) => {
      const r = await runCli(args, { ...baseEnv, REDIS_URL: 'redis://127.0.0.1:1' });
      expect({ args, code: r.code }).toEqual({ args, code: 2 });
      expect(r.stderr).toMatch(message);
    }, { concurrency: 2 });
    const help = await runCli(['ingest', '--help'], baseEnv);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/--stall-timeout/);
    // where up puts the stack, as this shell sets it (a user's trial: with port 9000 taken, --help named no setting that moves it)
    const upHelp = await runCli(['up', '--help'], { ...baseEnv, TL_S3_PORT: '41000', TL_DATA_DIR: '/tmp/tl-elsewhere' });
    expect(upHelp.code).toBe(0);
    for (const line of [/^ {2}TL_DATA_DIR .*\(\/tmp\/tl-elsewhere\)$/m, /^ {2}TL_S3_PORT .*\(41000\)$/m, /^ {2}TL_REDIS_PORT .*\(6390\)$/m, /^ {2}TL_CONSOLE_PORT .*\(9470\)$/m]) expect(upHelp.stdout).toMatch(line);
    expect((await runCli(['--help'], baseEnv)).stdout).toContain('(TL_DATA_DIR, TL_S3_PORT, TL_REDIS_PORT, TL_CONSOLE_PORT): transferline up --help');
    // the version a user reports a bug against (a user's trial: "unknown option '--version'")
    const version = await runCli(['--version'], baseEnv);
    expect({ code: version.code, stdout: version.stdout }).toEqual({ code: 0, stdout: `${(JSON.parse(await readFile(path.join(repoRoot, 'apps/producer/package.json'), 'utf8')) as { version: string }).version}\n` });
  }, 180_000);
});
