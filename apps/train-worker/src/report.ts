/** Evaluation of a classifier on one split. */
export interface EvaluationReport {
  examples: number;
  accuracy: number;
  /** confusion[trueClass][predictedClass], in `labels` order */
  confusionMatrix: number[][];
  perClass: Record<string, { precision: number; recall: number; f1: number; support: number }>;
}

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
  const perClass: EvaluationReport['perClass'] = {};
  labels.forEach((label, c) => {
    const tp = cm[c]![c]!;
    const support = cm[c]!.reduce((a, b) => a + b, 0);
    const predictedC = cm.reduce((a, row) => a + row[c]!, 0);
    const precision = predictedC ? tp / predictedC : 0;
    const recall = support ? tp / support : 0;
    const f1 = precision + recall ? (2 * precision * recall) / (precision + recall) : 0;
    perClass[label] = { precision, recall, f1, support };
  });
  return { examples: truth.length, accuracy: truth.length ? correct / truth.length : 0, confusionMatrix: cm, perClass };
}
