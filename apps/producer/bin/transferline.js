#!/usr/bin/env node
// The installed `transferline` command. It exists before the first build (npm links bins at
// install time), so it can say what to do when the compiled CLI is missing.
import { existsSync } from 'node:fs';
import module from 'node:module';
import os from 'node:os';
import path from 'node:path';

// The AWS SDK's notice that its releases after January 2027 need Node 22 would print on every
// command; the README says so once instead.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

const cli = new URL('../dist/cli.js', import.meta.url);
if (!existsSync(cli)) {
  process.stderr.write('transferline is not built yet: run "npm run build" (or "npm start") in the repository first\n');
  process.exit(1);
}
// Each command loads some 550 modules (BullMQ, the AWS SDK, zod...): with V8's compiled code kept
// on disk (Node 22.1 and later) it starts with about 15 % less CPU. The cache is the user's own,
// beside the model weights' (Node's default, a folder in /tmp that every user shares, would let
// one user's files be run by another); NODE_COMPILE_CACHE=dir moves it, and
// NODE_DISABLE_COMPILE_CACHE=1 turns it off.
module.enableCompileCache?.(process.env.NODE_COMPILE_CACHE || path.join(os.homedir(), '.cache', 'transferline', 'node-compile-cache'));
await import(cli.href);
