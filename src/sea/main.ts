// The single executable's main script (scripts/build.mjs bundles it as dist/ferry-sea.cjs). It
// answers `ferry version` at once; for anything else it compiles ferry's bundle, carried as a
// SEA asset (src/sea/bundle.ts), with the V8 code cache made for it at build time, and runs it.
//
// Why not make the bundle itself the SEA's main script: Node then deserializes the code cache
// of the whole 3.7 MB bundle before running a line — about 40 ms of CPU that `ferry version`
// does not need — and reads it as a two-byte string (docs/packaging.md has the numbers).
//
// This file only ever runs as the SEA's main script, which Node runs as CommonJS: `require`,
// `module`, `exports`, `__filename` (the executable) and `__dirname` are that wrapper's, and
// are handed on to the bundle as they are.
import { getRawAsset } from 'node:sea';
import { BUNDLE_ASSET, CODE_CACHE_ASSET, compileBundle } from './bundle.ts';
import { isVersionOnly, versionText } from '../version.ts';

const args = process.argv.slice(2);
if (isVersionOnly(args)) {
  process.stdout.write(versionText(args.includes('--json')));
} else {
  // getRawAsset: the executable's own memory, no copy. The bundle is ASCII, so Latin-1 reads it exactly.
  const source = Buffer.from(getRawAsset(BUNDLE_ASSET)).toString('latin1');
  let cache: Buffer | undefined;
  try {
    cache = Buffer.from(getRawAsset(CODE_CACHE_ASSET));
  } catch {
    cache = undefined; // packaged without a code cache (pkg.config.json bundleCodeCache)
  }
  const script = compileBundle(source, cache);
  if (cache && script.cachedDataRejected) {
    process.emitWarning('ferry: the code cache was rejected (made for another Node, architecture or flags); starting slower');
  }
  const run = script.runInThisContext() as (...cjs: unknown[]) => void;
  run(exports, require, module, __filename, __dirname);
}
