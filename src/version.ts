// ferry's version and build. The bundle gets them from esbuild `define`s; running from
// source (tests), they come from package.json and git.
import { readFileSync } from 'node:fs';

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
