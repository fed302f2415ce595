import { describe, expect, it } from 'vitest';
import { decideLabel } from './decision.js';

describe('decideLabel', () => {
  it('two classes with a threshold: the second label from the threshold on, said with it', () => {
    expect(decideLabel(['flowers', 'landscapes'], [0.6536, 0.3464], 0.257)).toEqual({ label: 'landscapes', index: 1, threshold: { label: 'landscapes', at: 0.257 } });
    expect(decideLabel(['flowers', 'landscapes'], [0.8, 0.2], 0.257)).toEqual({ label: 'flowers', index: 0, threshold: { label: 'landscapes', at: 0.257 } });
    expect(decideLabel(['a', 'b'], [0.5, 0.5], 0.5).label).toBe('b');
  });
  it('otherwise the most probable label (the first of a tie), no threshold', () => {
    expect(decideLabel(['a', 'b'], [0.3, 0.7], undefined)).toEqual({ label: 'b', index: 1 });
    expect(decideLabel(['a', 'b', 'c'], [0.2, 0.5, 0.3], 0.1)).toEqual({ label: 'b', index: 1 });
    expect(decideLabel(['a', 'b', 'c'], [0.4, 0.4, 0.2], undefined).label).toBe('a');
  });
});
