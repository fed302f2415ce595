import { spawn } from 'node:child_process';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRedis, DatasetRepository, loadConfig, ObjectStore, redisKeys, SpaceRegistry, spaceFromConfig, type Redis } from '../packages/shared/src/index.js';
import { guardLeaks } from './support/leak-guard.js';
import { repoRoot, runCli, startTestStack, until, type TestStack } from './support/stack.js';

/**
 * Choosing a space by id (`--embedder ID`) against the registry the embed workers' heartbeats
 * keep in Redis: a space lost with Redis's data is waited for until its worker publishes it
 * again; a space no worker publishes (a typo) is refused without that wait once every live
 * worker has beaten since the registry began. Real Redis.
 */

guardLeaks();

let stack: TestStack;
let redis: Redis;
const stops: (() => Promise<void>)[] = [];

beforeAll(async () => {
  stack = await startTestStack({}, { preprocess: 0, embed: 0, train: 0 });
  redis = createRedis(stack.config.redis.url, 'oneshot');
}, 120_000);

afterAll(async () => {
  for (const stop of stops) await stop();
  redis?.disconnect();
  await stack?.destroy();
});

const space = spaceFromConfig(loadConfig({ TL_MODEL_WEIGHTS: 'random', TL_MODEL_SEED: '7' }));
/** a registry whose workers beat every 500 ms (TTL 1.5 s): a requested space is waited for 1.5 s at most */
const TTL_MS = 1_500;

/** A registry under its own prefix, with one worker of `space` beating in it. */
async function registryWithWorker(name: string): Promise<{ registry: SpaceRegistry; keys: ReturnType<typeof redisKeys> }> {
  const keys = redisKeys(`${name}-${Date.now()}`);
  const registry = new SpaceRegistry(redis, keys, TTL_MS);
  const beat = await registry.startHeartbeat(space, 'test', () => undefined);
  stops.push(beat.stop);
  return { registry, keys };
}

describe('SpaceRegistry.resolve', () => {
  it('refuses a space no worker publishes without waiting once the registry is a beat old, and names the known ones', async () => {
    const { registry } = await registryWithWorker('typo');
    // A registry younger than a beat may still be filling (Redis lost its data just now): waited for.
    await expect(registry.resolve('efficientnet-b0.typo.squash224')).rejects.toThrow(/^no embedding space efficientnet-b0\.typo\.squash224 is known here \(none was published within \d+ s\)/);
    // Every live worker has beaten since: a space still missing is not coming.
    await new Promise((r) => setTimeout(r, TTL_MS + 100));
    const refused = registry.resolve('efficientnet-b0.typo.squash224');
    await expect(refused).rejects.toThrow(`no embedding space efficientnet-b0.typo.squash224 is known here (no embed worker has published it); known: ${space.id} (1 worker)`);
    // the space that is published is chosen at once
    expect((await registry.resolve(space.id)).space).toEqual(space);
  });

  it('waits for a space lost from the registry until its worker publishes it again', async () => {
    const { registry, keys } = await registryWithWorker('lost');
    await new Promise((r) => setTimeout(r, TTL_MS + 100));
    // Redis lost the published spaces alone (an eviction, a delete), then all of the registry (a restart without persistence)
    for (const lost of [[keys.spaces()], [keys.spaces(), keys.embedWorkers(), keys.embedWorkerInfo()]]) {
      await redis.del(...lost);
      const r = await registry.resolve(space.id);
      expect(r.space).toEqual(space);
      expect(r.workers).toBe(1);
      expect((await registry.list()).map((s) => s.space)).toEqual([space]);
    }
    // the field that says when the registry began is not a space
    await expect(registry.resolve('@since')).rejects.toThrow(/no embedding space @since is known here/);
    expect(await registry.get('@since')).toBeUndefined();
  });

  it("keeps a dataset in its space, whoever else's workers are live, and moves it only when told", async () => {
    // the stack's own registry (its prefix): workers of two spaces beat in it
    const keys = redisKeys(stack.config.redis.prefix);
    const registry = new SpaceRegistry(redis, keys, TTL_MS);
    const crop = spaceFromConfig(loadConfig({ TL_MODEL_WEIGHTS: 'random', TL_MODEL_SEED: '7', TL_RESIZE: 'crop' }));
    const squashBeat = await registry.startHeartbeat(space, 'test', () => undefined);
    stops.push(squashBeat.stop);
    // the other space's worker: another process (a worker's id is its process's)
    const shared = pathToFileURL(path.join(repoRoot, 'packages', 'shared', 'dist', 'index.js')).href;
    const other = spawn(process.execPath, ['--input-type=module', '-e', `
      const { createRedis, redisKeys, SpaceRegistry } = await import(${JSON.stringify(shared)});
      const registry = new SpaceRegistry(createRedis(${JSON.stringify(stack.config.redis.url)}, 'worker'), redisKeys(${JSON.stringify(stack.config.redis.prefix)}), ${TTL_MS});
      const beat = await registry.startHeartbeat(${JSON.stringify(crop)}, 'test', () => undefined);
      process.on('SIGTERM', () => beat.stop().then(() => process.exit(0)));
      setInterval(() => {}, 1000);
    `], { stdio: 'ignore' });
    stops.push(async () => {
      other.kill('SIGKILL');
      if (other.exitCode === null && other.signalCode === null) await new Promise((r) => other.once('exit', r));
    });
    await until('the other space to be published', async () => (await registry.list()).filter((x) => x.workers.length > 0).length === 2, 30);
    await expect(registry.resolve()).rejects.toThrow(`embed workers of 2 embedding spaces are live: `);
    const chosen = await registry.resolve(undefined, undefined, crop.id);
    expect(chosen.space).toEqual(crop);
    expect(chosen.message).toBe(`embedding space ${crop.id} (the dataset's space; embed workers of 2 spaces are live; 1 embed worker: test)`);
    // a space no worker has published (its worker never went live): not moved to another unasked
    await expect(registry.resolve(undefined, undefined, 'efficientnet-b0.gone.squash224')).rejects.toThrow(
      /^the dataset is in embedding space efficientnet-b0\.gone\.squash224, which is not published here \(no embed worker of it is live or has published it here\): start a worker of it \(the images in its queue wait for one\), or move the dataset with --embedder ID \(its images are embedded again there\); known: /,
    );
    // what ingest says of a dataset in one of them, and of a new dataset
    const store = new ObjectStore(stack.config.s3);
    await store.ensureBucket('spaces');
    await store.putObject('spaces', 'in/cat/note.txt', 'not an image');
    await new DatasetRepository(redis, keys).setSpace('cropped', crop.id);
    const again = await runCli(['ingest', 's3://spaces/in/', '-d', 'cropped', '--no-wait'], stack.env);
    expect(again.stdout).toContain(`embedding space ${crop.id} (the dataset's space; embed workers of 2 spaces are live`);
    const fresh = await runCli(['ingest', 's3://spaces/in/', '-d', 'fresh', '--no-wait'], stack.env);
    expect({ code: fresh.code, stderr: fresh.stderr }).toEqual({ code: 1, stderr: expect.stringContaining('embed workers of 2 embedding spaces are live') });

    // its own space's worker stopped (restarting, say), another's live: not moved there unasked
    other.kill('SIGTERM');
    await until("the dataset's space to have no live worker", async () => (await registry.list()).find((x) => x.space.id === crop.id)?.workers.length === 0, 30);
    const refusal = `the dataset is in embedding space ${crop.id}, and no embed worker of it is live now while those of ${space.id} (1 worker) are: start a worker of ${crop.id} (or ingest with --embedder ${crop.id}: the images wait in its queue), or move the dataset with --embedder ID (its images are embedded again there)`;
    await expect(registry.resolve(undefined, undefined, crop.id)).rejects.toThrow(refusal);
    const unmoved = await runCli(['ingest', 's3://spaces/in/', '-d', 'cropped', '--no-wait'], stack.env);
    expect({ code: unmoved.code, stderr: unmoved.stderr }).toEqual({ code: 1, stderr: `transferline: ${refusal}\n` });
    expect(await new DatasetRepository(redis, keys).space('cropped')).toBe(crop.id);
    // no worker live at all: it stays in its own space, where its images wait
    await squashBeat.stop();
    await until('no space to have a live worker', async () => (await registry.list()).every((x) => x.workers.length === 0), 30);
    expect((await registry.resolve(undefined, undefined, crop.id)).message).toBe(`embedding space ${crop.id} (the dataset's space); no embed worker is live for it now: images wait in its queue until one starts`);
    store.close();
  });
});

describe('a worker loading its model', () => {
  it('is there for the space and its waits, live only once ready, unseen by readers of the live set, and gone when it stops or goes silent', async () => {
    const keys = redisKeys(`loading-${Date.now()}`);
    const registry = new SpaceRegistry(redis, keys, TTL_MS);
    const beat = registry.announceStarting(space, () => undefined);
    stops.push(beat.stop);
    await until('its first beats', async () => (await registry.startingWorkers(space.id)).length === 1, 5, 20);
    expect(await registry.liveWorkers()).toEqual([]);
    expect(await registry.workersOf(space.id)).toBe(0);
    // the set that older readers count live workers from does not hold it; nor is the space published
    expect(await redis.zrange(keys.embedWorkers(), 0, -1)).toEqual([]);
    expect(await redis.hexists(keys.spaces(), space.id)).toBe(0);
    // its space is known from it: chosen by id, listed with it loading
    expect(await registry.get(space.id)).toEqual(space);
    expect((await registry.resolve(space.id)).message).toBe(`embedding space ${space.id} (chosen with --embedder); no embed worker is live for it yet: 1 worker loading the model, images wait in its queue until then`);
    const [listed] = await registry.list();
    expect({ id: listed!.space.id, workers: listed!.workers.length, starting: listed!.starting.length }).toEqual({ id: space.id, workers: 0, starting: 1 });
    // timed by Redis's clock from its first beat
    const startingMs = (await registry.startingWorkers(space.id))[0]!.startingMs;
    expect(startingMs).toBeGreaterThanOrEqual(0);
    expect(startingMs).toBeLessThan(5_000);

    await beat.ready('test');
    expect(await registry.startingWorkers(space.id)).toEqual([]);
    expect(await registry.workersOf(space.id)).toBe(1);
    expect(await redis.hexists(keys.spaces(), space.id)).toBe(1);
    await beat.stop();
    expect(await registry.workersOf(space.id)).toBe(0);
    expect(await registry.silentWorkers(space.id)).toEqual([]);

    // one killed while loading: its entries stay, silent; it is named as loading, and its space was never published
    const [seconds] = await redis.time();
    const ghost = redisKeys(`ghost-${Date.now()}`);
    const ghosts = new SpaceRegistry(redis, ghost, TTL_MS);
    await redis.zadd(ghost.embedWorkersStarting(), Number(seconds) * 1000 - 2 * TTL_MS, 'gone-worker');
    await redis.hset(ghost.embedWorkerInfo(), 'gone-worker', JSON.stringify({ workerId: 'gone-worker', space: space.id, backend: 'loading', host: 'h', pid: 1, startedAt: new Date().toISOString(), starting: space }));
    expect(await ghosts.startingWorkers(space.id)).toEqual([]);
    const [silent] = await ghosts.silentWorkers(space.id);
    expect(silent?.worker.workerId).toBe('gone-worker');
    expect(silent?.worker.starting).toEqual(space);
    expect(await ghosts.list()).toEqual([]);
  });

  it('that gives up is said with why, by a dataset of its space and by --embedder, and leaves no space behind', async () => {
    const keys = redisKeys(`failed-${Date.now()}`);
    const registry = new SpaceRegistry(redis, keys, TTL_MS);
    const beat = registry.announceStarting(space, () => undefined);
    await beat.failed('could not get the EfficientNet-B0 weights from /nowhere/w.h5: ENOENT');
    expect(await registry.startingWorkers(space.id)).toEqual([]);
    const [silent] = await registry.silentWorkers(space.id);
    expect(silent?.worker.failed).toBe('could not get the EfficientNet-B0 weights from /nowhere/w.h5: ENOENT');
    expect(await registry.list()).toEqual([]);
    const why = `its worker ${beat.workerId} could not start: could not get the EfficientNet-B0 weights from /nowhere/w.h5: ENOENT`;
    await expect(registry.resolve(space.id)).rejects.toThrow(`no embedding space ${space.id} is known here (${why})`);
    await expect(registry.resolve(undefined, undefined, space.id)).rejects.toThrow(`the dataset is in embedding space ${space.id}, which is not published here (${why})`);

    // Long after the registry stopped naming the silent worker (four TTLs: a minute by default,
    // where Kubernetes starts a crashing pod again up to 5 minutes later), why is still said,
    // with when
    await until('the silent worker to drop out', async () => (await registry.silentWorkers(space.id)).length === 0, 4 * TTL_MS / 1000 + 5, 250);
    const later = await registry.failureOf(space.id);
    expect(later).toMatch(new RegExp(`^its worker ${beat.workerId} could not start, \\d+ s ago: could not get the EfficientNet-B0 weights from /nowhere/w\\.h5: ENOENT$`));
    await expect(registry.resolve(space.id)).rejects.toThrow(new RegExp(`^no embedding space ${space.id.replace(/\./g, '\\.')} is known here \\(its worker ${beat.workerId} could not start, \\d+ s ago: could not get`));
    expect((await registry.recentFailures()).map((f) => f.worker.workerId)).toEqual([beat.workerId]);
    // until a worker of the space goes live
    const live = await registry.startHeartbeat(space, 'onnx', () => undefined);
    stops.push(() => live.stop());
    expect(await registry.failureOf(space.id)).toBeUndefined();
    expect(await registry.recentFailures()).toEqual([]);
  });
});
