// Bundles ferry into one file, dist/ferry.mjs, runnable with Node 22.12 or later.
// `--cjs` also writes dist/ferry.cjs, the CommonJS bundle the single executable needs.
import { build } from 'esbuild';
import { execFileSync } from 'node:child_process';
import { readFileSync, chmodSync } from 'node:fs';

const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8'));
let commit = process.env.FERRY_COMMIT ?? 'unknown';
try {
  commit = execFileSync('git', ['rev-parse', '--short=12', 'HEAD'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
} catch {
  // not a git checkout
}

const common = {
  entryPoints: ['src/main.ts'],
  bundle: true,
  platform: 'node',
  target: 'node22',
  minifySyntax: true,
  legalComments: 'none',
  logLevel: 'warning',
  define: {
    __FERRY_VERSION__: JSON.stringify(pkg.version),
    __FERRY_COMMIT__: JSON.stringify(commit),
  },
};

await build({
  ...common,
  format: 'esm',
  outfile: 'dist/ferry.mjs',
  // Some dependencies still call require(); give the ESM bundle one.
  banner: { js: "import { createRequire as __ferryRequire } from 'node:module';\nconst require = __ferryRequire(import.meta.url);" },
});
chmodSync('dist/ferry.mjs', 0o755);

if (process.argv.includes('--cjs')) {
  await build({
    ...common,
    format: 'cjs',
    outfile: 'dist/ferry.cjs',
    // yargs reads import.meta.url at load; a CommonJS bundle must supply it.
    define: { ...common.define, 'import.meta.url': '__ferryImportMetaUrl' },
    banner: { js: "const __ferryImportMetaUrl = require('node:url').pathToFileURL(__filename).href;" },
    supported: { 'top-level-await': false },
  });
}
console.log(`built dist/ferry.mjs (ferry ${pkg.version}, commit ${commit})`);
