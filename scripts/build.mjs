// Bundles ferry into one file, dist/ferry.mjs, runnable with Node 22.12 or later.
//   --cjs          also writes the CommonJS bundles the single executable needs (`npm run
//                  package`, scripts/package.mjs): dist/ferry.cjs, ferry without the cloud SDKs;
//                  dist/ferry-cloud.cjs, the cloud SDKs, which ferry.cjs requires on first use;
//                  and dist/ferry-sea.cjs, the executable's small main script (src/sea/main.ts).
//   --out-dir DIR  write into DIR instead of dist/ (the packaging test builds into a temp dir).
//
// Start-up: `ferry version` and `--help` should not pay for the HTTP stack and the logger. The
// bundle evaluates every module ferry's sources import statically, so the two heaviest,
// undici (about half of a cold start) and pino, are bundled behind a lazy stand-in: the
// sources' named imports become getters that load the real package on first use. The cloud
// SDKs are already loaded on demand (`import()` in src/auth/cloud/provider.ts), which esbuild
// keeps lazy inside the bundle; the CommonJS build goes further and moves them into a bundle of
// their own. docs/packaging.md has the measurements.
import { build } from 'esbuild';
import { execFileSync } from 'node:child_process';
import { readFileSync, chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join, resolve } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
const argv = process.argv.slice(2);
const outIndex = argv.indexOf('--out-dir');
const outDir = outIndex >= 0 ? resolve(argv[outIndex + 1] ?? '') : join(root, 'dist');
if (outIndex >= 0 && !argv[outIndex + 1]) throw new Error('--out-dir needs a directory');
mkdirSync(outDir, { recursive: true });

let commit = process.env.FERRY_COMMIT ?? 'unknown';
try {
  commit = execFileSync('git', ['rev-parse', '--short=12', 'HEAD'], { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
} catch {
  // not a git checkout
}

/** Packages loaded on first use rather than at start-up, when imported from ferry's own sources. */
const LAZY_PACKAGES = ['undici', 'pino'];

const requireFromRoot = createRequire(join(root, 'package.json'));

/**
 * For `import { X } from 'undici'` in src/, bundles a CommonJS stand-in whose properties are
 * getters that require the real package (bundled as usual) the first time one is read. esbuild
 * reads named imports of a CommonJS module as property accesses at the point of use, so nothing
 * loads until ferry makes its first request or its first logger.
 */
const lazyPackages = {
  name: 'ferry-lazy-packages',
  setup(b) {
    const filter = new RegExp(`^(${LAZY_PACKAGES.join('|')})$`);
    b.onResolve({ filter }, (args) => {
      if (!args.importer.startsWith(join(root, 'src'))) return undefined;
      return { path: args.path, namespace: 'ferry-lazy' };
    });
    b.onLoad({ filter: /.*/, namespace: 'ferry-lazy' }, (args) => {
      const names = Object.keys(requireFromRoot(args.path)).filter((k) => k !== '__esModule');
      const contents =
        `let real;\n` +
        `const load = () => (real ??= require(${JSON.stringify(`ferry-real:${args.path}`)}));\n` +
        `for (const name of ${JSON.stringify(names)}) {\n` +
        `  Object.defineProperty(module.exports, name, { enumerable: true, get: () => load()[name] });\n` +
        `}\n`;
      return { contents, loader: 'js', resolveDir: root };
    });
    b.onResolve({ filter: /^ferry-real:/ }, (args) =>
      b.resolve(args.path.slice('ferry-real:'.length), { kind: 'require-call', resolveDir: root }),
    );
  },
};

/**
 * undici's Client requires its HTTP/2 half (client-h2.js, which loads node:http2) when it loads,
 * though ferry never enables HTTP/2 (allowH2 is off) and so never calls it: ~10 ms of every start.
 * The bundle's copy of client.js requires it on first call instead. The build fails if undici's
 * source no longer has the line, rather than silently loading it again.
 */
const UNDICI_H2_REQUIRE = "const connectH2 = require('./client-h2.js')";
const lazyUndiciHttp2 = {
  name: 'ferry-lazy-undici-http2',
  setup(b) {
    b.onLoad({ filter: /[\\/]undici[\\/]lib[\\/]dispatcher[\\/]client\.js$/ }, (args) => {
      const source = readFileSync(args.path, 'utf8');
      if (!source.includes(UNDICI_H2_REQUIRE)) throw new Error(`${args.path}: no longer has "${UNDICI_H2_REQUIRE}"; update scripts/build.mjs (lazyUndiciHttp2)`);
      const lazy = "let connectH2Real\nconst connectH2 = (...a) => (connectH2Real ??= require('./client-h2.js'))(...a)";
      return { contents: source.replace(UNDICI_H2_REQUIRE, lazy), loader: 'js' };
    });
  },
};

/**
 * yargs' factory guesses a version for its --version option as it builds every parser: it lists
 * the working directory and each one above it until one holds a package.json, and parses that
 * (~5 ms at every start, more in a large directory, whatever project the operator stands in).
 * ferry turns the option off (`.version(false)`), so the bundle's factory does not guess. The
 * build fails if yargs' source no longer has the call, rather than silently guessing again.
 */
const YARGS_VERSION_GUESS = '        yargs.help();\n        yargs.version();\n';
const noYargsVersionGuess = {
  name: 'ferry-no-yargs-version-guess',
  setup(b) {
    b.onLoad({ filter: /[\\/]yargs[\\/]build[\\/]lib[\\/]yargs-factory\.js$/ }, (args) => {
      const source = readFileSync(args.path, 'utf8');
      if (!source.includes(YARGS_VERSION_GUESS)) throw new Error(`${args.path}: no longer has "yargs.version();" in its factory; update scripts/build.mjs (noYargsVersionGuess)`);
      return { contents: source.replace(YARGS_VERSION_GUESS, '        yargs.help();\n'), loader: 'js' };
    });
  },
};

// `string-width` (yargs, cliui and wrap-ansi, two versions of it) is replaced by ferry's own
// small one: loading the package costs ~30 ms at every start (src/cli/string-width.ts).
const stringWidthAlias = {
  name: 'ferry-string-width',
  setup(b) {
    b.onResolve({ filter: /^string-width$/ }, () => ({ path: join(root, 'src/cli/string-width.ts') }));
  },
};

/**
 * node:assert for the three packages of a copy's start that import it (yargs' platform shim, and
 * pino's sonic-boom and thread-stream, each for an internal invariant or two): a stand-in with
 * what they call. Loading node:assert loads its error class, which builds process.stderr to learn
 * whether it may use colours: ~8-10 ms of every start, when nothing else of ferry's start needs
 * either (undici, which uses node:assert throughout, keeps it: it is loaded on first use, and a
 * copy without a proxy does not use it). test/package.test.ts checks that a copy loads neither.
 */
const ASSERT_STAND_IN_IMPORTERS = /[\\/]node_modules[\\/](yargs|sonic-boom|thread-stream)[\\/]/;
const assertStandIn = {
  name: 'ferry-assert-stand-in',
  setup(b) {
    b.onResolve({ filter: /^(node:)?assert$/ }, (args) => (ASSERT_STAND_IN_IMPORTERS.test(args.importer) ? { path: 'assert', namespace: 'ferry-assert' } : undefined));
    b.onLoad({ filter: /.*/, namespace: 'ferry-assert' }, () => ({
      contents: `
        class AssertionError extends Error {
          constructor(message) { super(message); this.name = 'AssertionError'; this.code = 'ERR_ASSERTION'; }
        }
        const fail = (message, otherwise) => { throw message instanceof Error ? message : new AssertionError(message ?? otherwise); };
        function assert(value, message) { if (!value) fail(message, 'The expression evaluated to a falsy value'); }
        assert.ok = assert;
        assert.strictEqual = (actual, expected, message) => { if (!Object.is(actual, expected)) fail(message, 'Expected values to be strictly equal: ' + String(actual) + ' !== ' + String(expected)); };
        assert.notStrictEqual = (actual, expected, message) => { if (Object.is(actual, expected)) fail(message, 'Expected "actual" to be strictly unequal to: ' + String(expected)); };
        assert.AssertionError = AssertionError;
        module.exports = assert;
      `,
      loader: 'js',
    }));
  },
};

/**
 * The cloud SDKs: 1.9 MB of the 3.2 MB CommonJS bundle, run only when a copy meets an ECR or
 * Artifact Registry host. In the CommonJS build every import of one of them becomes a property
 * of the cloud bundle (CLOUD_BUNDLE in src/sea/bundle.ts), required only when ferry's code first
 * reads it: the `import()`s in src/auth/cloud/ stay lazy, and a start that never meets a cloud
 * registry neither reads nor compiles that code. The build fails if src/ imports a package from
 * these families that is not listed (it would be bundled twice, with two copies of its classes).
 */
const CLOUD_PACKAGES = ['@aws-sdk/client-ecr', '@aws-sdk/client-sts', '@aws-sdk/credential-providers', 'google-auth-library'];
const CLOUD_FAMILY = /^(@aws-sdk\/|@smithy\/|google-auth-library|gaxios|gcp-metadata)/;
const CLOUD_REQUIRE_ID = './ferry-cloud.cjs';
const cloudSplit = {
  name: 'ferry-cloud-split',
  setup(b) {
    b.onResolve({ filter: CLOUD_FAMILY }, (args) => {
      if (!args.importer.startsWith(join(root, 'src'))) return undefined;
      if (!CLOUD_PACKAGES.includes(args.path)) throw new Error(`${args.importer} imports ${args.path}: add it to CLOUD_PACKAGES in scripts/build.mjs`);
      return { path: args.path, namespace: 'ferry-cloud' };
    });
    b.onLoad({ filter: /.*/, namespace: 'ferry-cloud' }, (args) => ({
      contents: `module.exports = require(${JSON.stringify(CLOUD_REQUIRE_ID)})[${JSON.stringify(args.path)}];\n`,
      loader: 'js',
    }));
  },
};

const common = {
  entryPoints: [join(root, 'src/main.ts')],
  bundle: true,
  platform: 'node',
  target: 'node22',
  minifySyntax: true,
  legalComments: 'none',
  logLevel: 'warning',
  plugins: [lazyPackages, stringWidthAlias, lazyUndiciHttp2, noYargsVersionGuess, assertStandIn],
  define: {
    __FERRY_VERSION__: JSON.stringify(pkg.version),
    __FERRY_COMMIT__: JSON.stringify(commit),
  },
};

/**
 * dist/ferry.mjs runs on the Node that starts it. On one older than package.json's engines it
 * says so in one line and exits 2 before anything else of ferry runs (an old Node fails in
 * obscure ways later, or half works). The check is the bundle's first statement; what comes
 * before it (the banner's import, the bundle's builtin imports) exists in every Node from 18 on.
 */
function nodeVersionCheck(range) {
  const m = /^>=\s*(\d+)\.(\d+)$/.exec(String(range).trim());
  if (!m) throw new Error(`package.json engines.node is "${range}"; scripts/build.mjs understands ">=MAJOR.MINOR"`);
  const [major, minor] = [Number(m[1]), Number(m[2])];
  return (
    `{ const [ma, mi] = process.versions.node.split('.').map(Number);\n` +
    `  if (ma < ${major} || (ma === ${major} && mi < ${minor})) {\n` +
    `    process.stderr.write(\`ferry: needs Node.js ${major}.${minor} or later; this is Node.js \${process.version} (\${process.execPath}). Install a newer Node, or run the single binary (npm run package), which has its own.\\n\`);\n` +
    `    process.exit(2);\n` +
    `  } }\n`
  );
}

await build({
  ...common,
  format: 'esm',
  outfile: join(outDir, 'ferry.mjs'),
  // The Node version check first; then, as some dependencies still call require(), one for the ESM bundle.
  banner: { js: `${nodeVersionCheck(pkg.engines?.node)}import { createRequire as __ferryRequire } from 'node:module';\nconst require = __ferryRequire(import.meta.url);` },
});
chmodSync(join(outDir, 'ferry.mjs'), 0o755);

/** A CommonJS bundle is ASCII only (src/sea/bundle.ts says why). */
function toAscii(file) {
  // esbuild escapes non-ASCII characters in code (charset 'ascii'); what is left is in comments,
  // where an escape is inert (and in a string, template or regular expression \uXXXX would stand
  // for the same character).
  writeFileSync(file, readFileSync(file, 'utf8').replace(/[^\x00-\x7f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`));
}

if (argv.includes('--cjs')) {
  await build({
    ...common,
    plugins: [...common.plugins, cloudSplit],
    external: [CLOUD_REQUIRE_ID],
    format: 'cjs',
    outfile: join(outDir, 'ferry.cjs'),
    charset: 'ascii',
    // yargs reads import.meta.url at load; a CommonJS bundle must supply it. In the single
    // executable, __filename is the executable's own path.
    define: { ...common.define, 'import.meta.url': '__ferryImportMetaUrl' },
    banner: { js: "const __ferryImportMetaUrl = require('node:url').pathToFileURL(__filename).href;" },
    // src/main.ts has no top-level await (CommonJS cannot have one); fail the build if one appears.
    // import() of what is not bundled (the AWS SDK's `import("node:http")`) becomes a require():
    // the single executable compiles this bundle with no dynamic-import loader.
    supported: { 'top-level-await': false, 'dynamic-import': false },
  });
  toAscii(join(outDir, 'ferry.cjs'));
  // The cloud bundle: one getter per package, so each loads when ferry first reads it.
  await build({
    ...common,
    entryPoints: undefined,
    stdin: {
      contents: CLOUD_PACKAGES.map((p) => `Object.defineProperty(exports, ${JSON.stringify(p)}, { enumerable: true, get: () => require(${JSON.stringify(p)}) });`).join('\n'),
      resolveDir: root,
      sourcefile: 'ferry-cloud-entry.js',
      loader: 'js',
    },
    plugins: [],
    format: 'cjs',
    outfile: join(outDir, 'ferry-cloud.cjs'),
    charset: 'ascii',
    supported: { 'top-level-await': false, 'dynamic-import': false },
  });
  toAscii(join(outDir, 'ferry-cloud.cjs'));
  // The single executable's main script: answers `version`, else runs ferry.cjs from its assets.
  await build({
    ...common,
    entryPoints: [join(root, 'src/sea/main.ts')],
    plugins: [],
    format: 'cjs',
    outfile: join(outDir, 'ferry-sea.cjs'),
    supported: { 'top-level-await': false },
  });
}
console.log(`built ${outDir}/ferry.mjs${argv.includes('--cjs') ? ', ferry.cjs, ferry-cloud.cjs and ferry-sea.cjs' : ''} (ferry ${pkg.version}, commit ${commit})`);
