import { existsSync } from 'node:fs';
import { spawnSync } from 'node:child_process';

export const PYTHON = '/usr/bin/python3';

/** Whether Debian's python3 imports `module`. */
export function pythonHas(module: string): boolean {
  return existsSync(PYTHON) && spawnSync(PYTHON, ['-c', `import ${module}`], { stdio: 'ignore' }).status === 0;
}

/**
 * The Python peers a suite compares with, as Debian packages: those whose module does not import
 * are installed when we are root (as on a fresh CI machine), otherwise named in the notes.
 * Returns the modules that import afterwards.
 */
export function ensurePythonPeers(suite: string, want: [module: string, debianPackage: string][], notes: string[]): Set<string> {
  const missing = [...new Set(want.filter(([m]) => !pythonHas(m)).map(([, p]) => p))];
  if (missing.length && process.getuid?.() === 0) {
    process.stderr.write(`${suite}: installing ${missing.join(', ')} (the Python peers)\n`);
    const r = spawnSync('apt-get', ['install', '-y', '--no-install-recommends', ...missing], { stdio: 'ignore' });
    notes.push(r.status === 0 ? `installed ${missing.join(', ')}` : `could not install ${missing.join(', ')}`);
  }
  const present = new Set(want.map(([m]) => m).filter(pythonHas));
  for (const [m, p] of want) if (!present.has(m)) notes.push(`${m} not importable: apt-get install ${p}`);
  return present;
}
