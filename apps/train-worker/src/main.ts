#!/usr/bin/env node
import { checkWorkerArgs, runRole } from '@transferline/shared/service-runtime';
import { startTrainer } from './worker.js';

checkWorkerArgs(process.argv.slice(2));
runRole('train', startTrainer);
