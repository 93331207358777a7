// Writes the V8 code cache of one of ferry's wrapped CommonJS bundles (src/sea/bundle.ts),
// compiled exactly as the single executable compiles it. scripts/package.mjs runs this with the
// target's own Node — under qemu for another architecture — since V8 accepts a code cache only
// from the same Node version, flags and architecture.
//   node scripts/sea-code-cache.ts ASSET WRAPPED-BUNDLE OUTPUT     (ASSET: ferry.cjs, ferry-cloud.cjs)
//
// The main bundle's cache is made after the bundle has run a copy (scripts/sea-training.ts), so
// that it holds the functions a copy compiles, not only each module's top level. The cloud
// bundle's is made straight after compiling: it runs only against a cloud registry.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MAIN_BUNDLE, SEA_BUNDLES, compileBundle } from '../src/sea/bundle.ts';
import { TrainingRegistry } from './sea-training.ts';

const [asset, wrapped, output] = process.argv.slice(2);
const bundle = SEA_BUNDLES.find((b) => b.asset === asset);
if (!bundle || !wrapped || !output) {
  console.error(`usage: node scripts/sea-code-cache.ts ASSET WRAPPED-BUNDLE OUTPUT (ASSET: ${SEA_BUNDLES.map((b) => b.asset).join(', ')})`);
  process.exit(2);
}
// Read as the executable reads it: Latin-1 (the bundle is ASCII).
const script = compileBundle(bundle, readFileSync(wrapped, 'latin1'));

if (bundle !== MAIN_BUNDLE) {
  writeFileSync(output, script.createCachedData());
} else {
  const registry = await TrainingRegistry.start();
  const stateDir = mkdtempSync(join(tmpdir(), 'ferry-training-'));
  // As the benchmark runs it: JSON out, JSON logs. Nothing from this
  // machine's environment may steer it (a proxy, a docker config with credentials).
  for (const name of Object.keys(process.env)) if (/proxy$/i.test(name) || name.startsWith('FERRY_') || name === 'DOCKER_CONFIG') delete process.env[name];
  process.env.HOME = stateDir;
  process.argv = [process.argv[0]!, 'ferry', 'copy', '--json', '--state-dir', stateDir, `${registry.host}/train/source:1`, `${registry.host}/train/destination:1`];
  // The bundle's own start (src/main.ts) runs the command and sets process.exitCode; the
  // registry's sockets are unref'd, so the loop empties once the copy is done.
  const run = script.runInThisContext() as (...cjs: unknown[]) => void;
  const module = { exports: {} };
  run(module.exports, createRequire(wrapped), module, wrapped, join(wrapped, '..'));
  process.once('beforeExit', () => {
    registry.close();
    rmSync(stateDir, { recursive: true, force: true });
    if (process.exitCode !== 0) {
      // scripts/package.mjs prints this process's output: the copy's JSON report and its logs.
      console.error(`the training copy for the code cache failed (exit ${process.exitCode})`);
      process.exit(1);
    }
    writeFileSync(output, script.createCachedData());
  });
}
