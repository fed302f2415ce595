import { describe, expect, it } from 'vitest';
import type { Queues, SpaceWorkers } from '@transferline/shared';
import { deploymentQueues, settledWords, unpublishedSpaces } from './status.command.js';

describe('the queues status and the console list', () => {
  it("include the embed queues of spaces datasets are in that no worker has published, after the published ones, once each", async () => {
    const listed = [{ space: { id: 'live' }, workers: [], starting: [] }] as unknown as SpaceWorkers[];
    const of: Record<string, string | undefined> = { a: 'live', b: 'stranded', c: 'stranded', d: undefined, e: 'another' };
    const unpublished = await unpublishedSpaces({ space: async (d: string) => of[d] }, Object.keys(of), listed);
    expect(unpublished).toEqual(['another', 'stranded']);
    const queue = (name: string) => ({ name }) as never;
    const queues = { preprocess: queue('preprocess'), embed: (id: string) => queue(`embed.${id}`), train: queue('train'), classify: queue('classify') } as unknown as Queues;
    expect(deploymentQueues(queues, listed, unpublished).map((q) => q.name)).toEqual(['preprocess', 'embed.live', 'embed.another', 'embed.stranded', 'train', 'classify']);
  });
});

describe("status's line on the preprocess queue's failed jobs that need nothing more", () => {
  it('says all, some, or some of the newest it read, in the right number', () => {
    expect(settledWords({ settled: 1, of: 1 })).toBe(
      "its failed job needs nothing more: its object was replaced, embedded or moved to another embedding space since, or left its dataset (a dataset's failures left to act on are listed with it)",
    );
    expect(settledWords({ settled: 3, of: 3 })).toMatch(/^its 3 failed jobs need nothing more: their objects were replaced, embedded or moved to another embedding space since, or left their datasets/);
    expect(settledWords({ settled: 1, of: 9 })).toMatch(/^1 of its 9 failed jobs needs nothing more: its object was/);
    expect(settledWords({ settled: 2, of: 9 })).toMatch(/^2 of its 9 failed jobs need nothing more: their objects were/);
    // as many failed jobs as status reads (there may be more): of the newest it read, even when all of those are settled
    expect(settledWords({ settled: 1000, of: 1000 })).toMatch(/^1000 of its newest 1000 failed jobs need nothing more/);
    expect(settledWords({ settled: 3, of: 1000 })).toMatch(/^3 of its newest 1000 failed jobs need nothing more/);
  });
});
