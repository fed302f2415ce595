import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, defaultPreprocessConcurrency, loadConfig, spaceSettings, stackSettings, threadsOverCores } from './config.js';
import { spaceFromConfig } from './embedding-space.js';

describe('loadConfig', () => {
  it('has defaults that work on one machine', () => {
    const c = loadConfig({});
    expect(c.redis.url).toBe('redis://127.0.0.1:6390');
    expect(c.redis.embedded).toBe(true);
    expect(c.s3.endpoint).toBe('http://127.0.0.1:9000');
    expect(c.s3.embedded).toBe(true);
    expect(c.s3.bucket).toBe('transferline');
    expect(c.dataDir).toBe(path.resolve('./data'));
    expect(c.embed.batchSize).toBeGreaterThan(0);
    expect(c.preprocess.concurrency).toBe(defaultPreprocessConcurrency(os.availableParallelism()));
  });

  it('keeps enough images in flight to hide the waits on S3 and Redis: 8 per core, at least 16, at most 64', () => {
    expect([1, 2, 3, 4, 8, 16].map(defaultPreprocessConcurrency)).toEqual([16, 16, 24, 32, 64, 64]);
  });

  it('uses external servers when their URLs are given', () => {
    const c = loadConfig({ REDIS_URL: 'redis://cache:6379/2', S3_ENDPOINT: 'http://minio:9000', S3_FORCE_PATH_STYLE: 'false' });
    expect(c.redis).toMatchObject({ url: 'redis://cache:6379/2', embedded: false });
    expect(c.s3).toMatchObject({ endpoint: 'http://minio:9000', embedded: false, forcePathStyle: false });
    // as a shell or a .env file spells it
    expect(loadConfig({ S3_FORCE_PATH_STYLE: 'False' }).s3.forcePathStyle).toBe(false);
    expect(loadConfig({ S3_FORCE_PATH_STYLE: 'TRUE' }).s3.forcePathStyle).toBe(true);
  });

  it('coerces numbers and ignores unrelated and empty variables', () => {
    const c = loadConfig({ TL_EMBED_BATCH_SIZE: '32', TL_PREFIX: '', HOME: '/root', PATH: '/bin' });
    expect(c.embed.batchSize).toBe(32);
    expect(c.s3.prefix).toBe('');
  });

  it.each([
    ['TL_EMBED_BATCH_SIZE', 'many'],
    ['TL_EMBED_BATCH_SIZE', '0'],
    ['REDIS_URL', 'localhost:6379'],
    ['S3_ENDPOINT', 'not a url'],
    ['TL_BUCKET', 'Bad_Bucket'],
    ['TL_PREFIX', 'models'],
    ['TL_BACKEND', 'cuda'],
    ['TL_EMBED_THREADS', '0'],
    ['TL_EMBED_STREAMS', '0'],
    ['TL_METRICS_PORT', '70000'],
    ['S3_FORCE_PATH_STYLE', 'maybe'],
  ])('rejects %s=%s with a message that names the variable', (name, value) => {
    expect(() => loadConfig({ [name]: value })).toThrow(ConfigError);
    expect(() => loadConfig({ [name]: value })).toThrow(new RegExp(`^invalid configuration:\\n  ${name}: `));
  });

  it('reads TL_TF_BACKEND, TL_BACKEND\'s old name, and names it in errors; the two set apart are refused', () => {
    expect(loadConfig({ TL_TF_BACKEND: 'wasm' }).embed).toMatchObject({ backend: 'wasm', backendVariable: 'TL_TF_BACKEND' });
    expect(loadConfig({ TL_BACKEND: 'onnx', TL_TF_BACKEND: 'onnx' }).embed).toMatchObject({ backend: 'onnx', backendVariable: 'TL_BACKEND' });
    expect(loadConfig({}).embed).toMatchObject({ backend: 'auto', backendVariable: 'TL_BACKEND' });
    expect(() => loadConfig({ TL_BACKEND: 'onnx', TL_TF_BACKEND: 'tensorflow' })).toThrow(
      new ConfigError("invalid configuration:\n  TL_BACKEND=onnx and TL_TF_BACKEND=tensorflow disagree: TL_TF_BACKEND is TL_BACKEND's old name; unset it"),
    );
  });

  it('lists every bad variable at once and never echoes a secret', () => {
    let message = '';
    try {
      loadConfig({
        TL_EMBED_BATCH_SIZE: 'x',
        TL_LOG_LEVEL: 'loud',
        TL_REDIS_PORT: '-1',
        // a real secret that is invalid (a stray newline from a .env file), and a password in a bad URL
        S3_SECRET_ACCESS_KEY: 'wJalrXUtnFEMI/K7MDENG\n',
        REDIS_URL: 'http://default:hunter2@cache:6379',
        // an API key too short to be allowed is still a key
        TL_SERVE_API_KEY: 'short-key',
      });
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).toContain('TL_EMBED_BATCH_SIZE');
    expect(message).toContain('TL_LOG_LEVEL');
    expect(message).toContain('TL_REDIS_PORT');
    expect(message).toMatch(/S3_SECRET_ACCESS_KEY: .*\(got "\*\*\*"\)/);
    expect(message).toMatch(/REDIS_URL: .*\(got "http:\/\/default:\*\*\*@cache:6379"\)/);
    expect(message).not.toContain('wJalrXUtnFEMI');
    expect(message).not.toContain('hunter2');
    expect(message).toContain('  TL_SERVE_API_KEY: at least 16 characters (got "***")');
    expect(message).not.toContain('short-key');
  });
});

describe('stackSettings: what up tells another shell to export', () => {
  it('is empty on the defaults, even when they are spelt out', () => {
    expect(stackSettings({})).toEqual([]);
    expect(stackSettings({ TL_REDIS_PORT: '6390', TL_S3_PORT: '9000', TL_BUCKET: 'transferline', HOME: '/x' })).toEqual([]);
  });

  it('names the settings that reach the stack, paths made absolute, secrets named but not shown', () => {
    const settings = stackSettings({
      TL_REDIS_PORT: '6401',
      TL_CONSOLE_PORT: '9999', // the console is up's, not the other shell's
      TL_DATA_DIR: '/tmp/d', // only up reads it
      TL_MODEL_CACHE_DIR: 'cache',
      S3_SECRET_ACCESS_KEY: 'hunter22',
      REDIS_URL: 'redis://u:pw@redis.example:6379',
      TL_PREFIX: 'team/',
    });
    expect(settings).toEqual([{ name: 'REDIS_URL' }, { name: 'TL_REDIS_PORT', value: '6401' }, { name: 'S3_SECRET_ACCESS_KEY' }, { name: 'TL_PREFIX', value: 'team/' }, { name: 'TL_MODEL_CACHE_DIR', value: path.resolve('cache') }]);
    expect(JSON.stringify(settings)).not.toMatch(/hunter22|pw@/);
    expect(stackSettings({ REDIS_URL: 'redis://redis.example:6379' })).toEqual([{ name: 'REDIS_URL', value: 'redis://redis.example:6379' }]);
    // a token inside a URL is a secret too; the cache under XDG_CACHE_HOME reaches the stack; the
    // background is the embedding space's, which the CLI reads from Redis (spaceSettings)
    expect(stackSettings({ TL_MODEL_WEIGHTS_SOURCE: 'https://tok3n@weights.example/b0.h5', XDG_CACHE_HOME: 'xdg', TL_ALPHA_BACKGROUND: '#000000', TL_LOG_LEVEL: 'debug' })).toEqual([
      { name: 'TL_MODEL_WEIGHTS_SOURCE' },
      { name: 'XDG_CACHE_HOME', value: path.resolve('xdg') },
    ]);
  });
});

describe('spaceFromConfig: the background names the space', () => {
  it('leaves the id of a space on the default background as it was, and names any other colour in it, whatever its case', () => {
    const id = (env: Record<string, string>) => spaceFromConfig(loadConfig({ TL_MODEL_WEIGHTS: 'random', ...env })).id;
    expect(id({})).toBe('efficientnet-b0.random-seed42.squash224');
    expect(id({ TL_ALPHA_BACKGROUND: '#FFFFFF' })).toBe('efficientnet-b0.random-seed42.squash224');
    expect(id({ TL_ALPHA_BACKGROUND: '#Ff8800', TL_RESIZE: 'crop' })).toBe('efficientnet-b0.random-seed42.crop224.bgff8800');
    expect(spaceFromConfig(loadConfig({ TL_MODEL_WEIGHTS: 'random', TL_ALPHA_BACKGROUND: '#Ff8800' })).background).toBe('#ff8800');
    expect(spaceSettings(spaceFromConfig(loadConfig({ TL_MODEL_WEIGHTS: 'random', TL_ALPHA_BACKGROUND: '#000000' })))).toEqual([
      { name: 'TL_MODEL_WEIGHTS', value: 'random' },
      { name: 'TL_ALPHA_BACKGROUND', value: '#000000' },
    ]);
  });
});

describe("spaceSettings: what a worker started by hand needs to serve up's embedding space", () => {
  it('is empty for the default space, and a worker given the settings computes the same space as the stack', () => {
    expect(spaceSettings(spaceFromConfig(loadConfig({})))).toEqual([]);
    // every combination of the settings that make a space (the weights file's own settings are the stack's, exported)
    for (const weights of [undefined, 'imagenet', 'random'])
      for (const resize of [undefined, 'squash', 'crop'])
        for (const seed of [undefined, '42', '7'])
          for (const background of [undefined, '#FFFFFF', '#000000', '#Ff8800']) {
            const stackEnv = { ...(weights && { TL_MODEL_WEIGHTS: weights }), ...(resize && { TL_RESIZE: resize }), ...(seed && { TL_MODEL_SEED: seed }), ...(background && { TL_ALPHA_BACKGROUND: background }) };
            const space = spaceFromConfig(loadConfig(stackEnv));
            // a hand-started worker's environment: only those settings
            const worker = spaceFromConfig(loadConfig(Object.fromEntries(spaceSettings(space).map((s) => [s.name, s.value]))));
            expect(worker, JSON.stringify(stackEnv)).toEqual(space);
          }
    expect(spaceSettings(spaceFromConfig(loadConfig({ TL_MODEL_WEIGHTS: 'random', TL_MODEL_SEED: '7' })))).toEqual([
      { name: 'TL_MODEL_WEIGHTS', value: 'random' },
      { name: 'TL_MODEL_SEED', value: '7' },
    ]);
  });
});

describe('threadsOverCores: a warning when the threads set outnumber the cores', () => {
  const named = (n: number) => `TL_EMBED_THREADS=${n}`;
  it('says nothing when the threads fit, or were not set', () => {
    expect(threadsOverCores(undefined, 2, named)).toBeUndefined();
    expect(threadsOverCores(2, 2, named)).toBeUndefined();
    expect(threadsOverCores(1, 2, named, 2)).toBeUndefined();
  });
  it('names the setting, the cores, and what fits, for one process or several', () => {
    expect(threadsOverCores(4, 2, named)).toBe('TL_EMBED_THREADS=4 is more than the 2 cores of this machine: the threads take turns on them, and each forward pass runs slower than on 2; set TL_EMBED_THREADS=2 or fewer, or leave it unset');
    expect(threadsOverCores(2, 2, named, 2)).toBe('TL_EMBED_THREADS=2 for each of 2 embed processes is more than the 2 cores of this machine: the threads take turns on them, and each forward pass runs slower than on 1; set TL_EMBED_THREADS=1, or leave it unset');
    expect(threadsOverCores(2, 1, named)).toBe('TL_EMBED_THREADS=2 is more than the 1 core of this machine: the threads take turns on them, and each forward pass runs slower than on 1; set TL_EMBED_THREADS=1, or leave it unset');
  });
  it('with more processes than cores, says to start fewer: one thread each is too many already', () => {
    expect(threadsOverCores(1, 2, named, 3)).toBe('TL_EMBED_THREADS=1 for each of 3 embed processes is more than the 2 cores of this machine: the threads take turns on them; start 2 embed processes or fewer here (--embed-workers)');
  });
});

