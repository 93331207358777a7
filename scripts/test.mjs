// Runs every test file with node:test on the TypeScript sources (Node 24 strips types).
// One seed drives everything random in the suite; it is printed so a failure can be replayed:
//   FERRY_TEST_SEED=<seed> npm test
// `--typecheck` (what `npm test` passes) runs `tsc --noEmit` first. Arguments other than that
// are substrings of the test files to run (default: all).
import { spawnSync } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

const seed = process.env.FERRY_TEST_SEED ?? String(randomInt(1, 2 ** 31));
console.log(`# test seed: ${seed} (replay with FERRY_TEST_SEED=${seed} npm test)`);

function findTests(dir) {
  const out = [];
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...findTests(p));
    else if (name.endsWith('.test.ts')) out.push(p);
  }
  return out;
}
const argv = process.argv.slice(2);
if (argv.includes('--typecheck')) {
  console.log('# typecheck: tsc --noEmit');
  const tsc = spawnSync(process.execPath, [join('node_modules', 'typescript', 'bin', 'tsc'), '--noEmit'], { stdio: 'inherit' });
  if (tsc.status !== 0) process.exit(tsc.status ?? 1);
}
const filter = argv.filter((a) => a !== '--typecheck');
let files = findTests('test');
if (filter.length) files = files.filter((f) => filter.some((x) => f.includes(x)));
if (files.length === 0) {
  console.error('no test files matched');
  process.exit(1);
}
const r = spawnSync(process.execPath, ['--test', '--test-concurrency=2', '--test-timeout=300000', ...files], {
  stdio: 'inherit',
  env: { ...process.env, FERRY_TEST_SEED: seed },
});
process.exit(r.status ?? 1);
