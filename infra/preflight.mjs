#!/usr/bin/env node
// What `npm start` and `npm test` need from the machine, checked before anything else runs, and
// installed with the platform's package manager where we can: apt-get as root or through
// `sudo -n` on Debian/Ubuntu, brew on macOS. Where we can't, it stops with the one command that
// would. Plain Node, no dependencies: it runs before the build.
//
//   node infra/preflight.mjs start|test
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';

const mode = process.argv[2];
if (mode !== 'start' && mode !== 'test') {
  process.stderr.write('usage: node infra/preflight.mjs start|test\n');
  process.exit(2);
}

const has = (cmd) => spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
const python = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
const imports = (mods) => spawnSync(python, ['-c', `import ${mods.join(', ')}`], { stdio: 'ignore' }).status === 0;

/** Each need: why we need it, how to tell it is there, and its package on Debian/Ubuntu and macOS. */
const NEEDS = [
  {
    name: 'redis-server',
    why: 'the embedded stack keeps its queues and state in Redis',
    modes: ['start', 'test'],
    present: () => has('redis-server') || (mode === 'start' && !!process.env.REDIS_URL),
    apt: ['redis-server'],
    brew: ['redis'],
  },
  {
    name: 'awscli',
    why: 'tests drop files into the bucket with the aws command, as a user would',
    modes: ['test'],
    present: () => has('aws'),
    apt: ['awscli'],
    brew: ['awscli'],
  },
  {
    name: 'python3 with numpy, h5py and Pillow',
    why: 'tests read our .npy shards with numpy, and check EfficientNet-B0 against a float64 numpy reference that reads the Keras .h5 file',
    modes: ['test'],
    present: () => imports(['numpy', 'h5py', 'PIL']),
    apt: ['python3-numpy', 'python3-h5py', 'python3-pil'],
    brew: ['numpy', 'pillow', 'hdf5'],
    brewAfter: 'python3 -m pip install h5py',
  },
  {
    name: 'prometheus and promtool',
    why: 'a test has Prometheus scrape the workers, and promtool checks the alert rules',
    modes: ['test'],
    present: () => has('prometheus') && has('promtool'),
    apt: ['prometheus'],
    brew: ['prometheus'],
  },
  {
    name: 'chromium',
    why: 'the console test drives a real headless browser (no browser download)',
    modes: ['test'],
    present: () => has('chromium') || existsSync('/usr/bin/chromium') || existsSync('/Applications/Chromium.app'),
    apt: ['chromium'],
    brew: ['--cask', 'chromium'],
  },
  {
    name: 'docker-compose',
    why: 'the infra test validates the compose files offline (docker compose config; no Docker engine needed)',
    modes: ['test'],
    present: () => has('docker-compose') || spawnSync('docker', ['compose', 'version'], { stdio: 'ignore' }).status === 0,
    apt: ['docker-compose'],
    brew: ['docker-compose'],
  },
  {
    name: 'real photos (mate-backgrounds)',
    why: 'the numerics test runs real photos through both backends and the reference',
    modes: ['test'],
    present: () => existsSync('/usr/share/backgrounds/mate/nature'),
    apt: ['mate-backgrounds'],
    brew: [],
  },
];

const missing = NEEDS.filter((n) => n.modes.includes(mode) && !n.present());
const say = (s) => process.stderr.write(`preflight (npm ${mode}): ${s}\n`);
if (missing.length === 0) process.exit(0);

say(`this machine lacks ${missing.length === 1 ? 'one thing' : `${missing.length} things`}:`);
for (const n of missing) say(`  ${n.name}: ${n.why}`);

const run = (cmd, args) => spawnSync(cmd, args, { stdio: 'inherit', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } }).status === 0;
const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;
const aptPackages = [...new Set(missing.flatMap((n) => n.apt))];

if (process.platform === 'linux' && has('apt-get')) {
  const install = `apt-get install -y --no-install-recommends ${aptPackages.join(' ')}`;
  const sudo = !isRoot && has('sudo') && spawnSync('sudo', ['-n', 'true'], { stdio: 'ignore' }).status === 0;
  if (!isRoot && !sudo) {
    say(`install them with:\n\n    sudo apt-get update && sudo ${install}\n`);
    process.exit(1);
  }
  const as = (args) => (isRoot ? run('apt-get', args) : run('sudo', ['-n', 'apt-get', ...args]));
  say(`installing with ${isRoot ? '' : 'sudo '}${install}`);
  if (!as(['update', '-qq']) || !as(['install', '-y', '-qq', '--no-install-recommends', ...aptPackages])) {
    say(`the installation failed; run it yourself:\n\n    ${isRoot ? '' : 'sudo '}apt-get update && ${isRoot ? '' : 'sudo '}${install}\n`);
    process.exit(1);
  }
} else if (process.platform === 'darwin' && has('brew')) {
  const formulas = missing.flatMap((n) => n.brew);
  const unsupported = missing.filter((n) => n.brew.length === 0);
  if (unsupported.length) say(`no Homebrew package for: ${unsupported.map((n) => n.name).join(', ')} (the tests that need it will fail)`);
  const casks = formulas.includes('--cask') ? ['chromium'] : [];
  const plain = formulas.filter((f) => f !== '--cask' && f !== 'chromium');
  say(`installing with brew install ${plain.join(' ')}${casks.length ? ` and brew install --cask ${casks.join(' ')}` : ''}`);
  if ((plain.length && !run('brew', ['install', ...plain])) || (casks.length && !run('brew', ['install', '--cask', ...casks]))) process.exit(1);
  for (const n of missing) if (n.brewAfter && !run('sh', ['-c', n.brewAfter])) process.exit(1);
} else {
  say(`install them with your package manager; on Debian/Ubuntu:\n\n    sudo apt-get update && sudo apt-get install -y --no-install-recommends ${aptPackages.join(' ')}\n\n  on macOS: brew install redis awscli prometheus numpy pillow && brew install --cask chromium\n`);
  process.exit(1);
}

const still = missing.filter((n) => !n.present());
if (still.length) {
  say(`still missing after the installation: ${still.map((n) => n.name).join(', ')}`);
  process.exit(1);
}
say('installed; going on');
