import { CLASSIFY_EARLIER_FILES, classifyDatasetName, DatasetRepository, DEFAULT_STALL_SECONDS, redactUrl, RedisUnreachableError, withDeadline, enqueue, jobIds, parseS3Url, RunDoc, type ClassifyJob, type ClassifyResult, type EmbeddingSpace, type TrainJob } from '@transferline/shared';
import type { Job } from 'bullmq';
import type { CliContext } from '../cli-context.js';
import { watchRounds, WatchEnded } from '../watch-loop.js';
import { latestRun, listModelRuns, parseModelSpec } from './models.command.js';
import { waitForDataset } from '../dataset-wait.js';
import { ingestPrefix } from '../ingest.service.js';
import { indexUnderOtherPrefixes, otherPrefixWords, restoreLostIndex } from '../data-loss.js';
import { hiddenNote, printFailures } from './ingest.command.js';
import { followJob } from '../job-follow.js';
import { printable } from '../terminal.js';
import { randomSpaceNote } from '../report-words.js';
import { namesOneObject, nothingHere } from '../storage-hint.js';
import { jobsInFlight } from '../jobs-in-flight.js';
import { holdModel } from '../model-lease.js';
import { CliExit, EXIT } from '../exit-codes.js';

export interface ClassifyOptions {
  /** `dataset` (its latest run) or `dataset@run` */
  model: string;
  watch: boolean;
  intervalSeconds: number;
  /** for tests: stop watching after this many rounds */
  maxRounds?: number;
  /** seconds without progress (or without a worker) before a wait gives up (default 30) */
  stallSeconds?: number;
}

/** A trained run, found in the bucket: which dataset, which run, and the embedding space it needs. */
export interface ResolvedModel {
  dataset: string;
  runId: string;
  space: EmbeddingSpace;
}

/** A model named that the bucket has no run for: none trained, none the latest, or the run named gone. */
export class ModelNotFoundError extends Error {
  override readonly name = 'ModelNotFoundError';
}

/**
 * Resolves `dataset[@run]` to a run that exists in the bucket, and the embedding space its inputs
 * must come from (recorded with the run; the space must be known to the cluster).
 */
export async function resolveModel(ctx: CliContext, spec: string): Promise<ResolvedModel> {
  const named = parseModelSpec(spec);
  const { dataset } = named;
  const { bucket } = ctx.config.s3;
  const { store, layout, spaces } = ctx.services;
  const latest = named.runId === undefined ? await latestRun(ctx, dataset) : undefined;
  const runId = named.runId ?? latest?.runId;
  if (!runId) {
    // runs, but none the latest: all trained with --no-promote, or the latest deleted with no run to take its place
    const runs = (await listModelRuns(ctx, dataset)).filter((r) => r.dataset === dataset);
    if (runs.length) throw new ModelNotFoundError(`${dataset} has no latest run (its ${runs.length} run${runs.length === 1 ? ' was' : 's were'} trained with --no-promote, or the latest was deleted): name one, -m ${dataset}@${runs[0]!.runId}, or make one the latest: transferline promote ${dataset}@${runs[0]!.runId}`);
    // (a shell looking in another bucket than the workers' is told that first: a run on its way
    // writes its model where this shell does not look)
    throw new ModelNotFoundError(
      await nothingHere(ctx, `no trained model for ${dataset}`, async () => {
        // its first run on its way: that is what to wait for, not a run to start
        const coming = await jobsInFlight<TrainJob>(ctx.queues.train, (j) => j.dataset === dataset && j.promote !== false).catch(() => []);
        const run = coming[0];
        if (run) return ` yet: run ${run.data.runId} is ${run.state === 'active' ? 'training' : 'queued'} (follow it: transferline train --follow ${run.data.runId}), and ${dataset} has its model once it ends`;
        // no dataset of that name either: a typo, most likely; the models there are named
        if (!(await ctx.services.datasets.exists(dataset))) {
          const models = (await store.listFolders(bucket, layout.models()).catch(() => [])).sort();
          // a run id given alone (a trial: -m 20261206-050211-f90c): the dataset it is a run of
          const owner = await datasetOfRun(ctx, models, dataset);
          if (owner) return `, and no dataset is named so: ${dataset} is a run of ${owner}: -m ${owner}@${dataset}`;
          return `, and no dataset is named so${models.length ? ` (models: ${models.join(', ')})` : ': ingest one, then train it'}`;
        }
        return `: run "transferline train --dataset ${dataset}" first`;
      }),
    );
  }
  if (latest?.insteadOf) ctx.out.write(`note: the latest run of ${dataset}, ${latest.insteadOf}, is no longer in the bucket: using its newest run left, ${runId}\n`);
  const run = await store.getDocument(RunDoc, bucket, layout.runFile(dataset, runId, 'run.json'));
  if (!run) {
    // a run of another dataset named with this one (a trial: -m scenes@RUN of two): that one named
    const owner = named.runId === undefined ? undefined : await datasetOfRun(ctx, (await store.listFolders(bucket, layout.models()).catch(() => [])).filter((d) => d !== dataset), runId);
    throw new ModelNotFoundError(await nothingHere(ctx, `no run ${runId} of ${dataset} in s3://${bucket}/${layout.models()}`, owner ? `: ${runId} is a run of ${owner}: -m ${owner}@${runId}` : ' (see "transferline models")'));
  }
  // (with a deadline: serve's client waits for Redis to come back, and a reload hung on it with
  // every later one joined to it: a review)
  const space = await withDeadline(spaces.get(run.embedderId), SPACE_READ_DEADLINE_MS, () => new RedisUnreachableError(redactUrl(ctx.config.redis.url), `it did not answer within ${SPACE_READ_DEADLINE_MS / 1000} s`));
  if (!space) {
    // a shell whose TL_QUEUE_PREFIX is not the workers' sees none of their spaces: the setting to fix
    const others = await indexUnderOtherPrefixes(ctx, run.embedderId).catch(() => []);
    if (others.length) throw new Error(`model ${dataset}@${runId} was trained in embedding space ${run.embedderId}, not published under this prefix: ${otherPrefixWords(ctx, others, 'its index')}`);
    throw new Error(`model ${dataset}@${runId} was trained in embedding space ${run.embedderId}, which no embed worker of this deployment has published: start one with those settings`);
  }
  return { dataset, runId, space };
}

/** Of the model folders `datasets` (the first MODEL_FOLDERS_LOOKED_AT), the one holding a run `runId`, if any: run ids are unique across datasets. */
async function datasetOfRun(ctx: CliContext, datasets: string[], runId: string): Promise<string | undefined> {
  const { store, layout } = ctx.services;
  if (runId.includes('/') || /^\.{0,2}$/.test(runId)) return undefined;
  for (const d of datasets.slice(0, MODEL_FOLDERS_LOOKED_AT)) {
    if (await store.headObject(ctx.config.s3.bucket, layout.runFile(d, runId, 'run.json')).catch(() => undefined)) return d;
  }
  return undefined;
}

/** How long reading a model's embedding space from Redis may take before it is given up. */
const SPACE_READ_DEADLINE_MS = 10_000;

/** How many datasets' model folders a mistaken model name is looked up in (one HEAD each). */
const MODEL_FOLDERS_LOOKED_AT = 200;

/**
 * `transferline classify s3://bucket/prefix --model NAME[@run] [--watch]`: the images go through
 * the same preprocess and embed stages as training, in the model's own embedding space (the cache
 * is reused), then the train worker applies the head and writes JSON Lines to
 * `results/<model>/<run>/<time>.jsonl`. The images are kept in their own dataset
 * (`_classify.<model>`), so they never enter a training dataset. With --watch it keeps picking up
 * new objects every interval, until Ctrl-C.
 */
export async function classifyCommand(ctx: CliContext, url: string, o: ClassifyOptions): Promise<ClassifyResult[]> {
  const { bucket, prefix } = parseS3Url(url);
  const model = await resolveModel(ctx, o.model);
  const workers = await ctx.services.spaces.workersOf(model.space.id);
  const loading = workers ? 0 : (await ctx.services.spaces.startingWorkers(model.space.id)).length;
  const none = loading ? `no embed worker live yet: ${loading === 1 ? 'one is' : `${loading} are`} loading the model` : 'no embed worker live now: new images wait for one';
  ctx.out.write(`model ${model.dataset}@${model.runId}, embedding space ${model.space.id} (${workers ? `${workers} embed worker${workers === 1 ? '' : 's'} live` : none})\n`);
  const random = randomSpaceNote(model.space, 'its labels are');
  if (random) ctx.out.write(`  ${random}\n`);
  const dataset = classifyDatasetName(model.dataset);
  const stallSeconds = o.stallSeconds ?? DEFAULT_STALL_SECONDS;
  const results: ClassifyResult[] = [];
  // A round that found images to classify and did not see them classified (its listing, its wait
  // or its classify job gave up): the next round classifies, new images or none (they are embedded
  // by then, no longer new to the listing), after the job it queued, if it did, has ended.
  let owed = false;
  // images found since the last classify job was queued: a job queued before them (carry's) does not cover them
  let unqueued = false;
  const carry: { jobId?: string } = {};
  // the run held while this command uses it: delete run waits for it (its images are embedded before any classify job is queued)
  const lease = await holdModel(ctx, model.dataset, model.runId, `classify ${printable(url)}${o.watch ? ' --watch' : ''}`);
  try {
    await watchRounds(ctx, { intervalSeconds: o.intervalSeconds, maxRounds: o.watch ? o.maxRounds : 1 }, (round) =>
      classifyRound(round).catch((err: unknown) => {
        // the images classify keeps for the model deleted meanwhile (delete dataset _classify.…), or
        // Redis's data lost: as between two rounds, the next round takes them in again (and labels
        // them all again, as the next classify does after such a deletion)
        if (err instanceof CliExit && err.code === EXIT.vanished) {
          throw new CliExit(EXIT.vanished, `transferline: ${dataset}, where classify keeps the images it labels with ${model.dataset}, was deleted while this round ran (delete dataset, or Redis lost its data)${o.watch && round > 1 ? ': the next round takes them in again' : ': the same command again labels them anew'}`);
        }
        throw err;
      }),
    );
  } finally {
    await lease.release();
  }
  return results;

  async function classifyRound(round: number): Promise<void> {
    // The run deleted since the watch began (a review: every later round failed on no-model, said
    // once, and the images that came meanwhile were never labelled): said, and the watch ends.
    // (a bucket that is not there, an S3 restarted empty, is an outage's error, not a deleted run)
    if (round > 1 && !(await ctx.services.store.headObject(ctx.config.s3.bucket, ctx.services.layout.runFile(model.dataset, model.runId, 'run.json'), { bucketToo: true }))) {
      throw new WatchEnded(EXIT.error, `transferline: model ${model.dataset}@${model.runId} is gone from the bucket since this watch began (deleted?): stopping, as nothing more can be classified with it; new images under ${printable(url)} are not labelled. Watch with another run (see transferline models -d ${model.dataset})`);
    }
    await restoreLostIndex(ctx, model.space.id);
    // (owed from the first page that takes images in: a listing that fails on a later page has enqueued them all the same)
    const counts = await ingestPrefix({ bucket, prefix, dataset, space: model.space, labels: 'none' }, { services: ctx.services, queues: ctx.queues }, (c) => {
      if (c.enqueued + c.fromCache + c.retried > 0) owed = unqueued = true;
    });
    const within = DatasetRepository.source(bucket, prefix);
    const before = await ctx.services.inspector.status(dataset, 0, within);
    // a mistyped prefix must not read as "all done", nor end as a success (as ingest's does not)
    if (round === 1 && counts.listed === 0) {
      const where = `s3://${printable(bucket)}/${printable(prefix)}`;
      // (the URL names one object, a label manifest most likely: classify takes a folder)
      const hint = (await namesOneObject(ctx, url, bucket, prefix)) ? `; ${printable(url)} is an object: classify takes a prefix (a label manifest is for ingest)` : ' (is the prefix right?)';
      const none = `no objects there${counts.hidden ? ' but hidden files' : ''}`;
      if (!o.watch && before.total === 0) throw new CliExit(EXIT.error, `transferline: nothing to classify under ${where}: ${none}${hint}`);
      ctx.out.write(`classify ${where}: ${none}${o.watch ? ' yet' : ''}${hint}\n`);
    }
    // (in the first round: a --watch would say it again every round)
    if (counts.hidden && round === 1) ctx.out.write(`note: ${hiddenNote(counts.hidden)}\n`);
    // Wait for whatever under this prefix is still on its way, not only what this round enqueued:
    // images an earlier round left pending (one cut short by Ctrl-C, another client's) would
    // otherwise be skipped by the classify job, which takes the embedded and the failed. Other
    // prefixes classified with the same model are not this command's to wait for.
    // (its progress counts the images on their way: a later round's few new ones are not shown
    // against all the prefix has had classified)
    const onTheirWay = before.pending + before.orphaned;
    // A round of --watch that found nothing new writes no results file (every round's would list
    // the same images, failures included, as "already done").
    if (counts.enqueued + counts.fromCache + counts.retried + onTheirWay > 0) owed = unqueued = true;
    if (onTheirWay > 0) await waitForDataset(ctx, dataset, { space: model.space.id, stallSeconds, within, ours: { count: onTheirWay, what: 'the images on their way', whole: 'the prefix' } });
    if (round === 1 || owed) {
      // The job an earlier round queued and did not see to its end, to its end first (two at once
      // would label the same images into two files). It labels what was embedded when it ran:
      // images found since it was queued get a job of their own (one that finds them labelled
      // by it after all says nothing).
      const earlier = carry.jobId ? await classifyPrefix(ctx, model, dataset, bucket, prefix, stallSeconds, round === 1, carry, 'carried') : undefined;
      if (earlier) results.push(earlier);
      if (!earlier || unqueued) {
        unqueued = false;
        const r = await classifyPrefix(ctx, model, dataset, bucket, prefix, stallSeconds, round === 1, carry, 'new', { quietIfNothing: earlier !== undefined });
        if (r) results.push(r);
      }
      owed = false;
    }
    if (round === 1 && o.watch) ctx.out.write(`watching s3://${printable(bucket)}/${printable(prefix)}: listing it every ${o.intervalSeconds} s for new images to classify (Ctrl-C to stop)\n`);
  }
}

/**
 * One classify job over the prefix (the items embedded or failed by now): its results file, and
 * what it says; with `pointBack` (a command's first round), also where the labels of the images
 * classified before are (a later round of --watch knows: its earlier rounds printed them).
 */
async function classifyPrefix(
  ctx: CliContext,
  model: ResolvedModel,
  dataset: string,
  bucket: string,
  prefix: string,
  stallSeconds: number,
  pointBack: boolean,
  /** the job of a round not followed to its end (a watch's), set while one is followed */
  carry: { jobId?: string },
  /** 'carried': follow carry's job again, or take its result (undefined when it failed or is gone); 'new': queue one */
  which: 'carried' | 'new',
  /** a result that classified nothing is neither printed nor returned */
  o: { quietIfNothing?: boolean } = {},
): Promise<ClassifyResult | undefined> {
  let job: Job | undefined;
  if (which === 'carried') {
    const queuedBefore = carry.jobId ? await ctx.queues.classify.getJob(carry.jobId) : undefined;
    const state = queuedBefore && (await queuedBefore.getState());
    carry.jobId = undefined;
    if (!queuedBefore || state === 'failed' || state === 'unknown') return undefined;
    job = queuedBefore;
  } else {
    const stamp = new Date().toISOString().replace(/[:.]/g, '-');
    const payload: ClassifyJob = {
      dataset,
      model: model.dataset,
      runId: model.runId,
      embedderId: model.space.id,
      bucket,
      prefix,
      outputKey: ctx.services.layout.classifyResults(model.dataset, model.runId, stamp),
    };
    const id = jobIds.classify(payload);
    await enqueue(ctx.queues.classify, 'classify', [{ id, payload }]);
    job = (await ctx.queues.classify.getJob(id))!;
  }
  carry.jobId = job.id;
  const r = await followJob<ClassifyResult>(ctx, ctx.queues.classify, job, { what: `classifying s3://${bucket}/${prefix}`, role: 'train', stallSeconds });
  carry.jobId = undefined;
  if (o.quietIfNothing && r.classified + r.failed === 0) return undefined;
  const labels = r.byLabel.map((l) => `${printable(l.label)} ${l.count}`).join(', ');
  const { bucket: results } = ctx.config.s3;
  const skippedFailed = r.skippedFailed ?? 0;
  ctx.out.write(
    `classified ${r.classified} image(s) under s3://${printable(bucket)}/${printable(prefix)} with ${model.dataset}@${model.runId}` +
      `${labels ? ` (${labels})` : ''}${r.failed ? `, ${r.failed} failed` : ''}${r.skipped ? `, ${r.skipped} already done${skippedFailed ? ` (${skippedFailed} of them failed)` : ''}` : ''}` +
      (r.classified + r.failed === 0 ? ': nothing new to write\n' : ` → s3://${results}/${r.outputKey}\n`),
  );
  // (a user's trial: nothing said how to read them without another S3 client)
  if (pointBack && r.classified + r.failed > 0) ctx.out.write(`  to read them here: transferline download s3://${results}/${ctx.services.layout.results(model.dataset, model.runId)} ./results\n`);
  // images whose earlier results file was deleted (old results pruned): labelled again, here
  if (r.again) {
    const files = r.filesGone ?? [];
    const shown = files.slice(0, 3).map((k) => `s3://${results}/${k}`).join(', ') + (files.length > 3 ? `, and ${files.length - 3} more` : '');
    ctx.out.write(`  ${r.again} of them had been labelled in results file(s) deleted since (${shown}): labelled again in this one\n`);
  }
  // where the labels of the images done before are (a second run of the same command, say)
  const earlier = r.earlierFiles ?? [];
  if (pointBack && earlier.length) {
    const more = earlier.length === CLASSIFY_EARLIER_FILES ? ' (the newest; older files in the same folder)' : '';
    // (a failed image's line there says why it has no label)
    const which = skippedFailed ? ` (${r.skipped - skippedFailed} labelled, ${skippedFailed} failed)` : '';
    ctx.out.write(`  the ${r.skipped} already done${which} are ${skippedFailed ? 'in' : 'labelled in'}${more}: ${earlier.map((k) => `s3://${results}/${k}`).join(', ')}\n`);
  }
  // which images failed, and why (the results file has them too), those done before included in
  // a command's first round (they are still failed images under the prefix; a later round of
  // --watch said them already)
  if (r.failed || (pointBack && skippedFailed)) printFailures(ctx, await ctx.services.inspector.status(dataset, 20, DatasetRepository.source(bucket, prefix)));
  return r;
}
