import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRedis, loadConfig, redisKeys, SpaceRegistry, spaceFromConfig, type Redis } from '../packages/shared/src/index.js';
import { guardLeaks } from './support/leak-guard.js';
import { startTestStack, type TestStack } from './support/stack.js';

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
});
