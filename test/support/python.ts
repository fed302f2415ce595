import { spawnSync } from 'node:child_process';

/**
 * A Python with numpy, for checking our files the way a Python user would read them.
 * Debian's /usr/bin/python3 (python3-numpy, installed by .ci/run) first, then the PATH's.
 */
export function pythonWithNumpy(): string {
  for (const py of ['/usr/bin/python3', 'python3']) {
    if (spawnSync(py, ['-c', 'import numpy'], { encoding: 'utf8' }).status === 0) return py;
  }
  throw new Error('no python3 with numpy: apt-get install python3-numpy (.ci/run does)');
}

export function runPython(code: string, args: string[] = []): string {
  const r = spawnSync(pythonWithNumpy(), ['-c', code, ...args], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`python failed: ${r.stderr}`);
  return r.stdout.trim();
}
