#!/usr/bin/env node
import { runRole } from '@transferline/shared';

// Two roles from one package, each its own process: `feature-worker preprocess` (CPU, sharp)
// and `feature-worker embed` (the model). Each loads only its own code: the embed role's
// modules (TF.js, the ONNX builder) would add about 20 MB to a preprocess worker's heap, which
// every full collection marks.
const role = process.argv[2];
if (role === 'preprocess') runRole('preprocess', async (config, log) => (await import('./preprocess.worker.js')).startPreprocessRole(config, log));
else if (role === 'embed') runRole('embed', async (config, log, starting) => (await import('./embed.worker.js')).startEmbedRole(config, log, starting));
else {
  process.stderr.write('usage: feature-worker <preprocess|embed>\n');
  process.exit(2);
}
