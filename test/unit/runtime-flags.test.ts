// The V8 flags ferry runs under are chosen once (pkg.config.json execArgv, reasons in
// docs/performance.md) and must be the same however ferry starts: the single executable takes
// them from its sea-config, the bundle and `node src/main.ts` from the entry point's shebang.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

const root = new URL('../../', import.meta.url).pathname;
const config = JSON.parse(readFileSync(`${root}pkg.config.json`, 'utf8')) as { execArgv: string[]; targets: Array<{ execArgv?: string[] }> };

function shebangFlags(): string[] {
  const first = readFileSync(`${root}src/main.ts`, 'utf8').split('\n', 1)[0]!;
  assert.match(first, /^#!\/usr\/bin\/env -S node( --\S+)*$/);
  return first.split(' ').filter((a) => a.startsWith('--'));
}

test("src/main.ts's shebang starts Node with the executable's V8 flags", () => {
  assert.deepEqual(shebangFlags(), config.execArgv);
  for (const t of config.targets) assert.equal(t.execArgv, undefined, 'a target with its own flags would need its own shebang');
});

test('this Node accepts every flag, and they take effect', () => {
  // Node exits on a flag it does not know; check the run, then one flag's effect.
  const r = spawnSync(process.execPath, [...config.execArgv, '-e', `
    const v8 = require('node:v8');
    const semi = v8.getHeapSpaceStatistics().find((s) => s.space_name === 'new_space');
    console.log(JSON.stringify({ execArgv: process.execArgv, newSpace: semi.space_size, heapLimit: v8.getHeapStatistics().heap_size_limit }));`], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stderr, '', 'Node warned about a flag');
  const out = JSON.parse(r.stdout) as { execArgv: string[]; newSpace: number; heapLimit: number };
  assert.deepEqual(out.execArgv.slice(0, config.execArgv.length), config.execArgv);
  // --max-semi-space-size=1: the young generation (two semi-spaces) stays within a few MiB.
  assert.ok(out.newSpace <= 3 * 1024 * 1024, `new space ${out.newSpace} bytes`);
  // --max-old-space-size: the heap's limit is the cap (plus the young generation), not the host's memory's share.
  const cap = Number(/^--max-old-space-size=(\d+)$/.exec(config.execArgv.find((f) => f.startsWith('--max-old-space-size=')) ?? '')?.[1]);
  assert.ok(cap > 0, 'the executable starts with a heap cap (--max-old-space-size)');
  const MiB = 1024 * 1024;
  assert.ok(out.heapLimit >= cap * MiB && out.heapLimit <= (cap + 8) * MiB, `heap limit ${out.heapLimit / MiB} MiB under --max-old-space-size=${cap}`);
});

test("the flags leave V8's flag hash alone, so Node's own code cache for its built-in modules stays valid", () => {
  // v8.cachedDataVersionTag() is derived from V8's version, its flag hash and the CPU's
  // features: the tag a code cache is checked against. Node's built-ins carry a code cache made
  // under the default flags; a flag that changes the tag makes V8 reject it, and net, crypto,
  // fs/promises… are compiled from source at every start (~25 ms with the tier-up flags that used
  // to be here).
  const tag = (flags: string[]) => {
    const r = spawnSync(process.execPath, [...flags, '-p', "require('node:v8').cachedDataVersionTag()"], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    return r.stdout.trim();
  };
  const plain = tag([]);
  assert.equal(tag(config.execArgv), plain);
  // The check can tell: a flag in the hash changes the tag.
  assert.notEqual(tag(['--liftoff-only']), plain);
});
