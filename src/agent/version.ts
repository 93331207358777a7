// ferry's version, from package.json (bundled by esbuild; read directly when run from source).
import pkg from '../../package.json' with { type: 'json' };

export const VERSION: string = pkg.version;
export const USER_AGENT = `ferry/${VERSION}`;
