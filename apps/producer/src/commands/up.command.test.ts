import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { Supervisor } from '../embedded/supervisor.js';
import { embedBackendWhere } from './up.command.js';

describe("up's banner: where each embed worker names its backend", () => {
  const supervisor = new Supervisor(path.join('/data', 'logs'), () => undefined);
  it('one embed worker: its log', () => {
    expect(embedBackendWhere(supervisor, [{ role: 'preprocess', replica: 1 }, { role: 'embed', replica: 1 }])).toBe(`, backend: see ${path.join('/data', 'logs', 'embed.log')}`);
  });
  it('several: every one of their logs, not the first alone', () => {
    expect(embedBackendWhere(supervisor, [{ role: 'embed', replica: 1 }, { role: 'embed', replica: 2 }])).toBe(`, backend: see embed.log, embed-2.log in ${path.join('/data', 'logs')}/`);
  });
  it('none: says so', () => {
    expect(embedBackendWhere(supervisor, [{ role: 'preprocess', replica: 1 }])).toBe(' (no embed worker here: --embed-workers 0)');
  });
});
