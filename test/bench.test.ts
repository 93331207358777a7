// The benchmark (`npm run bench`) in quick mode on tiny workloads, so it cannot rot: every tool
// runs, every copy is verified byte-exact, and the JSON and Markdown outputs are written.
// Timing thresholds are never asserted here: this machine is shared and the numbers are noise.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { BenchResults } from '../bench/report.ts';
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
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});
