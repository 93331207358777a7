// How the single executable (scripts/package.mjs) carries and compiles ferry's CommonJS bundle:
// as a SEA asset, next to a V8 code cache of it. The same functions serve both sides: the code
// cache is made at build time by compiling the bundle exactly as the executable will (same
// source text, same file name, same options), on the target's own Node (V8 rejects a cache
// made by another version, other flags or another architecture).
import { Script } from 'node:vm';

/** Asset keys inside the executable. */
export const BUNDLE_ASSET = 'ferry.cjs';
export const CODE_CACHE_ASSET = 'ferry.cjs.codecache';

const NON_ASCII = /[^\x00-\x7f]/;

/**
 * The bundle as the executable carries it: a function of CommonJS's five variables. The
 * hashbang line is blanked, not removed, and the wrapper adds no line, so stack traces keep the
 * bundle's line numbers. It must be ASCII (scripts/build.mjs makes it so): the executable reads
 * it as Latin-1 straight from its own memory into a one-byte string, which V8 parses faster than
 * the two-byte string a single non-ASCII character would force.
 */
export function wrapBundle(source: string): string {
  const body = source.startsWith('#!') ? source.replace(/^#![^\n]*/, '') : source;
  const wrapped = `(function (exports, require, module, __filename, __dirname) {${body}\n})`;
  const bad = NON_ASCII.exec(wrapped);
  if (bad) throw new Error(`the bundle is not ASCII: U+${bad[0].charCodeAt(0).toString(16).padStart(4, '0')} at offset ${bad.index}`);
  return wrapped;
}

/**
 * Compiles the wrapped bundle. No dynamic-import loader: scripts/build.mjs turns the bundle's
 * import() calls into require(), and vm's default loader for them is still experimental.
 */
export function compileBundle(wrapped: string, cachedData?: Buffer): Script {
  return new Script(wrapped, { filename: BUNDLE_ASSET, ...(cachedData ? { cachedData } : {}) });
}
