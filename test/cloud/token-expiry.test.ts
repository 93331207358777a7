// Registry credentials that run out in the middle of a copy: short-lived ECR authorization
// tokens and Google access tokens, and tokens that stop working earlier than their holder
// thinks (revoked, clock skew). The registry fronts check every request against what the
// stand-ins issued and when it expires, answering as ECR (403 DENIED "Your authorization token
// has expired") and Artifact Registry (401) do. The stand-ins issue a fresh random token each
// time, so a renewed token is told apart from an expired one; distribution behind the front
// keeps its own htpasswd credential.
import { after, before, beforeEach, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { AwsStandin, TEST_ACCESS_KEY_ID, TEST_SECRET_ACCESS_KEY } from '../harness/aws-standin.ts';
import { GcpStandin } from '../harness/gcp-standin.ts';
import { makeTestPki, startConnectProxy, startEcrRegistry, startGarRegistry, type ConnectProxy, type EcrRegistry, type GarRegistry, type TestPki } from '../harness/cloud-registry.ts';
import { startDistribution, type DistributionRegistry } from '../harness/distribution.ts';
import { pushImage } from '../harness/fixtures.ts';
import { clientFor, type OciClient } from '../harness/oci-client.ts';
import { assertNoSecrets, basicPassword, freshHome, proxyEnv, runFerryIsolated } from './cloud-e2e.ts';

const LAYERS = [40_000, 50_000, 60_000, 70_000];
/**
 * Layers that go up as streamed bodies when they cannot take the pipe (here: behind the proxy).
 * Up to 1 MiB a blob is read whole and sent from memory, a body that is simply sent again with a
 * fresh token; a streamed one cannot be, so its blob starts over (src/ends/registry/blob-upload.ts).
 */
const STREAMED_LAYERS = [1_200_000, 1_300_000];
const STREAMED = 1024 * 1024;
const BLOB_GET = /\/blobs\/sha256:/;
const UPLOAD_PUT = /\/blobs\/uploads\//;

let aws: AwsStandin;
let gcp: GcpStandin;
let pki: TestPki;
let proxy: ConnectProxy;
let ecr: EcrRegistry;
let gar: GarRegistry;
let local: DistributionRegistry;
let localC: OciClient;

/** Per-test hooks, called by the registry fronts. */
let onRequest: (method: string, path: string, length: number | undefined) => void = () => undefined;
let delayMs: (method: string, path: string) => number = () => 0;
let hold: (method: string, path: string, authorization: string | undefined) => Promise<void> | undefined = () => undefined;

const awsEnv = (): Record<string, string> => ({ ...aws.env(), ...proxyEnv(proxy.url), AWS_ACCESS_KEY_ID: TEST_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY: TEST_SECRET_ACCESS_KEY });
const gcpEnv = (): Record<string, string> => ({ GCE_METADATA_HOST: gcp.metadataHost, ...proxyEnv(proxy.url) });

before(async () => {
  aws = await AwsStandin.start({ region: 'us-west-2' });
  gcp = await GcpStandin.start();
  pki = makeTestPki([aws.registryHost(), 'us-west1-docker.pkg.dev']);
  proxy = await startConnectProxy();
  const hooks = {
    onRequest: (m: string, p: string, l: number | undefined) => onRequest(m, p, l),
    delayMs: (m: string, p: string) => delayMs(m, p),
    hold: (m: string, p: string, a: string | undefined) => hold(m, p, a),
  };
  [ecr, gar, local] = await Promise.all([
    startEcrRegistry({ aws, pki, proxy, ...hooks }),
    startGarRegistry({ gcp, pki, proxy, repositories: ['ferry-test-project/images'], ...hooks }),
    startDistribution(),
  ]);
  localC = clientFor(local);
  aws.addRepository('team/long');
  aws.addRepository('team/revoked');
  aws.addRepository('install/upload');
});

after(async () => {
  await Promise.all([ecr?.stop(), gar?.stop(), local?.stop(), proxy?.stop()]);
  await Promise.all([aws?.close(), gcp?.close()]);
});

beforeEach(() => {
  onRequest = () => undefined;
  delayMs = () => 0;
  hold = () => undefined;
  aws.options.ecrTokenLifetimeSeconds = 3600;
  gcp.options.accessTokenLifetimeSeconds = 3600;
});

/** Do this once, the first time a request matches (and, with `minLength`, carries a body longer than that). */
function once(method: string, path: RegExp, action: () => void, minLength = -1): (m: string, p: string, length: number | undefined) => void {
  let done = false;
  return (m, p, length) => {
    if (!done && m === method && path.test(p) && (length ?? 0) > minLength) {
      done = true;
      action();
    }
  };
}

/**
 * By what share of its lifetime before expiry a short-lived token must have been renewed: 5 %
 * (ferry renews 10 % ahead, src/auth/cloud/expiry.ts; issue 19 asks for 20 % on short lifetimes).
 * The test's own number, so a ferry that renews later fails it whatever src says.
 */
const RENEWED_BY = 0.05;

/**
 * A copy that outlives the first token by a condition, not by slowing every request down and
 * hoping: each request that carries the first token issued from here on is answered only once
 * that token is within RENEWED_BY of its expiry, where ferry must have renewed it. Whatever ferry sends after such an
 * answer, it sends from inside that window, so it must already carry a renewed token: one sent
 * with the first one would arrive while that one is still valid (and pass), and show that ferry
 * did not renew ahead. The hold is judged on this machine's clock, which ferry reads too.
 */
function holdFirstToken(firstToken: () => { secret: string; expiresAt: number } | undefined, lifetimeMs: number): { secret?: string; releasedAt?: number } {
  const held: { secret?: string; releasedAt?: number } = {};
  hold = (_m, _p, authorization) => {
    const t = firstToken();
    if (!t || basicPassword(authorization) !== t.secret) return undefined;
    held.secret = t.secret;
    const until = t.expiresAt - RENEWED_BY * lifetimeMs;
    held.releasedAt = until;
    return new Promise((resolve) => setTimeout(resolve, Math.max(0, until - Date.now())));
  };
  return held;
}

/** Requests sent after the first token's hold carry another token; none was refused as expired; renewals are few. */
function assertRenewedAhead(requests: Array<{ at: number; authorization: string | undefined; note?: string; method: string; path: string }>, held: { secret?: string; releasedAt?: number }, issued: number): void {
  assert.ok(held.secret && held.releasedAt, 'no request carried the first token');
  const later = requests.filter((q) => q.at > held.releasedAt! && basicPassword(q.authorization) !== undefined);
  assert.ok(later.length >= 1, 'nothing was sent after the first token entered its renewal window: the copy did not outlive it');
  const stale = later.filter((q) => basicPassword(q.authorization) === held.secret);
  assert.deepEqual(stale.map((q) => `${q.method} ${q.path}`), [], 'sent with the first token after the point where it had to be renewed');
  // Renewed ahead of time: the registry never saw an expired token.
  assert.deepEqual(requests.filter((q) => q.note === 'expired token').map((q) => `${q.method} ${q.path}`), []);
  // Renewed, and not in a storm: one token for the held stretch, one (perhaps two) for the rest.
  assert.ok(issued >= 2 && issued <= 4, `${issued} tokens issued for one copy`);
  console.log(`# ${issued} tokens issued; ${later.length} requests after the first token's renewal point, none with it`);
}

describe('Amazon ECR', () => {
  test('5-second authorization tokens: renewed before they expire, through a copy that outlasts them', async () => {
    const img = await pushImage(ecr.client, 'team/long', 'v1', { layerSizes: LAYERS });
    aws.options.ecrTokenLifetimeSeconds = 5;
    const issuedBefore = aws.issuedEcrTokens.length;
    const first = () => aws.issuedEcrTokens[issuedBefore];
    const held = holdFirstToken(() => {
      const t = first();
      return t && { secret: t.password, expiresAt: t.expiresAt.getTime() };
    }, 5000);
    const start = ecr.requests.length;
    const home = freshHome();
    const r = await runFerryIsolated(
      ['copy', '--json', '--log-level', 'debug', '--concurrency', '1', '--ca-file', pki.caPath, `${ecr.host}/team/long:v1`, `${local.host}/long:v1`],
      awsEnv(),
      home,
    );
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await localC.verifyImage('long', 'v1')).digest, img.digest);
    const mine = ecr.requests.slice(start);
    assertRenewedAhead(mine, held, aws.issuedEcrTokens.length - issuedBefore);
    assertNoSecrets(r, aws.issuedEcrTokens.flatMap((t) => [t.password, t.authorizationToken]), [home.home]);
  });

  test('a token that stops working early: ECR\'s 403 "token has expired" → renewed, the request retried', async () => {
    const img = await pushImage(ecr.client, 'team/revoked', 'v1', { layerSizes: LAYERS });
    onRequest = once('GET', BLOB_GET, () => assert.ok(aws.expireEcrTokens() >= 1));
    const start = ecr.requests.length;
    const r = await runFerryIsolated(
      ['copy', '--json', '--concurrency', '1', '--ca-file', pki.caPath, `${ecr.host}/team/revoked:v1`, `${local.host}/revoked:v1`],
      awsEnv(),
      freshHome(),
    );
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await localC.verifyImage('revoked', 'v1')).digest, img.digest);
    const mine = ecr.requests.slice(start);
    const refused = mine.findIndex((q) => q.status === 403 && q.note === 'expired token');
    assert.ok(refused >= 0, 'the registry refused an expired token');
    // The same request again, with a different (renewed) token.
    const retry = mine.slice(refused + 1).find((q) => q.path === mine[refused]?.path);
    assert.ok(retry && retry.status !== 403, 'the refused request was sent again and accepted');
    assert.notEqual(basicPassword(retry.authorization), basicPassword(mine[refused]?.authorization));
  });

  test('the token runs out while a layer is being uploaded: that layer starts over, with a fresh token', async () => {
    const img = await pushImage(localC, 'src/upload', 'v1', { layerSizes: STREAMED_LAYERS });
    onRequest = once('PUT', UPLOAD_PUT, () => assert.ok(aws.expireEcrTokens() >= 1), STREAMED);
    const start = ecr.requests.length;
    const home = freshHome();
    const r = await runFerryIsolated(
      ['copy', '--json', '--concurrency', '1', '--ca-file', pki.caPath, `${local.host}/src/upload:v1`, `${ecr.host}/install/upload:v1`],
      awsEnv(),
      home,
    );
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await ecr.client.verifyImage('install/upload', 'v1')).digest, img.digest);
    assert.ok(r.json.transfer.blobs_restarted >= 1, 'the interrupted layer was restarted');
    const mine = ecr.requests.slice(start);
    const refused = mine.find((q) => q.method === 'PUT' && UPLOAD_PUT.test(q.path) && q.status === 403);
    assert.ok(refused, 'the streamed upload was refused for its expired token');
    const committed = mine.filter((q) => q.method === 'PUT' && UPLOAD_PUT.test(q.path) && q.status === 201);
    assert.equal(committed.length, STREAMED_LAYERS.length + 1, 'every blob committed once');
    // Blobs committed before the token ran out carry it; every one after, the renewed one.
    const after = committed.filter((q) => mine.indexOf(q) > mine.indexOf(refused));
    assert.ok(after.length >= 1 && after.every((q) => basicPassword(q.authorization) !== basicPassword(refused.authorization)));
    assertNoSecrets(r, aws.issuedEcrTokens.flatMap((t) => [t.password, t.authorizationToken]), [home.home]);
  });
});

describe('Artifact Registry', () => {
  test('5-second access tokens from the metadata server: renewed before they expire, through a copy that outlasts them', async () => {
    const img = await pushImage(gar.client, 'ferry-test-project/images/long', 'v1', { layerSizes: LAYERS });
    gcp.options.accessTokenLifetimeSeconds = 5;
    const issuedBefore = gcp.issued.length;
    const held = holdFirstToken(() => {
      const t = gcp.issued[issuedBefore];
      return t && { secret: t.token, expiresAt: t.expiresAt };
    }, 5000);
    const start = gar.requests.length;
    const home = freshHome();
    const r = await runFerryIsolated(
      ['copy', '--json', '--log-level', 'debug', '--concurrency', '1', '--ca-file', pki.caPath, `${gar.host}/ferry-test-project/images/long:v1`, `${local.host}/gar-long:v1`],
      gcpEnv(),
      home,
    );
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await localC.verifyImage('gar-long', 'v1')).digest, img.digest);
    assertRenewedAhead(gar.requests.slice(start), held, gcp.issued.length - issuedBefore);
    assertNoSecrets(r, gcp.issued.map((t) => t.token), [home.home]);
  });

  test('the token is revoked while a layer is being uploaded: 401, that layer starts over with a fresh token', async () => {
    const img = await pushImage(localC, 'src/gar-upload', 'v1', { layerSizes: STREAMED_LAYERS });
    onRequest = once('PUT', UPLOAD_PUT, () => assert.ok(gcp.expireAccessTokens() >= 1), STREAMED);
    const start = gar.requests.length;
    const r = await runFerryIsolated(
      ['copy', '--json', '--concurrency', '1', '--ca-file', pki.caPath, `${local.host}/src/gar-upload:v1`, `${gar.host}/ferry-test-project/images/uploaded:v1`],
      gcpEnv(),
      freshHome(),
    );
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await gar.client.verifyImage('ferry-test-project/images/uploaded', 'v1')).digest, img.digest);
    assert.ok(r.json.transfer.blobs_restarted >= 1, 'the interrupted layer was restarted');
    const mine = gar.requests.slice(start);
    const refused = mine.find((q) => q.method === 'PUT' && UPLOAD_PUT.test(q.path) && q.status === 401);
    assert.ok(refused, 'the streamed upload was refused for its revoked token');
    const committed = mine.filter((q) => q.method === 'PUT' && UPLOAD_PUT.test(q.path) && q.status === 201);
    assert.equal(committed.length, STREAMED_LAYERS.length + 1);
    // Blobs committed before the token ran out carry it; every one after, the renewed one.
    const after = committed.filter((q) => mine.indexOf(q) > mine.indexOf(refused));
    assert.ok(after.length >= 1 && after.every((q) => basicPassword(q.authorization) !== basicPassword(refused.authorization)));
  });

  test('the token is revoked just before a small blob goes up: its in-memory body is sent again at once with a fresh token, nothing restarts', async () => {
    const img = await pushImage(localC, 'src/gar-small', 'v1', { layerSizes: LAYERS });
    onRequest = once('PUT', UPLOAD_PUT, () => assert.ok(gcp.expireAccessTokens() >= 1));
    const start = gar.requests.length;
    const r = await runFerryIsolated(
      ['copy', '--json', '--concurrency', '1', '--ca-file', pki.caPath, `${local.host}/src/gar-small:v1`, `${gar.host}/ferry-test-project/images/small:v1`],
      gcpEnv(),
      freshHome(),
    );
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await gar.client.verifyImage('ferry-test-project/images/small', 'v1')).digest, img.digest);
    assert.equal(r.json.transfer.blobs_restarted, 0);
    const mine = gar.requests.slice(start);
    const refused = mine.findIndex((q) => q.method === 'PUT' && UPLOAD_PUT.test(q.path) && q.status === 401);
    assert.ok(refused >= 0, 'the upload was refused for its revoked token');
    // The same upload session, committed by the very next request, with the renewed token.
    const again = mine.slice(refused + 1).find((q) => q.method === 'PUT' && UPLOAD_PUT.test(q.path));
    assert.equal(again?.path, mine[refused]!.path);
    assert.equal(again?.status, 201);
    assert.notEqual(basicPassword(again?.authorization), basicPassword(mine[refused]!.authorization));
  });
});
