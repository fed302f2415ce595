#!/usr/bin/env node
import { checkWorkerArgs, runRole } from '@transferline/shared';
import { startTrainer } from './worker.js';

checkWorkerArgs(process.argv.slice(2));
runRole('train', startTrainer);
