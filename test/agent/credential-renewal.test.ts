// Source credentials that run out in the middle of a job, end to end: the real agent, the
// reference control plane issuing a new password per call valid a few seconds, and a
// distribution registry with token auth (`auth: token`) whose token server takes each password
// only while it lives and hands out registry tokens that live 2 s. A proxy holds every blob
// download a second, so one copy outlives several credentials.
//
// The checks stand on what the servers recorded, not on timing: how many credentials the token
// server's accepted requests needed at the least (the lower bound), how far apart renewals ahead
// of time can be and how many refusals there were (the upper bound), and whether each credential
// the control plane issued was put to use.
import { after, before, describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startControlPlane, type ControlPlane } from '../harness/control-plane.ts';
import { startDistribution, type DistributionRegistry } from '../harness/distribution.ts';
import { startFaultProxy, type FaultProxy } from '../harness/fault-proxy.ts';
import { pushImage, type PushedManifest } from '../harness/fixtures.ts';
import { clientFor, type OciClient } from '../harness/oci-client.ts';
import type { TokenServer } from '../harness/token-server.ts';
import { killAgents, startAgent, tempState, type AgentWorld } from './agent-harness.ts';

const ADMIN = { name: 'vendor-admin', password: 'vendor-admin-pass-123' };
const PULL_USER = 'ferry-pull';
/** Source credentials live this long (the control plane's expires_at, and the token server's view in the first test). */
const LIFETIME_MS = 3000;
const BLOB_DELAY_MS = 1000;
const LAYERS = [20_000, 21_000, 22_000, 23_000, 24_000, 25_000, 26_000, 27_000, 28_000];

interface Issued {
  password: string;
  at: number;
}

describe('source credentials that expire during a job', () => {
  let vendor: DistributionRegistry;
  let local: DistributionRegistry;
  let ts: TokenServer;
  let proxy: FaultProxy;
  let cp: ControlPlane;
  let vendorC: OciClient;
  let localC: OciClient;
  let world: AgentWorld;
  /** What the token server should think of the next password the control plane issues: valid this long (ms), or never. */
  let tokenServerValidity: number | 'never' = LIFETIME_MS;
  /** expires_at the control plane puts on the next credentials, from now (ms). */
  let announced = LIFETIME_MS;
  let issued: Issued[] = [];

  before(async () => {
    [vendor, local] = await Promise.all([
      startDistribution({
        auth: 'token',
        token: { users: { [ADMIN.name]: { password: ADMIN.password, repos: { '*': ['pull', 'push'] } }, [PULL_USER]: { password: randomBytes(16).toString('hex'), repos: { 'org/*': ['pull'] } } } },
      }),
      startDistribution(),
    ]);
    ts = vendor.tokenServer!;
    proxy = await startFaultProxy(vendor.host);
    cp = await startControlPlane({
      settings: { heartbeat_interval_s: 1, poll_interval_s: 1 },
      issueCredentials: () => {
        const password = `pull-${randomBytes(12).toString('hex')}`;
        const now = Date.now();
        issued.push({ password, at: now });
        if (tokenServerValidity !== 'never') ts.addPassword(PULL_USER, password, now + tokenServerValidity);
        return { registry: proxy.host, username: PULL_USER, password, expires_at: new Date(now + announced).toISOString() };
      },
    });
    vendorC = clientFor(vendor, { username: ADMIN.name, password: ADMIN.password });
    localC = clientFor(local);
    const dir = mkdtempSync(join(tmpdir(), 'ferry-renewal-'));
    const tokenFile = join(dir, 'runner-token');
    writeFileSync(tokenFile, cp.token, { mode: 0o600 });
    world = { vendor, local, cp, tokenFile, issuedTokens: [], cpOptions: {}, stop: async () => undefined };
  });
  after(async () => {
    killAgents();
    await proxy?.stop();
    await cp?.stop();
    await Promise.all([vendor?.stop(), local?.stop()]);
  });

  /** Push an image, then run one job copying it through the slow proxy; the job's record and the agent's logs. */
  async function runJob(repo: string): Promise<{ img: PushedManifest; jobId: string; logs: string; started: number }> {
    ts.setExpiry({ expiresIn: 300, registryValidFor: undefined });
    const img = await pushImage(vendorC, repo, 'v1', { layerSizes: LAYERS });
    // From here on registry tokens live 2 s (distribution's 60 s leeway is taken off their exp).
    ts.setExpiry({ expiresIn: 2, registryValidFor: 2 });
    issued = [];
    ts.resetLog();
    proxy.resetLog();
    proxy.clearRules();
    proxy.addRule({ method: 'GET', path: /\/blobs\/sha256:/, action: 'delay', ms: BLOB_DELAY_MS });
    const started = Date.now();
    const jobId = cp.enqueueJob({
      type: 'oci-sync',
      source: { reference: `${proxy.host}/${repo}:v1`, auth: { kind: 'one-time-token' } },
      destination: { reference: `${local.host}/install/${repo.split('/')[1]}:v1`, auth: { kind: 'local' } },
      platforms: 'all',
      referrers: false,
    });
    const agent = startAgent(world, tempState(), ['--exit-when-idle', '--concurrency', '1']);
    assert.equal(await agent.exited, 0, agent.logs().slice(-3000));
    return { img, jobId, logs: agent.logs(), started };
  }

  const pullRequests = () => ts.requests.filter((r) => r.user === PULL_USER);
  const renewalLines = (logs: string, reason: string) => logs.split('\n').filter((l) => l.includes('"msg":"source credentials renewed"') && l.includes(`"reason":"${reason}"`));

  test('a copy that outlives several 3-second credentials and 2-second registry tokens finishes byte-exact, renewing ahead of time', async (t: TestContext) => {
    tokenServerValidity = LIFETIME_MS;
    announced = LIFETIME_MS;
    const { img, jobId, logs } = await runJob('org/long');
    const job = cp.job(jobId);
    assert.equal(job.status, 'finished', JSON.stringify(job.results));
    assert.equal((await localC.verifyImage('install/long', 'v1')).digest, img.digest);
    assert.equal(job.credentialsIssued.length, issued.length);
    assert.deepEqual(
      job.credentialsIssued.map((c) => c.with_token),
      [true, ...Array<boolean>(issued.length - 1).fill(false)],
      'renewed through the same execution',
    );

    // Lower bound: the token server took each password only while it lived, so the times it
    // accepted one need at least this many credentials (each covers LIFETIME_MS from its issue).
    const accepted = pullRequests()
      .filter((r) => r.status === 200)
      .map((r) => r.at)
      .sort((a, b) => a - b);
    let needed = 0;
    for (let i = 0; i < accepted.length; ) {
      needed++;
      const end = accepted[i]! + LIFETIME_MS;
      while (i < accepted.length && accepted[i]! < end) i++;
    }
    assert.ok(needed >= 3, `the copy was meant to outlive several credentials, but ${needed} covered it`);
    assert.ok(issued.length >= needed, `${issued.length} credentials issued, ${needed} needed`);

    // Upper bound: a renewal ahead of time comes at least half a lifetime after the one before
    // (3 s credentials: at 1.5 s, src/auth/renewal.ts); any other renewal answers a refusal by
    // the token server or the registry.
    const refusals = pullRequests().filter((r) => r.status === 401).length + proxy.requests.filter((r) => r.status === 401).length;
    const span = issued.at(-1)!.at - issued[0]!.at;
    const bound = 1 + Math.floor(span / (LIFETIME_MS / 2)) + refusals;
    assert.ok(issued.length <= bound, `${issued.length} credentials issued in ${span} ms with ${refusals} refusals; at most ${bound} expected`);
    // No credential renewed for nothing: each renewal was presented to the token server.
    const presented = new Set(pullRequests().map((r) => r.password));
    for (const [i, c] of issued.entries()) if (i > 0) assert.ok(presented.has(c.password), `credentials #${i + 1} were never used`);
    assert.equal(renewalLines(logs, 'due').length + renewalLines(logs, 'refused').length, issued.length - 1);
    assert.ok(renewalLines(logs, 'due').length >= 1, 'no renewal ahead of time');
    assert.ok(!logs.includes('SOURCE_AUTH'), 'a source auth error was logged');
    for (const c of issued) assert.ok(!logs.includes(c.password), 'a source password appears in the agent logs');
    t.diagnostic(
      `credentials issued: ${issued.length} (${issued.length - 1} renewals: ${renewalLines(logs, 'due').length} ahead of time, ${renewalLines(logs, 'refused').length} after a refusal) ` +
        `over ${span} ms; at least ${needed} needed, at most ${bound} allowed; registry tokens: ${pullRequests().length} asked, ${refusals} refusals`,
    );
  });

  test('credentials that stop working before their expires_at: the token server refuses them, each is renewed once, the copy goes on', async (t: TestContext) => {
    // The control plane says a minute; the token server takes each password for 2 s only.
    tokenServerValidity = 2000;
    announced = 60_000;
    const { img, jobId, logs } = await runJob('org/revoked');
    assert.equal(cp.job(jobId).status, 'finished', JSON.stringify(cp.job(jobId).results));
    assert.equal((await localC.verifyImage('install/revoked', 'v1')).digest, img.digest);
    const refused = new Set(pullRequests().filter((r) => r.status === 401).map((r) => r.password));
    assert.ok(refused.size >= 2, `the copy was meant to outlive several credentials, but ${refused.size} were refused`);
    assert.ok(pullRequests().every((r) => r.status !== 401 || r.refused === 'expired'));
    // Each refused credential renewed exactly once, and nothing renewed ahead of time (a minute away).
    assert.equal(issued.length, 1 + refused.size);
    assert.equal(renewalLines(logs, 'refused').length, refused.size);
    assert.equal(renewalLines(logs, 'due').length, 0);
    t.diagnostic(`credentials issued: ${issued.length}; refused by the token server: ${refused.size}`);
  });

  test('fresh credentials refused too: SOURCE_AUTH after one renewal', async () => {
    tokenServerValidity = 'never';
    announced = LIFETIME_MS;
    const { jobId } = await runJob('org/refused');
    const job = cp.job(jobId);
    assert.equal(job.status, 'failed');
    assert.equal(job.result?.error_code, 'SOURCE_AUTH');
    assert.match(job.result?.error_message ?? '', /refused the credentials .*also after they were renewed/);
    assert.equal(issued.length, 2, 'renewed once, then gave up');
    assert.deepEqual(
      pullRequests().map((r) => [r.password, r.status]),
      issued.map((c) => [c.password, 401]),
    );
  });
});
