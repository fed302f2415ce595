import * as tf from '@tensorflow/tfjs';
import { BucketNotFoundError, bucketLayout, PermanentError, type JobContext, type Services } from '@transferline/shared';
import { describe, expect, it } from 'vitest';
import { classifyImages, type ClassifyDeps } from './classify-images.job.js';

const job = { dataset: '_classify.shapes', model: 'shapes', runId: 'r1', embedderId: 'space-a', bucket: 'photos', prefix: 'incoming/', outputKey: 'results/shapes/r1/t.jsonl' };
const ctx = { progress: async () => {}, signal: new AbortController().signal } as unknown as JobContext;

describe('a classify job', () => {
  it("fails for good, naming the setting, when the train worker's own bucket does not exist", async () => {
    const store = { getDocument: async (_s: unknown, bucket: string) => Promise.reject(new BucketNotFoundError(bucket, 'http://127.0.0.1:9000')) };
    const deps = { tf, bucket: 'tl-models', services: { store, layout: bucketLayout('') } as unknown as ClassifyDeps['services'] } satisfies ClassifyDeps;
    const err = await classifyImages(job, deps, ctx).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PermanentError);
    expect(err).toMatchObject({ reason: 'no-model', message: "bucket tl-models does not exist at http://127.0.0.1:9000: it is the train worker's TL_BUCKET, where the models are" });
  });

  it('lets any other error of S3 through, to be tried again', async () => {
    const store = { getDocument: async () => Promise.reject(Object.assign(new Error('socket hang up'), { name: 'TimeoutError' })) };
    const deps = { tf, bucket: 'tl-models', services: { store, layout: bucketLayout('') } as unknown as Services } satisfies ClassifyDeps;
    await expect(classifyImages(job, deps, ctx)).rejects.toThrow('socket hang up');
  });
});
