// Writes the V8 code cache of ferry's wrapped CommonJS bundle (src/sea/bundle.ts), compiled
// exactly as the single executable compiles it. scripts/package.mjs runs this with the target's
// own Node — under qemu for another architecture — since V8 accepts a code cache only from the
// same Node version, flags and architecture.
//   node scripts/sea-code-cache.ts WRAPPED-BUNDLE OUTPUT
import { readFileSync, writeFileSync } from 'node:fs';
import { compileBundle } from '../src/sea/bundle.ts';

const [bundle, output] = process.argv.slice(2);
if (!bundle || !output) {
  console.error('usage: node scripts/sea-code-cache.ts WRAPPED-BUNDLE OUTPUT');
  process.exit(2);
}
// Read as the executable reads it: Latin-1 (the bundle is ASCII).
writeFileSync(output, compileBundle(readFileSync(bundle, 'latin1')).createCachedData());
