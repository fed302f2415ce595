import { createInterface } from 'node:readline/promises';
import type { Job, Queue } from 'bullmq';
import pMap from 'p-map';
import { classifyDatasetName, deploymentOf, isClassifyDataset, jobIds, LatestDoc, latestPointer } from '@transferline/shared';
import { datasetUnderOtherPrefixes, forgetLost, otherPrefixWords } from '../data-loss.js';
import type { CliContext } from '../cli-context.js';
import { globLiteral, redisKeysMatching } from '../redis-scan.js';
import { CliExit, EXIT } from '../exit-codes.js';
import { nothingHere, storageHint } from '../storage-hint.js';
import { jobsInFlight } from '../jobs-in-flight.js';
import { LEASE_SECONDS, modelUsers } from '../model-lease.js';
import { listModelRuns, newestPromotable, parseRunSpec } from './models.command.js';
import { printable } from '../terminal.js';

/**
 * `transferline delete run|dataset`: what a deployment that trains for months needs to give back
 * Redis memory and bucket space. Each command first works out what it would delete and prints
 * it; it deletes only with --yes (or a "y" on a terminal). Never deleted: the images under the
 * user's own prefixes, and the embedding cache (shared by content between datasets: deleting a
 * dataset and ingesting it again embeds nothing again).
 */
export interface DeleteOptions {
  /** delete without asking */
  yes?: boolean;
  /** print what would be deleted, delete nothing */
  dryRun?: boolean;
  /** the classify results (and, for a dataset, the label reviews) written with it, too */
  results?: boolean;
}

/** Where a deletion's plan is asked about; a test or a script passes none (no terminal). */
export interface Confirm {
  (question: string): Promise<boolean>;
}

/** On a terminal: asks, and only "y" or "yes" deletes. Elsewhere undefined: --yes is required. */
export function terminalConfirm(): Confirm | undefined {
  if (!process.stdin.isTTY || !process.stdout.isTTY) return undefined;
  return async (question) => {
    const rl = createInterface({ input: process.stdin, output: process.stdout });
    // Ctrl-C or Ctrl-D ends the question with an AbortError, on every Node this runs on
    const abort = new AbortController();
    rl.on('SIGINT', () => abort.abort());
    rl.on('close', () => abort.abort());
    try {
      return /^y(es)?$/i.test((await rl.question(question, { signal: abort.signal })).trim());
    } finally {
      rl.close();
    }
  };
}

interface Plan {
  /** what goes, one line each, as printed before anything is deleted */
  lines: string[];
  /** what stays that a user might think goes, printed too */
  kept: string[];
  run: () => Promise<void>;
}

/** Refuses while a train run of `dataset` (or the run `runId`) is queued or training: it would write a model into what is deleted. */
async function refuseWhileTraining(ctx: CliContext, dataset: string, runId?: string): Promise<void> {
  const runs = await jobsInFlight<{ dataset: string; runId: string }>(ctx.queues.train, (d) => d.dataset === dataset && (runId === undefined || d.runId === runId));
  if (runs.length === 0) return;
  const lines = runs.map((r) => `  run ${r.data.runId} is ${r.state === 'active' ? 'training' : 'queued'}: transferline train --cancel ${r.data.runId}`);
  const what = runId === undefined ? `${runs.length === 1 ? 'a run' : `${runs.length} runs`} of ${dataset} ${runs.length === 1 ? 'trains' : 'train'} on what is deleted` : `run ${runId} would write its model back`;
  throw new CliExit(EXIT.error, `transferline: nothing deleted: ${what}; cancel ${runs.length === 1 ? 'it' : 'them'} first (or wait for ${runs.length === 1 ? 'it' : 'them'} to end):\n${lines.join('\n')}`);
}

/** Refuses while classify jobs that write what is deleted are queued or running. */
async function refuseWhileClassifying(ctx: CliContext, what: string, match: (d: { dataset: string; model: string; runId: string }) => boolean): Promise<void> {
  const jobs = await jobsInFlight(ctx.queues.classify, match);
  if (jobs.length === 0) return;
  throw new CliExit(EXIT.error, `transferline: nothing deleted: ${jobs.length} classify round${jobs.length === 1 ? '' : 's'} ${what} ${jobs.length === 1 ? 'is' : 'are'} still queued or running; wait for ${jobs.length === 1 ? 'it' : 'them'} to end (transferline status) and delete again`);
}

/**
 * Refuses while a command uses a run of `dataset` (`runId`'s alone when given): a classify embeds
 * its images before its classify job is queued (a trial deleted the run meanwhile, and the
 * classify failed at its end, `no-model`).
 */
async function refuseWhileUsed(ctx: CliContext, dataset: string, runId?: string): Promise<void> {
  const users = await modelUsers(ctx, dataset, runId);
  if (users.length === 0) return;
  const lines = users.map((u) => `  ${u.what} with ${dataset}@${u.runId} (${u.holder}, since ${u.since})`);
  throw new CliExit(
    EXIT.error,
    `transferline: nothing deleted: ${users.length === 1 ? 'a command uses' : `${users.length} commands use`} ${runId === undefined ? `runs of ${dataset}` : `${dataset}@${runId}`}; let ${users.length === 1 ? 'it' : 'them'} end (or stop ${users.length === 1 ? 'it' : 'them'}: Ctrl-C) and delete again (a command killed without its end lets go within ${LEASE_SECONDS} s):\n${lines.join('\n')}`,
  );
}

/** Every object under a folder of the bucket. */
async function objectsUnder(ctx: CliContext, folder: string): Promise<string[]> {
  const keys: string[] = [];
  for await (const o of ctx.services.store.listObjects(ctx.config.s3.bucket, folder)) keys.push(o.key);
  return keys;
}

async function deleteObjects(ctx: CliContext, keys: string[]): Promise<void> {
  const { bucket } = ctx.config.s3;
  // one at a time would take minutes for a dataset with thousands of results files on a remote S3
  await pMap(keys, (k) => ctx.services.store.deleteObject(bucket, k), { concurrency: 16 });
}


const files = (n: number) => `${n} file${n === 1 ? '' : 's'}`;
const images = (n: number) => `${n} image${n === 1 ? '' : 's'}`;

/** Prints the plan, asks (or requires --yes), then carries it out. */
async function carryOut(ctx: CliContext, plan: Plan, o: DeleteOptions, confirm: Confirm | undefined, done: string): Promise<boolean> {
  const w = (line: string) => ctx.out.write(`${line}\n`);
  // which deployment the plan is of, as status says it first: a shell that is not on one is
  // refused before this, but a user deleting should see where, before saying yes
  w(`deployment: ${printable(deploymentOf(ctx.config).words)}`);
  w(o.dryRun || !o.yes ? 'would delete:' : 'deleting:');
  for (const l of plan.lines) w(`  ${l}`);
  if (plan.kept.length) {
    w('kept:');
    for (const l of plan.kept) w(`  ${l}`);
  }
  if (o.dryRun) {
    w('nothing deleted (--dry-run)');
    return false;
  }
  if (!o.yes) {
    if (!confirm) throw new CliExit(EXIT.usage, 'transferline: nothing deleted: add --yes to delete (on a terminal it asks instead)');
    const yes = await confirm('delete? [y/N] ').catch((err: Error) => {
      // Ctrl-C (or Ctrl-D) at the question: as Ctrl-C anywhere else
      if (err.name === 'AbortError') throw new CliExit(EXIT.interrupted, '\nnothing deleted');
      throw err;
    });
    if (!yes) {
      w('nothing deleted');
      return false;
    }
  }
  await plan.run();
  w(done);
  return true;
}

/**
 * `transferline delete run DATASET@RUN`: a trained run's files (model, weights, labels, report),
 * classify's record of the images it classified, its finished train job, and with --results the
 * results files it wrote. If it was the dataset's latest run, the newest run left that was not
 * trained with --no-promote becomes the latest (with none, the dataset is left with no latest
 * run). Refused while the run, or a classify round with it, is queued or running.
 */
export async function deleteRunCommand(ctx: CliContext, spec: string, o: DeleteOptions, confirm?: Confirm): Promise<boolean> {
  const { dataset, runId } = parseRunSpec('delete run', spec);
  const { bucket } = ctx.config.s3;
  const { store, layout, redis, keys } = ctx.services;
  const refuse = async () => {
    await refuseWhileTraining(ctx, dataset, runId);
    await refuseWhileClassifying(ctx, `with ${dataset}@${runId}`, (d) => d.model === dataset && d.runId === runId);
    await refuseWhileUsed(ctx, dataset, runId);
  };
  await refuse();
  // A shell whose TL_QUEUE_PREFIX is not the workers' would delete the files and leave the
  // records under theirs: the setting is named, nothing deleted.
  if (!(await ctx.services.datasets.exists(dataset))) {
    const others = await datasetUnderOtherPrefixes(ctx, dataset).catch(() => []);
    if (others.length) throw new CliExit(EXIT.error, `transferline: no dataset named ${dataset} here: ${otherPrefixWords(ctx, others, 'it')}: nothing deleted`);
  }

  const runFiles = await objectsUnder(ctx, layout.run(dataset, runId));
  const classified = keys.classified(dataset, runId);
  const labelled = await redis.hlen(classified);
  const results = await objectsUnder(ctx, layout.results(dataset, runId));
  const latestKey = layout.latest(dataset);
  const wasLatest = (await store.getDocument(LatestDoc, bucket, latestKey))?.runId === runId;
  if (runFiles.length === 0 && labelled === 0 && !wasLatest && (!o.results || results.length === 0)) {
    const left = results.length ? `; its classify results are still in s3://${bucket}/${layout.results(dataset, runId)}: add --results to delete them` : '';
    throw new CliExit(EXIT.error, `transferline: ${await nothingHere(ctx, `no run ${runId} of ${dataset} in s3://${bucket}/${layout.models(dataset)}${left}: nothing deleted`, ` (see "transferline models -d ${dataset}")`)}`);
  }
  // No run here, only its classify records: from a shell whose TL_BUCKET or TL_PREFIX is not the
  // live workers' (they would be deleted under a run that stays), not a deletion cut short.
  const elsewhere = runFiles.length === 0 && !wasLatest ? await storageHint(ctx) : undefined;
  if (elsewhere) throw new CliExit(EXIT.error, `transferline: no run ${runId} of ${dataset} in s3://${bucket}/${layout.models(dataset)}: ${elsewhere}: nothing deleted`);
  const newestLeft = newestPromotable(await listModelRuns(ctx, dataset), dataset, runId);

  const plan: Plan = { lines: [], kept: [], run: async () => {} };
  if (runFiles.length) plan.lines.push(`run ${dataset}@${runId}: ${files(runFiles.length)} in s3://${bucket}/${layout.run(dataset, runId)}`);
  if (labelled) plan.lines.push(`classify's record of the ${images(labelled)} it classified (Redis)`);
  if (o.results && results.length) plan.lines.push(`its classify results: ${files(results.length)} in s3://${bucket}/${layout.results(dataset, runId)}`);
  if (!o.results && results.length) plan.kept.push(`its classify results: ${files(results.length)} in s3://${bucket}/${layout.results(dataset, runId)} (add --results to delete them too)`);
  if (wasLatest) {
    plan.lines.push(
      newestLeft
        ? `it is the latest run of ${dataset}: ${newestLeft.runId}, the newest run left (not counting --no-promote runs never promoted), becomes the latest`
        : `it is the latest run of ${dataset}, and no other run of it can take its place: ${dataset} is left with no latest run (transferline promote names one)`,
    );
  }
  plan.run = async () => {
    await refuse(); // again: a run or a classify round may have been queued while the user read the plan
    // The pointer first, while the run still exists: a deletion cut short then leaves no pointer
    // at a run that is gone, and the next `delete run` finds the rest. A run that finished
    // meanwhile and made itself the latest stays so.
    if (wasLatest && (await store.getDocument(LatestDoc, bucket, latestKey))?.runId === runId) {
      if (newestLeft) await store.putJson(bucket, latestKey, latestPointer(newestLeft.runId, layout.run(dataset, newestLeft.runId), 'delete'));
      else await store.deleteObject(bucket, latestKey);
    }
    // its promote marker next (one left behind by a deletion cut short would not be taken for a
    // later run of the same id anyway), then report.json: the run leaves every listing at once
    const marker = layout.runFile(dataset, runId, 'promoted.json');
    const report = layout.runFile(dataset, runId, 'report.json');
    for (const first of [marker, report]) if (runFiles.includes(first)) await store.deleteObject(bucket, first);
    await deleteObjects(ctx, runFiles.filter((k) => k !== report && k !== marker));
    await redis.unlink(classified);
    if (o.results) await deleteObjects(ctx, results);
    // its finished job, kept for `train --follow`, would refuse the run id as taken
    await removeEndedTrainJob(ctx, dataset, runId);
  };
  return carryOut(ctx, plan, o, confirm, `deleted run ${dataset}@${runId}`);
}

/** Removes a run's train job once it has ended (kept by BullMQ for `train --follow`); one still running is not touched. */
async function removeEndedTrainJob(ctx: CliContext, dataset: string, runId: string): Promise<void> {
  const job = await ctx.queues.train.getJob(jobIds.train({ runId }));
  // (run ids are unique across datasets only while the job is kept: another dataset's may reuse one)
  if (!job || (job.data as { dataset?: string }).dataset !== dataset) return;
  const state = await job.getState();
  if (state === 'completed' || state === 'failed') await job.remove();
}

/**
 * A queue's failed jobs of some datasets (BullMQ keeps up to 10,000 per queue): once a dataset is
 * gone nothing retries them, and status and the console would go on counting them.
 */
async function failedJobsOf(queue: Queue, datasets: string[]): Promise<Job[]> {
  const of = new Set(datasets);
  return (await queue.getFailed()).filter((j): j is Job => of.has((j?.data as { dataset?: string } | undefined)?.dataset ?? ''));
}

/**
 * `transferline delete dataset NAME`: forgets a dataset in Redis (its items, facts, sources; the
 * remembered hashes of objects no other dataset holds). With --runs, its trained runs too, with
 * classify's records of what they labelled and the images classify kept for them
 * (`_classify.NAME`); with --results, the classify results and label reviews written for it.
 * Deleting `_classify.MODEL` makes the next classify with MODEL label every image again.
 */
export async function deleteDatasetCommand(ctx: CliContext, dataset: string, o: DeleteOptions & { runs?: boolean }, confirm?: Confirm): Promise<boolean> {
  const { bucket } = ctx.config.s3;
  const { store, layout, redis, keys, datasets } = ctx.services;
  const classifyData = isClassifyDataset(dataset);
  if (classifyData && o.runs) throw new CliExit(EXIT.usage, `transferline: --runs is for a dataset trained on; ${dataset} holds the images classify labelled`);
  // the model whose classify bookkeeping goes with this deletion, if any; and whose results --results takes
  const model = classifyData ? dataset.slice(classifyDatasetName('').length) : o.runs ? dataset : undefined;
  const refuse = async () => {
    if (!classifyData) await refuseWhileTraining(ctx, dataset);
    if (model !== undefined) await refuseWhileClassifying(ctx, `with ${model}`, (d) => d.model === model);
    // (only with its runs: the images classify keeps, _classify.X, are taken in again by a running classify's next round)
    if (o.runs && !classifyData) await refuseWhileUsed(ctx, dataset);
  };
  await refuse();

  const exists = await datasets.exists(dataset);
  // A shell whose TL_QUEUE_PREFIX is not the workers' sees none of their datasets: what it would
  // delete (the runs of a dataset it takes for gone, with --runs) belongs to a live one.
  const elsewhere = exists ? [] : await datasetUnderOtherPrefixes(ctx, dataset).catch(() => []);
  if (elsewhere.length) throw new CliExit(EXIT.error, `transferline: no dataset named ${dataset} here: ${otherPrefixWords(ctx, elsewhere, 'it')}: nothing deleted`);
  const status = exists ? await ctx.services.inspector.status(dataset) : undefined;
  const runs = classifyData ? [] : (await listModelRuns(ctx, dataset)).filter((r) => r.dataset === dataset);
  const runFiles = o.runs ? (await objectsUnder(ctx, layout.models(dataset))).filter((k) => layout.parseModelKey(k)?.runId !== undefined) : [];
  const classifyDataset = classifyDatasetName(model ?? dataset);
  const classifiedImages = o.runs && (await datasets.exists(classifyDataset)) ? await datasets.size(classifyDataset) : 0;
  const records = model === undefined ? [] : await redisKeysMatching(ctx, `${globLiteral(keys.classified(model, ''))}*`);
  const resultsOf = classifyData ? model! : dataset;
  const results = await objectsUnder(ctx, layout.results(resultsOf));
  const reviews = classifyData ? [] : await objectsUnder(ctx, layout.reviews(dataset));
  const outputs = [...results, ...reviews];

  // Redis lost its records, and status names it until it is ingested again: deleting it is the other way to settle that
  const lost = (await redis.sismember(keys.datasetsLost(), dataset)) === 1;
  // (with the images classify kept for its runs, theirs too)
  const failedJobs = await failedJobsOf(ctx.queues.preprocess, classifiedImages ? [dataset, classifyDataset] : [dataset]);
  // the jobs of its runs that failed or were cancelled: status counts them among the train queue's failures
  const failedRuns = classifyData ? [] : await failedJobsOf(ctx.queues.train, [dataset]);
  if (!exists && !lost && failedJobs.length === 0 && failedRuns.length === 0 && runFiles.length === 0 && records.length === 0 && classifiedImages === 0 && (!o.results || outputs.length === 0)) {
    const leftInBucket = [
      runs.length && !o.runs && `its ${runs.length} trained run${runs.length === 1 ? ' is' : 's are'} still in the bucket: add --runs to delete ${runs.length === 1 ? 'it' : 'them'}`,
      // (a review: with only its classify results or label reviews left, "no dataset" named nothing to delete them with)
      !o.results && outputs.length && `${files(outputs.length)} of its ${[results.length && 'classify results', reviews.length && 'label reviews'].filter(Boolean).join(' and ')} ${outputs.length === 1 ? 'is' : 'are'} still in the bucket: add --results to delete them`,
    ].filter(Boolean);
    const hint = leftInBucket.length ? `; ${leftInBucket.join('; ')}` : '';
    throw new CliExit(EXIT.error, `transferline: no dataset named ${dataset}${hint}: nothing deleted (see "transferline status")`);
  }

  const plan: Plan = { lines: [], kept: [], run: async () => {} };
  if (status) {
    plan.lines.push(`dataset ${dataset}: ${images(status.total)} (their records, sources and embedding space, in Redis)`);
    if (status.pending) plan.lines.push(`  ${images(status.pending)} still on their way: their embeddings are cached when their jobs finish, their records are not written`);
  }
  if (failedJobs.length) plan.lines.push(`${failedJobs.length} failed preprocess job${failedJobs.length === 1 ? '' : 's'} of ${classifiedImages ? `${dataset} and ${classifyDataset}` : dataset} (in Redis; status and the console count them among the queue's failures)`);
  if (failedRuns.length) plan.lines.push(`the jobs of ${failedRuns.length} failed or cancelled train run${failedRuns.length === 1 ? '' : 's'} of ${dataset} (in Redis; status and the console count them among the train queue's failures)`);
  if (lost) plan.lines.push(`dataset ${dataset}: its records were lost with Redis's data; status stops naming it as one to ingest again`);
  if (runFiles.length) plan.lines.push(`${runs.length} trained run${runs.length === 1 ? '' : 's'} (${files(runFiles.length)}) in s3://${bucket}/${layout.models(dataset)}`);
  // (a review: the plan did not say the pointer goes too)
  const latestNow = runFiles.length ? await store.getDocument(LatestDoc, bucket, layout.latest(dataset)) : undefined;
  if (latestNow && runFiles.some((k) => layout.parseModelKey(k)?.runId === latestNow.runId)) plan.lines.push(`the pointer to its latest run (${latestNow.runId}), s3://${bucket}/${layout.latest(dataset)}`);
  if (classifiedImages) plan.lines.push(`dataset ${classifyDataset}: the ${images(classifiedImages)} classify kept for its runs`);
  if (records.length) plan.lines.push(`classify's record of the images ${model} labelled (${records.length} run${records.length === 1 ? '' : 's'}; Redis): the next classify labels them all again`);
  const outputsWhere = [results.length && `s3://${bucket}/${layout.results(resultsOf)}`, reviews.length && `s3://${bucket}/${layout.reviews(dataset)}`].filter(Boolean).join(' and ');
  const outputsWhat = [results.length && 'classify results', reviews.length && 'label reviews'].filter(Boolean).join(' and ');
  if (o.results && outputs.length) plan.lines.push(`${files(outputs.length)} of ${outputsWhat} in ${outputsWhere}`);
  plan.kept.push(`the images themselves, and their cached embeddings (ingested again, no image is embedded again)`);
  const them = runs.length === 1 ? 'it' : 'them';
  if (!o.runs && runs.length) plan.kept.push(`its ${runs.length} trained run${runs.length === 1 ? '' : 's'} in s3://${bucket}/${layout.models(dataset)} (classify, serve and export go on using ${them}; add --runs to delete ${them} too)`);
  if (!o.results && outputs.length) plan.kept.push(`${files(outputs.length)} of ${outputsWhat} in ${outputsWhere} (add --results to delete them too)`);

  plan.run = async () => {
    await refuse(); // again: a run or a classify round may have been queued while the user read the plan
    if (exists) await datasets.remove(dataset);
    // (one that failed while the user read the plan stays: delete again to remove it)
    for (const job of [...failedJobs, ...failedRuns]) await job.remove().catch(() => undefined);
    // a dataset Redis lost, deleted on purpose now: no longer one to ingest again
    await forgetLost(redis, keys, [dataset]);
    if (o.runs) {
      // The pointer first, and only if it names a run being deleted: a run that finished while
      // the user read the plan (not in runFiles) keeps its files and stays the latest.
      const deleted = new Set(runFiles.map((k) => layout.parseModelKey(k)?.runId));
      const latestKey = layout.latest(dataset);
      const latest = await store.getDocument(LatestDoc, bucket, latestKey);
      if (latest && deleted.has(latest.runId)) await store.deleteObject(bucket, latestKey);
      // reports next: the runs leave every listing at once, and a deletion cut short is finished by the next
      const reports = runFiles.filter((k) => layout.parseModelKey(k)?.file === 'report.json');
      await deleteObjects(ctx, reports);
      await deleteObjects(ctx, runFiles.filter((k) => !reports.includes(k)));
      for (const runId of deleted) if (runId !== undefined) await removeEndedTrainJob(ctx, dataset, runId);
      if (classifiedImages) await datasets.remove(classifyDataset);
    }
    if (records.length) await redis.unlink(...records);
    if (o.results) await deleteObjects(ctx, outputs);
  };
  return carryOut(ctx, plan, o, confirm, `deleted ${[exists && `dataset ${dataset}`, o.runs && runs.length && `its ${runs.length} run${runs.length === 1 ? '' : 's'}`].filter(Boolean).join(' and ') || `what was left of ${dataset}`}`);
}

/**
 * `transferline delete space ID`: an embedding space nothing uses (one a worker started once with
 * a wrong TL_RESIZE or seed published: a user's trial saw `status` and the console list such
 * spaces for ever, and a new dataset's space is ambiguous while no embed worker is live): its
 * cached embeddings (shards in the bucket, their index in Redis), its embed queue and its failure
 * records, then its record. Refused while a worker of it is live or loading, a dataset is in it or
 * holds images embedded in it, a trained run was trained in it, its queue holds jobs, or
 * preprocess jobs for it are on their way (their pixels wait for it, or room is held for them).
 */
export async function deleteSpaceCommand(ctx: CliContext, id: string, o: DeleteOptions, confirm?: Confirm): Promise<boolean> {
  const { bucket } = ctx.config.s3;
  const { redis, keys, layout, spaces, datasets, inspector } = ctx.services;
  const queue = ctx.queues.embed(id);
  const refuse = async () => {
    const s = (await spaces.list()).find((x) => x.space.id === id);
    const busy = [
      s?.workers.length && `${s.workers.length} embed worker${s.workers.length === 1 ? ' of it is' : 's of it are'} live (stop ${s.workers.length === 1 ? 'it' : 'them'} first: status lists them)`,
      s?.starting.length && `${s.starting.length} embed worker${s.starting.length === 1 ? ' of it is' : 's of it are'} loading the model`,
    ];
    const holders: string[] = [];
    for (const dataset of (await datasets.list()).sort()) {
      const st = await inspector.status(dataset);
      const held = st.space === id ? st.total : (st.elsewhere.find((e) => e.space === id)?.count ?? 0);
      if (st.space === id || held > 0) holders.push(`${dataset} (${images(held)}${st.space === id ? ', its space' : ' embedded in it'})`);
    }
    const runs = (await listModelRuns(ctx)).filter((r) => r.embedderId === id).map((r) => `${r.dataset}@${r.runId}`);
    const counts = await queue.getJobCounts('waiting', 'active', 'delayed', 'prioritized');
    const queued = Object.values(counts).reduce((a, b) => a + b, 0);
    // work on its way to it: preprocess jobs for it (a dataset deleted while its images were on
    // their way goes on: a review), the pixels they handed over, the room they hold in its backlog
    const coming = (await jobsInFlight<{ embedderId?: string }>(ctx.queues.preprocess, (d) => d.embedderId === id, 1)).length > 0;
    const waitingPixels = (await redisKeysMatching(ctx, `${globLiteral(keys.tensor(id, ''))}*`)).length;
    const reserved = await redis.zcard(keys.backpressure(id));
    const reasons = [
      ...busy,
      holders.length && `datasets use it: ${holders.slice(0, 5).join(', ')}${holders.length > 5 ? `, and ${holders.length - 5} more` : ''} (delete them, or ingest them into another space with --embedder)`,
      runs.length && `${runs.length} trained run${runs.length === 1 ? ' was' : 's were'} trained in it, which classify, serve and export need it for: ${runs.slice(0, 5).join(', ')}${runs.length > 5 ? ', …' : ''} (delete run)`,
      queued && `${queued} job${queued === 1 ? '' : 's'} wait in its queue`,
      (coming || waitingPixels > 0 || reserved > 0) && `preprocess jobs for it are on their way${waitingPixels ? ` (the pixels of ${images(waitingPixels)} wait for it)` : ''}: wait for them to end (transferline status)`,
    ].filter((r): r is string => Boolean(r));
    if (reasons.length) throw new CliExit(EXIT.error, `transferline: nothing deleted: embedding space ${id} is in use:\n${reasons.map((r) => `  ${r}`).join('\n')}`);
    return s;
  };
  const s = await refuse();
  const shards = await objectsUnder(ctx, layout.embeddings(id));
  const indexed = await redis.hlen(keys.embeddingIndex(id));
  const failures = await redis.hlen(keys.embeddingFailures(id));
  const ended = Object.values(await queue.getJobCounts('completed', 'failed')).reduce((a, b) => a + b, 0);
  if (!s && shards.length === 0 && indexed === 0 && failures === 0 && ended === 0) {
    const known = (await spaces.list()).map((x) => x.space.id);
    throw new CliExit(EXIT.error, `transferline: no embedding space ${id} here${known.length ? ` (known: ${known.join(', ')})` : ''}: nothing deleted`);
  }

  const plan: Plan = { lines: [], kept: [], run: async () => {} };
  if (s) plan.lines.push(`embedding space ${id}: its record (Redis), and its embed queue`);
  if (shards.length || indexed) plan.lines.push(`its cached embeddings: ${indexed} indexed (Redis), ${files(shards.length)} in s3://${bucket}/${layout.embeddings(id)}`);
  if (failures) plan.lines.push(`its record of ${images(failures)} whose embedding failed (Redis)`);
  if (ended) plan.lines.push(`${ended} finished job${ended === 1 ? '' : 's'} of its queue (Redis)`);
  plan.kept.push('the images themselves, and every other space');
  plan.run = async () => {
    await refuse(); // again: a worker may have started, or a dataset been ingested into it, while the user read the plan
    // The shards first (listed again: the plan's list may be old), the record last: a deletion
    // cut short leaves the space listed, and the next `delete space` finishes it (an index gone
    // with its shards kept would read as lost data).
    await deleteObjects(ctx, await objectsUnder(ctx, layout.embeddings(id)));
    await queue.obliterate({ force: true });
    await redis.unlink(keys.embeddingIndex(id), keys.embeddingFailures(id), keys.backpressure(id), keys.pausedWorkers(queue.name));
    await redis.hdel(keys.embedStartFailures(), id);
    await redis.hdel(keys.spaces(), id);
  };
  return carryOut(ctx, plan, o, confirm, `deleted embedding space ${id}`);
}
