/**
 * The label a trained head gives an image, from its probabilities in label order: a two-class
 * model with a threshold chosen on validation takes the second label when that label's
 * probability reaches the threshold, any other model the most probable label. So a label may
 * come with the lower probability; the threshold goes with it (`threshold`: the second label,
 * and the probability at which it is given), for whoever reads the answer later.
 */
export function decideLabel(labels: readonly string[], p: ArrayLike<number>, threshold: number | undefined): { label: string; index: number; threshold?: { label: string; at: number } } {
  if (threshold !== undefined && labels.length === 2) {
    const index = p[1]! >= threshold ? 1 : 0;
    return { label: labels[index]!, index, threshold: { label: labels[1]!, at: threshold } };
  }
  let index = 0;
  for (let c = 1; c < labels.length; c++) if (p[c]! > p[index]!) index = c;
  return { label: labels[index]!, index };
}
