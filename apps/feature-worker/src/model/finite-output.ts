/**
 * Why a model whose embedding of a blank image is not finite numbers does not start: a damaged
 * graph or weights (an operator's trial saw NaN rows cached, and a run trained on them hang)
 * would spoil every embedding it makes. `graph` names its ONNX file, where it has one.
 */
export function nonFiniteModelWords(graph?: string): string {
  return `the model gives a blank image an embedding that is not finite numbers (NaN or Infinity): its weights or its graph${graph ? ` (its ONNX graph: ${graph})` : ''} are damaged, and every embedding it made would be too`;
}

/** Whether every value is a finite number (v - v is NaN for NaN and ±Infinity alone). */
export function allFinite(values: ArrayLike<number>): boolean {
  for (let i = 0; i < values.length; i++) if (values[i]! - values[i]! !== 0) return false;
  return true;
}
