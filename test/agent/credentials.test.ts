// Source credentials that expire (src/agent/credentials.ts) against the reference control
// plane, on its clock: renewed ahead of expires_at through the same execution, one renewal at a
// time, once per refused credential, never in a storm, and kept through a brief outage while
// they still last. Time moves only when a test moves the control plane's clock.
import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, it } from 'node:test';
import { FerryError } from '../../src/errors.ts';
import { createLogger, type Logger } from '../../src/log/logger.ts';
import type { Credential } from '../../src/auth/credentials.ts';
import { ControlPlaneClient, credentialLifetime } from '../../src/agent/control-plane-client.ts';
import { ExecutionCredentials } from '../../src/agent/credentials.ts';
import { StaticTokenSource } from '../../src/agent/token-source.ts';
import { startControlPlane, type ControlPlane } from '../harness/control-plane.ts';

const SOURCE = 'org-registry.example.com';
const LIFETIME_MS = 10_000;

function captureLogger(): { logger: Logger; text(): string } {
  const lines: string[] = [];
  const destination = { write: (s: string) => lines.push(s) } as unknown as NonNullable<Parameters<typeof createLogger>[0]>['destination'];
  return { logger: createLogger({ level: 'debug', destination }), text: () => lines.join('') };
}

function passwordOf(c: Credential | undefined): string {
  assert.equal(c?.kind, 'basic');
  return c.kind === 'basic' ? c.password : '';
}

describe('execution credentials that expire', () => {
  let cp: ControlPlane;
  let log: ReturnType<typeof captureLogger>;
  let client: ControlPlaneClient;
  let issued = 0;
  /** Lifetime of the credentials the control plane issues next (ms, its clock). */
  let lifetime = LIFETIME_MS;

  before(async () => {
    // Its clock moves only when a test moves it: the renewal instants are compared to the millisecond.
    cp = await startControlPlane({ frozenClock: true });
    log = captureLogger();
    client = new ControlPlaneClient({ url: cp.url, runnerId: cp.runnerId, instanceId: 'instance-a', tokens: new StaticTokenSource(cp.token, 'test token'), logger: log.logger, now: () => cp.now() });
  });
  after(async () => {
    await client.close();
    await cp.stop();
    assert.ok(!log.text().includes('pull-secret-'), 'a source password leaked into the logs');
  });
  beforeEach(() => {
    lifetime = LIFETIME_MS;
    cp.setIssueCredentials(() => ({ registry: SOURCE, username: 'ferry-pull', password: `pull-secret-${++issued}`, expires_at: new Date(cp.now() + lifetime).toISOString() }));
  });

  async function execution(n: number): Promise<{ jobId: string; creds: ExecutionCredentials }> {
    const jobId = cp.enqueueJob({
      type: 'oci-sync',
      source: { reference: `${SOURCE}/org/app_${n}:v1`, auth: { kind: 'one-time-token' } },
      destination: { reference: `registry.local/install/app_${n}:v1`, auth: { kind: 'local' } },
    });
    const claim = await client.claim(jobId);
    assert.notEqual(claim.outcome, 'conflict');
    const execId = claim.outcome === 'conflict' ? '' : claim.execution.id;
    const creds = new ExecutionCredentials({ client, jobId, execId, registry: SOURCE, oneTimeToken: cp.job(jobId).oneTimeToken!, logger: log.logger, now: () => cp.now() });
    return { jobId, creds };
  }
  const issuedFor = (jobId: string) => cp.job(jobId).credentialsIssued.length;

  it('carries the renewal time, and renews through the same execution at half of a short lifetime', async () => {
    const { jobId, creds } = await execution(1);
    const c1 = await creds.resolve({ registry: SOURCE });
    const issuedAt = Date.parse(cp.job(jobId).credentialsIssued[0]!.at);
    // 10 s credentials: due 5 s after they arrived (src/auth/renewal.ts), well before they expire.
    assert.ok(c1?.kind === 'basic' && c1.expiresAt !== undefined);
    assert.ok(c1.expiresAt >= issuedAt + LIFETIME_MS / 2 && c1.expiresAt < issuedAt + LIFETIME_MS, `due at +${(c1.expiresAt ?? 0) - issuedAt} ms`);
    cp.advanceClock(c1.expiresAt - cp.now() - 1);
    assert.equal(passwordOf(await creds.resolve({ registry: SOURCE })), passwordOf(c1), 'renewed before it was due');
    assert.equal(issuedFor(jobId), 1);
    cp.advanceClock(1);
    const c2 = await creds.resolve({ registry: SOURCE });
    assert.notEqual(passwordOf(c2), passwordOf(c1));
    assert.deepEqual(
      cp.job(jobId).credentialsIssued.map((c) => c.with_token),
      [true, false],
      'the renewal goes through the same execution, without the one-time token',
    );
    assert.match(log.text(), /"msg":"source credentials renewed".*"reason":"due"|"reason":"due".*"msg":"source credentials renewed"/);
  });

  it('one renewal in flight: twenty requests that find the credentials due renew them once', async () => {
    const { jobId, creds } = await execution(2);
    await creds.resolve({ registry: SOURCE });
    cp.advanceClock(LIFETIME_MS / 2);
    const all = await Promise.all(Array.from({ length: 20 }, () => creds.resolve({ registry: SOURCE })));
    assert.equal(new Set(all.map(passwordOf)).size, 1);
    assert.equal(issuedFor(jobId), 2);
  });

  it('a refused credential is renewed once, however many requests it failed', async () => {
    const { jobId, creds } = await execution(3);
    const c1 = await creds.resolve({ registry: SOURCE });
    // Two requests refused with c1, one after the other: the first renews, the second finds it renewed.
    const c2 = await creds.resolve({ registry: SOURCE, refresh: true, rejected: c1! });
    const again = await creds.resolve({ registry: SOURCE, refresh: true, rejected: c1! });
    assert.equal(passwordOf(again), passwordOf(c2));
    assert.equal(issuedFor(jobId), 2);
    // Eight refused at once with c2: one more renewal.
    const many = await Promise.all(Array.from({ length: 8 }, () => creds.resolve({ registry: SOURCE, refresh: true, rejected: c2! })));
    assert.equal(new Set(many.map(passwordOf)).size, 1);
    assert.notEqual(passwordOf(many[0]), passwordOf(c2));
    assert.equal(issuedFor(jobId), 3);
  });

  it('credentials that arrive already expired: no storm, at most one renewal per MIN_RENEWAL_DELAY_MS', async () => {
    const { jobId, creds } = await execution(4);
    lifetime = -1000;
    const c1 = await creds.resolve({ registry: SOURCE });
    for (let i = 0; i < 50; i++) assert.equal(passwordOf(await creds.resolve({ registry: SOURCE })), passwordOf(c1));
    assert.equal(issuedFor(jobId), 1);
    assert.match(log.text(), /issued source credentials that had already expired/);
    cp.advanceClock(1000);
    await creds.resolve({ registry: SOURCE });
    await creds.resolve({ registry: SOURCE });
    assert.equal(issuedFor(jobId), 2);
  });

  it('the control plane out of reach when a renewal is due: the current credentials are kept while they last, then SOURCE_AUTH', async () => {
    const { jobId, creds } = await execution(5);
    const c1 = await creds.resolve({ registry: SOURCE });
    cp.advanceClock(LIFETIME_MS / 2);
    cp.setFault({ kind: 'status', status: 503 }, { count: Infinity, match: { path: 'registry-credentials' } });
    try {
      assert.equal(passwordOf(await creds.resolve({ registry: SOURCE })), passwordOf(c1));
      assert.match(log.text(), /could not renew the source credentials; using the current ones while they last/);
      // Tried again no sooner than a second later.
      const asked = cp.requests.filter((r) => r.path.endsWith('/registry-credentials')).length;
      await creds.resolve({ registry: SOURCE });
      assert.equal(cp.requests.filter((r) => r.path.endsWith('/registry-credentials')).length, asked);
      cp.advanceClock(LIFETIME_MS / 2);
      await assert.rejects(creds.resolve({ registry: SOURCE }), (e: unknown) => e instanceof FerryError && e.code === 'SOURCE_AUTH' && e.side === 'source' && e.retryable);
    } finally {
      cp.clearFaults();
    }
    assert.notEqual(passwordOf(await creds.resolve({ registry: SOURCE })), passwordOf(c1));
    assert.equal(issuedFor(jobId), 2);
  });
});

describe('credentialLifetime', () => {
  const expires = Date.parse('2030-01-01T00:10:00Z');
  it('the shorter of the agent\'s and the control plane\'s view', () => {
    // Clocks agree: the Date header (whole seconds) would make it look longer.
    assert.equal(credentialLifetime(expires, expires - 600_000, new Date(expires - 600_700).toUTCString()), 600_000);
    // The agent's clock 2 minutes behind: the control plane's Date says how long they really last.
    assert.equal(credentialLifetime(expires, expires - 720_000, new Date(expires - 600_000).toUTCString()), 600_000);
    // The agent's clock 20 minutes ahead: expired by its clock, not by the control plane's.
    assert.equal(credentialLifetime(expires, expires + 600_000, new Date(expires - 600_000).toUTCString()), 600_000);
    // No (or no usable) Date header: the agent's clock.
    assert.equal(credentialLifetime(expires, expires - 5000, undefined), 5000);
    assert.equal(credentialLifetime(expires, expires - 5000, 'yesterday'), 5000);
  });
});
