import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadTfRuntime } from '@transferline/shared/tf';
import { buildEfficientNetB0 } from '../apps/feature-worker/src/model/efficientnet-b0.model.js';
import { writeKerasH5Weights } from '../apps/feature-worker/src/model/keras-h5-weights.writer.js';
import { renderSample } from '../apps/producer/src/demo/sample-images.js';
import { freePort } from '../apps/producer/src/embedded/redis.server.js';
import { ROLES } from '../apps/producer/src/embedded/supervisor.js';
import { loadConfig, spaceFromConfig } from '../packages/shared/src/index.js';
import { runCli, stackForFile, until } from './support/stack.js';

// a deployment running embed workers of two spaces: the stack's (squash) and a crop one
const file = stackForFile({ TL_MODEL_WEIGHTS: 'random' }, { preprocess: 1, embed: 1, train: 0 });
const photos = 'photos-split';

describe('a dataset whose prefixes were ingested into two embedding spaces', () => {
  it('status says which images train would leave out and how to bring them in; train refuses instead of waiting for ever', async () => {
    const { stack, ctx } = file;
    const crop = spaceFromConfig(loadConfig({ ...stack.env, TL_RESIZE: 'crop' }));
    await stack.supervisor.start([{ role: 'embed', replica: 2, metricsPort: await freePort(), env: { ...stack.env, TL_RESIZE: 'crop' } }]);
    await until('the crop embed worker to be live', async () => (await ctx.services.spaces.workersOf(crop.id)) > 0, 120);

    await ctx.services.store.ensureBucket(photos);
    for (const [i, kind] of (['circle', 'square'] as const).entries()) {
      for (let j = 0; j < 2; j++) await ctx.services.store.putObject(photos, `a/${kind}/${j}.jpg`, await renderSample(kind, 10 * i + j, 61));
      await ctx.services.store.putObject(photos, `b/${kind}/0.jpg`, await renderSample(kind, 50 + i, 61));
    }
    const squash = stack.space.id;
    expect((await runCli(['ingest', `s3://${photos}/a/`, '-d', 'combo', '--embedder', squash], stack.env)).code).toBe(0);
    // later, one prefix into the crop space: the dataset moves there, and a/'s 4 images stay in squash
    const b = await runCli(['ingest', `s3://${photos}/b/`, '-d', 'combo', '--embedder', crop.id], stack.env);
    expect(b.code).toBe(0);
    const said = `4 of them are embedded in ${squash}, not in the dataset's space ${crop.id} (its last ingest's): train leaves them out. Ingest s3://${photos}/a/ again with --embedder ${crop.id} to use them`;
    expect(b.stdout).toContain(`  ${said}\n`);
    const status = await runCli(['status', '-d', 'combo'], stack.env);
    expect(status.stdout).toContain(`dataset combo: 6 images, 6 embedded`);
    expect(status.stdout).toContain(`  ${said}\n`);

    // train would have waited for images no worker will ever bring into this space: it says why, at once
    const train = await runCli(['train', '-d', 'combo'], stack.env, 60_000);
    expect(train.timedOut).toBe(false);
    expect(train.code).toBe(1);
    expect(train.stderr).toContain(`${said}; or train with --partial to leave them out`);

    // as it says: ingest a/ again into the crop space, and nothing is left out
    const again = await runCli(['ingest', `s3://${photos}/a/`, '-d', 'combo', '--embedder', crop.id], stack.env);
    expect(again.code).toBe(0);
    expect(again.stdout).not.toContain('embedded in');
    expect((await ctx.services.inspector.status('combo')).elsewhere).toEqual([]);
  }, 240_000);
});

/**
 * ImageNet weights (a file in Keras's layout, of random values) from a download held open until
 * `release`: an embed worker given `env` loads its model until then.
 */
async function heldWeights(dataDir: string, folder: string) {
  await loadTfRuntime('wasm');
  const h5 = Buffer.from(await writeKerasH5Weights(buildEfficientNetB0({ seed: 5, inputSize: 224 })));
  let release!: () => void;
  const released = new Promise<void>((r) => (release = r));
  const server = http.createServer((_req, res) => {
    res.writeHead(200, { 'content-length': h5.length });
    res.write(h5.subarray(0, 1000));
    void released.then(() => res.end(h5.subarray(1000)));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    env: {
      TL_MODEL_WEIGHTS: 'imagenet',
      TL_MODEL_WEIGHTS_MD5: createHash('md5').update(h5).digest('hex'),
      TL_MODEL_WEIGHTS_SOURCE: `http://127.0.0.1:${(server.address() as AddressInfo).port}/w.h5`,
      TL_MODEL_CACHE_DIR: path.join(dataDir, folder),
    },
    release,
    close: async () => {
      release();
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    },
  };
}

describe('an embed worker still loading its model', () => {
  it('is waited for past the stall timeout, and said so, by ingest and status; the wait ends once it has embedded', async () => {
    const { stack, ctx } = file;
    const held = await heldWeights(stack.dataDir, 'held-weights');
    const release = held.release;
    try {
      const env = { ...stack.env, ...held.env };
      const space = spaceFromConfig(loadConfig(env));
      await stack.supervisor.start([{ role: 'embed', replica: 3, metricsPort: await freePort(), env }]);
      await until('the worker to say it is loading its model', async () => (await ctx.services.spaces.startingWorkers(space.id)).length > 0, 60);
      await ctx.services.store.ensureBucket(photos);
      for (const kind of ['circle', 'square'] as const) await ctx.services.store.putObject(photos, `held/${kind}/0.jpg`, await renderSample(kind, 90, 62));
      let out = '';
      let ended = false;
      const ingest = runCli(['ingest', `s3://${photos}/held/`, '-d', 'held', '--embedder', space.id, '--stall-timeout', '2'], stack.env, 170_000, { merged: true, onOutput: (c) => (out += c) });
      void ingest.then(() => (ended = true));
      // its space is chosen from the worker loading it, and the wait, past its stall timeout, says what it waits for
      const waiting = /no progress for 2 s, but an embed worker of \S+ is on its way: its worker \S+ has been loading its model for \d+ s/;
      await until('ingest to say it waits for the worker, or end', () => waiting.test(out) || ended, 60);
      expect(out).toMatch(waiting);
      expect(out).toContain(`embedding space ${space.id} (chosen with --embedder); no embed worker is live for it yet: 1 worker loading the model`);
      // (both preprocessed by now, or soon)
      await until('status to show the worker loading, and both images waiting for it', async () => {
        const status = (await runCli(['status'], stack.env)).stdout;
        return new RegExp(`  ${space.id.replace(/\./g, '\\.')}: 0 embed workers, 1 loading its model for \\d+ s, backlog 2,`).test(status);
      }, 30, 500);
      // a space no worker has published yet: one that never loads leaves none behind
      expect(await ctx.services.redis.hexists(ctx.services.keys.spaces(), space.id)).toBe(0);
      // its beat held past its TTL while it loads (a build holding its event loop on a busy
      // machine; here SIGSTOP): still waited for
      expect(stack.supervisor.signal('embed', 3, 'SIGSTOP')).toBe(true);
      try {
        await until('its beat to go silent', async () => (await ctx.services.spaces.startingWorkers(space.id)).length === 0, 30, 250);
        await new Promise((r) => setTimeout(r, 2_500)); // a look of the wait, at least
        expect(ended).toBe(false);
      } finally {
        stack.supervisor.signal('embed', 3, 'SIGCONT');
      }
      release();
      const r = await ingest;
      expect(r.timedOut).toBe(false);
      expect(r.code, r.stdout).toBe(0);
      expect(r.stdout).toMatch(/dataset held: 2 images, 2 embedded/);
      expect(await ctx.services.redis.hexists(ctx.services.keys.spaces(), space.id)).toBe(1);
    } finally {
      await held.close();
    }
  }, 240_000);

  it('stopped while it loads (Ctrl-C), is gone at once for whoever waits on its space, not loading until its beat goes silent', async () => {
    const { stack, ctx } = file;
    const held = await heldWeights(stack.dataDir, 'held-weights-stopped');
    try {
      const env = { ...stack.env, ...held.env, TL_METRICS_PORT: String(await freePort()) };
      const space = spaceFromConfig(loadConfig(env));
      // run by hand, as a user would (a supervisor would start it again)
      const { script, execArgv, args } = ROLES.embed;
      const child = spawn(process.execPath, [...execArgv, script, ...args], { env, stdio: 'ignore' });
      const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
      try {
        await until('the worker to say it is loading its model', async () => (await ctx.services.spaces.startingWorkers(space.id)).length > 0, 60);
        child.kill('SIGINT');
        expect(await exited).toBe(0);
        // what a dataset's wait reads: neither loading nor gone silent (its record was held for a
        // TTL, 15 s, and then named silent, still waited for, for a minute)
        expect(await ctx.services.spaces.startingWorkers(space.id)).toEqual([]);
        expect(await ctx.services.spaces.silentWorkers(space.id)).toEqual([]);
      } finally {
        // (a worker left behind by a failure would load the released weights and take jobs)
        child.kill('SIGKILL');
      }
    } finally {
      await held.close();
    }
  }, 120_000);
});

describe('an embed worker that cannot load its model', () => {
  it('is said with why by ingest --embedder and status, and a dataset of its space is not moved to another unasked', async () => {
    const { stack, ctx } = file;
    const env = { ...stack.env, TL_MODEL_WEIGHTS: 'imagenet', TL_MODEL_WEIGHTS_MD5: 'f'.repeat(32), TL_MODEL_WEIGHTS_SOURCE: '/nowhere/w.h5', TL_MODEL_CACHE_DIR: path.join(stack.dataDir, 'no-weights'), TL_METRICS_PORT: String(await freePort()) };
    const space = spaceFromConfig(loadConfig(env));
    // run once, as a user would by hand (a supervisor would start it again and again)
    const { script, execArgv, args } = ROLES.embed;
    const exited = await new Promise<number | null>((resolve) => execFile(process.execPath, [...execArgv, script, ...args], { env }, (err) => resolve(err ? (err as { code?: number }).code ?? null : 0)));
    expect(exited).not.toBe(0);
    const why = /its worker \S+ could not start: could not get the EfficientNet-B0 weights from \/nowhere\/w\.h5/;
    const ingest = await runCli(['ingest', `s3://${photos}/held/`, '-d', 'stranded', '--embedder', space.id], stack.env, 60_000);
    expect(ingest.code).toBe(1);
    expect(ingest.stderr).toContain(`no embedding space ${space.id} is known here (`);
    expect(ingest.stderr).toMatch(why);
    // a dataset left in that space (its worker went away before it could load): status names the
    // space, and ingest does not move the dataset to the space that is published
    await ctx.services.datasets.setSpace('stranded', space.id);
    await ctx.services.datasets.putItem('stranded', `${photos}/held/circle/0.jpg`, { label: 'circle', etag: 'e', space: space.id, state: 'pending' });
    const status = await runCli(['status'], stack.env);
    expect(status.stdout).toMatch(new RegExp(`\n  ${space.id.replace(/\./g, '\\.')}: not published \\(no embed worker of it is live or has published it here; ${why.source}.*\\), backlog 0: start a worker of it, or move its datasets with ingest --embedder ID\n`));
    const again = await runCli(['ingest', `s3://${photos}/held/`, '-d', 'stranded'], stack.env, 60_000);
    expect(again.code).toBe(1);
    expect(again.stderr).toContain(`the dataset is in embedding space ${space.id}, which is not published here (`);
    expect(await ctx.services.datasets.space('stranded')).toBe(space.id);
    await ctx.services.datasets.remove('stranded');
  }, 120_000);
});
