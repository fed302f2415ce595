#!/usr/bin/env node
// The installed `transferline` command. It exists before the first build (npm links bins at
// install time), so it can say what to do when the compiled CLI is missing.
import { existsSync } from 'node:fs';
import module from 'node:module';

// The AWS SDK's notice that its releases after January 2027 need Node 22 would print on every
// command; the README says so once instead.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

const cli = new URL('../dist/cli.js', import.meta.url);
if (!existsSync(cli)) {
  process.stderr.write('transferline is not built yet: run "npm run build" (or "npm start") in the repository first\n');
  process.exit(1);
}
// Each command loads some 600 modules (BullMQ, the AWS SDK, zod...): with V8's compiled code kept
// on disk (in the temporary directory; Node 22.1 and later) it starts with about 15 % less CPU.
// NODE_COMPILE_CACHE=dir moves that cache, NODE_DISABLE_COMPILE_CACHE=1 turns it off.
module.enableCompileCache?.();
await import(cli.href);
