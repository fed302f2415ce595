import { describe, expect, it } from 'vitest';
import { consoleDeps } from './console-data.js';

describe("the console's note on the preprocess queue's settled failures", () => {
  it('is read once while the failed count stays, and a read that failed is read again on the next page (not kept as none)', async () => {
    const job = { data: { dataset: 'pets', bucket: 'photos', key: 'pets/cat/1.jpg', etag: 'old', label: 'cat', embedderId: 'space', resize: 'squash' } };
    let looks = 0;
    let redisDown = true;
    const services = {
      inspector: { status: async () => ({}) },
      datasets: {
        exists: async () => {
          looks++;
          if (redisDown) throw new Error('Redis is down');
          return true;
        },
        // the object was replaced since: the record has another etag
        getItems: async () => [{ label: 'cat', etag: 'new', space: 'space', state: 'cached' }],
      },
    };
    const queues = { preprocess: { getFailed: async () => [job] }, train: { getFailed: async () => [] } };
    const deps = consoleDeps({ services, queues, config: {} } as never, 1_000);
    await expect(deps.settledFailures(1)).rejects.toThrow('Redis is down');
    redisDown = false;
    expect(await deps.settledFailures(1)).toBe(1);
    expect(await deps.settledFailures(1)).toBe(1);
    expect(looks).toBe(2);
  });
});
