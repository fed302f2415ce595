import { describe, expect, it } from 'vitest';
import type { Queues, SpaceWorkers } from '@transferline/shared';
import { deploymentQueues, unpublishedSpaces } from './status.command.js';

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
