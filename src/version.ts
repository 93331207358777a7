// ferry's version and build. The bundle gets them from esbuild `define`s; running from
// source (tests), they come from package.json and git.
import { readFileSync, writeSync } from 'node:fs';

declare const __FERRY_VERSION__: string;
declare const __FERRY_COMMIT__: string;

function fromSource(): { version: string; commit: string } {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };
    return { version: pkg.version, commit: 'source' };
  } catch {
    return { version: '0.0.0', commit: 'unknown' };
  }
}

const built = typeof __FERRY_VERSION__ === 'string' ? { version: __FERRY_VERSION__, commit: __FERRY_COMMIT__ } : fromSource();

export const VERSION: string = built.version;
export const COMMIT: string = built.commit;
export const USER_AGENT = `ferry/${VERSION}`;

/** What `ferry version` prints: one line, or with --json one JSON document. */
export function versionText(json: boolean): string {
  const info = { version: VERSION, commit: COMMIT, node: process.version };
  return json ? `${JSON.stringify(info)}\n` : `ferry ${info.version} (commit ${info.commit}, node ${info.node})\n`;
}

/** `ferry version` or `ferry --version` (each with or without --json), which the entry point answers without loading the CLI. */
export function isVersionOnly(args: readonly string[]): boolean {
  return (args[0] === 'version' || args[0] === '--version') && (args.length === 1 || (args.length === 2 && args[1] === '--json'));
}

/**
 * Print `ferry version`'s answer straight to file descriptor 1. `process.stdout` would build a
 * stream first (for a pipe, a socket with its modules): ~8 ms, a tenth of the whole start-up
 * (docs/performance.md, fifth round). A stdout that cannot take the line at once (a full
 * non-blocking pipe) gets the rest through the stream after all.
 */
export function printVersion(json: boolean): void {
  const bytes = Buffer.from(versionText(json));
  let at = 0;
  try {
    while (at < bytes.byteLength) at += writeSync(1, bytes, at);
  } catch {
    process.stdout.write(bytes.subarray(at));
  }
}
