#!/usr/bin/env node
// The installed `transferline` command. It exists before the first build (npm links bins at
// install time), so it can say what to do when the compiled CLI is missing.
import { existsSync } from 'node:fs';

// The AWS SDK's notice that its releases after January 2027 need Node 22 would print on every
// command; the README says so once instead.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

const cli = new URL('../dist/cli.js', import.meta.url);
if (!existsSync(cli)) {
  process.stderr.write('transferline is not built yet: run "npm run build" (or "npm start") in the repository first\n');
  process.exit(1);
}
await import(cli.href);
