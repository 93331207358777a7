// A daemon that runs for weeks, in two minutes: one agent (the bundle, under the executable's
// V8 flags) works through 3000 small jobs (--max-jobs 8) while its RSS is sampled. Its memory
// must stay bounded and flat: the heap capped, the peak under 160 MiB, and the RSS floor of the
// last sixth of the jobs no more than 8 MiB above that of the fourth (the first half is
// warm-up: the heap growing to its working size, the code being compiled). Rates and CPU per job
// are printed, not asserted (the machine's load decides them); scripts/soak.ts runs the long
// version (docs/performance.md has its numbers).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { buildBundle, describeSoak, executableFlags, runSoak } from './soak.ts';

const JOBS = 3000;
const PARTS = 6;
const PEAK_MIB = 160;
const FLOOR_GROWTH_MIB = 8;

let bundle: { bundle: string; remove(): void };
before(async () => {
  bundle = await buildBundle();
});
after(() => bundle?.remove());

test(`an agent through ${JOBS} small jobs: heap capped, peak RSS under ${PEAK_MIB} MiB, the RSS floor flat after warm-up`, async () => {
  const r = await runSoak(bundle.bundle, { jobs: JOBS, parts: PARTS, agentArgs: ['--max-jobs', '8'], timeoutMs: 600_000 });
  console.log(`# soak: ${describeSoak(r)}`);
  assert.equal(r.jobs, JOBS);
  assert.equal(r.failed, 0);
  assert.ok(r.peakMiB <= PEAK_MIB, `peak RSS ${r.peakMiB.toFixed(1)} MiB`);
  const settled = r.parts[3]!;
  const last = r.parts[PARTS - 1]!;
  assert.ok(
    last.floorMiB - settled.floorMiB <= FLOOR_GROWTH_MIB,
    `the RSS floor grew from ${settled.floorMiB.toFixed(1)} MiB (jobs ${settled.from}-${settled.to}) to ${last.floorMiB.toFixed(1)} MiB (jobs ${last.from}-${last.to})`,
  );
  const cap = Number(/^--max-old-space-size=(\d+)$/.exec(executableFlags().find((f) => f.startsWith('--max-old-space-size=')) ?? '')?.[1]);
  assert.ok(r.heapLimitMiB !== undefined && cap > 0 && r.heapLimitMiB <= cap + 8, `the agent's heap limit is ${r.heapLimitMiB} MiB, not the executable's cap (${cap} MiB)`);
});
