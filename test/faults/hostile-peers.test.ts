// Hostile peers on the wire, end to end: the real `ferry copy` (and `ferry agent`) against a
// hostile registry (test/harness/hostile-registry.ts) as the source or the destination, and a
// real distribution 2.8 behind a fault proxy. Each case checks the code and the words an
// operator gets (issue 22, "Errors that point the right way"): INTERNAL only for a bug in ferry;
// a broken answer is retried and then REGISTRY_UNAVAILABLE; what a registry says that ferry
// will not follow is that registry's fault, before any connection or lookup.
import { after, before, describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { runFerry, type FerryRun } from '../e2e/ferry-cli.ts';
import { makeTestPki, startConnectProxy, type ConnectProxy, type TestPki } from '../harness/cloud-registry.ts';
import { startControlPlane } from '../harness/control-plane.ts';
import { startDistribution, type DistributionRegistry } from '../harness/distribution.ts';
import { startFaultProxy, type FaultProxy } from '../harness/fault-proxy.ts';
import { HOSTILE_CDN_NAME, HOSTILE_HTTPS_NAME, OCI, descriptorOf, jsonContent, makeImage, startHostileRegistry, type HostileRegistry, type Image } from '../harness/hostile-registry.ts';
import { clientFor, type OciClient } from '../harness/oci-client.ts';
import { makeTempDir } from '../harness/process.ts';
import { seededBytes, seedFor } from '../harness/seed.ts';
import { killAgents, startAgent, type AgentWorld } from '../agent/agent-harness.ts';
import { recordFault } from './report.ts';

const DST_USER = { name: 'peer-pusher', password: `dst-${seededBytes(seedFor('hostile-peers/dst-password'), 12).toString('hex')}` };
const temp = makeTempDir('hostile-peers').path;

let reg: HostileRegistry;
let dst: DistributionRegistry;
let dstC: OciClient;
/** The destination again, behind a fault proxy (interim answers). */
let dstProxy: FaultProxy;
let pki: TestPki;
let proxy: ConnectProxy;

before(async () => {
  pki = makeTestPki([HOSTILE_HTTPS_NAME, HOSTILE_CDN_NAME]);
  [reg, dst, proxy] = await Promise.all([
    startHostileRegistry({ tls: { cert: pki.cert, key: pki.key } }),
    startDistribution({ auth: 'htpasswd', users: { [DST_USER.name]: DST_USER.password } }),
    startConnectProxy(),
  ]);
  proxy.route(HOSTILE_HTTPS_NAME, reg.tlsPort!);
  dstProxy = await startFaultProxy(dst.host);
  dstC = clientFor(dst, { username: DST_USER.name, password: DST_USER.password });
  await dstC.ping();
});

after(async () => {
  killAgents();
  await Promise.all([reg?.stop(), dst?.stop(), proxy?.stop(), dstProxy?.stop()]);
});

let runs = 0;
/** `ferry copy SRC DST` with both sides' credentials; `https` routes the hostile HTTPS names through the CONNECT proxy. */
function ferryCopy(source: string, destination: string, opts: { https?: boolean; dstCreds?: string } = {}): Promise<FerryRun> {
  const args = ['copy', '--json', '--log-level', 'debug', '--state-dir', join(temp, `state-${runs++}`), '--src-creds', 'env:PEER_SRC_CREDS', '--dst-creds', 'env:PEER_DST_CREDS'];
  if (opts.https) args.push('--ca-file', pki.caPath);
  args.push(source, destination);
  return runFerry(args, {
    env: {
      PEER_SRC_CREDS: `${reg.user}:${reg.password}`,
      PEER_DST_CREDS: opts.dstCreds ?? `${DST_USER.name}:${DST_USER.password}`,
      HTTPS_PROXY: opts.https ? proxy.url : undefined,
      NO_PROXY: opts.https ? '127.0.0.1,localhost' : undefined,
      https_proxy: undefined,
      HTTP_PROXY: undefined,
      http_proxy: undefined,
      no_proxy: undefined,
      NODE_EXTRA_CA_CERTS: undefined,
    },
    timeoutMs: 120_000,
  });
}

function served(name: string, opts: Parameters<typeof makeImage>[1] = {}): Image {
  const img = makeImage(name, opts);
  reg.repo(name).image(img, 'v1');
  return img;
}

function failed(run: FerryRun, code: string, message: RegExp): void {
  assert.equal(run.code, 1, `exit ${run.code}; stderr:\n${run.stderr.slice(-3000)}`);
  assert.equal(run.json?.error?.code, code, run.stdout);
  assert.match(run.json.error.message, message);
  assert.match(run.stderr, new RegExp(`^ferry: ${code}: `, 'm'));
}

const logLines = (run: FerryRun, msg: string) => run.stderr.split('\n').filter((l) => l.includes(`"msg":"${msg}"`));
const manifestGets = (name: string) => (method: string, path: string) => method === 'GET' && path.startsWith(`/v2/${name}/manifests/`);
const tokensFor = (name: string) => (_method: string, path: string) => path.startsWith('/token') && path.includes(encodeURIComponent(`repository:${name}:`));

describe('answers that break off or are malformed: retried, then REGISTRY_UNAVAILABLE (never INTERNAL)', { concurrency: 2 }, () => {
  test('a manifest answer cut in the middle of its chunked body: asked again, copied byte-exact', async (t: TestContext) => {
    const img = served('cut-manifest-once');
    // A chunked 2xx is read twice per attempt (ferry's own connection declines it, undici reads it): two breaks cut one attempt.
    const fault = reg.fault({ kind: 'cut-chunked', match: manifestGets('cut-manifest-once'), times: 2 });
    const run = await ferryCopy(`${reg.host}/cut-manifest-once:v1`, `${dst.host}/peers/cut-manifest-once:v1`);
    assert.equal(run.code, 0, run.stderr.slice(-3000));
    assert.equal(fault.hits(), 2);
    assert.equal((await dstC.verifyImage('peers/cut-manifest-once', 'v1')).digest, img.manifest.digest);
    assert.ok(logLines(run, 'an answer broke off; asking again').length >= 1, 'the retry is not logged');
    recordFault(t, { suite: 'hostile', fault: 'manifest answer cut in the middle of its chunked body (once)', action: 'asked again with backoff', bytesResent: 0, outcome: 'byte-exact, exit 0' });
  });

  for (const kind of ['cut-chunked', 'bad-chunk-size'] as const) {
    test(`a manifest answer ${kind === 'cut-chunked' ? 'cut in the middle' : 'with a malformed chunk size'}, every time: REGISTRY_UNAVAILABLE after the retries`, async (t: TestContext) => {
      const name = `manifest-${kind}`;
      served(name);
      const fault = reg.fault({ kind, match: manifestGets(name) });
      const run = await ferryCopy(`${reg.host}/${name}:v1`, `${dst.host}/peers/${name}:v1`);
      fault.remove();
      failed(run, 'REGISTRY_UNAVAILABLE', /manifest .* broke off or was malformed/);
      if (kind === 'bad-chunk-size') assert.match(run.json.error.message, /chunk size/i);
      assert.ok(fault.hits() >= 2 * 5, `only ${fault.hits()} answers broken: the manifest was not asked for again`);
      assert.equal(logLines(run, 'an answer broke off; asking again').length, 4);
      recordFault(t, {
        suite: 'hostile',
        fault: `manifest answer ${kind === 'cut-chunked' ? 'cut in the middle of its chunked body' : 'with a malformed chunk size'}, every time`,
        action: 'asked again 4 times with backoff, then gave up',
        bytesResent: 0,
        outcome: 'REGISTRY_UNAVAILABLE, exit 1; nothing written',
      });
    });
  }

  test('a token answer with a malformed chunk size, twice: asked again, copied byte-exact', async (t: TestContext) => {
    const img = served('bad-token-twice');
    const fault = reg.fault({ kind: 'bad-chunk-size', match: tokensFor('bad-token-twice'), times: 2 });
    const run = await ferryCopy(`${reg.host}/bad-token-twice:v1`, `${dst.host}/peers/bad-token-twice:v1`);
    assert.equal(run.code, 0, run.stderr.slice(-3000));
    assert.equal(fault.hits(), 2);
    assert.equal((await dstC.verifyImage('peers/bad-token-twice', 'v1')).digest, img.manifest.digest);
    assert.ok(logLines(run, 'token request failed; retrying').length >= 1, 'the retry is not logged');
    recordFault(t, { suite: 'hostile', fault: 'token answer with a malformed chunk size (twice)', action: 'asked the token server again with backoff', bytesResent: 0, outcome: 'byte-exact, exit 0' });
  });

  test('a token answer cut in the middle, every time: REGISTRY_UNAVAILABLE after the retries', async (t: TestContext) => {
    served('cut-token');
    const fault = reg.fault({ kind: 'cut-chunked', match: tokensFor('cut-token') });
    const run = await ferryCopy(`${reg.host}/cut-token:v1`, `${dst.host}/peers/cut-token:v1`);
    fault.remove();
    failed(run, 'REGISTRY_UNAVAILABLE', /token response from 127\.0\.0\.1:\d+ broke off or was malformed/);
    assert.ok(fault.hits() >= 5, `only ${fault.hits()} token answers broken`);
    recordFault(t, { suite: 'hostile', fault: 'token answer cut in the middle of its chunked body, every time', action: 'asked again 4 times with backoff, then gave up', bytesResent: 0, outcome: 'REGISTRY_UNAVAILABLE, exit 1; nothing written' });
  });
});

describe('interim answers (RFC 9110 §15.2) are skipped', { concurrency: 2 }, () => {
  test('100 Continue and 103 Early Hints before every answer of the source: copied byte-exact', async (t: TestContext) => {
    const img = served('interim-source', { layers: 2, layerSize: 300_000 });
    reg.repo('interim-source').interim = true;
    const run = await ferryCopy(`${reg.host}/interim-source:v1`, `${dst.host}/peers/interim-source:v1`);
    assert.equal(run.code, 0, run.stderr.slice(-3000));
    assert.equal((await dstC.verifyImage('peers/interim-source', 'v1')).digest, img.manifest.digest);
    recordFault(t, { suite: 'hostile', fault: 'source sends 100 Continue and 103 Early Hints before every answer', action: 'skipped them', bytesResent: 0, outcome: 'byte-exact, exit 0' });
  });

  test('100 Continue and 103 Early Hints before every answer of the destination (distribution behind a proxy): copied byte-exact', async (t: TestContext) => {
    const img = served('interim-destination', { layers: 2, layerSize: 300_000 });
    const rule = dstProxy.addRule({ action: 'interim', path: /\/peers\/interim-destination\// });
    const run = await ferryCopy(`${reg.host}/interim-destination:v1`, `${dstProxy.host}/peers/interim-destination:v1`);
    rule.remove();
    assert.equal(run.code, 0, run.stderr.slice(-3000));
    for (const method of ['HEAD', 'POST', 'PUT']) assert.ok(dstProxy.count({ method, path: /\/peers\/interim-destination\// }) >= 1, `no ${method} went through the proxy`);
    assert.ok(rule.hits() >= 5);
    assert.equal((await dstC.verifyImage('peers/interim-destination', 'v1')).digest, img.manifest.digest);
    recordFault(t, { suite: 'hostile', fault: 'destination sends 100 Continue and 103 Early Hints before every answer (HEAD, POST, PUT)', action: 'skipped them', bytesResent: 0, outcome: 'byte-exact, exit 0' });
  });
});

describe('upload Locations are checked like redirects, before any connection or lookup', { concurrency: 2 }, () => {
  const cases: Array<{ slug: string; https: boolean; location: (name: string) => string; message: RegExp; fault: string }> = [
    {
      slug: 'location-not-a-url',
      https: false,
      location: () => 'http://[::1',
      message: /gave the upload to location-not-a-url a Location that is not a URL \("http:\/\/\[::1"\); refusing/,
      fault: 'upload Location that is not a URL',
    },
    {
      slug: 'location-plain-http',
      https: true,
      location: (name) => `http://${HOSTILE_HTTPS_NAME}/v2/${name}/blobs/uploads/session-1`,
      message: /a Location over plain HTTP \(http:\/\/hostile-registry\.test\) although the registry speaks HTTPS: the image's bytes would travel unencrypted; refusing/,
      fault: 'HTTPS registry whose upload Location is plain HTTP (same host)',
    },
    {
      slug: 'location-mapped-metadata',
      https: true,
      location: () => 'https://[::ffff:169.254.169.254]/upload',
      message: /a Location at a link-local\/metadata address \(\[::ffff:a9fe:a9fe\]\); refusing/,
      fault: 'upload Location at [::ffff:169.254.169.254] (IPv4-mapped metadata address)',
    },
    {
      slug: 'location-metadata-dot',
      https: true,
      location: () => 'https://metadata.google.internal./computeMetadata/v1/',
      message: /a Location at a link-local\/metadata address \(metadata\.google\.internal\.\); refusing/,
      fault: 'upload Location at metadata.google.internal. (trailing dot)',
    },
  ];
  for (const c of cases) {
    test(`${c.fault}: DESTINATION_REJECTED`, async (t: TestContext) => {
      served(`${c.slug}-src`);
      reg.repo(c.slug).uploadLocation = c.location(c.slug);
      const dstHost = c.https ? HOSTILE_HTTPS_NAME : reg.host;
      const connectsBefore = proxy.connects.length;
      const run = await ferryCopy(`${reg.host}/${c.slug}-src:v1`, `${dstHost}/${c.slug}:v1`, { https: c.https, dstCreds: `${reg.user}:${reg.password}` });
      failed(run, 'DESTINATION_REJECTED', c.message);
      // Nothing went anywhere but the registry itself: no CONNECT to another name, no plain request.
      const elsewhere = proxy.connects.slice(connectsBefore).filter((x) => !x.target.startsWith(`${HOSTILE_HTTPS_NAME}:`));
      assert.deepEqual(elsewhere, [], 'a connection to the Location was attempted');
      assert.deepEqual(proxy.plainRequests, []);
      assert.ok(reg.repo(c.slug).requests.some((r) => r.method === 'POST'), 'no upload session was opened: the case checked nothing');
      recordFault(t, { suite: 'hostile', fault: c.fault, action: 'refused the Location before any connection or lookup', bytesResent: 0, outcome: 'DESTINATION_REJECTED, exit 1' });
    });
  }
});

describe('a descriptor whose size lies', () => {
  test('a layer declared 1 TiB and served as 200 KB: SOURCE_INVALID at once, not an outage', async (t: TestContext) => {
    const img = makeImage('size-lie-tib', { layers: 1, layerSize: 200_000 });
    const layer = img.layers[0]!;
    const TiB = 2 ** 40;
    const manifest = jsonContent({ schemaVersion: 2, mediaType: OCI.manifest, config: descriptorOf(img.config), layers: [descriptorOf(layer, { size: TiB })] }, OCI.manifest);
    reg.repo('size-lie-tib').blob(img.config).blob(layer).manifest('v1', manifest);
    const run = await ferryCopy(`${reg.host}/size-lie-tib:v1`, `${dst.host}/peers/size-lie-tib:v1`);
    failed(run, 'SOURCE_INVALID', new RegExp(`blob ${layer.digest} in size-lie-tib is 200000 bytes at the registry, but its descriptor says ${TiB}; refusing to copy it`));
    const gets = reg.repo('size-lie-tib').requests.filter((r) => r.method === 'GET' && r.path.endsWith(layer.digest)).length;
    assert.ok(gets <= 2, `the layer was read ${gets} times (retried as an outage)`);
    assert.equal(await dstC.headManifest('peers/size-lie-tib', 'v1'), undefined);
    recordFault(t, { suite: 'hostile', fault: 'layer descriptor says 1 TiB, the registry serves 200 KB', action: 'compared the answer’s length with the descriptor; refused', bytesResent: 0, outcome: 'SOURCE_INVALID, exit 1; no tag' });
  });
});

describe('a destination that fails to store the data', () => {
  test('distribution 2.8 whose storage writes fail (a file-size limit, as on a full disk): DESTINATION_REJECTED, saying to check its storage and logs', async (t: TestContext) => {
    // Every file distribution writes stops at 1 MiB (prlimit --fsize): the 3 MiB layer's upload fails
    // in its storage driver, and distribution answers 500 UNKNOWN, as it does for a full disk.
    const full = await startDistribution({ fileSizeLimitBytes: 1024 * 1024 });
    try {
      const img = served('store-fails', { layers: 1, layerSize: 3 * 1024 * 1024 });
      const run = await ferryCopy(`${reg.host}/store-fails:v1`, `${full.host}/peers/store-fails:v1`);
      failed(run, 'DESTINATION_REJECTED', /failed to store the data: it answered HTTP 500 to .*file too large.*check its storage and its logs/);
      assert.doesNotMatch(run.json.error.message, /connectivity|proxy/i);
      assert.match(full.logs(), /file too large/, 'the registry did not fail to store: the case checked nothing');
      assert.equal(await clientFor(full).headManifest('peers/store-fails', 'v1'), undefined);
      assert.ok(img.layers.length === 1);
      recordFault(t, {
        suite: 'hostile',
        fault: 'destination (distribution 2.8) fails to write its storage ("file too large", as a full disk): 500 UNKNOWN',
        action: 'retried the blob, then gave up naming the registry’s storage and logs',
        bytesResent: 0,
        outcome: 'DESTINATION_REJECTED, exit 1; no tag',
      });
    } finally {
      await full.stop();
    }
  });
});

describe('the agent reports what failed, not INTERNAL', () => {
  test('a job whose source manifest answer always breaks off fails with REGISTRY_UNAVAILABLE', async (t: TestContext) => {
    served('agent-cut');
    const fault = reg.fault({ kind: 'cut-chunked', match: manifestGets('agent-cut') });
    const cp = await startControlPlane({
      settings: { heartbeat_interval_s: 1, poll_interval_s: 1, lease_s: 30 },
      issueCredentials: () => ({ registry: reg.host, username: reg.user, password: reg.password, expires_at: new Date(Date.now() + 600_000).toISOString() }),
    });
    try {
      const id = cp.enqueueJob({
        type: 'oci-sync',
        source: { reference: `${reg.host}/agent-cut:v1`, auth: { kind: 'one-time-token' } },
        destination: { reference: `${dst.host}/peers/agent-cut:v1`, auth: { kind: 'local' } },
        platforms: 'all',
        referrers: false,
      });
      const tokenFile = join(mkdtempSync(join(temp, 'runner-')), 'runner-token');
      writeFileSync(tokenFile, cp.token, { mode: 0o600 });
      const world = { cp, local: dst, tokenFile } as unknown as AgentWorld;
      const agent = startAgent(world, mkdtempSync(join(temp, 'agent-state-')), ['--exit-when-idle', '--max-jobs', '1', '--local-registry-creds', 'env:PEER_LOCAL_CREDS'], {
        PEER_LOCAL_CREDS: `${DST_USER.name}:${DST_USER.password}`,
      });
      assert.equal(await agent.exited, 0, agent.logs().slice(-4000));
      const job = cp.job(id);
      assert.equal(job.status, 'failed', JSON.stringify(job.result));
      assert.equal(job.result?.error_code, 'REGISTRY_UNAVAILABLE', JSON.stringify(job.result));
      assert.match(String(job.result?.error_message), /broke off or was malformed/);
      recordFault(t, { suite: 'hostile', fault: 'source manifest answer always cut (chunked), as an agent job', action: 'retried, then failed the job', bytesResent: 0, outcome: 'REGISTRY_UNAVAILABLE reported to the control plane' });
    } finally {
      fault.remove();
      await cp.stop();
    }
  });
});
