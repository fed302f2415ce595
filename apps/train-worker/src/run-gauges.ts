import type { Metrics } from '@transferline/shared';

type TrainGauges = Pick<Metrics, 'trainEpoch' | 'trainLoss' | 'trainAccuracy' | 'trainLearningRate' | 'trainExamplesPerSecond' | 'trainBestValidationLoss' | 'trainBestValidationAccuracy'>;

/**
 * The per-run gauges of a dataset (`tl_train_epoch`, `tl_train_loss`…) describe its run in
 * progress: once the run ends (done, failed, cancelled, put back), its last values stay for
 * `lingerMs`, so that a scrape or two sees them, and then its series go, so that a dashboard does
 * not show a finished run as the one going on (a user's trial: "Epoch by dataset" showed 42 long
 * after the run). A run of the dataset that starts meanwhile clears them, and sets its own.
 */
export function runGauges(m: TrainGauges, lingerMs: number): { begin(dataset: string): () => void } {
  const current = new Map<string, object>();
  const clear = (dataset: string) => {
    for (const g of [m.trainEpoch, m.trainLearningRate, m.trainExamplesPerSecond, m.trainBestValidationLoss, m.trainBestValidationAccuracy]) g.remove({ dataset });
    for (const g of [m.trainLoss, m.trainAccuracy]) for (const split of ['train', 'validation']) g.remove({ dataset, split });
  };
  return {
    begin(dataset) {
      const run = {};
      current.set(dataset, run);
      // a new run shows nothing of the last one's until its own first values (loading may take minutes)
      clear(dataset);
      return () => {
        const end = () => {
          if (current.get(dataset) !== run) return;
          current.delete(dataset);
          clear(dataset);
        };
        if (lingerMs > 0) setTimeout(end, lingerMs).unref();
        else end();
      };
    },
  };
}
