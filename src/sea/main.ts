// The single executable's main script (scripts/build.mjs bundles it as dist/ferry-sea.cjs). It
// answers `ferry version` at once; for anything else it compiles ferry's bundle, carried as a
// SEA asset (src/sea/bundle.ts), with the V8 code cache made for it at build time, and runs it.
// The cloud SDKs are a second bundle, compiled the same way the first time ferry requires them.
//
// Why not make the bundle itself the SEA's main script: Node then deserializes the code cache
// of the whole bundle before running a line — about 40 ms of CPU that `ferry version` does not
// need — and reads it as a two-byte string (docs/packaging.md has the numbers).
//
// This file only ever runs as the SEA's main script, which Node runs as CommonJS: `require`,
// `module`, `exports`, `__filename` (the executable) and `__dirname` are that wrapper's, and
// are handed on to the bundles as they are.
import { getRawAsset } from 'node:sea';
import { CLOUD_BUNDLE, MAIN_BUNDLE, compileBundle, type SeaBundle } from './bundle.ts';
import { isVersionOnly, printVersion } from '../version.ts';

type CommonJsModule = { exports: unknown };

/** Compiles a bundle from the executable's assets with its code cache, and runs it as a CommonJS module. */
function runBundle(bundle: SeaBundle, bundleRequire: NodeJS.Require, bundleModule: CommonJsModule): void {
  // getRawAsset: the executable's own memory, no copy. The bundle is ASCII, so Latin-1 reads it exactly.
  const source = Buffer.from(getRawAsset(bundle.asset)).toString('latin1');
  let cache: Buffer | undefined;
  try {
    cache = Buffer.from(getRawAsset(bundle.codeCache));
  } catch {
    cache = undefined; // packaged without a code cache (pkg.config.json bundleCodeCache)
  }
  const script = compileBundle(bundle, source, cache);
  if (cache && script.cachedDataRejected) {
    process.emitWarning(`ferry: the code cache of ${bundle.asset} was rejected (made for another Node, architecture or flags); starting slower`);
  }
  const run = script.runInThisContext() as (...cjs: unknown[]) => void;
  run(bundleModule.exports, bundleRequire, bundleModule, __filename, __dirname);
}

const args = process.argv.slice(2);
if (isVersionOnly(args)) {
  printVersion(args.includes('--json'));
} else {
  // The main bundle's require: built-in modules, as the SEA gives them, plus the cloud bundle.
  let cloud: CommonJsModule | undefined;
  const bundleRequire = Object.assign((id: string): unknown => {
    if (id !== CLOUD_BUNDLE.requireId) return require(id);
    if (!cloud) {
      cloud = { exports: {} };
      runBundle(CLOUD_BUNDLE, require, cloud);
    }
    return cloud.exports;
  }, require) as NodeJS.Require;
  runBundle(MAIN_BUNDLE, bundleRequire, module);
}
