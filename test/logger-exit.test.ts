import { spawn } from 'node:child_process';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { repoRoot } from './support/stack.js';
import { guardLeaks } from './support/leak-guard.js';

guardLeaks();

describe('a process whose stderr reader is gone (up killed)', () => {
  it('still exits: its last log lines cannot hold it at exit', async () => {
    const logger = path.join(repoRoot, 'packages', 'shared', 'dist', 'logger.js');
    const script = [
      `import { createLogger } from ${JSON.stringify(logger)};`,
      `const log = createLogger('test', 'info');`,
      `log.info('started');`,
      // as a worker does when up is gone: log that it stops, then exit
      `process.stdin.once('data', () => { for (let i = 0; i < 20; i++) log.info({ i }, 'stopping'); process.exit(0); });`,
    ].join('\n');
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['pipe', 'ignore', 'pipe'] });
    try {
      await new Promise<void>((resolve, reject) => {
        child.stderr!.once('data', () => resolve());
        child.once('exit', (code) => reject(new Error(`exited ${code} before logging`)));
      });
      // the reader of its stderr goes away, as when `up` is SIGKILLed: every write now fails with EPIPE
      child.stderr!.destroy();
      child.stdin!.write('go\n');
      const ended = await new Promise<number | string>((resolve) => {
        const timer = setTimeout(() => resolve('still running after 15 s'), 15_000);
        child.once('exit', (code, signal) => {
          clearTimeout(timer);
          resolve(code ?? signal ?? 'unknown');
        });
      });
      expect(ended).toBe(0);
    } finally {
      child.kill('SIGKILL');
    }
  }, 30_000);
});
