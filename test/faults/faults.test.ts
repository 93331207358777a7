// The fault-injection suite (issue 5): every fault below runs the real ferry CLI (and, for the
// control-plane restart, the real agent) against real registries — distribution 2.8 and crane's
// registry — through the harness's fault proxy. Each case ends byte-exact (checked with the
// harness's own client) or with a clear error code and no tag written; each records one row of
// the report table in docs/faults.md (recordFault, suite 'fault'). The suite keeps every line
// every ferry process printed and checks, last, that no password or token appears in any.
//
// "Bytes re-sent" is measured at the destination's fault proxy: request-body bytes it received
// beyond one clean copy of the image (every blob once, plus the manifest). For a failed copy it
// is a lower bound (the image never went up whole).
import { after, before, describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { startDistribution, type DistributionRegistry } from '../harness/distribution.ts';
import { startCraneRegistry, type CraneRegistry } from '../harness/crane-registry.ts';
import { startFaultProxy, type FaultProxy, type ProxiedRequest } from '../harness/fault-proxy.ts';
import { startControlPlane, type ControlPlane } from '../harness/control-plane.ts';
import { clientFor, type OciClient } from '../harness/oci-client.ts';
import { pushImage, pushLargeImage, type PushedManifest } from '../harness/fixtures.ts';
import { SUITE_SEED } from '../harness/seed.ts';
import { killAgents, plan, startAgent, startWorld, VENDOR_USER, waitFor, type AgentWorld } from '../agent/agent-harness.ts';
import { journalFiles } from '../resume/helpers.ts';
import { recordFault } from './report.ts';
import { KiB, MiB, capture, captured, human, imageBytes, liveUploads, messages, removeTempDirs, runFerry, startFerry, tempDir, uploadMeter, type FerryResult } from './helpers.ts';

// Credentials the copies use: token auth on the source, htpasswd on the destination. The
// secrets check at the end looks for them (and their Basic-header form) in every line.
const SRC_USER = { username: 'fault-src-reader', password: 'Src-pull-pass-7c1e9a!' };
const DST_USER = { username: 'fault-dst-pusher', password: 'Dst-push-pass-04b2f8?' };
const CREDS_ENV = { FERRY_FAULT_SRC_CREDS: `${SRC_USER.username}:${SRC_USER.password}`, FERRY_FAULT_DST_CREDS: `${DST_USER.username}:${DST_USER.password}` };
/** Every secret any process of the suite was given; the last test checks no output line holds one. */
const secrets = new Set<string>([
  SRC_USER.password,
  DST_USER.password,
  Buffer.from(`${SRC_USER.username}:${SRC_USER.password}`).toString('base64'),
  Buffer.from(`${DST_USER.username}:${DST_USER.password}`).toString('base64'),
]);

/** One end of a copy: a registry behind its fault proxy. */
interface End {
  name: string;
  proxy: FaultProxy;
  /** The harness's own client, straight to the registry (not through the proxy). */
  client: OciClient;
  /** Environment variable holding USER:PASS, when the registry needs credentials. */
  credsEnv?: string;
  storageDir: string;
}

interface CopyOptions {
  env?: NodeJS.ProcessEnv;
  timeoutMs?: number;
}

const UPLOAD_RE = /\/blobs\/uploads\//;

function copyArgs(from: End, to: End, repo: string, stateDir: string): string[] {
  return [
    'copy',
    '--json',
    '--log-level',
    'debug',
    '--state-dir',
    stateDir,
    ...(from.credsEnv ? ['--src-creds', `env:${from.credsEnv}`] : []),
    ...(to.credsEnv ? ['--dst-creds', `env:${to.credsEnv}`] : []),
    `${from.proxy.host}/${repo}:v1`,
    `${to.proxy.host}/${repo}:v1`,
  ];
}

async function copy(from: End, to: End, repo: string, opts: CopyOptions = {}): Promise<FerryResult & { stateDir: string }> {
  const stateDir = tempDir('fault-state');
  const r = await runFerry(`copy ${repo}`, copyArgs(from, to, repo, stateDir), { ...CREDS_ENV, ...opts.env }, opts.timeoutMs);
  return { ...r, stateDir };
}

/** The destination holds the source's image byte for byte: same root digest, every blob there and hashing right. */
async function assertByteExact(from: End, to: End, repo: string, pushed: PushedManifest): Promise<void> {
  const want = await from.client.verifyImage(repo, 'v1');
  const got = await to.client.verifyImage(repo, 'v1');
  assert.equal(want.digest, pushed.digest);
  assert.equal(got.digest, pushed.digest, 'destination digest differs from the source');
  assert.deepEqual(got.blobs.map((b) => b.digest).sort(), pushed.blobs.map((b) => b.digest).sort());
}

function ok(r: FerryResult): void {
  assert.equal(r.code, 0, `ferry failed (${r.signal ?? r.code}):\n${r.stderr.slice(-4000)}`);
}

/** The copy failed with `code`, exit 1, and wrote no tag. */
async function assertFailedCleanly(r: FerryResult, code: string, to: End, repo: string): Promise<void> {
  assert.equal(r.code, 1, `expected exit 1:\n${r.stderr.slice(-3000)}`);
  assert.equal(r.json?.error?.code, code, r.stdout);
  assert.match(r.stderr, new RegExp(`ferry: ${code}: `));
  assert.equal(await to.client.headManifest(repo, 'v1'), undefined, 'a tag was written for an incomplete image');
}

const digestPath = (digest: string) => new RegExp(`/blobs/${digest}$`);
const commitPath = (digest: string) => new RegExp(`/blobs/uploads/.*digest=sha256(%3A|:)${digest.split(':')[1]}`);
/** The upload session a request is about: its path without the query. */
const sessionOf = (q: ProxiedRequest) => q.path.split('?')[0]!;

function transferSummary(r: FerryResult): string {
  const t = r.json?.transfer;
  if (!t) return '';
  const parts = [];
  if (t.blobs_restarted) parts.push(`${t.blobs_restarted} blob restart(s)`);
  if (t.blobs_resumed) parts.push(`${t.blobs_resumed} blob(s) resumed from the registry's offset`);
  return parts.join(', ');
}

let src: DistributionRegistry;
let dst: DistributionRegistry;
let crane: CraneRegistry;

before(async () => {
  [src, dst, crane] = await Promise.all([
    startDistribution({ auth: 'token', users: { [SRC_USER.username]: SRC_USER.password } }),
    startDistribution({ auth: 'htpasswd', users: { [DST_USER.username]: DST_USER.password } }),
    startCraneRegistry(),
  ]);
  console.log(`# fault suite seed ${SUITE_SEED} (replay with FERRY_TEST_SEED=${SUITE_SEED})`);
});
after(async () => {
  await Promise.all([src?.stop(), dst?.stop(), crane?.stop()]);
  removeTempDirs();
});

const srcEnd = (proxy: FaultProxy): End => ({ name: 'distribution 2.8', proxy, client: clientFor(src, SRC_USER), credsEnv: 'FERRY_FAULT_SRC_CREDS', storageDir: src.storageDir });
const dstEnd = (proxy: FaultProxy, registry: DistributionRegistry = dst): End => ({
  name: 'distribution 2.8',
  proxy,
  client: clientFor(registry, DST_USER),
  credsEnv: 'FERRY_FAULT_DST_CREDS',
  storageDir: registry.storageDir,
});
const craneEnd = (proxy: FaultProxy): End => ({ name: 'crane registry', proxy, client: clientFor(crane), storageDir: crane.storageDir });

/** Fresh fault proxies for one test (so byte counts and request logs are that test's alone), stopped when it ends. */
async function rig(t: TestContext): Promise<{ SRC: End; DST: End; CRANE: End }> {
  const [a, b, c] = await Promise.all([startFaultProxy(src.host), startFaultProxy(dst.host), startFaultProxy(crane.host)]);
  t.after(() => Promise.all([a.stop(), b.stop(), c.stop()]));
  return { SRC: srcEnd(a), DST: dstEnd(b), CRANE: craneEnd(c) };
}

// Cases are independent (own repositories, own proxies): three at a time, to overlap their backoff waits.
describe('fault injection: ferry copy against distribution 2.8 and crane\'s registry, through the fault proxy', { concurrency: 3 }, () => {

  // ---- connection resets ----------------------------------------------------------------

  for (const kind of ['distribution', 'crane'] as const) {
    test(`connection reset mid-download (source: ${kind}): the download resumes with Range, nothing is re-sent`, async (t: TestContext) => {
      const { SRC, DST, CRANE } = await rig(t);
      const from = kind === 'distribution' ? SRC : CRANE;
      const repo = `reset-down/${kind}`;
      const img = await pushImage(from.client, repo, 'v1', { layerSizes: [3 * MiB, 4 * KiB] });
      const layer = img.blobs.find((b) => b.size === 3 * MiB)!;
      const rule = from.proxy.addRule({ method: 'GET', path: digestPath(layer.digest), action: 'reset-after-bytes', bytes: MiB, times: 1 });
      const sent = uploadMeter(DST.proxy);
      const r = await copy(from, DST, repo);
      rule.remove();
      ok(r);
      assert.equal(rule.hits(), 1);
      const gets = from.proxy.requests.filter((q) => q.method === 'GET' && digestPath(layer.digest).test(q.path));
      assert.equal(gets.length, 2, 'expected the cut GET and one resumed GET');
      assert.equal(gets[1]!.range, `bytes=${MiB}-${3 * MiB - 1}`, 'the resumed GET did not start where the cut one stopped');
      const resent = sent() - imageBytes(img);
      assert.equal(resent, 0, 'bytes went to the destination twice');
      assert.equal(r.json.transfer.bytes_resent, 0);
      await assertByteExact(from, DST, repo, img);
      recordFault(t, {
        suite: 'fault',
        fault: `connection reset mid-download (source: ${from.name}, cut after 1 MiB of 3 MiB)`,
        action: `resumed the download with \`Range: ${gets[1]!.range}\` (answered ${gets[1]!.status}); the upload stream waited and went on`,
        bytesResent: resent,
        outcome: 'byte-exact',
      });
    });
  }

  for (const kind of ['distribution', 'crane'] as const) {
    test(`connection reset mid-PATCH (destination: ${kind}): the upload continues or restarts, byte-exact`, async (t: TestContext) => {
      const { SRC, DST, CRANE } = await rig(t);
      const to = kind === 'distribution' ? DST : CRANE;
      const repo = `reset-patch/${kind}`;
      const img = await pushImage(SRC.client, repo, 'v1', { layerSizes: [5 * MiB, 4 * KiB] });
      // 1 MiB chunks: the 5 MiB layer goes up as 4 PATCHes and a PUT; the second PATCH is cut halfway.
      const rule = to.proxy.addRule({ method: 'PATCH', path: UPLOAD_RE, action: 'reset-after-bytes', on: 'request', bytes: 512 * KiB, skip: 1, times: 1 });
      const sent = uploadMeter(to.proxy);
      const r = await copy(SRC, to, repo, { env: { FERRY_UPLOAD_CHUNK_BYTES: String(MiB) } });
      rule.remove();
      ok(r);
      assert.equal(rule.hits(), 1);
      const t0 = r.json.transfer;
      assert.ok(t0.blobs_restarted + t0.blobs_resumed >= 1, 'the cut chunk went unnoticed');
      const restarted = messages(r, 'blob upload failed; restarting it from the beginning');
      const resumed = messages(r, 'chunk failed; resuming upload');
      assert.ok(restarted.length + resumed.length >= 1, 'no log line says what ferry did about the cut chunk');
      await assertByteExact(SRC, to, repo, img);
      const resent = sent() - imageBytes(img);
      assert.ok(resent > 0);
      const dropped = messages(r, 'registry dropped or desynchronized the upload session')[0];
      recordFault(t, {
        suite: 'fault',
        fault: `connection reset mid-PATCH (destination: ${to.name}, 2nd 1 MiB chunk cut after 512 KiB)`,
        action:
          resumed.length > 0
            ? `asked the registry for the upload's offset and continued from ${human(resumed[0]!.offset)}`
            : `asked for the upload's offset (${dropped ? `registry: ${dropped.status}` : 'no answer'}), deleted the session and restarted the blob`,
        bytesResent: resent,
        outcome: 'byte-exact',
      });
    });
  }

  for (const kind of ['distribution', 'crane'] as const) {
    test(`connection reset mid-PUT (destination: ${kind}): the blob is sent again, byte-exact`, async (t: TestContext) => {
      const { SRC, DST, CRANE } = await rig(t);
      const to = kind === 'distribution' ? DST : CRANE;
      const repo = `reset-put/${kind}`;
      const img = await pushImage(SRC.client, repo, 'v1', { layerSizes: [2 * MiB, 4 * KiB] });
      const layer = img.blobs.find((b) => b.size === 2 * MiB)!;
      const rule = to.proxy.addRule({ method: 'PUT', path: commitPath(layer.digest), action: 'reset-after-bytes', on: 'request', bytes: MiB, times: 1 });
      const sent = uploadMeter(to.proxy);
      const r = await copy(SRC, to, repo);
      rule.remove();
      ok(r);
      assert.equal(rule.hits(), 1);
      assert.ok(r.json.transfer.blobs_restarted >= 1, 'the cut PUT was not restarted');
      assert.ok(messages(r, 'blob upload failed; restarting it from the beginning').length >= 1);
      await assertByteExact(SRC, to, repo, img);
      const resent = sent() - imageBytes(img);
      assert.ok(resent >= MiB);
      recordFault(t, {
        suite: 'fault',
        fault: `connection reset mid-PUT (destination: ${to.name}, monolithic 2 MiB PUT cut after 1 MiB)`,
        action: 'deleted the session and sent the blob again in a new one (one restart, logged and counted)',
        bytesResent: resent,
        outcome: 'byte-exact',
      });
    });
  }

  // ---- a stalled source ------------------------------------------------------------------

  test('stalled source (no bytes for longer than the read timeout): ferry times out and resumes with Range', async (t: TestContext) => {
    const { SRC, DST } = await rig(t);
    const repo = 'stall/app';
    const img = await pushImage(SRC.client, repo, 'v1', { layerSizes: [3 * MiB, 4 * KiB] });
    const layer = img.blobs.find((b) => b.size === 3 * MiB)!;
    // 1 MiB flows, then nothing for ten minutes (the connection stays open).
    const rule = SRC.proxy.addRule({ method: 'GET', path: digestPath(layer.digest), action: 'stall', afterBytes: MiB, ms: 600_000, times: 1 });
    const sent = uploadMeter(DST.proxy);
    // The guard is below ferry's default 60 s read timeout: only FERRY_READ_TIMEOUT_SECONDS can end the stall in time.
    const r = await copy(SRC, DST, repo, { env: { FERRY_READ_TIMEOUT_SECONDS: '1.5' }, timeoutMs: 45_000 });
    rule.remove();
    ok(r);
    assert.equal(rule.hits(), 1);
    const gets = SRC.proxy.requests.filter((q) => q.method === 'GET' && digestPath(layer.digest).test(q.path));
    assert.equal(gets.length, 2);
    assert.equal(gets[1]!.range, `bytes=${MiB}-${3 * MiB - 1}`);
    const waited = gets[1]!.at - gets[0]!.at;
    assert.ok(waited >= 1500 - 10, `resumed after ${waited} ms, before the 1.5 s read timeout`);
    const resumeLog = messages(r, 'download interrupted; resuming');
    assert.equal(resumeLog.length, 1, r.stderr.slice(-3000));
    assert.equal(resumeLog[0]!.offset, MiB);
    assert.match(String(resumeLog[0]!.err), /timeout/i);
    const resent = sent() - imageBytes(img);
    assert.equal(resent, 0);
    await assertByteExact(SRC, DST, repo, img);
    recordFault(t, {
      suite: 'fault',
      fault: 'stalled source: 1 MiB, then no bytes (read timeout FERRY_READ_TIMEOUT_SECONDS=1.5)',
      action: `timed out the silent download (the resumed GET came ${(waited / 1000).toFixed(1)} s after the first) and resumed it with \`Range: ${gets[1]!.range}\` (logged)`,
      bytesResent: resent,
      outcome: 'byte-exact',
    });
  });

  // ---- 5xx storms --------------------------------------------------------------------------

  for (const status of [500, 502, 503] as const) {
    for (const kind of ['distribution', 'crane'] as const) {
      test(`${status} storm on every kind of request (destination: ${kind}): retried, byte-exact`, async (t: TestContext) => {
        const { SRC, DST, CRANE } = await rig(t);
        const to = kind === 'distribution' ? DST : CRANE;
        const repo = `storm${status}/${kind}`;
        const img = await pushImage(SRC.client, repo, 'v1', { layerSizes: [512 * KiB, 3 * MiB] });
        // The first two requests of every kind are answered `status`, on both sides.
        const storm = (proxy: FaultProxy, method: string, path: RegExp) => proxy.addRule({ method, path, action: 'status', status, times: 2 });
        const rules = [
          storm(SRC.proxy, 'GET', new RegExp(`/${repo}/manifests/`)),
          storm(SRC.proxy, 'GET', new RegExp(`/${repo}/blobs/sha256:`)),
          storm(to.proxy, 'HEAD', new RegExp(`/${repo}/manifests/`)),
          storm(to.proxy, 'HEAD', new RegExp(`/${repo}/blobs/sha256:`)),
          storm(to.proxy, 'POST', new RegExp(`/${repo}/blobs/uploads/`)),
          storm(to.proxy, 'PATCH', new RegExp(`/${repo}/blobs/uploads/`)),
          storm(to.proxy, 'PUT', new RegExp(`/${repo}/blobs/uploads/`)),
          storm(to.proxy, 'PUT', new RegExp(`/${repo}/manifests/`)),
        ];
        const sent = uploadMeter(to.proxy);
        const r = await copy(SRC, to, repo, { env: { FERRY_UPLOAD_CHUNK_BYTES: String(MiB) } });
        for (const x of rules) x.remove();
        ok(r);
        for (const x of rules) assert.equal(x.hits(), 2, `rule ${x.rule.method} ${x.rule.path} hit ${x.hits()} times`);
        await assertByteExact(SRC, to, repo, img);
        const resent = sent() - imageBytes(img);
        const retried = messages(r, 'registry busy or failing; retrying').length;
        recordFault(t, {
          suite: 'fault',
          fault: `${status} storm (destination: ${to.name}): the first 2 requests of each of 8 kinds answered ${status}`,
          action: `retried ${retried} request(s) with backoff; failed uploads: ${transferSummary(r) || 'none restarted'}`,
          bytesResent: resent,
          outcome: 'byte-exact',
        });
      });
    }
  }

  // ---- 429 with Retry-After ----------------------------------------------------------------

  test('429 with Retry-After on a download, a HEAD and a PATCH: ferry waits at least that long each time', async (t: TestContext) => {
    const { SRC, DST } = await rig(t);
    const repo = 'busy/app';
    const img = await pushImage(SRC.client, repo, 'v1', { layerSizes: [512 * KiB, 3 * MiB] });
    const layer = img.blobs.find((b) => b.size === 3 * MiB)!;
    const RETRY_AFTER_S = 1;
    const rules: Array<{ proxy: FaultProxy; rule: ReturnType<FaultProxy['addRule']>; next: (faulted: ProxiedRequest) => (q: ProxiedRequest) => boolean }> = [
      {
        proxy: SRC.proxy,
        rule: SRC.proxy.addRule({ method: 'GET', path: digestPath(layer.digest), action: 'status', status: 429, retryAfter: RETRY_AFTER_S, times: 1 }),
        next: (f) => (q) => q.method === 'GET' && q.path === f.path,
      },
      {
        proxy: DST.proxy,
        rule: DST.proxy.addRule({ method: 'HEAD', path: new RegExp(`/${repo}/blobs/sha256:`), action: 'status', status: 429, retryAfter: RETRY_AFTER_S, times: 1 }),
        next: (f) => (q) => q.method === 'HEAD' && q.path === f.path,
      },
      {
        proxy: DST.proxy,
        rule: DST.proxy.addRule({ method: 'PATCH', path: new RegExp(`/${repo}/blobs/uploads/`), action: 'status', status: 429, retryAfter: RETRY_AFTER_S, skip: 1, times: 1 }),
        // After a refused chunk: the next request about the same upload session (status or PATCH).
        next: (f) => (q) => sessionOf(q) === sessionOf(f),
      },
    ];
    const sent = uploadMeter(DST.proxy);
    const r = await copy(SRC, DST, repo, { env: { FERRY_UPLOAD_CHUNK_BYTES: String(MiB) } });
    for (const x of rules) x.rule.remove();
    ok(r);
    const waits: number[] = [];
    for (const x of rules) {
      assert.equal(x.rule.hits(), 1);
      const log = x.proxy.requests;
      const i = log.findIndex((q) => q.status === 429 && q.method === x.rule.rule.method);
      assert.ok(i >= 0);
      const faulted = log[i]!;
      const after = log.slice(i + 1).find(x.next(faulted));
      assert.ok(after, `no request followed the 429 on ${faulted.method} ${faulted.path}`);
      const waited = after.at - faulted.at;
      // Measured between arrivals at the proxy; 10 ms allows for timer granularity.
      assert.ok(waited >= RETRY_AFTER_S * 1000 - 10, `${faulted.method} ${faulted.path}: next request after ${waited} ms, Retry-After was ${RETRY_AFTER_S} s`);
      waits.push(waited);
    }
    await assertByteExact(SRC, DST, repo, img);
    const resent = sent() - imageBytes(img);
    recordFault(t, {
      suite: 'fault',
      fault: `429 with \`Retry-After: ${RETRY_AFTER_S}\` on a blob GET, a blob HEAD and a PATCH`,
      action: `waited ${waits.map((w) => `${(w / 1000).toFixed(2)} s`).join(', ')} (measured at the proxy) before the next request; the PATCH continued from the registry's offset`,
      bytesResent: resent,
      outcome: 'byte-exact',
    });
  });

  // ---- the destination's disk full ---------------------------------------------------------

  const DISK_FULL = 'filesystem: write /var/lib/registry/docker/registry/v2/repositories/_uploads/data: no space left on device';
  const writes = (repo: string): Array<{ method: string; path: RegExp }> => [
    { method: 'PATCH', path: new RegExp(`/${repo}/blobs/uploads/`) },
    { method: 'PUT', path: new RegExp(`/${repo}/blobs/uploads/`) },
  ];

  for (const status of [507, 500] as const) {
    test(`disk full: every write answered ${status} → DESTINATION_REJECTED, exit 1, no tag, sessions cleaned up`, async (t: TestContext) => {
    const { SRC, DST } = await rig(t);
      const repo = `full${status}/app`;
      const img = await pushImage(SRC.client, repo, 'v1', { layerSizes: [512 * KiB, 3 * MiB] });
      const rules = writes(repo).map((w) =>
        DST.proxy.addRule({ ...w, action: 'status', status, code: status === 507 ? 'UNKNOWN' : 'UNKNOWN', message: status === 507 ? 'insufficient storage' : DISK_FULL }),
      );
      const first = DST.proxy.requests.length;
      const sent = uploadMeter(DST.proxy);
      const r = await copy(SRC, DST, repo, { env: { FERRY_UPLOAD_CHUNK_BYTES: String(MiB) } });
      for (const x of rules) x.remove();
      const code = 'DESTINATION_REJECTED';
      await assertFailedCleanly(r, code, DST, repo);
      const message: string = r.json.error.message;
      assert.match(message, new RegExp(`HTTP ${status}`));
      if (status === 507) assert.match(message, /out of storage/, 'the message does not say the registry is out of storage');
      else {
        assert.match(message, /no space left on device/, 'the registry\'s own words are not in the message');
        // What to do: the registry's storage and logs, not the network.
        assert.match(message, /failed to store the data/);
        assert.match(message, /check its storage and its logs/);
        assert.doesNotMatch(message, /connectivity|proxy/i);
      }
      const log = DST.proxy.requests.slice(first);
      const posts = log.filter((q) => q.method === 'POST').length;
      const deletes = log.filter((q) => q.method === 'DELETE' && UPLOAD_RE.test(q.path)).length;
      const refused = log.filter((q) => q.status === status).length;
      assert.ok(posts >= 1);
      assert.equal(deletes, posts, `every upload session ferry opened must be deleted; requests: ${log.map((q) => `${q.method} ${q.path.slice(0, 60)} ${q.status}`).join(', ')}`);
      assert.deepEqual(liveUploads(DST.storageDir, repo), [], 'upload sessions left at the registry');
      assert.equal(journalFiles(r.stateDir).size, 0, 'journal entries left for sessions that no longer exist');
      for (const b of img.blobs) assert.equal(await DST.client.blobExists(repo, b.digest), false);
      recordFault(t, {
        suite: 'fault',
        fault: `destination disk full: every PATCH and PUT answered ${status}${status === 500 ? ' "no space left on device" (as distribution reports it)' : ' Insufficient Storage'}`,
        action:
          status === 507
            ? `stopped at the first refusal (${refused} write(s) refused, no retry); deleted all ${deletes} upload session(s)`
            : `retried (${refused} writes refused in all, ${posts} session(s) opened), then gave up; deleted all ${deletes} upload session(s)`,
        bytesResent: Math.max(0, sent() - imageBytes(img)),
        outcome: `${code}, exit 1, no tag written (${human(sent())} sent, none kept)`,
      });
    });
  }

  test('disk full that clears: the first 3 PATCHes and PUTs answered 500 "no space left on device", then space returns: byte-exact', async (t: TestContext) => {
    const { SRC, DST } = await rig(t);
    const repo = 'full-transient/app';
    const img = await pushImage(SRC.client, repo, 'v1', { layerSizes: [512 * KiB, 3 * MiB] });
    const rules = writes(repo).map((w) => DST.proxy.addRule({ ...w, action: 'status', status: 500, code: 'UNKNOWN', message: DISK_FULL, times: 3 }));
    const sent = uploadMeter(DST.proxy);
    const r = await copy(SRC, DST, repo, { env: { FERRY_UPLOAD_CHUNK_BYTES: String(MiB) } });
    for (const x of rules) x.remove();
    ok(r);
    for (const x of rules) assert.equal(x.hits(), 3);
    await assertByteExact(SRC, DST, repo, img);
    assert.deepEqual(liveUploads(DST.storageDir, repo), []);
    const resent = sent() - imageBytes(img);
    recordFault(t, {
      suite: 'fault',
      fault: 'destination disk full for a while: the first 3 PATCHes and 3 PUTs answered 500 "no space left on device"',
      action: `retried with backoff: ${transferSummary(r) || 'no blob restarted'}`,
      bytesResent: resent,
      outcome: 'byte-exact',
    });
  });

  // ---- an expired upload session -----------------------------------------------------------

  test('expired upload session: 404 BLOB_UPLOAD_UNKNOWN on the Location mid-upload → the blob restarts, logged and counted', async (t: TestContext) => {
    const { SRC, DST } = await rig(t);
    const repo = 'expired/app';
    const img = await pushImage(SRC.client, repo, 'v1', { layerSizes: [4 * MiB, 4 * KiB] });
    const rule = DST.proxy.addRule({
      method: 'PATCH',
      path: new RegExp(`/${repo}/blobs/uploads/`),
      action: 'status',
      status: 404,
      code: 'BLOB_UPLOAD_UNKNOWN',
      message: 'blob upload unknown to registry',
      skip: 1,
      times: 1,
    });
    const sent = uploadMeter(DST.proxy);
    const r = await copy(SRC, DST, repo, { env: { FERRY_UPLOAD_CHUNK_BYTES: String(MiB) } });
    rule.remove();
    ok(r);
    assert.equal(rule.hits(), 1);
    assert.equal(r.json.transfer.blobs_restarted, 1, 'the restart is not counted in the report');
    const why = messages(r, 'blob upload failed; restarting it from the beginning');
    assert.equal(why.length, 1, r.stderr.slice(-3000));
    assert.match(String(why[0]!.err), /404|session/);
    await assertByteExact(SRC, DST, repo, img);
    assert.deepEqual(liveUploads(DST.storageDir, repo), [], 'the dropped session was not deleted');
    const resent = sent() - imageBytes(img);
    recordFault(t, {
      suite: 'fault',
      fault: 'expired upload session: the 2nd PATCH answered 404 BLOB_UPLOAD_UNKNOWN',
      action: 'took the session as gone (no status request), deleted it, restarted the blob in a new session; logged, and counted in blobs_restarted',
      bytesResent: resent,
      outcome: 'byte-exact',
    });
  });
});

// ---- the destination restarted mid-upload ----------------------------------------------------

describe('fault injection: the destination registry restarts mid-upload', () => {
  test('distribution restarted (same storage, fixed http.secret) while a chunked upload is in flight: ferry retries and finishes byte-exact', async (t: TestContext) => {
    // Its own destination: the restart must not disturb other cases.
    const own = await startDistribution({ auth: 'htpasswd', users: { [DST_USER.username]: DST_USER.password } });
    const [srcProxy, dstProxy] = await Promise.all([startFaultProxy(src.host), startFaultProxy(own.host)]);
    t.after(async () => {
      await Promise.all([srcProxy.stop(), dstProxy.stop()]);
      await own.stop();
    });
    const SRC = srcEnd(srcProxy);
    const DST = dstEnd(dstProxy, own);
    const repo = 'restart/app';
    const LAYER = 64 * MiB;
    const img = await pushLargeImage(SRC.client, repo, 'v1', { layerCount: 1, layerSize: LAYER });
    const sent = uploadMeter(DST.proxy);
    const f = startFerry(`copy ${repo}`, copyArgs(SRC, DST, repo, tempDir('fault-state')), { ...CREDS_ENV, FERRY_UPLOAD_CHUNK_BYTES: String(2 * MiB) });
    let restart: Promise<void> | undefined;
    let restartAt = 0;
    const poll = setInterval(() => {
      if (!restart && sent() >= 6 * MiB) {
        restartAt = DST.proxy.requests.length;
        restart = own.restart({ downMs: 300 });
      }
    }, 1);
    const r = await f.done;
    clearInterval(poll);
    assert.ok(restart, 'the copy finished before the restart could happen');
    await restart;
    ok(r);
    const log = DST.proxy.requests;
    const failed = log.slice(restartAt).filter((q) => q.status === 0 || q.status >= 500);
    assert.ok(failed.length >= 1, 'no request failed: the restart did not hit the upload');
    const resumed = messages(r, 'chunk failed; resuming upload');
    const restarted = messages(r, 'blob upload failed; restarting it from the beginning');
    assert.ok(resumed.length + restarted.length >= 1, 'no log line says how the upload went on');
    await assertByteExact(SRC, DST, repo, img);
    // Every session ferry gave up on was DELETEd (whether distribution could is another matter, below).
    const sessions = new Set(log.filter((q) => /\/blobs\/uploads\/[0-9a-f-]{36}/.test(q.path)).map(sessionOf));
    const committed = new Set(log.filter((q) => q.method === 'PUT' && q.status === 201).map(sessionOf));
    const deletes = log.filter((q) => q.method === 'DELETE');
    for (const session of sessions) {
      if (!committed.has(session)) assert.ok(deletes.some((d) => sessionOf(d) === session), `session ${session} abandoned without a DELETE`);
    }
    // distribution 2.8 cannot delete a session whose stored bytes run past the offset in its
    // _state (a PATCH it wrote whole but never acknowledged): it answers the DELETE 404
    // BLOB_UPLOAD_INVALID and keeps the files until its upload purger runs.
    const undeletable = deletes.filter((d) => d.status === 404).length;
    if (restarted.length === 0) assert.deepEqual(liveUploads(DST.storageDir, repo), [], 'an upload session was left behind');
    const resent = sent() - imageBytes(img);
    const patches = log.filter((q) => q.method === 'PATCH').length;
    recordFault(t, {
      suite: 'fault',
      fault: `destination restarted mid-upload (distribution 2.8, fixed http.secret, ${LAYER / MiB} MiB layer in 2 MiB chunks, down 0.3 s)`,
      action:
        (restarted.length === 0
          ? `retried through ${failed.length} failed request(s) and continued from the registry's offset ${human(resumed[0]!.offset)}: the session survived the restart`
          : `retried through ${failed.length} failed request(s); the registry held more than it had acknowledged, so ferry deleted the session${undeletable ? ' (distribution answered 404 and keeps it until its purger runs)' : ''} and restarted the blob`) +
        `; ${patches} PATCHes in all`,
      bytesResent: resent,
      outcome: 'byte-exact',
    });
  });
});

// ---- the control plane restarted while the agent holds a half-done job ---------------------

describe('fault injection: the control plane restarts while the agent holds a half-done job', () => {
  let world: AgentWorld;
  let proxy: FaultProxy;
  let cp2: ControlPlane | undefined;

  before(async () => {
    // The agent world of test/agent (token-auth vendor registry, local registry, control plane),
    // with the fault proxy in front of the vendor registry.
    world = await startWorld();
    proxy = await startFaultProxy(world.vendor.host);
  });
  after(async () => {
    killAgents();
    await proxy?.stop();
    await cp2?.stop();
    await world?.stop();
  });

  test('stop the control plane mid-copy, start a new one on the same port with the saved state: one execution, one result', async (t: TestContext) => {
    const vendorC = clientFor(world.vendor, { username: VENDOR_USER.name, password: VENDOR_USER.password });
    const localC = clientFor(world.local);
    const img = await pushLargeImage(vendorC, 'org_f/app', 'v1', { layerCount: 2, layerSize: 4 * MiB });
    // Layer downloads stand still for 6 s: the job is half done while the control plane goes away.
    const layers = img.blobs.filter((b) => !(b.mediaType ?? '').includes('config')).map((b) => b.digest.split(':')[1]);
    const stall = proxy.addRule({ method: 'GET', path: new RegExp(`/blobs/sha256:(${layers.join('|')})`), action: 'stall', ms: 6000, then: 'continue', times: 2 });
    const cp1 = world.cp;
    const jobId = cp1.enqueueJob(plan(world, 'org_f/app', 'v1', 'install_f/app', {}, proxy.host));
    const agent = startAgent(world, tempDir('fault-agent-state'), ['--exit-when-idle']);
    try {
      await waitFor('an upload session at the local registry', () => liveUploads(world.local.storageDir, 'install_f/app').length > 0, 60_000);
      assert.equal(cp1.job(jobId).results.length, 0);
      // The restart: everything durable goes through a file, the old server goes away, a new one
      // starts on the same port from that file.
      const stateFile = join(tempDir('fault-cp'), 'control-plane.json');
      writeFileSync(stateFile, JSON.stringify(cp1.saveState()));
      const requestsBefore = cp1.requests.length;
      await cp1.stop();
      await new Promise((r) => setTimeout(r, 2000));
      cp2 = await startControlPlane({ ...world.cpOptions, port: cp1.port, state: JSON.parse(readFileSync(stateFile, 'utf8')) });
      assert.equal(cp2.url, cp1.url);
      const code = await agent.exited;
      stall.remove();
      capture('agent', 'stderr', agent.logs());
      assert.equal(code, 0, agent.logs().slice(-3000));
      const job = cp2.job(jobId);
      assert.equal(job.status, 'finished');
      assert.equal(job.executions.length, 1, 'the job ran under a second execution');
      assert.equal(job.results.length, 1, `results: ${JSON.stringify(job.results.map((x) => x.status))}`);
      assert.ok(cp2.requests.some((q) => q.method === 'POST' && q.path.endsWith('/result')), 'the result did not reach the restarted control plane');
      const outputs = job.result!.outputs as { image: { digest: string } };
      assert.equal(outputs.image.digest, img.digest);
      const got = await localC.verifyImage('install_f/app', 'v1');
      assert.equal(got.digest, img.digest);
      assert.deepEqual(liveUploads(world.local.storageDir, 'install_f/app'), []);
      // Secrets of this world, for the final check.
      for (const s of [cp1.token, VENDOR_USER.password, ...world.issuedTokens]) secrets.add(s);
      for (const j of cp2.jobs()) if (j.oneTimeToken) secrets.add(j.oneTimeToken);
      const cpFailures = agent.logs().split('\n').filter((l) => /control plane|heartbeat/i.test(l) && /fail|retry|backing off|unreachable|refused/i.test(l)).length;
      recordFault(t, {
        suite: 'fault',
        fault: 'control plane stopped for 2 s mid-job, a new one started on the same port from its saved state',
        action: `kept copying; ${cpFailures} control-plane call(s) failed and were retried; ${requestsBefore} requests to the old server, ${cp2.requests.length} to the new; reported the result to the new one`,
        bytesResent: 0,
        outcome: 'byte-exact; one execution, one result',
      });
    } finally {
      agent.proc.kill('SIGKILL');
      stall.remove();
    }
  });
});

// ---- secrets --------------------------------------------------------------------------------

describe('fault injection: secrets', () => {
  test('no password, token, runner token or one-time token appears in any line any ferry process printed', () => {
    const lines = captured.flatMap((c) => c.text.split('\n').map((line) => ({ ...c, line })));
    assert.ok(captured.length >= 30, `only ${captured.length} outputs captured`);
    assert.ok(lines.length > 200, `only ${lines.length} lines captured`);
    assert.ok(secrets.size >= 8, `only ${secrets.size} secrets collected`);
    const jwt = /eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\./;
    for (const { label, stream, line } of lines) {
      for (const s of secrets) assert.ok(!line.includes(s), `a secret (${s.slice(0, 4)}…) appears in ${label} ${stream}: ${line.slice(0, 200)}`);
      assert.ok(!jwt.test(line), `a JWT appears in ${label} ${stream}: ${line.slice(0, 200)}`);
      assert.ok(!/authorization":\s*"(basic|bearer) /i.test(line), `an Authorization header appears in ${label} ${stream}`);
    }
    // stderr is JSON logs, plus the one-line error summary of a failed copy.
    for (const c of captured.filter((x) => x.stream === 'stderr')) {
      for (const line of c.text.split('\n').filter(Boolean)) {
        assert.ok(line.startsWith('{') || /^ferry: [A-Z_]+: /.test(line), `${c.label}: not a JSON log line: ${line.slice(0, 200)}`);
      }
    }
  });
});
