import { describe, expect, it } from 'vitest';
import { renderSample } from '../apps/producer/src/demo/sample-images.js';
import { freePort } from '../apps/producer/src/embedded/redis.server.js';
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
