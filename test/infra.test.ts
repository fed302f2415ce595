import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { repoRoot } from './support/stack.js';

describe('deployment files', () => {
  it('pass the offline checks (compose config, promtool config/rules/tests, dashboard JSON, k8s YAML)', async () => {
    const { stdout } = await promisify(execFile)('bash', ['infra/validate.sh'], { cwd: repoRoot, timeout: 120_000 });
    expect(stdout).toMatch(/validate: \d+ passed, 0 failed/);
    // promtool is installed by .ci/run: the Prometheus rules must have been checked, not skipped
    expect(stdout).toMatch(/^ok\s+promtool check rules/m);
  }, 150_000);
});
