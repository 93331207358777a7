// How the single executable (scripts/package.mjs) carries and compiles ferry's CommonJS bundles:
// each as a SEA asset, next to a V8 code cache of it. The same functions serve both sides: the
// code cache is made at build time by compiling the bundle exactly as the executable will (same
// source text, same file name, same options), on the target's own Node (V8 rejects a cache
// made by another version, other flags or another architecture).
import { Script } from 'node:vm';

export interface SeaBundle {
  /** The bundle's file in dist/ (scripts/build.mjs --cjs) and its asset key in the executable. */
  asset: string;
  /** The asset key of its V8 code cache. */
  codeCache: string;
}

/** ferry itself: the command line, the copy engine, the agent. Run at every start but `version`. */
export const MAIN_BUNDLE: SeaBundle = { asset: 'ferry.cjs', codeCache: 'ferry.cjs.codecache' };

/**
 * The cloud SDKs (AWS SDK, google-auth-library): 60 % of the code, run only when a copy meets an
 * ECR or Artifact Registry host. Kept out of the main bundle so every other start neither copies
 * nor deserializes them (docs/performance.md, fifth round). The main bundle requires it by this
 * id, a sibling file when the bundle runs under plain Node; the executable's main script answers
 * that require from its assets (src/sea/main.ts).
 */
export const CLOUD_BUNDLE: SeaBundle & { requireId: string } = { asset: 'ferry-cloud.cjs', codeCache: 'ferry-cloud.cjs.codecache', requireId: './ferry-cloud.cjs' };

export const SEA_BUNDLES: readonly SeaBundle[] = [MAIN_BUNDLE, CLOUD_BUNDLE];

const NON_ASCII = /[^\x00-\x7f]/;

/**
 * A bundle as the executable carries it: a function of CommonJS's five variables. The
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
 * Compiles a wrapped bundle under its asset name. No dynamic-import loader: scripts/build.mjs
 * turns the bundles' import() calls into require(), and vm's default loader for them is still
 * experimental.
 */
export function compileBundle(bundle: SeaBundle, wrapped: string, cachedData?: Buffer): Script {
  return new Script(wrapped, { filename: bundle.asset, ...(cachedData ? { cachedData } : {}) });
}
