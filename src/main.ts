#!/usr/bin/env -S node --max-semi-space-size=1 --max-old-space-size=128
// ferry's entry point. The shebang's V8 flags are the ones the single executable starts with
// (pkg.config.json execArgv; why: docs/performance.md). No top-level await: the single executable runs this bundled as CommonJS.
// `ferry version` is answered here, before the command line (yargs and every command) loads, so
// that it starts as fast as Node itself; everything else goes through src/cli/main.ts.
import { isVersionOnly, printVersion } from './version.ts';

const args = process.argv.slice(2);
if (isVersionOnly(args)) {
  printVersion(args.includes('--json'));
} else {
  void import('./cli/main.ts')
    .then(({ main }) => main())
    .then((code) => {
      process.exitCode = code;
    });
}
