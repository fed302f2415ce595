import { describe, expect, it } from 'vitest';
import { isPathUnder } from './download.command.js';

describe('the keys download writes under its folder', () => {
  it('are paths inside it: no part that climbs out, stays, or is empty', () => {
    for (const rel of ['a.jsonl', 'run-1/2026-12-05.jsonl', 'x/y/z.jpg', '..a', 'a..']) expect(isPathUnder(rel), rel).toBe(true);
    for (const rel of ['../escape', 'a/../../b', './a', 'a//b', '/abs', 'a/', '', '..', 'a\\..\\..\\x']) expect(isPathUnder(rel), rel).toBe(false);
  });
});
