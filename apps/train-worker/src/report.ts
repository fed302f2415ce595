import type { EvaluationReport } from '@transferline/shared';

export type { EvaluationReport };

/** Accuracy, confusion matrix and per-class precision/recall/F1 from true and predicted class indices. */
export function evaluate(labels: string[], truth: ArrayLike<number>, predicted: ArrayLike<number>): EvaluationReport {
  const k = labels.length;
  const cm = Array.from({ length: k }, () => new Array<number>(k).fill(0));
  let correct = 0;
  for (let i = 0; i < truth.length; i++) {
    const t = truth[i]!;
    const p = predicted[i]!;
    cm[t]![p]!++;
    if (t === p) correct++;
  }
  const perClass = labels.map((label, c) => {
    const tp = cm[c]![c]!;
    const support = cm[c]!.reduce((a, b) => a + b, 0);
    const predictedC = cm.reduce((a, row) => a + row[c]!, 0);
    const precision = predictedC ? tp / predictedC : 0;
    const recall = support ? tp / support : 0;
    const f1 = precision + recall ? (2 * precision * recall) / (precision + recall) : 0;
    return { label, precision, recall, f1, support };
  });
  return { examples: truth.length, accuracy: truth.length ? correct / truth.length : 0, confusionMatrix: cm, perClass };
}

/**
 * Area under the ROC curve of `scores` for the positive examples (`positive[i]` true), by the
 * rank statistic (Mann–Whitney U), ties counted half. NaN when one side is empty (stored as null).
 */
export function rocAuc(scores: ArrayLike<number>, positive: ArrayLike<boolean>): number {
  const idx = Array.from({ length: scores.length }, (_, i) => i).sort((a, b) => scores[a]! - scores[b]!);
  let nPos = 0;
  let rankSum = 0;
  for (let i = 0; i < idx.length; ) {
    let j = i;
    while (j + 1 < idx.length && scores[idx[j + 1]!] === scores[idx[i]!]) j++;
    const avgRank = (i + j) / 2 + 1;
    for (let k = i; k <= j; k++) {
      if (positive[idx[k]!]) {
        nPos += 1;
        rankSum += avgRank;
      }
    }
    i = j + 1;
  }
  const nNeg = idx.length - nPos;
  if (nPos === 0 || nNeg === 0) return Number.NaN;
  return (rankSum - (nPos * (nPos + 1)) / 2) / (nPos * nNeg);
}

/**
 * The decision threshold on the positive class's probability that maximises balanced accuracy
 * (Youden's J = TPR − FPR) on these scores: the validation set, so the test set stays unseen.
 * Every threshold between the best group of scores and the next lower one decides these scores
 * alike; of those it takes 0.5 (the plain most-probable rule) when it is one of them, else the
 * middle of the gap, so a new image just below the lowest positive score seen is not called
 * negative by a threshold sitting on that score.
 */
export function bestThreshold(scores: ArrayLike<number>, positive: ArrayLike<boolean>): { threshold: number; tpr: number; fpr: number } {
  // (NaN equals no score, itself included: the sweep below would never pass one)
  for (let i = 0; i < scores.length; i++) if (!Number.isFinite(scores[i])) throw new RangeError(`score ${i} of ${scores.length} is ${scores[i]}, not a probability`);
  // Sweep the scores from high to low: predicting positive for score >= t admits one group of ties at a time.
  const idx = Array.from({ length: scores.length }, (_, i) => i).sort((a, b) => scores[b]! - scores[a]!);
  let nPos = 0;
  for (let i = 0; i < positive.length; i++) if (positive[i]) nPos++;
  const nNeg = positive.length - nPos;
  let tp = 0;
  let fp = 0;
  let best = { upper: 0.5, lower: 0.5, tpr: Number.NaN, fpr: Number.NaN, j: -Infinity };
  for (let i = 0; i < idx.length; ) {
    const t = scores[idx[i]!]!;
    while (i < idx.length && scores[idx[i]!] === t) {
      if (positive[idx[i++]!]) tp++;
      else fp++;
    }
    const tpr = nPos ? tp / nPos : 0;
    const fpr = nNeg ? fp / nNeg : 0;
    // the next lower score (0 below the lowest: probabilities are not negative)
    if (tpr - fpr > best.j) best = { upper: t, lower: i < idx.length ? scores[idx[i]!]! : Math.min(0, t), tpr, fpr, j: tpr - fpr };
  }
  const threshold = best.lower < 0.5 && 0.5 <= best.upper ? 0.5 : (best.lower + best.upper) / 2;
  return { threshold, tpr: best.tpr, fpr: best.fpr };
}
