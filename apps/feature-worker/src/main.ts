#!/usr/bin/env node
import { runRole } from '@transferline/shared';
import { startEmbedRole } from './embed.worker.js';
import { startPreprocessRole } from './preprocess.worker.js';

// Two roles from one package, each its own process: `feature-worker preprocess` (CPU, sharp)
// and `feature-worker embed` (the model).
const role = process.argv[2];
if (role === 'preprocess') runRole('preprocess', startPreprocessRole);
else if (role === 'embed') runRole('embed', startEmbedRole);
else {
  process.stderr.write('usage: feature-worker <preprocess|embed>\n');
  process.exit(2);
}
