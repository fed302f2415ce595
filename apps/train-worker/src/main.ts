#!/usr/bin/env node
import { runRole } from '@transferline/shared';
import { startTrainer } from './worker.js';

runRole('train', startTrainer);
