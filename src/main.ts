#!/usr/bin/env node
// ferry's entry point. No top-level await: the single executable runs this bundled as CommonJS.
// `ferry version` is answered here, before the command line (yargs and every command) loads, so
// that it starts as fast as Node itself; everything else goes through src/cli/main.ts.
import { isVersionOnly, versionText } from './version.ts';

const args = process.argv.slice(2);
if (isVersionOnly(args)) {
  process.stdout.write(versionText(args.includes('--json')));
} else {
  void import('./cli/main.ts')
    .then(({ main }) => main())
    .then((code) => {
      process.exitCode = code;
    });
}
