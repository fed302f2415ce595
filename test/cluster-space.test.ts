import { spawn, type ChildProcess } from 'node:child_process';
import { execFile } from 'node:child_process';
import { realpathSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import * as ort from 'onnxruntime-node';
import onnxProto from 'onnx-proto';
import sharp from 'sharp';
import { afterAll, describe, expect, it } from 'vitest';
import { writeSampleSet } from '../apps/producer/src/demo/sample-images.js';
import { freePort } from '../apps/producer/src/embedded/redis.server.js';
import { shellQuote } from '../apps/producer/src/terminal.js';
import { createEfficientNetEmbedder } from '../apps/feature-worker/src/embedder.js';
import { prepareImage } from '../apps/feature-worker/src/image.ops.js';
import { createServices, loadConfig, RunDoc, spaceFromConfig } from '../packages/shared/src/index.js';
import { createLogger } from '../packages/shared/src/service-runtime.js';
import { openCliContext } from '../apps/producer/src/cli-context.js';
import { startClassifierServer } from '../apps/producer/src/serve/classifier.server.js';
import { loadTfRuntime } from '../packages/shared/src/tf-runtime.js';
import { childProcesses, guardLeaks } from './support/leak-guard.js';
import { cliPath, freeRun, repoRoot, runCli, startTestStack, type TestStack } from './support/stack.js';

/**
 * The embedding space is cluster state: a CLI whose environment differs from the workers'
 * (the normal case for a laptop talking to a deployment) works in the space the workers run.
 */

guardLeaks();

const execFileAsync = promisify(execFile);
const cleanups: (() => Promise<void>)[] = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
});

/** Reads a child's stdout until `pattern` shows up, or fails after `ms`. */
function waitForOutput(child: ChildProcess, pattern: RegExp, ms: number, seen: { text: string }): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`not seen within ${ms / 1000} s: ${pattern}\n--- output so far:\n${seen.text}`)), ms);
    const check = () => {
      if (pattern.test(seen.text)) {
        clearTimeout(timer);
        resolve();
      }
    };
    child.stdout!.on('data', check);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`exited (${code}) before ${pattern}\n--- output:\n${seen.text}`));
    });
    check();
  });
}

describe("the README's two terminals", () => {
  it('up --demo offline (random weights), then ingest, train and classify from a shell without TL_MODEL_WEIGHTS, each command exiting', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'tl-up-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const metricsBase = await freeRun(4); // up binds P…P+3
    const env: NodeJS.ProcessEnv = {
      PATH: process.env.PATH,
      HOME: dir,
      AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
      TL_DATA_DIR: path.join(dir, 'data'),
      TL_REDIS_PORT: String(await freePort()),
      TL_S3_PORT: '0', // any free port: the banner must say which
      TL_MODEL_CACHE_DIR: path.join(dir, 'cache'),
      TL_CONSOLE_PORT: '0',
    };
    // First terminal: no weights file can be had (as offline), so the demo goes on with random weights.
    const up = spawn(process.execPath, [cliPath, 'up', '--demo', '--metrics-port', String(metricsBase)], {
      env: { ...env, TL_MODEL_WEIGHTS_SOURCE: path.join(dir, 'nowhere', 'efficientnetb0_notop.h5') },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const seen = { text: '' };
    up.stdout!.on('data', (d: Buffer) => (seen.text += d.toString()));
    up.stderr!.on('data', (d: Buffer) => (seen.text += d.toString()));
    cleanups.push(async () => {
      if (up.exitCode === null) {
        up.kill('SIGINT');
        await new Promise((r) => up.once('exit', r));
      }
    });
    await waitForOutput(up, /Ctrl-C stops everything/, 180_000, seen);
    expect(seen.text).toMatch(/SEEDED RANDOM WEIGHTS/);
    // the banner says where the embed worker names its backend
    expect(seen.text).toContain(`, backend: see ${path.join(env.TL_DATA_DIR!, 'logs', 'embed.log')}\n`);
    expect(seen.text).toMatch(/run \S+: validation accuracy/);
    // the demo waits for the embed worker it started, instead of saying that none is live
    expect(seen.text).toMatch(/embedding space \S+ \(this stack's; 1 embed worker: onnx\)/);
    expect(seen.text).not.toMatch(/no embed worker is live/);

    // Second terminal: exactly what the banner suggests, from an environment that says nothing of
    // weights and has only the settings the banner says to export (this stack's ports are not the defaults).
    const s3 = /^ {2}S3 \(path-style\) +(http:\/\/127\.0\.0\.1:(\d+))/m.exec(seen.text)!;
    const hints = seen.text.slice(seen.text.indexOf('in another terminal try:\n') + 'in another terminal try:\n'.length, seen.text.indexOf('Ctrl-C stops everything.'));
    // each line pastes into a shell as it is, beginning where npx finds transferline
    const cdLine = hints.split('\n')[0]!;
    expect(cdLine).toMatch(/^ {2}cd /);
    expect((await execFileAsync('sh', ['-c', `${cdLine}\npwd -P`], { cwd: os.tmpdir() })).stdout.trim()).toBe(realpathSync(repoRoot));
    await execFileAsync('sh', ['-n', '-c', hints]);
    const exported = /^ {2}(export .+)$/m.exec(hints)?.[1];
    expect(exported, seen.text).toBeDefined();
    expect(seen.text).not.toMatch(/^ {2}# and /m); // no secret of its own to set
    // a worker started by hand needs the random weights the CLI reads from Redis: said, not exported
    expect(hints).toContain('\n  # an embed worker started by hand for this stack also needs TL_MODEL_WEIGHTS=random\n');
    // as a shell reads the line
    const shellEnv = (await execFileAsync('sh', ['-c', `${exported}\nenv`], { env: { PATH: process.env.PATH } })).stdout;
    const settings = Object.fromEntries(
      shellEnv
        .split('\n')
        .filter((l) => /^(TL_|S3_|REDIS_URL=|XDG_)/.test(l))
        .map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]),
    );
    expect(settings).toEqual({ TL_REDIS_PORT: env.TL_REDIS_PORT, TL_S3_PORT: s3[2], TL_MODEL_CACHE_DIR: env.TL_MODEL_CACHE_DIR, TL_MODEL_WEIGHTS_SOURCE: path.join(dir, 'nowhere', 'efficientnetb0_notop.h5') });
    const shell: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: dir, AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true', ...settings };
    const photos = path.join(dir, 'photos');
    const n = await writeSampleSet(photos, 8, 23);
    // the banner's own awscli line, from the folder that holds ./photos
    const awsLine = /^ {2}(AWS_ACCESS_KEY_ID=.* aws .+)$/m.exec(hints)![1]!;
    expect(awsLine).toContain(`--endpoint-url ${s3[1]} `);
    await execFileAsync('sh', ['-c', awsLine], { cwd: dir, env: { PATH: process.env.PATH, HOME: dir } });
    const ingest = await runCli(['ingest', 's3://photos/mine/', '--dataset', 'mine'], shell);
    expect(ingest.timedOut).toBe(false);
    expect(ingest.code).toBe(0);
    expect(ingest.stdout).toMatch(/embedding space efficientnet-b0\.random-seed42\.squash224 \(the one with live embed workers; 1 embed worker: onnx\)/);
    expect(ingest.stdout).toMatch(new RegExp(`dataset mine: ${n} images, ${n} embedded \\(0 of them already in the embedding cache: not computed again\\), 0 failed, 0 pending`));

    const train = await runCli(['train', '--dataset', 'mine', '--epochs', '20'], shell);
    expect(train.code).toBe(0);
    // the report says how the images were split, so that no accuracy reads as one over all of them
    const split = /run \S+: validation accuracy [\d.]+%, test accuracy [\d.]+% \((\d+) images: (\d+) train, (\d+) validation, (\d+) test; best epoch \d+\)/.exec(train.stdout);
    expect(split, train.stdout).not.toBeNull();
    expect(Number(split![2]) + Number(split![3]) + Number(split![4])).toBe(Number(split![1]));
    // right under it: the random weights its figures come from, and how little a few validation images say
    const under = train.stdout.slice(split!.index).split('\n');
    expect(under[1]).toBe("  note: EfficientNet-B0 runs with SEEDED RANDOM weights (seed 42) in embedding space efficientnet-b0.random-seed42.squash224: these figures are fine for the demo's shapes, not for real photos");
    expect(under[2]).toBe(`  note: validation holds ${split![3]} images: one image moves its accuracy by ${Math.round(100 / Number(split![3]))} points, so take it as rough (more images a class give steadier figures)`);
    // and models lines its figures up under their headings
    const listed = (await runCli(['models'], shell)).stdout.split('\n');
    const heading = listed[0]!;
    const row = listed.find((l) => l.startsWith('mine '))!;
    for (const column of ['val acc', 'test acc', 'classes']) {
      const end = heading.indexOf(column) + column.length;
      expect(row.slice(end - 1, end + 1), `${column}:\n${heading}\n${row}`).toMatch(/^\S /);
    }
    const classify = await runCli(['classify', 's3://photos/mine/circle/', '--model', 'mine'], shell);
    expect(classify.code).toBe(0);
    expect(classify.stdout).toContain("\n  note: EfficientNet-B0 runs with SEEDED RANDOM weights (seed 42) in embedding space efficientnet-b0.random-seed42.squash224: its labels are fine for the demo's shapes, not for real photos\n");
    // a model of the random space says so where it leaves transferline
    const onnx = await runCli(['export', '-m', 'mine', '-o', path.join(dir, 'mine.onnx')], shell);
    expect(onnx.code).toBe(0);
    expect(onnx.stdout).toContain('  note: EfficientNet-B0 runs with SEEDED RANDOM weights (seed 42), as this run was trained (efficientnet-b0.random-seed42.squash224): fine for the demo\'s shapes, not for real photos\n');
    expect(classify.stdout).toMatch(/classified 8 image\(s\)/);
    // and serve says it too, under the line that says what it serves
    const serve = spawn(process.execPath, [cliPath, 'serve', '-m', 'mine', '--port', '0', '--threads', '1', '--follow-interval', '1'], { env: shell, stdio: ['ignore', 'pipe', 'pipe'] });
    cleanups.push(async () => {
      if (serve.exitCode === null) {
        serve.kill('SIGKILL');
        await new Promise((r) => serve.once('exit', r));
      }
    });
    const served = { text: '' };
    serve.stdout!.on('data', (d: Buffer) => (served.text += d.toString()));
    await waitForOutput(serve, /Ctrl-C stops it/, 60_000, served);
    expect(served.text).toMatch(/^serving mine@\S+ \(circle, square, triangle\) on http:\/\/127\.0\.0\.1:\d+\n {2}note: EfficientNet-B0 runs with SEEDED RANDOM weights \(seed 42\)/m);
    // and again for the run it swaps to: the banner's ingest and train lines as they paste, with
    // an image that fails among the new ones (ingest exits 3 then: the train must still run)
    await writeFile(path.join(photos, 'circle', 'notes.jpg'), 'not an image\n');
    await execFileAsync('sh', ['-c', awsLine], { cwd: dir, env: { PATH: process.env.PATH, HOME: dir } });
    const ingestThenTrain = hints
      .split('\n')
      .filter((l) => /^ {2}(cd|export|npx transferline (ingest|train)) /.test(l))
      .map((l) => l.replace('npx transferline', `${shellQuote(process.execPath)} ${shellQuote(cliPath)}`))
      .join('\n');
    const second = await execFileAsync('sh', ['-c', ingestThenTrain], { env: shell, timeout: 240_000 });
    expect(second.stdout).toMatch(new RegExp(`dataset mine: ${n + 1} images, ${n} embedded .*, 1 failed, 0 pending`));
    const run2 = /run (\S+): validation accuracy/.exec(second.stdout)?.[1];
    expect(run2, second.stdout + second.stderr).toBeDefined();
    await waitForOutput(serve, new RegExp(`now serving mine@${run2} \\(was \\S+\\)\\n {2}note: EfficientNet-B0 runs with SEEDED RANDOM weights`), 30_000, served);
    serve.kill('SIGINT');
    await new Promise((r) => serve.once('exit', r));

    // Redis forgets the published spaces (a flush, say): the command status prints then, which
    // names the space, waits for the live worker to publish it again rather than failing
    const services = createServices(loadConfig(shell), 'oneshot');
    try {
      // (the image that failed gone: the commands below end as on a clean dataset)
      await services.store.deleteObject('photos', 'mine/circle/notes.jpg');
      await services.redis.del(services.keys.spaces());
    } finally {
      await services.close();
    }
    const named = await runCli(['ingest', 's3://photos/mine/', '--dataset', 'mine', '--embedder', 'efficientnet-b0.random-seed42.squash224'], shell);
    expect(named.code, named.stderr).toBe(0);
    expect(named.stdout).toMatch(/embedding space efficientnet-b0\.random-seed42\.squash224 \(chosen with --embedder; 1 embed worker: onnx\)/);

    // Every command ends by itself once its work is done (a deadline would say otherwise).
    const runId = /run (\S+) queued/.exec(train.stdout)![1]!;
    for (const args of [['status'], ['models'], ['failures', '-d', 'mine'], ['train', '--follow', runId], ['retry', '-d', 'mine'], ['cache', 'compact']]) {
      const r = await runCli(args, shell, 60_000);
      expect({ args, timedOut: r.timedOut, code: r.code, stderr: r.stderr.replace(/^(embedding|listing|training).*\n/gm, '') }).toEqual({ args, timedOut: false, code: 0, stderr: '' });
    }

    up.kill('SIGINT');
    const code = await new Promise<number | null>((r) => up.once('exit', r));
    expect(code).toBe(0);
    expect(childProcesses()).toEqual([]);
  }, 400_000);
});

describe('embed workers with TL_RESIZE=crop and TL_ALPHA_BACKGROUND, a preprocess worker and a CLI without them', () => {
  let stack: TestStack;
  let preprocess: ChildProcess | undefined;
  afterAll(async () => {
    if (preprocess && preprocess.exitCode === null) {
      preprocess.kill('SIGTERM');
      await new Promise((r) => preprocess!.once('exit', r));
    }
    await stack?.destroy();
  });

  it("embed in their space: the model records crop and the background, the pixels were cropped and flattened onto it, and serve and export prepare images as the space did", async () => {
    // the embed workers' space; the CLI has neither setting, and the preprocess worker, started by
    // hand, another background (which was its to apply before spaces named it)
    stack = await startTestStack({ TL_MODEL_WEIGHTS: 'random', TL_RESIZE: 'crop', TL_ALPHA_BACKGROUND: '#000000' }, { preprocess: 0 });
    const { TL_RESIZE: _r, TL_ALPHA_BACKGROUND: _b, ...cliEnv } = stack.env;
    const worker = spawn(process.execPath, [path.join(repoRoot, 'apps', 'feature-worker', 'dist', 'main.js'), 'preprocess'], { env: { ...cliEnv, TL_METRICS_PORT: '0', TL_ALPHA_BACKGROUND: '#ff0000' }, stdio: ['ignore', 'pipe', 'pipe'] });
    preprocess = worker;
    let workerSaid = '';
    for (const s of [worker.stdout, worker.stderr]) s.on('data', (d: Buffer) => (workerSaid += d.toString()));
    const space = 'efficientnet-b0.random-seed42.crop224.bg000000';
    const config = loadConfig(cliEnv);
    const services = createServices(config, 'oneshot');
    try {
      await services.store.ensureBucket('wide');
      // wide images whose left and right thirds differ: crop and squash give different pixels
      const wide = async (i: number, a: string, b: string) =>
        sharp({ create: { width: 600, height: 200, channels: 3, background: '#808080' } })
          .composite([
            { input: await sharp({ create: { width: 200, height: 200, channels: 3, background: a } }).png().toBuffer(), left: 0, top: 0 },
            { input: await sharp({ create: { width: 200, height: 200, channels: 3, background: b } }).png().toBuffer(), left: 400, top: 0 },
            { input: await sharp({ create: { width: 40 + i * 5, height: 40, channels: 3, background: '#ffffff' } }).png().toBuffer(), left: 280, top: 80 },
          ])
          .jpeg()
          .toBuffer();
      const objects: [string, Buffer][] = [];
      for (let i = 0; i < 6; i++) objects.push([`train/red/${i}.jpg`, await wide(i, '#ff0000', '#ff8800')], [`train/blue/${i}.jpg`, await wide(i, '#0000ff', '#0088ff')]);
      // a red cut-out on transparency, whose pixels are those of the background where it is clear
      const cutout = await sharp(await wide(6, '#ff0000', '#ff8800'))
        .ensureAlpha()
        .composite([{ input: Buffer.from('<svg width="600" height="200"><rect x="200" width="200" height="100"/></svg>'), blend: 'dest-out' }])
        .png()
        .toBuffer();
      objects.push(['train/red/cutout.png', cutout]);
      for (const [k, b] of objects) await services.store.putObject('wide', k, b, k.endsWith('.png') ? 'image/png' : 'image/jpeg');

      const ingest = await runCli(['ingest', 's3://wide/train/', '-d', 'wide'], cliEnv);
      expect(ingest.code, ingest.stdout + ingest.stderr).toBe(0);
      expect(ingest.stdout).toContain(`embedding space ${space}`);
      expect(workerSaid).toContain("TL_ALPHA_BACKGROUND is not this worker's: each job's embedding space names the background");
      const train = await runCli(['train', '-d', 'wide', '--epochs', '5', '--run-id', 'wide-1'], cliEnv);
      expect(train.code).toBe(0);
      const run = await services.store.getDocument(RunDoc, stack.config.s3.bucket, services.layout.runFile('wide', 'wide-1', 'run.json'));
      expect(run!.embedderId).toBe(space);

      // The cached embeddings are those of the centre crop, not of the squashed image, and the
      // cut-out's of it flattened onto the space's black, not onto this worker's default white.
      const items = await services.datasets.getItems('wide', ['wide/train/red/0.jpg', 'wide/train/red/cutout.png']);
      const cached = await services.cache.load(space, items.map((item) => item!.sha256!));
      const rt = await loadTfRuntime('wasm');
      const embedder = await createEfficientNetEmbedder(rt, { seed: 42 });
      const embed = async (bytes: Buffer, o: { resize: 'crop' | 'squash'; background: string }) => (await embedder.embedBatch([await prepareImage(bytes, { size: 224, maxInputPixels: 1e8, ...o })]));
      // (relative to the embedding's largest value: random weights make values in the hundreds)
      const diff = (a: Float32Array, b: Float32Array) => Math.max(...Array.from(a, (v, i) => Math.abs(v - b[i]!))) / Math.max(...Array.from(b, Math.abs));
      const row = (i: number) => cached.data.subarray(i * 1280, (i + 1) * 1280);
      expect(diff(row(0), await embed(objects[0]![1], { resize: 'crop', background: '#000000' }))).toBeLessThan(1e-5);
      expect(diff(row(0), await embed(objects[0]![1], { resize: 'squash', background: '#000000' }))).toBeGreaterThan(1e-2);
      expect(diff(row(1), await embed(cutout, { resize: 'crop', background: '#000000' }))).toBeLessThan(1e-5);
      expect(diff(row(1), await embed(cutout, { resize: 'crop', background: '#ffffff' }))).toBeGreaterThan(1e-2);
      expect(diff(row(1), await embed(cutout, { resize: 'crop', background: '#ff0000' }))).toBeGreaterThan(1e-2);
      embedder.dispose();

      // export, from the shell without the settings, names the space's background and policy
      const exported = await runCli(['export', '-m', 'wide@wide-1', '-o', stack.dataDir], cliEnv);
      expect(exported.code, exported.stderr).toBe(0);
      expect(exported.stdout).toContain('transparency flattened onto #000000 (transferline.alpha_background, as the run\'s embedding space does)');
      const bytes = await readFile(path.join(stack.dataDir, 'wide-wide-1.onnx'));
      const meta = Object.fromEntries(onnxProto.onnx.ModelProto.decode(bytes).metadataProps.map((p) => [p.key, p.value]));
      expect([meta['transferline.alpha_background'], meta['transferline.resize']]).toEqual(['#000000', 'crop']);
      // and from a shell that sets another, says that one is not used
      const another = await runCli(['export', '-m', 'wide@wide-1', '-o', path.join(stack.dataDir, 'red.onnx')], { ...cliEnv, TL_ALPHA_BACKGROUND: '#ff0000' });
      expect(another.stdout).toContain("note: this shell's TL_ALPHA_BACKGROUND (#ff0000) is not used: wide@wide-1's embedding space flattens transparent pixels onto #000000, as its embed workers did\n");
      expect(Object.fromEntries(onnxProto.onnx.ModelProto.decode(await readFile(path.join(stack.dataDir, 'red.onnx'))).metadataProps.map((p) => [p.key, p.value]))['transferline.alpha_background']).toBe('#000000');

      // serve, from that shell too, prepares the cut-out as the space did: its answer is the
      // exported model's on the pixels flattened onto black, not onto white
      const ctx = await openCliContext(config, { write: () => true } as unknown as NodeJS.WritableStream);
      const server = await startClassifierServer(ctx, { model: 'wide@wide-1', log: createLogger('serve-test', 'warn'), port: 0, threads: 1 });
      const session = await ort.InferenceSession.create(bytes);
      try {
        expect(await (await fetch(`${server.url}/v1/models`)).json()).toMatchObject({ embedderId: space, resize: 'crop', alphaBackground: '#000000' });
        const r = await fetch(`${server.url}/v1/classify`, { method: 'POST', body: cutout, headers: { 'content-type': 'image/png' } });
        expect(r.status).toBe(200);
        const served = ((await r.json()) as { probabilities: Record<string, number> }).probabilities;
        // (compared in log space: a head on random weights can be sure of its label to 1e-5, where
        // the two backgrounds' probabilities part in the fifth decimal only)
        const labels = JSON.parse(meta['transferline.labels']!) as string[];
        const log = (p: number) => Math.log(Math.max(p, 1e-30));
        const onnx = async (background: string) => {
          const px = await prepareImage(cutout, { size: 224, maxInputPixels: 1e8, resize: 'crop', background });
          const out = await session.run({ pixels: new ort.Tensor('uint8', px, [1, 224, 224, 3]) });
          const p = out.probabilities!.data as Float32Array;
          return Math.max(...labels.map((l, i) => Math.abs(log(p[i]!) - log(served[l]!))));
        };
        expect(await onnx('#000000')).toBeLessThan(1e-3);
        expect(await onnx('#ffffff')).toBeGreaterThan(1e-2);
      } finally {
        await session.release();
        await server.close();
        await ctx.close();
      }

      // A worker started once with other settings published its space, and stopped: status lists
      // it for ever (a user's trial), until `delete space` takes it; the space in use is refused.
      const stray = spaceFromConfig(loadConfig({ TL_MODEL_WEIGHTS: 'random', TL_MODEL_SEED: '7' }));
      await services.spaces.publish(stray);
      // (it embedded two images meanwhile)
      await services.cache.writeShard(stray.id, ['a'.repeat(64), 'b'.repeat(64)], new Float32Array(2 * 1280), 1280);
      // status names the command that deletes it, and says nothing of the kind of the space in use
      const listed = (await runCli(['status'], cliEnv)).stdout;
      expect(listed).toContain(`  ${stray.id}: 0 embed workers, backlog 0, 2 images cached; no dataset is in it: transferline delete space ${stray.id} deletes it if nothing else uses it\n`);
      expect(listed).not.toContain(`transferline delete space ${space}`);
      const dry = await runCli(['delete', 'space', stray.id, '--dry-run'], cliEnv);
      expect(dry.code).toBe(0);
      expect(dry.stdout).toContain(
        `would delete:\n  embedding space ${stray.id}: its record (Redis), and its embed queue\n  its cached embeddings: 2 indexed (Redis), 2 files in s3://${stack.config.s3.bucket}/${services.layout.embeddings(stray.id)}\n`,
      );
      const inUse = await runCli(['delete', 'space', space, '--yes'], cliEnv);
      expect(inUse.code).toBe(1);
      expect(inUse.stderr).toContain(`transferline: nothing deleted: embedding space ${space} is in use:\n`);
      expect(inUse.stderr).toMatch(/ 1 embed worker of it is live /);
      expect(inUse.stderr).toContain('datasets use it: wide (13 images, its space)');
      expect(inUse.stderr).toContain('1 trained run was trained in it, which classify, serve and export need it for: wide@wide-1');
      // pixels a preprocess job handed over for it (the job of a dataset deleted meanwhile, say): refused until they are gone
      const pixels = services.keys.tensor(stray.id, 'c'.repeat(64));
      await services.redis.set(pixels, 'x');
      const coming = await runCli(['delete', 'space', stray.id, '--yes'], cliEnv);
      expect([coming.code, coming.stderr]).toEqual([1, `transferline: nothing deleted: embedding space ${stray.id} is in use:\n  preprocess jobs for it are on their way (the pixels of 1 image wait for it): wait for them to end (transferline status)\n`]);
      await services.redis.del(pixels);
      const deleted = await runCli(['delete', 'space', stray.id, '--yes'], cliEnv);
      expect(deleted.code, deleted.stderr).toBe(0);
      expect(deleted.stdout).toContain(`deleted embedding space ${stray.id}\n`);
      // (its shards went too: status would otherwise take its index for one Redis lost)
      const after = await runCli(['status'], cliEnv);
      expect(after.stdout + after.stderr).not.toContain(stray.id);
      expect(after.stdout).toContain(space);
      expect(await services.cache.listShards(stray.id)).toEqual([]);
      const again = await runCli(['delete', 'space', stray.id, '--yes'], cliEnv);
      expect([again.code, again.stderr]).toEqual([1, `transferline: no embedding space ${stray.id} here (known: ${space}): nothing deleted\n`]);
    } finally {
      await services.close();
    }
  }, 240_000);
});
