// Throttled and slow registries (issue 20): the real ferry CLI and the real agent against real
// registries (distribution 2.8) behind the harness's proxies — one that grants N requests/s and
// answers 429 + Retry-After beyond (test/harness/throttle-proxy.ts), one that counts pulls like
// Docker Hub, one whose bodies drip. Each case records a row of docs/faults.md (suite 'throttle').
import { after, before, describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { startDistribution, type DistributionRegistry } from '../harness/distribution.ts';
import { startFaultProxy, type FaultProxy, type ProxiedRequest } from '../harness/fault-proxy.ts';
import { startThrottleProxy } from '../harness/throttle-proxy.ts';
import { clientFor, type OciClient } from '../harness/oci-client.ts';
import { pushImage, pushMultiArch, type PushedManifest } from '../harness/fixtures.ts';
import { killAgents, startAgent, startWorld, tempState, VENDOR_USER, type AgentWorld } from '../agent/agent-harness.ts';
import { recordFault } from './report.ts';
import { KiB, MiB, messages, removeTempDirs, runFerry, tempDir, type FerryResult } from './helpers.ts';

let src: DistributionRegistry;
let dst: DistributionRegistry;
let srcC: OciClient;
let dstC: OciClient;
const proxies: FaultProxy[] = [];

before(async () => {
  [src, dst] = await Promise.all([startDistribution(), startDistribution()]);
  srcC = clientFor(src);
  dstC = clientFor(dst);
});

after(async () => {
  await Promise.all(proxies.map((p) => p.stop()));
  await Promise.all([src?.stop(), dst?.stop()]);
  removeTempDirs();
});

async function proxied<T extends FaultProxy>(p: Promise<T>): Promise<T> {
  const proxy = await p;
  proxies.push(proxy);
  return proxy;
}

function copy(label: string, from: string, to: string, opts: { env?: NodeJS.ProcessEnv; args?: string[]; timeoutMs?: number } = {}): Promise<FerryResult> {
  return runFerry(label, ['copy', '--json', '--log-level', 'debug', '--state-dir', tempDir('throttle-state'), ...(opts.args ?? []), from, to], opts.env ?? {}, opts.timeoutMs);
}

function ok(r: FerryResult): void {
  assert.equal(r.code, 0, `ferry copy failed (${r.code}): ${r.stderr.slice(-3000)}`);
}

async function assertByteExact(repo: string, img: PushedManifest): Promise<void> {
  const got = await dstC.verifyImage(repo, 'v1');
  assert.equal(got.digest, img.digest);
}

const digestPath = (digest: string) => new RegExp(`/blobs/${digest.replace(':', ':')}$`);

describe('a throttling destination', () => {
  test('25 requests/s granted, 429 + Retry-After: 1 beyond: the copy paces itself, one log line, no line per 429', async (t: TestContext) => {
    const repo = 'throttle/app';
    const img = await pushImage(srcC, repo, 'v1', { layerSizes: Array.from({ length: 30 }, (_, i) => 4 * KiB + i * 512) });
    const proxy = await proxied(startThrottleProxy(dst.host, { perSecond: 25, retryAfter: 1 }));
    const started = Date.now();
    const r = await copy('throttled copy', `${src.host}/${repo}:v1`, `${proxy.host}/${repo}:v1`);
    const wall = (Date.now() - started) / 1000;
    ok(r);
    await assertByteExact(repo, img);
    const refused = proxy.throttled();
    const share = proxy.refusedShare();
    const starts = r.logs.filter((l) => l.level === 30 && l.msg === 'registry is throttling: pausing and pacing requests to it for every job of this process');
    assert.equal(starts.length, refused > 0 ? 1 : 0, JSON.stringify(starts));
    if (refused > 0) assert.equal(starts[0]!.registry, proxy.host);
    // The per-request retry is a debug line for a 429: never an info line per refused request.
    assert.equal(r.logs.filter((l) => l.level >= 30 && /busy or failing/.test(String(l.msg))).length, 0);
    // Loose on purpose (the machine is shared): the benchmark's `throttled` workload measures the target (≤ 10 %).
    assert.ok(share < 0.2, `${refused} of ${proxy.requests.length} requests refused (${(share * 100).toFixed(1)} %)`);
    recordFault(t, {
      suite: 'throttle',
      fault: 'destination grants 25 requests/s, answers 429 with `Retry-After: 1` beyond (31 blobs, `ferry copy` defaults)',
      action: `paused the registry for every request on each 429 and paced to the rate it granted: ${refused} of ${proxy.requests.length} requests refused (${(share * 100).toFixed(1)} %), ${wall.toFixed(1)} s for ${proxy.accepted()} requests (their floor at 25/s: ${(proxy.accepted() / 25).toFixed(1)} s); one info line`,
      bytesResent: 0,
      outcome: 'byte-exact',
    });
  });
});

describe('Docker Hub pull limits', () => {
  test('the pull limit runs out mid-copy: REGISTRY_UNAVAILABLE naming the limit and when it frees up, at once, not after retries', async (t: TestContext) => {
    const repo = 'pulls/app';
    await pushMultiArch(srcC, repo, 'v1');
    // Two pulls left: the index and one platform's manifest; the second platform's GET finds none.
    const proxy = await proxied(startFaultProxy(src.host, { pullLimit: { limit: 100, remaining: 2, windowS: 21600 } }));
    const r = await copy('pull limit', `${proxy.host}/${repo}:v1`, `${dst.host}/${repo}:v1`);
    assert.equal(r.code, 1, r.stderr.slice(-2000));
    assert.equal(r.json?.error?.code, 'REGISTRY_UNAVAILABLE');
    assert.match(r.json.error.message, new RegExp(`${proxy.host.replace('.', '\\.')}: the pull limit is used up \\(100 pulls per 6 h, none left\\)`));
    assert.match(r.json.error.message, /all of them by \d{4}-\d\d-\d\dT[\d:.]+Z at the latest/);
    // The platforms' manifests are read side by side: each refused GET was asked once, never again.
    const refusals = proxy.requests.filter((q) => q.fault === 'pull-limit');
    assert.ok(refusals.length >= 1);
    const gets = proxy.requests.filter((q) => q.method === 'GET' && /\/manifests\//.test(q.path)).map((q) => q.path);
    assert.equal(new Set(gets).size, gets.length, `a manifest GET was sent again: ${gets.join(', ')}`);
    await assert.rejects(dstC.verifyImage(repo, 'v1'));
    recordFault(t, {
      suite: 'throttle',
      fault: 'source counts pulls like Docker Hub (`ratelimit-limit: 100;w=21600`), 2 left for a 3-manifest index',
      action: 'read `ratelimit-remaining`; the GETs that found none left were answered 429 once each and not retried',
      bytesResent: 0,
      outcome: 'REGISTRY_UNAVAILABLE naming the limit (100 pulls per 6 h) and when it frees up, exit 1, no tag written',
    });
  });
});

describe('a source that drips', () => {
  // The floor is raised and its window shortened so a test takes seconds: 64 KiB/s over 1 s.
  const FLOOR = { FERRY_READ_FLOOR_BYTES_PER_SECOND: String(64 * KiB), FERRY_READ_FLOOR_SECONDS: '1' };

  for (const path of ['pipe', 'regular'] as const) {
    test(`one drip (${path} path): the slow body is given up after the window and resumed with Range on a new connection`, async (t: TestContext) => {
      const repo = `drip-once/${path}`;
      const img = await pushImage(srcC, repo, 'v1', { layerSizes: [2 * MiB, 4 * KiB] });
      const layer = img.blobs.find((b) => b.size === 2 * MiB)!;
      const proxy = await proxied(startFaultProxy(src.host));
      // 256 KiB at once, then 8 KiB/s: far under the floor, but never silent (the read timeout never fires).
      proxy.addRule({ method: 'GET', path: digestPath(layer.digest), action: 'drip', bytesPerSecond: 8 * KiB, afterBytes: 256 * KiB, times: 1 });
      const env = { ...FLOOR, ...(path === 'regular' ? { FERRY_PIPE_MIN_BYTES: 'off' } : {}) };
      const r = await copy(`drip once ${path}`, `${proxy.host}/${repo}:v1`, `${dst.host}/${repo}:v1`, { env, timeoutMs: 60_000 });
      ok(r);
      await assertByteExact(repo, img);
      const gets = proxy.requests.filter((q) => q.method === 'GET' && digestPath(layer.digest).test(q.path));
      assert.equal(gets.length, 2, gets.map((g) => `${g.range ?? 'whole'}`).join(', '));
      assert.match(gets[1]!.range ?? '', new RegExp(`^bytes=\\d+-${2 * MiB - 1}$`));
      const resumed = messages(r, 'download interrupted; resuming');
      assert.equal(resumed.length, 1, r.stderr.slice(-3000));
      assert.match(String(resumed[0]!.err), /too slow: \d+ bytes in [\d.]+ s \([\d.]+ (B|KiB)\/s\), under the floor of 64\.0 KiB\/s/);
      const waited = (gets[1]!.at - gets[0]!.at) / 1000;
      recordFault(t, {
        suite: 'throttle',
        fault: `source drips a 2 MiB layer at 8 KiB/s after 256 KiB, once (${path} path; floor 64 KiB/s over 1 s: FERRY_READ_FLOOR_*)`,
        action: `gave the slow body up after ${waited.toFixed(1)} s (logged with its rate) and resumed with \`Range: ${gets[1]!.range}\` on a new connection`,
        bytesResent: 0,
        outcome: 'byte-exact',
      });
    });
  }

  test('a source that keeps dripping: after five slow reads, REGISTRY_UNAVAILABLE naming the host and the rate, in bounded time', async (t: TestContext) => {
    const repo = 'drip-always/app';
    const img = await pushImage(srcC, repo, 'v1', { layerSizes: [2 * MiB, 4 * KiB] });
    const layer = img.blobs.find((b) => b.size === 2 * MiB)!;
    const proxy = await proxied(startFaultProxy(src.host));
    proxy.addRule({ method: 'GET', path: digestPath(layer.digest), action: 'drip', bytesPerSecond: 4 * KiB, afterBytes: 64 * KiB });
    const started = Date.now();
    const r = await copy('drip always', `${proxy.host}/${repo}:v1`, `${dst.host}/${repo}:v1`, { env: FLOOR, timeoutMs: 90_000 });
    const wall = (Date.now() - started) / 1000;
    assert.equal(r.code, 1, r.stderr.slice(-2000));
    assert.equal(r.json?.error?.code, 'REGISTRY_UNAVAILABLE');
    assert.match(r.json.error.message, new RegExp(`download from ${proxy.host.replace('.', '\\.')} too slow: .*\\([\\d.]+ (B|KiB)/s\\), under the floor of 64\\.0 KiB/s.*gave up after 5 slow reads`));
    const gets = proxy.requests.filter((q) => q.method === 'GET' && digestPath(layer.digest).test(q.path));
    assert.equal(gets.length, 5);
    await assert.rejects(dstC.verifyImage(repo, 'v1'));
    recordFault(t, {
      suite: 'throttle',
      fault: 'source drips a 2 MiB layer at 4 KiB/s on every GET (floor 64 KiB/s over 1 s)',
      action: `resumed it with Range 4 times, then gave up (${gets.length} GETs, ${wall.toFixed(1)} s in all)`,
      bytesResent: 0,
      outcome: 'REGISTRY_UNAVAILABLE naming the host and the rate, exit 1, no tag written',
    });
  });
});

describe('ferry copy --timeout', () => {
  test('a copy still running at the deadline stops with REGISTRY_UNAVAILABLE saying so, and leaves no upload session', async (t: TestContext) => {
    const repo = 'deadline/app';
    const img = await pushImage(srcC, repo, 'v1', { layerSizes: [MiB, 4 * KiB] });
    const layer = img.blobs.find((b) => b.size === MiB)!;
    const proxy = await proxied(startFaultProxy(src.host));
    proxy.addRule({ method: 'GET', path: digestPath(layer.digest), action: 'stall', afterBytes: 64 * KiB, ms: 600_000 });
    const dstProxy = await proxied(startFaultProxy(dst.host));
    const started = Date.now();
    const r = await copy('deadline', `${proxy.host}/${repo}:v1`, `${dstProxy.host}/${repo}:v1`, { args: ['--timeout', '3s'], timeoutMs: 60_000 });
    const wall = (Date.now() - started) / 1000;
    assert.equal(r.code, 1, r.stderr.slice(-2000));
    assert.equal(r.json?.error?.code, 'REGISTRY_UNAVAILABLE');
    assert.match(r.json.error.message, /^the copy did not finish within --timeout 3s \(\d+ of 3 blobs, .* done\): the registries were too slow/);
    assert.ok(wall < 30, `the deadline of 3 s ended the copy after ${wall.toFixed(1)} s`);
    // Every session opened and not committed was deleted.
    const posts = dstProxy.requests.filter((q: ProxiedRequest) => q.method === 'POST' && /\/blobs\/uploads\/$/.test(q.path.split('?')[0]!) && q.status === 202).length;
    const commits = dstProxy.requests.filter((q: ProxiedRequest) => q.method === 'PUT' && /\/blobs\/uploads\/.*[?&]digest=/.test(q.path) && q.status === 201).length;
    const deletes = dstProxy.requests.filter((q: ProxiedRequest) => q.method === 'DELETE').length;
    assert.ok(posts > commits, 'no upload was open at the deadline: nothing was tested');
    assert.equal(deletes, posts - commits);
    recordFault(t, {
      suite: 'throttle',
      fault: '`ferry copy --timeout 3s` with a source that stalls a layer for 10 minutes',
      action: `stopped at the deadline (${wall.toFixed(1)} s in all), deleted ${deletes} open upload session(s)`,
      bytesResent: 0,
      outcome: 'REGISTRY_UNAVAILABLE "did not finish within --timeout 3s (n of 3 blobs … done)", exit 1, no tag written',
    });
  });
});

describe('the agent: one flow controller for every job', () => {
  let world: AgentWorld;
  let vendor: OciClient;

  before(async () => {
    world = await startWorld();
    vendor = clientFor(world.vendor, { username: VENDOR_USER.name, password: VENDOR_USER.password });
  });
  after(async () => {
    killAgents();
    await world?.stop();
  });

  const job = (srcRepo: string, localHost: string, dstRepo: string) => ({
    type: 'oci-sync',
    source: { reference: `${world.vendor.host}/${srcRepo}:v1`, auth: { kind: 'one-time-token' } },
    destination: { reference: `${localHost}/${dstRepo}:v1`, auth: { kind: 'local' } },
    platforms: 'all',
    referrers: false,
  });

  test('a 429 + Retry-After: 2 to one job pauses the local registry for all three; the metrics show it', async (t: TestContext) => {
    const proxy = await proxied(startFaultProxy(world.local.host));
    for (const i of [1, 2, 3]) await pushImage(vendor, `pause/app${i}`, 'v1', { layerSizes: Array.from({ length: 8 }, (_, k) => 32 * KiB + k) });
    // Every blob upload is held 200 ms, so the three jobs are surely in the middle of their transfers at the 429.
    proxy.addRule({ method: 'PUT', path: /\/blobs\/uploads\//, action: 'delay', ms: 200 });
    const refusal = proxy.addRule({ method: 'HEAD', path: /\/blobs\/sha256:/, action: 'status', status: 429, retryAfter: 2, skip: 6, times: 1 });
    const ids = [1, 2, 3].map((i) => world.cp.enqueueJob(job(`pause/app${i}`, proxy.host, `install_1/pause${i}`)));
    const agent = startAgent(world, tempState(), ['--local-registry', proxy.host, '--max-jobs', '3', '--health-addr', '127.0.0.1:0', '--log-level', 'info']);
    const url = `http://${JSON.parse(await agent.waitForLog(/health server listening/)).addr as string}`;
    await waitUntil(() => ids.every((id) => ['finished', 'failed'].includes(world.cp.job(id).status)), 90_000);
    const metrics = await (await fetch(`${url}/metrics`)).text();
    agent.proc.kill('SIGTERM');
    assert.equal(await agent.exited, 0, agent.logs().slice(-3000));
    for (const id of ids) assert.equal(world.cp.job(id).status, 'finished', JSON.stringify(world.cp.job(id).result));
    assert.equal(refusal.hits(), 1);
    const refused = proxy.requests.find((q) => q.fault === 'status')!;
    // Nothing reached the registry while it asked for quiet: not from that job, not from the others.
    const during = proxy.requests.filter((q) => q.at > refused.at + 150 && q.at < refused.at + 1850);
    assert.equal(during.length, 0, during.map((q) => `${q.method} ${q.path} +${q.at - refused.at} ms`).join('\n'));
    // (Requests already on their way when the 429 was answered may arrive just after it.)
    const next = proxy.requests.find((q) => q.at > refused.at + 150)!;
    const lines = agent.logs().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { msg: string; registry?: string });
    assert.equal(lines.filter((l) => /registry is throttling/.test(l.msg)).length, 1);
    const label = `{registry="${proxy.host}"}`;
    assert.match(metrics, new RegExp(`ferry_registry_throttled_total${escape(label)} 1\\b`));
    assert.match(metrics, new RegExp(`ferry_registry_paused_seconds_total${escape(label)} 2\\b`));
    assert.match(metrics, new RegExp(`ferry_registry_concurrency${escape(label)} \\d+`));
    recordFault(t, {
      suite: 'throttle',
      fault: 'agent, 3 jobs at once into one local registry; one blob HEAD answered 429 with `Retry-After: 2`',
      action: `paused the registry for all three jobs: after the requests already on their way, none reached it until ${((next.at - refused.at) / 1000).toFixed(2)} s after the 429; one info line; ferry_registry_throttled_total 1, ferry_registry_paused_seconds_total 2`,
      bytesResent: 0,
      outcome: 'byte-exact (3 jobs)',
    });
  });

  test('--concurrency 2 holds across three jobs: never more than two blob uploads at the local registry at once', async (t: TestContext) => {
    const proxy = await proxied(startFaultProxy(world.local.host));
    for (const i of [1, 2, 3]) await pushImage(vendor, `caps/app${i}`, 'v1', { layerSizes: Array.from({ length: 6 }, (_, k) => 16 * KiB + k) });
    // Slow uploads: without the shared cap, three jobs would have up to 3 × 2 in flight.
    proxy.addRule({ method: 'PUT', path: /\/blobs\/uploads\//, action: 'delay', ms: 300 });
    const ids = [1, 2, 3].map((i) => world.cp.enqueueJob(job(`caps/app${i}`, proxy.host, `install_1/caps${i}`)));
    const agent = startAgent(world, tempState(), ['--local-registry', proxy.host, '--max-jobs', '3', '--concurrency', '2', '--exit-when-idle']);
    assert.equal(await agent.exited, 0, agent.logs().slice(-3000));
    for (const id of ids) assert.equal(world.cp.job(id).status, 'finished', JSON.stringify(world.cp.job(id).result));
    const uploads = proxy.requests.filter((q) => q.method === 'PUT' && /\/blobs\/uploads\//.test(q.path));
    assert.equal(uploads.length, 3 * 7);
    const peak = peakOverlap(uploads);
    assert.equal(peak, 2, `peak ${peak} uploads at once`);
    recordFault(t, {
      suite: 'throttle',
      fault: 'agent, 3 jobs at once, `--concurrency 2`, every blob upload held 300 ms',
      action: `at most ${peak} blob uploads in flight at the local registry at any moment (21 uploads)`,
      bytesResent: 0,
      outcome: 'byte-exact (3 jobs)',
    });
  });
});

/** The most requests in flight at once (arrival to the end of the answer). */
function peakOverlap(requests: ProxiedRequest[]): number {
  const events = requests.flatMap((q) => [
    [q.at, 1],
    [q.doneAt ?? Number.POSITIVE_INFINITY, -1],
  ] as Array<[number, number]>);
  events.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let now = 0;
  let peak = 0;
  for (const [, d] of events) {
    now += d;
    peak = Math.max(peak, now);
  }
  return peak;
}

function escape(s: string): string {
  return s.replace(/[{}.*+?^$()|[\]\\]/g, '\\$&');
}

async function waitUntil(cond: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 100));
  }
}
