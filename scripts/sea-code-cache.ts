// Writes the V8 code cache of one of ferry's wrapped CommonJS bundles (src/sea/bundle.ts),
// compiled exactly as the single executable compiles it. scripts/package.mjs runs this with the
// target's own Node — under qemu for another architecture — since V8 accepts a code cache only
// from the same Node version, flags and architecture.
//   node scripts/sea-code-cache.ts ASSET WRAPPED-BUNDLE OUTPUT     (ASSET: ferry.cjs, ferry-cloud.cjs)
import { readFileSync, writeFileSync } from 'node:fs';
import { SEA_BUNDLES, compileBundle } from '../src/sea/bundle.ts';

const [asset, wrapped, output] = process.argv.slice(2);
const bundle = SEA_BUNDLES.find((b) => b.asset === asset);
if (!bundle || !wrapped || !output) {
  console.error(`usage: node scripts/sea-code-cache.ts ASSET WRAPPED-BUNDLE OUTPUT (ASSET: ${SEA_BUNDLES.map((b) => b.asset).join(', ')})`);
  process.exit(2);
}
// Read as the executable reads it: Latin-1 (the bundle is ASCII).
writeFileSync(output, compileBundle(bundle, readFileSync(wrapped, 'latin1')).createCachedData());
