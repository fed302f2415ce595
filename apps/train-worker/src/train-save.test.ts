import { describe, expect, it } from 'vitest';
import { DeferJob, PermanentError, type JobContext } from '@transferline/shared';
import { createLogger } from '@transferline/shared/service-runtime';
import { saveOnceS3Answers, type EpochProgress } from './train-head.job.js';

/**
 * The save of a trained run across an S3 outage, with a stand-in for the worker's S3 guard (its
 * probing of a real S3 is the fault suite's: test/faults.test.ts). What is checked here is what
 * the wait does when something else happens meanwhile.
 */
describe("a trained run's save while S3 is down", () => {
  const log = createLogger('train', 'silent');
  const down = { up: false, reason: 'S3 at http://s3:9000 is unreachable', isOutage: async () => true };
  const saving: EpochProgress = { phase: 'saving', epoch: 5, epochs: 5 };
  const setup = (o: { stopping?: () => boolean; cancelAfter?: number } = {}) => {
    const said: EpochProgress[] = [];
    let saves = 0;
    let checks = 0;
    const ctx: JobContext = { log, attempt: 1, stopping: o.stopping ?? (() => false), progress: async (p) => void said.push(p as EpochProgress) };
    const save = async () => {
      saves++;
      throw new Error('socket hang up');
    };
    const cancelled = async (when: string) => {
      if (o.cancelAfter !== undefined && ++checks > o.cancelAfter) throw new PermanentError('cancelled', `run r was cancelled (transferline train --cancel) ${when}`);
    };
    const putBack = async (why: string): Promise<never> => {
      said.push({ phase: 'put-back', epoch: 5, epochs: 5, why });
      throw new DeferJob(0, why);
    };
    return { said, saves: () => saves, run: () => saveOnceS3Answers(save, down, ctx, { runId: 'r', saving, putBack, cancelled }) };
  };

  it('ends the run as cancelled, writing nothing more, when train --cancel comes meanwhile', async () => {
    const t = setup({ cancelAfter: 1 });
    await expect(t.run()).rejects.toThrow(/was cancelled \(transferline train --cancel\) while its save waited for S3/);
    expect(t.saves()).toBe(1);
    expect(t.said[0]).toMatchObject({ phase: 'saving', why: expect.stringMatching(/^S3 at http:\/\/s3:9000 is unreachable: the trained run waits in memory/) });
  });

  it('puts the run back at once, without another save, when its worker is asked to stop meanwhile', async () => {
    let stop = false;
    const t = setup({ stopping: () => stop });
    const ran = t.run();
    await new Promise((r) => setTimeout(r, 700));
    stop = true;
    await expect(ran).rejects.toBeInstanceOf(DeferJob);
    expect(t.saves()).toBe(1);
    expect(t.said.at(-1)).toMatchObject({ phase: 'put-back', why: 'S3 at http://s3:9000 is unreachable while the trained run was being saved, and its train worker is stopping' });
  });

  it('tries a save that failed on an S3 that answers (a 500) again before it fails the run, which would train it again from its first epoch (a review)', async () => {
    const ctx: JobContext = { log, attempt: 1, stopping: () => false, progress: async () => {} };
    const answers = { up: true, reason: '', isOutage: async () => false };
    const putBack = async (why: string): Promise<never> => {
      throw new DeferJob(0, why);
    };
    const s3Error = (status: number, message: string) => Object.assign(new Error(message), { $metadata: { httpStatusCode: status } });
    const failing = (times: number, status = 500) => {
      let saves = 0;
      return {
        saves: () => saves,
        save: async () => {
          if (++saves <= times) throw s3Error(status, status === 500 ? 'We encountered an internal error. Please try again.' : 'Access Denied');
        },
      };
    };
    const twice = failing(2);
    await saveOnceS3Answers(twice.save, answers, ctx, { runId: 'r', saving, putBack, cancelled: async () => {}, retryDelaysMs: [1, 1, 1] });
    expect(twice.saves()).toBe(3);
    const always = failing(Infinity);
    await expect(saveOnceS3Answers(always.save, answers, ctx, { runId: 'r', saving, putBack, cancelled: async () => {}, retryDelaysMs: [1, 1, 1] })).rejects.toThrow('internal error');
    expect(always.saves()).toBe(4);
    // a refusal does not pass by asking again: thrown at once
    const refused = failing(Infinity, 403);
    await expect(saveOnceS3Answers(refused.save, answers, ctx, { runId: 'r', saving, putBack, cancelled: async () => {}, retryDelaysMs: [1, 1, 1] })).rejects.toThrow('Access Denied');
    expect(refused.saves()).toBe(1);
  });

  it('ends a run cancelled while its failed save waits to be tried again, and puts back one whose worker is asked to stop then (a review: both waited the delay out, and the cancelled run was saved)', async () => {
    const answers = { up: true, reason: '', isOutage: async () => false };
    const once = () => {
      let saves = 0;
      const save = async () => {
        if (++saves === 1) throw Object.assign(new Error('internal'), { $metadata: { httpStatusCode: 500 } });
      };
      return { saves: () => saves, save };
    };
    let cancel = false;
    const cancelled = async (when: string) => {
      if (cancel) throw new PermanentError('cancelled', `run r was cancelled ${when}`);
    };
    const putBack = async (why: string): Promise<never> => {
      throw new DeferJob(0, why);
    };
    const quiet: JobContext = { log, attempt: 1, stopping: () => false, progress: async () => {} };
    const a = once();
    setTimeout(() => (cancel = true), 50);
    await expect(saveOnceS3Answers(a.save, answers, quiet, { runId: 'r', saving, putBack, cancelled, retryDelaysMs: [2_000] })).rejects.toThrow(/was cancelled while its save waited to be tried again/);
    expect(a.saves()).toBe(1);
    cancel = false;
    let stop = false;
    const stopping: JobContext = { ...quiet, stopping: () => stop };
    const b = once();
    setTimeout(() => (stop = true), 50);
    const started = performance.now();
    await expect(saveOnceS3Answers(b.save, answers, stopping, { runId: 'r', saving, putBack, cancelled, retryDelaysMs: [2_000] })).rejects.toBeInstanceOf(DeferJob);
    expect(performance.now() - started).toBeLessThan(1_000);
    expect(b.saves()).toBe(1);
  });
});
