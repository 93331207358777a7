// The benchmark (`npm run bench`) in quick mode on tiny workloads, so it cannot rot: every tool
// runs, every copy is verified byte-exact, and the JSON and Markdown outputs are written.
// Timing thresholds are never asserted here: this machine is shared and the numbers are noise.
// The WAN lab's own delay is checked, as conditions: the proxy never delivers before its delay
// (a lower bound it guarantees), and it adds no more than the timer noise measured beside it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, connect as netConnect, type AddressInfo, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { evaluateTargets, summarize, type BenchResults, type RunResult, type WorkloadResult } from '../bench/report.ts';
import { countAccessLog } from '../bench/registries.ts';
import { roundTripFloor, windowRounds } from '../bench/wan/floor.ts';
import { LAB_NAMES, probeLab, startWanLab } from '../bench/wan/lab.ts';
import { INITIAL_WINDOW, startLatencyProxy, type LinkModel } from '../bench/wan/latency-proxy.ts';
import type { WanResults } from '../bench/wan/report.ts';
import { pushImage } from './harness/fixtures.ts';

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
    const args = [BENCH, '--quick', '--ferry', 'source', '--workload', 'multiarch,warm,warm-signed', '--runs', '1', '--startup-runs', '1', '--fleet-parallel', '2', '--out', out];
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
    assert.deepEqual(results.workloads.map((w) => w.name), ['multiarch', 'warm', 'warm-signed']);
    for (const w of results.workloads) {
      // warm-signed copies referrers too: the tools that cannot sit it out, and the results say why.
      const tools = w.name === 'warm-signed' ? ['ferry', 'oras'] : TOOLS;
      assert.deepEqual(Object.keys(w.runs).sort(), [...tools].sort(), `${w.name}: tools`);
      assert.deepEqual(w.summary.map((s) => s.tool).sort(), [...tools].sort());
      if (w.name === 'warm-signed') assert.deepEqual(Object.keys(w.left_out ?? {}).sort(), ['crane', 'skopeo']);
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
    assert.equal(results.targets.find((t) => t.id === 'warm-signed-requests')?.met, true, 'a warm re-sync of signed images writes nothing, within the request budget');
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

// ---------------------------------------------------------------------------------------------
// The WAN lab (bench/wan/): the latency proxy, the TLS registries by name, the floor.

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

/** A server that records when each chunk arrives and answers `SEND n` with n bytes, `PING` with PONG. */
async function timingServer(): Promise<{ port: number; arrivals: number[]; sentAt: number[]; close(): void }> {
  const arrivals: number[] = [];
  const sentAt: number[] = [];
  const sockets = new Set<Socket>();
  const server = createServer((s) => {
    sockets.add(s);
    s.setNoDelay(true);
    s.on('data', (d) => {
      arrivals.push(performance.now());
      const text = d.toString('latin1');
      const n = /^SEND (\d+)/.exec(text)?.[1];
      sentAt.push(performance.now());
      s.write(n ? Buffer.alloc(Number(n), 0x61) : 'PONG');
    });
    s.on('error', () => undefined);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return {
    port: (server.address() as AddressInfo).port,
    arrivals,
    sentAt,
    close() {
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
}

/** Read exactly `n` bytes; resolves with the time the last one arrived. */
function readBytes(s: Socket, n: number): Promise<number> {
  return new Promise((resolve) => {
    let got = 0;
    const on = (d: Buffer) => {
      got += d.length;
      if (got >= n) {
        s.off('data', on);
        resolve(performance.now());
      }
    };
    s.on('data', on);
  });
}

async function viaProxy(model: LinkModel, target: number, now?: () => number) {
  const proxy = await startLatencyProxy([{ name: 'x', listenHost: '127.0.0.1', listenPort: 0, targetHost: '127.0.0.1', targetPort: target }], model, now ? { now } : {});
  const open = async () => {
    const t0 = performance.now();
    const s = netConnect(proxy.routes[0]!.port, '127.0.0.1');
    s.setNoDelay(true);
    await new Promise((r) => s.once('connect', r));
    return { s, t0 };
  };
  return { proxy, open };
}

test('the latency proxy delays each direction by RTT/2, the TCP handshake included, within the timer noise measured beside it', async () => {
  const rtt = 60;
  const d = rtt / 2;
  const server = await timingServer();
  const { proxy, open } = await viaProxy({ rttMs: rtt }, server.port);
  try {
    const { s, t0 } = await open();
    // The first bytes of a connection: the handshake's round trip, then one way.
    s.write('PING');
    await readBytes(s, 4);
    const first = server.arrivals[0]! - t0;
    assert.ok(first >= rtt + d, `first bytes arrived ${first.toFixed(1)} ms after connect, before the handshake's RTT + one way (${rtt + d} ms)`);
    const up: number[] = [];
    const down: number[] = [];
    const lateness: number[] = [];
    for (let i = 0; i < 9; i++) {
      const k = server.arrivals.length;
      const timer = (async () => {
        const t = performance.now();
        await sleep(d);
        return performance.now() - t - d;
      })();
      const sent = performance.now();
      s.write('PING');
      const back = await readBytes(s, 4);
      up.push(server.arrivals[k]! - sent);
      down.push(back - server.sentAt[k]!);
      lateness.push(await timer);
    }
    for (const [name, xs] of [['client → server', up], ['server → client', down]] as const) {
      assert.ok(Math.min(...xs) >= d, `${name}: a chunk arrived after ${Math.min(...xs).toFixed(1)} ms, before the one-way delay ${d} ms`);
      // What a bare timer of the same length overshoots by, in the same moments, plus a little for the two sockets.
      const tolerance = 10 + 2 * med(lateness);
      assert.ok(med(xs) <= d + tolerance, `${name}: median ${med(xs).toFixed(1)} ms, more than ${d} ms + ${tolerance.toFixed(1)} ms of timer noise (${lateness.map((x) => x.toFixed(1)).join(' ')})`);
    }
    s.destroy();
    assert.equal(proxy.counters().x!.connections, 1);
  } finally {
    await proxy.stop();
    server.close();
  }
});

test('the latency proxy strands no connection on a clock that jitters as an early timer makes it look: a thousand short ones all answer', { timeout: 120_000 }, async () => {
  const server = await timingServer();
  // Every other reading 1.5 ms behind: a timer that fires early reads a time before the gate it
  // was set for, the next reading after it (a skopeo "TLS handshake timeout" came of this).
  let reads = 0;
  const jittery = () => performance.now() - (++reads % 2 ? 1.5 : 0);
  const { proxy, open } = await viaProxy({ rttMs: 6 }, server.port, jittery);
  try {
    let stuck = 0;
    for (let batch = 0; batch < 20; batch++) {
      await Promise.all(
        Array.from({ length: 50 }, async () => {
          const { s } = await open();
          s.write('PING');
          // A connection the proxy forgot would wait forever; 5 s is hundreds of its RTTs.
          const answered = await Promise.race([readBytes(s, 4).then(() => true), sleep(5000).then(() => false)]);
          if (!answered) stuck++;
          s.destroy();
        }),
      );
    }
    assert.equal(stuck, 0, `${stuck} of 1000 connections never got their answer`);
    assert.equal(proxy.counters().x!.connections, 1000);
  } finally {
    await proxy.stop();
    server.close();
  }
});

test('the latency proxy opens a fresh connection\'s window by slow start, keeps a bandwidth cap, and only delays with window "none"', async () => {
  const rtt = 40;
  const server = await timingServer();
  const bytes = 100_000; // three windows from 10 segments: 14 480 + 28 960 + 57 920
  assert.equal(windowRounds(bytes), 3);
  const transfer = async (model: LinkModel, n = bytes) => {
    const { proxy, open } = await viaProxy(model, server.port);
    try {
      const { s } = await open();
      s.write('PING');
      await readBytes(s, 4);
      const k = server.sentAt.length;
      s.write(`SEND ${n}`);
      const done = await readBytes(s, n);
      s.destroy();
      return done - server.sentAt[k]!;
    } finally {
      await proxy.stop();
    }
  };
  try {
    // Slow start: the last of three windows leaves two round trips after the first, then one way.
    const tcp = await transfer({ rttMs: rtt });
    assert.ok(tcp >= 2 * rtt + rtt / 2, `100 kB on a fresh connection took ${tcp.toFixed(1)} ms, less than 3 windows (${2.5 * rtt} ms)`);
    // Without the window model the same bytes are only delayed: they cannot take the three windows' time.
    const none = await transfer({ rttMs: rtt, window: 'none' });
    assert.ok(none >= rtt / 2 && none < tcp, `window none: ${none.toFixed(1)} ms (tcp: ${tcp.toFixed(1)} ms)`);
    // A cap of 8 Mbit/s: 200 kB take 200 ms on the link, whatever the window.
    const capped = await transfer({ rttMs: rtt, window: 'none', bandwidthBps: 8e6 }, 200_000);
    assert.ok(capped >= 200 + rtt / 2, `200 kB at 8 Mbit/s took ${capped.toFixed(1)} ms, less than the link's 200 ms + one way`);
    assert.ok(INITIAL_WINDOW === 14_480);
  } finally {
    server.close();
  }
});

test('the round-trip floor: handshakes, manifest levels, blob and upload round trips, the largest blob\'s window, the link', () => {
  const many = roundTripFloor({ levels: 1, largestBlob: 700 * 1024, bytes: 16e6 }, { rttMs: 50 });
  assert.equal(many.protocol_round_trips, 6);
  assert.equal(many.window_round_trips, windowRounds(700 * 1024) - 1);
  assert.equal(many.window_round_trips, 5); // 14 480 × (2⁶ − 1) ≥ 700 KiB
  assert.ok(Math.abs(many.seconds - 0.55) < 1e-9, String(many.seconds));
  const index = roundTripFloor({ levels: 2, largestBlob: 1000, bytes: 5000 }, { rttMs: 20, window: 'none' });
  assert.equal(index.round_trips, 8);
  assert.ok(Math.abs(index.seconds - 0.16) < 1e-9);
  // 512 MiB at 200 Mbit/s: the link's 21.47 s covers the window's opening.
  const big = roundTripFloor({ levels: 1, largestBlob: 64 * 1024 * 1024, bytes: 512 * 1024 * 1024 }, { rttMs: 50, bandwidthMbps: 200 });
  assert.ok(Math.abs(big.transfer_s - (512 * 1024 * 1024 * 8) / 200e6) < 1e-9);
  assert.ok(Math.abs(big.seconds - (0.3 + big.transfer_s)) < 1e-9);
  assert.match(big.explain, /21\.47 s for 512\.0 MiB at 200 Mbit\/s/);
  // The window's cap: past 4 MiB a window grows no more.
  assert.equal(windowRounds(64 * 1024 * 1024), 24);
  assert.equal(windowRounds(64 * 1024 * 1024, 1024 * 1024 * 1024), 13);
});

test('the WAN lab: TLS registries by name through the proxy, the test CA, h2 by ALPN, the names only under lab-exec, crane and ferry copy through it', { timeout: 120_000 }, async () => {
  const hostsBefore = readFileSync('/etc/hosts', 'utf8');
  const lab = await startWanLab();
  try {
    const rtt = 40;
    const link = await lab.startLink({ rttMs: rtt });
    for (const side of ['source', 'destination'] as const) {
      const p = await probeLab(side, lab.addresses[side], lab.pki.caPath);
      assert.equal(p.alpn, 'h2', `${side}: HTTP/2 offered by ALPN`);
      assert.equal(p.authorized, true, `${side}: the certificate verifies against the test CA for ${LAB_NAMES[side]}`);
      assert.ok(p.connect_ms >= 2 * rtt, `${side}: TCP + TLS handshakes took ${p.connect_ms.toFixed(1)} ms, less than two RTTs`);
      assert.ok(Math.min(...p.request_ms) >= rtt, `${side}: a request round trip took ${Math.min(...p.request_ms).toFixed(1)} ms, less than the RTT`);
    }
    // Without the test CA the registry's certificate does not verify: the lab is not trusted by accident.
    const untrusted = await new Promise<string>((resolve) => {
      const s = tlsConnect({ host: lab.addresses.source, port: 443, servername: LAB_NAMES.source, ca: [] }, () => resolve('connected'));
      s.on('error', (e: NodeJS.ErrnoException) => resolve(String(e.code)));
    });
    assert.match(untrusted, /UNABLE_TO_VERIFY|SELF_SIGNED|UNABLE_TO_GET_ISSUER/);

    // The names resolve under lab-exec, to the proxy; outside it they do not, and /etc/hosts is unchanged.
    const inside = execFileSync(lab.execPath, ['getent', 'hosts', LAB_NAMES.destination], { encoding: 'utf8' });
    assert.equal(inside.trim().split(/\s+/)[0], lab.addresses.destination);
    assert.notEqual(spawnSync('getent', ['hosts', LAB_NAMES.destination]).status, 0, 'the lab name resolves outside the lab');
    assert.equal(readFileSync('/etc/hosts', 'utf8'), hostsBefore);

    // A Go peer and ferry copy by name, TLS verified, through the proxy.
    const image = await pushImage(lab.srcClient, 'lab/app', 'v1', { layerSizes: [3000, 40_000], seed: 'bench-test/wan-lab' });
    const src = `${LAB_NAMES.source}/lab/app:v1`;
    const before = await link.counters();
    const dockerConfig = mkdtempSync(join(tmpdir(), 'ferry-wan-test-'));
    const env = { ...process.env, DOCKER_CONFIG: dockerConfig, XDG_STATE_HOME: dockerConfig };
    const crane = spawnSync(lab.execPath, ['crane', 'copy', src, `${LAB_NAMES.destination}/crane/app:v1`], { encoding: 'utf8', env });
    assert.equal(crane.status, 0, crane.stderr);
    const main = new URL('../src/main.ts', import.meta.url).pathname;
    const ferry = spawnSync(lab.execPath, [process.execPath, main, 'copy', '--json', src, `${LAB_NAMES.destination}/ferry/app:v1`], { encoding: 'utf8', env });
    assert.equal(ferry.status, 0, ferry.stderr || ferry.stdout);
    rmSync(dockerConfig, { recursive: true, force: true });
    for (const repo of ['crane/app', 'ferry/app']) assert.equal((await lab.dstClient.verifyImage(repo, 'v1')).digest, image.digest);
    const after = await link.counters();
    for (const side of ['source', 'destination'] as const) {
      assert.ok(after[side].connections - before[side].connections >= 2, `${side}: both copies went through the proxy`);
      assert.ok(after[side].bytesDown + after[side].bytesUp - before[side].bytesDown - before[side].bytesUp > 43_000, `${side}: the image's bytes crossed the proxy`);
    }
  } finally {
    await lab.stop();
  }
});

test('npm run bench -- --wan --quick: fleet through the agent and crane in the lab, verified, against the floor', { timeout: 240_000 }, async () => {
  const out = mkdtempSync(join(tmpdir(), 'ferry-bench-wan-test-'));
  try {
    const args = [BENCH, '--wan', '--quick', '--ferry', 'source', '--workload', 'many,fleet', '--tools', 'ferry,crane', '--wan-rtt', '20', '--fleet-parallel', '2', '--out', out];
    const { code, output } = await new Promise<{ code: number; output: string }>((resolve, reject) => {
      const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
      let output = '';
      child.stdout.on('data', (d) => (output += d));
      child.stderr.on('data', (d) => (output += d));
      child.on('error', reject);
      child.on('close', (c) => resolve({ code: c ?? -1, output }));
    });
    assert.equal(code, 0, output);
    const r = JSON.parse(readFileSync(join(out, 'results-wan.json'), 'utf8')) as WanResults;
    assert.equal(r.mode, 'wan');
    assert.equal(r.config.rtt_ms, 20);
    assert.deepEqual(r.workloads.map((w) => w.name), ['many', 'fleet']);
    for (const w of r.workloads) {
      assert.ok(w.floor.seconds > 0 && w.floor.round_trips >= 6, `${w.name}: floor`);
      assert.equal(w.probes.length, 2);
      for (const tool of ['ferry', 'crane']) {
        const run = (w.runs[tool] as Array<RunResult & { connections: { source: number; destination: number } }>)[0]!;
        assert.ok(run.ok && run.verified, `${w.name}/${tool}: ${run.error ?? 'not verified'}`);
        assert.ok(run.connections.source > 0 && run.connections.destination > 0, `${w.name}/${tool}: connections through the lab`);
        // No copy can beat the floor: it is the least the work needs at this RTT.
        assert.ok(run.wall_s >= w.floor.seconds, `${w.name}/${tool}: ${run.wall_s} s, under the floor ${w.floor.seconds} s`);
      }
    }
    const fleet = r.workloads.find((w) => w.name === 'fleet')!;
    assert.equal(fleet.installs, 2);
    assert.match(fleet.ferry_mode ?? '', /ferry agent/);
    assert.ok(r.targets.length > 0 && r.targets.every((t) => t.met === null), 'quick mode judges no target');
    const md = readFileSync(join(out, 'RESULTS.md'), 'utf8');
    assert.match(md, /## WAN mode/);
    assert.match(md, /Round-trip floor: \*\*\d+\.\d\d s\*\*/);
    assert.match(md, /\| ferry \| [^|]+\| [^|]+\| [^|]+\| [^|]+\| \d+\.\d\d \|/, '× floor column');
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});
