// The benchmark (`npm run bench`) in quick mode on tiny workloads, so it cannot rot: every tool
// runs, every copy is verified byte-exact, and the JSON and Markdown outputs are written.
// Timing thresholds are never asserted here: this machine is shared and the numbers are noise.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { evaluateTargets, summarize, type BenchResults, type RunResult, type WorkloadResult } from '../bench/report.ts';
import { countAccessLog } from '../bench/registries.ts';

const BENCH = new URL('../scripts/bench.ts', import.meta.url).pathname;
const TOOLS = ['ferry', 'skopeo', 'crane', 'oras'];

test('the access-log request counter sorts requests by kind and skips the markers', () => {
  const line = (m: string, p: string, s = 200) => `127.0.0.1 - - [27/Nov/2026:12:27:55 +0000] "${m} ${p} HTTP/1.1" ${s} 0 "" "x"`;
  const c = countAccessLog(
    [
      line('GET', '/v2/'),
      line('GET', '/v2/?ferry-bench-marker=3'),
      line('HEAD', '/v2/a/b/manifests/v1', 404),
      line('GET', '/v2/a/b/manifests/sha256:ab'),
      line('HEAD', '/v2/a/b/blobs/sha256:ab', 404),
      line('POST', '/v2/a/b/blobs/uploads/'),
      line('PATCH', '/v2/a/b/blobs/uploads/1-2?_state=x'),
      line('PUT', '/v2/a/b/blobs/uploads/1-2?_state=x&digest=sha256%3Aab', 201),
      line('PUT', '/v2/a/b/manifests/v1', 201),
      'time="…" level=info msg="response completed"',
    ].join('\n'),
  );
  assert.deepEqual(
    { total: c.total, manifest: c.manifest, blob: c.blob, upload: c.upload, manifestWrite: c.manifestWrite, other: c.other },
    { total: 8, manifest: 2, blob: 1, upload: 3, manifestWrite: 1, other: 1 },
  );
  assert.equal(c.byMethod.PUT, 2);
});

test('the CPU targets are read against crane and, less SHA-256 measured in the same run, against the best peer: who cannot have hashed, the floor, ferry less the hash', () => {
  const GiB = 1024 ** 3;
  const run = (user_s: number, sys_s: number): RunResult => {
    const counts = { total: 1, manifest: 1, blob: 0, upload: 0, manifestWrite: 0, other: 0, byMethod: {} };
    return { round: 1, wall_s: 2.5, user_s, sys_s, cpu_s: user_s + sys_s, rss_mib: 20, processes: 1, requests: { source: counts, destination: counts, total: 2 }, registry_cpu_s: 3, foreign_cpu_pct: 0, ok: true, verified: true };
  };
  const big: WorkloadResult = {
    name: 'big', kind: 'single', description: '', images: 1, bytes: GiB / 2, blobs: 9, summary: [], peers: ['oras', 'crane'],
    runs: { ferry: [run(0.8, 0.26)], oras: [run(0.04, 0.49)], crane: [run(0.7, 0.36)] },
  };
  summarize(big, ['oras', 'crane']);
  assert.equal(big.summary.find((s) => s.tool === 'oras')?.user_median_s, 0.04);
  const results = { workloads: [big], sha256_cost: { runs: 5, mib_per_run: 1024, cpu_s_per_gib_median: 0.8, cpu_s_per_gib_min: 0.78, node: 'v24' } } as unknown as BenchResults;
  const cpu = evaluateTargets(results).find((t) => t.id === 'big-cpu');
  assert.ok(cpu);
  // 2.12 s/GiB against crane's 2.12 (1.00×); less SHA-256, 1.32 against oras's 1.06 (1.25×): both ≤ 1.5×.
  assert.equal(cpu.met, true, cpu.measured);
  assert.match(cpu.measured, /vs crane 2\.12 s\/GiB = 1\.00×/);
  assert.match(cpu.measured, /less SHA-256 \(0\.80 s\/GiB, this run\): 1\.32 s\/GiB vs oras 1\.06 s\/GiB = 1\.25×/);
  assert.match(cpu.note ?? '', /SHA-256 alone, measured in this run: 0\.80 s\/GiB/);
  assert.match(cpu.note ?? '', /oras's user CPU is 0\.08 s\/GiB, less than SHA-256 alone/);
  assert.match(cpu.note ?? '', /at least 1\.75×/); // (1.06 + 0.80) / 1.06
  assert.match(cpu.note ?? '', /ferry less SHA-256: 1\.25×/); // (2.12 - 0.80) / 1.06
  assert.match(cpu.note ?? '', /user CPU can include SHA-256: crane 2\.12 s\/GiB, ferry = 1\.00×/);

  // ferry at 1.6 × crane misses, whatever the hash: crane's reading holds on its own.
  const heavier: WorkloadResult = { ...big, summary: [], runs: { ...big.runs, ferry: [run(2.0, 0.4)] } };
  summarize(heavier, ['oras', 'crane']);
  const heavy = evaluateTargets({ ...results, workloads: [heavier] } as BenchResults).find((t) => t.id === 'big-cpu');
  assert.equal(heavy?.met, false, heavy?.measured);
  // ferry as crane but a peer that spends little: less the hash, ferry must still be within 1.5 × the best peer.
  const light: WorkloadResult = { ...big, summary: [], runs: { ...big.runs, oras: [run(0.02, 0.2)] } };
  summarize(light, ['oras', 'crane']);
  const lightCpu = evaluateTargets({ ...results, workloads: [light] } as BenchResults).find((t) => t.id === 'big-cpu');
  assert.equal(lightCpu?.met, false, lightCpu?.measured); // (2.12 - 0.8) / 0.44 = 3.0×

  // Without the measurement (results from before it), crane's reading alone.
  delete (results as { sha256_cost?: unknown }).sha256_cost;
  const old = evaluateTargets(results).find((t) => t.id === 'big-cpu');
  assert.doesNotMatch(old?.note ?? '', /SHA-256/);
  assert.equal(old?.met, true);
});

test('big\'s wall target is read against crane, the peer that also hashes, with the best peer beside it', () => {
  const counts = { total: 1, manifest: 1, blob: 0, upload: 0, manifestWrite: 0, other: 0, byMethod: {} };
  const run = (wall_s: number): RunResult => ({ round: 1, wall_s, user_s: 1, sys_s: 0.2, cpu_s: 1.2, rss_mib: 20, processes: 1, requests: { source: counts, destination: counts, total: 2 }, registry_cpu_s: 3, foreign_cpu_pct: 0, ok: true, verified: true });
  const make = (ferry: number): BenchResults => {
    const big: WorkloadResult = { name: 'big', kind: 'single', description: '', images: 1, bytes: 1024 ** 3 / 2, blobs: 9, summary: [], peers: ['oras', 'crane'], runs: { ferry: [run(ferry)], oras: [run(2.57)], crane: [run(2.88)] } };
    summarize(big, ['oras', 'crane']);
    return { workloads: [big] } as unknown as BenchResults;
  };
  const met = evaluateTargets(make(2.82)).find((t) => t.id === 'big-wall');
  assert.equal(met?.met, true, met?.measured); // 0.98 × crane, though 1.10 × oras
  assert.match(met?.measured ?? '', /vs crane 2\.88 s = 0\.98×; the best peer, oras: 2\.57 s, ferry = 1\.10×/);
  assert.equal(evaluateTargets(make(3.1)).find((t) => t.id === 'big-wall')?.met, false); // 1.08 × crane
});

test('npm run bench -- --quick: every tool, every run verified, JSON and Markdown written', { timeout: 180_000 }, async () => {
  const out = mkdtempSync(join(tmpdir(), 'ferry-bench-test-'));
  try {
    const args = [BENCH, '--quick', '--ferry', 'source', '--workload', 'multiarch,warm', '--runs', '1', '--startup-runs', '1', '--fleet-parallel', '2', '--out', out];
    const { code, output } = await new Promise<{ code: number; output: string }>((resolve, reject) => {
      const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
      let output = '';
      child.stdout.on('data', (d) => (output += d));
      child.stderr.on('data', (d) => (output += d));
      child.on('error', reject);
      child.on('close', (c) => resolve({ code: c ?? -1, output }));
    });
    assert.equal(code, 0, output);

    const results = JSON.parse(readFileSync(join(out, 'results.json'), 'utf8')) as BenchResults;
    assert.equal(results.quick, true);
    assert.deepEqual(results.workloads.map((w) => w.name), ['multiarch', 'warm']);
    for (const w of results.workloads) {
      assert.deepEqual(Object.keys(w.runs).sort(), [...TOOLS].sort(), `${w.name}: tools`);
      assert.deepEqual(w.summary.map((s) => s.tool).sort(), [...TOOLS].sort());
      for (const [tool, runs] of Object.entries(w.runs)) {
        assert.equal(runs.length, 1, `${w.name}/${tool}: runs`);
        for (const r of runs) {
          assert.ok(r.ok && r.verified, `${w.name}/${tool}: ${r.error ?? 'not verified'}`);
          assert.ok(r.wall_s > 0 && r.cpu_s >= 0 && r.rss_mib > 0, `${w.name}/${tool}: measures present`);
          assert.ok(r.requests.source.total > 0 && r.requests.destination.total > 0, `${w.name}/${tool}: requests counted`);
        }
      }
      assert.ok(w.best_peer && TOOLS.includes(w.best_peer));
    }
    // The warm re-sync writes no blob, whoever does it.
    const warm = results.workloads.find((w) => w.name === 'warm')!;
    for (const runs of Object.values(warm.runs)) {
      assert.equal(runs[0]!.requests.destination.upload, 0);
    }
    assert.ok(results.startup?.length && results.startup.every((s) => s.wall_median_ms > 0));
    assert.ok(results.startup_reference && results.startup_reference.wall_median_ms > 0 && /^node -e 0/.test(results.startup_reference.command), 'the bare runtime measured beside ferry');
    // The harness's own spawn-and-wait, measured beside them, and each command's start-up net of it.
    assert.ok(results.startup_harness && /^\/bin\/true/.test(results.startup_harness.command) && results.startup_harness.wall_median_ms > 0, 'the harness measured beside ferry');
    for (const s of [...results.startup, results.startup_reference]) {
      assert.ok(s.net_median_ms !== undefined && s.net_median_ms < s.wall_median_ms, `${s.command}: net of the harness (${s.net_median_ms}) below as measured (${s.wall_median_ms})`);
    }
    const startupTarget = results.targets.find((t) => t.id === 'startup');
    assert.ok(startupTarget && /net of the harness/.test(startupTarget.measured), startupTarget?.measured);
    assert.ok(results.targets.some((t) => t.id === 'warm-requests'));
    for (const k of ['node', 'ferry', 'skopeo', 'crane', 'oras', 'registry']) assert.ok(results.versions[k], `version of ${k}`);

    const md = readFileSync(join(out, 'RESULTS.md'), 'utf8');
    assert.match(md, /quick mode/);
    assert.match(md, /`node -e 0 \(the Node v\d+/);
    for (const tool of TOOLS) assert.match(md, new RegExp(`\\| ${tool} \\|`));
    assert.match(md, /## Targets/);
    assert.ok(results.sha256_cost && results.sha256_cost.cpu_s_per_gib_median > 0 && results.sha256_cost.runs === 1, 'SHA-256 measured alone');
    assert.match(md, /### SHA-256 alone[\s\S]*CPU-s\/GiB/);
    assert.match(md, /\| ferry \| [^|]+\| [^|]+\| [^|]+\| [^|]+\| \d+\.\d\d \(\d+\.\d\d \+ \d+\.\d\d\) \|/, 'CPU cell: total (user + sys)');
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});
