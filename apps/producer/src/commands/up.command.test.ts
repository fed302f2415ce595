import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { Supervisor } from '../embedded/supervisor.js';
import { embedBackendWhere, foreignDemoFolders, portsFrom } from './up.command.js';

describe('--metrics-port P', () => {
  it("is up's own port, and P+1 to P+3 the workers'", () => {
    expect(portsFrom(19464)).toEqual({ producer: 19464, preprocess: 19465, embed: 19466, train: 19467 });
  });
  it('0 is any free port for every process, not ports 1 to 3 (a second up on them raced the first)', () => {
    expect(portsFrom(0)).toEqual({ producer: 0, preprocess: 0, embed: 0, train: 0 });
  });
});

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

describe("the demo's dataset", () => {
  it("names the folders under the demo's prefix that the demo did not make (a user's own, which join its training)", () => {
    expect(foreignDemoFolders(['circle', 'square', 'triangle'])).toBeUndefined();
    expect(foreignDemoFolders(['blobs', 'circle', 'square', 'stripes', 'triangle'])).toBe(
      "demo: s3://photos/train/ also holds folders the demo did not make (blobs, stripes): they are in the demo's dataset and its training; keep your own images under another prefix (s3://photos/mine/, say) and ingest them into a dataset of their own",
    );
    // a label that is a name of Object.prototype is no sample class
    expect(foreignDemoFolders(['circle', 'constructor'])).toMatch(/\(constructor\)/);
  });
});
