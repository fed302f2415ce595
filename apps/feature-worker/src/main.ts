#!/usr/bin/env node
import { checkWorkerArgs, runRole } from '@transferline/shared/service-runtime';

// Two roles from one package, each its own process: `feature-worker preprocess` (CPU, sharp)
// and `feature-worker embed` (the model). Each loads only its own code: the embed role's
// modules (TF.js, the ONNX builder) would add about 20 MB to a preprocess worker's heap, which
// every full collection marks.
const [role, ...rest] = process.argv.slice(2);
if (role === 'preprocess' || role === 'embed') checkWorkerArgs(rest);
else checkWorkerArgs(role === undefined ? [] : [role, ...rest], role === undefined || role.startsWith('-') ? 'feature-worker needs a role: preprocess or embed' : `feature-worker has no role ${role}: preprocess or embed`);
if (role === 'preprocess') runRole('preprocess', async (config, log) => (await import('./preprocess.worker.js')).startPreprocessRole(config, log));
else if (role === 'embed') runRole('embed', async (config, log, starting) => (await import('./embed.worker.js')).startEmbedRole(config, log, starting));
