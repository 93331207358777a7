// The agent's control-plane client against the repository's reference control plane: the
// contract's rules (claim, leases, one-time tokens, final results, cancellation), identity
// (headers, 401 and token rotation), and hostile or broken control planes.
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { AbortedError, FerryError, UsageError } from '../../src/errors.ts';
import { createLogger, type Logger } from '../../src/log/logger.ts';
import { Backoff } from '../../src/agent/backoff.ts';
import { DEFAULT_SETTINGS, shouldStop } from '../../src/agent/contract.ts';
import { checkControlPlaneUrl, ControlPlaneClient, ControlPlaneError, isNotHeld, type ControlPlaneClientOptions } from '../../src/agent/control-plane-client.ts';
import { ExecutionCredentials } from '../../src/agent/credentials.ts';
import { controlPlaneCheck } from '../../src/agent/health.ts';
import { flushPendingResults, reportResult } from '../../src/agent/results.ts';
import { deliver, isFinalDeliveryError } from '../../src/agent/retry.ts';
import { PendingResultStore } from '../../src/agent/state.ts';
import { FileTokenSource, StaticTokenSource } from '../../src/agent/token-source.ts';
import { VERSION } from '../../src/version.ts';
import { startControlPlane, type ControlPlane } from '../harness/control-plane.ts';
import { freePort } from '../harness/ports.ts';
import { createRng } from '../harness/seed.ts';

// ---- helpers ----

function captureLogger(): { logger: Logger; text(): string } {
  const lines: string[] = [];
  const destination = { write: (s: string) => lines.push(s) } as unknown as NonNullable<Parameters<typeof createLogger>[0]>['destination'];
  return { logger: createLogger({ level: 'trace', destination }), text: () => lines.join('') };
}

const FAST = { initialMs: 5, maxMs: 40 };
const LOCAL = { host: 'registry.local:5000', prefix: 'install_789' };

function planFor(n: number, overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    type: 'oci-sync',
    source: { reference: `org-registry.example.com/org_123/app_${n}:v1`, auth: { kind: 'one-time-token' } },
    destination: { reference: `registry.local:5000/install_789/app_${n}:deploy_${n}`, auth: { kind: 'local' } },
    platforms: 'all',
    referrers: true,
    ...overrides,
  };
}

function client(cp: ControlPlane, logger: Logger, opts: Partial<ControlPlaneClientOptions> = {}): ControlPlaneClient {
  return new ControlPlaneClient({
    url: cp.url,
    runnerId: cp.runnerId,
    instanceId: 'instance-a',
    tokens: new StaticTokenSource(cp.token, 'test token'),
    logger,
    requestTimeoutMs: 5000,
    ...opts,
  });
}

async function rejectsWith(p: Promise<unknown>, check: (e: ControlPlaneError) => void): Promise<ControlPlaneError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof ControlPlaneError, `expected ControlPlaneError, got ${String(e)}`);
    check(e);
    return e;
  }
  assert.fail('expected a rejection');
}

async function claimed(c: ControlPlaneClient, jobId: string): Promise<string> {
  const r = await c.claim(jobId);
  assert.notEqual(r.outcome, 'conflict');
  return r.outcome === 'conflict' ? '' : r.execution.id;
}

// ---- tests ----

describe('control-plane client', () => {
  let cp: ControlPlane;
  let log: ReturnType<typeof captureLogger>;
  let a: ControlPlaneClient;
  let b: ControlPlaneClient;
  let dir: string;

  before(async () => {
    // A leased port: the outage tests take it down and bring it back on the same one.
    cp = await startControlPlane({ leaseS: 30, port: await freePort() });
    log = captureLogger();
    a = client(cp, log.logger);
    b = client(cp, log.logger, { instanceId: 'instance-b' });
    dir = await mkdtemp(join(tmpdir(), 'ferry-cp-client-'));
  });
  after(async () => {
    await a.close();
    await b.close();
    await cp.stop();
    await rm(dir, { recursive: true, force: true });
    // Nothing secret was ever logged, whatever the tests did.
    const text = log.text();
    assert.ok(!text.includes(cp.token), 'runner token leaked into logs');
    for (const j of cp.jobs()) if (j.oneTimeToken) assert.ok(!text.includes(j.oneTimeToken), 'one-time token leaked into logs');
    assert.ok(!text.includes('pull-secret-'), 'registry password leaked into logs');
  });

  describe('URL policy', () => {
    it('requires https except for loopback hosts or an explicit insecure option', () => {
      assert.throws(() => checkControlPlaneUrl('http://cp.example.com'), (e: unknown) => e instanceof UsageError && /--insecure-control-plane/.test(e.message));
      assert.equal(checkControlPlaneUrl('http://cp.example.com', { insecure: true }).host, 'cp.example.com');
      for (const ok of ['https://cp.example.com/api', 'http://127.0.0.1:8080', 'http://localhost:1', 'http://[::1]:9000', 'http://127.1.2.3']) {
        assert.doesNotThrow(() => checkControlPlaneUrl(ok), ok);
      }
      assert.throws(() => checkControlPlaneUrl('http://127.0.0.1.evil.example'), UsageError);
      assert.throws(() => checkControlPlaneUrl('ftp://cp.example.com'), /scheme/);
      assert.throws(() => checkControlPlaneUrl('https://user:pw@cp.example.com'), /credentials/);
      assert.throws(() => checkControlPlaneUrl('https://cp.example.com/?x=1'), /query/);
      assert.throws(() => checkControlPlaneUrl('not a url'), /not a URL/);
      assert.throws(() => new ControlPlaneClient({ url: 'http://cp.example.com', runnerId: 'r', instanceId: 'i', tokens: new StaticTokenSource('tok-123456'), logger: log.logger }), UsageError);
    });
  });

  describe('identity', () => {
    it('sends User-Agent ferry/<version>, a fresh X-Request-Id and the bearer token on every request', async () => {
      const start = cp.requests.length;
      await a.settings();
      await a.availableJobs(1);
      await a.openExecutions();
      const reqs = cp.requests.slice(start);
      assert.equal(reqs.length, 3);
      for (const r of reqs) {
        assert.equal(r.userAgent, `ferry/${VERSION}`);
        assert.ok(r.authorized);
        assert.match(r.requestId ?? '', /^[0-9a-f-]{36}$/);
      }
      assert.equal(new Set(reqs.map((r) => r.requestId)).size, 3);
    });

    it('re-reads the token file on 401, reports not ready, and recovers with the rotated token', async () => {
      const cpr = await startControlPlane({ token: 'old-token-aaaaaaaa' });
      const tf = join(dir, 'token');
      await writeFile(tf, 'old-token-aaaaaaaa\n');
      const tokens = new FileTokenSource(tf, log.logger);
      const c = client(cpr, log.logger, { tokens });
      try {
        await c.settings();
        const ready = controlPlaneCheck(c.contact, 60);
        assert.equal(ready(), undefined);

        // The secret is rotated: the mounted file changes and the control plane stops accepting the old token.
        cpr.rotateToken('new-token-bbbbbbbb');
        await writeFile(tf, 'new-token-bbbbbbbb\n');
        const e = await rejectsWith(c.settings(), (e) => {
          assert.equal(e.kind, 'unauthorized');
          assert.equal(e.status, 401);
          assert.equal(e.retryable, true);
        });
        assert.match(e.message, /token file/);
        assert.match(ready() ?? '', /rejected the runner token/);
        // The 401 made the source re-read the file: the next request carries the new token.
        assert.equal(await tokens.token(), 'new-token-bbbbbbbb');
        await c.settings();
        assert.equal(ready(), undefined);
        assert.ok(cpr.requests.at(-1)!.authorized);
        // Neither token reached the logs.
        assert.ok(!log.text().includes('old-token-aaaaaaaa') && !log.text().includes('new-token-bbbbbbbb'));
      } finally {
        await c.close();
        await cpr.stop();
      }
    });

    it('a token rejected for another runner id is a 403, final', async () => {
      const c = client(cp, log.logger, { runnerId: 'runner-other' });
      try {
        await rejectsWith(c.availableJobs(1), (e) => {
          assert.equal(e.kind, 'forbidden');
          assert.equal(isFinalDeliveryError(e), true);
        });
      } finally {
        await c.close();
      }
    });
  });

  describe('settings', () => {
    it('returns the served settings, and the contract defaults when the endpoint is missing', async () => {
      cp.setSettings({ heartbeat_interval_s: 3, poll_interval_s: 7 });
      assert.deepEqual(await a.settings(), { heartbeat_interval_s: 3, poll_interval_s: 7, lease_s: 30 });
      cp.setSettings('missing');
      assert.deepEqual(await a.settings(), DEFAULT_SETTINGS);
      // A short lease is taken as it is (never as longer than given), the heart-beat shortened to fit it.
      cp.setSettings({ heartbeat_interval_s: 5, poll_interval_s: 1, lease_s: 4 });
      assert.deepEqual(await a.settings(), { heartbeat_interval_s: 1, poll_interval_s: 1, lease_s: 4 });
      cp.setSettings({ lease_s: 'forever' as unknown as number });
      await rejectsWith(a.settings(), (e) => {
        assert.equal(e.kind, 'malformed');
        assert.match(e.message, /\$\.lease_s: expected a number, got a string/);
      });
      cp.setSettings({});
    });
  });

  describe('claim and leases', () => {
    it('lists available jobs oldest first, bounded by the free slots', async () => {
      const ids = [cp.enqueueJob(planFor(1)), cp.enqueueJob(planFor(2)), cp.enqueueJob(planFor(3))];
      const two = await a.availableJobs(2);
      assert.deepEqual(
        two.map((j) => j.id),
        ids.slice(0, 2),
      );
      assert.equal(two[0]!.type, 'oci-sync');
      // Leave nothing available for the later tests.
      for (const id of ids) await claimed(a, id);
      assert.deepEqual(await a.availableJobs(5), []);
    });

    it('claim: 201 first, 200 for the same instance again, 409 for another instance', async () => {
      const id = cp.enqueueJob(planFor(4));
      const first = await a.claim(id);
      assert.equal(first.outcome, 'claimed');
      const again = await a.claim(id);
      assert.equal(again.outcome, 'already-held');
      assert.equal(first.execution.id, again.execution.id);
      const other = await b.claim(id);
      assert.deepEqual(other, { outcome: 'conflict', serverCode: 'CLAIMED_BY_OTHER_INSTANCE' });
      assert.equal(cp.job(id).status, 'in-progress');
    });

    it('a claim whose answer was lost is safely retried', async () => {
      const id = cp.enqueueJob(planFor(5));
      cp.setFault({ kind: 'drop-response' }, { match: { method: 'POST', path: `/${id}/executions` } });
      await rejectsWith(a.claim(id), (e) => assert.equal(e.kind, 'network'));
      const r = await a.claim(id);
      assert.equal(r.outcome, 'already-held');
      assert.equal(cp.job(id).executions.length, 1);
    });

    it('open executions are attachable by another instance once the lease expires; heartbeats extend leases', async () => {
      const id = cp.enqueueJob(planFor(6));
      const exec = await claimed(a, id);
      const open = await b.openExecutions();
      const mine = open.find((e) => e.id === exec);
      assert.ok(mine);
      assert.equal(mine.job_id, id);
      assert.equal(mine.instance_id, 'instance-a');

      assert.deepEqual(await b.attach(id, exec), { outcome: 'conflict', serverCode: 'LEASE_HELD' });
      // A heartbeat 20 s in keeps the lease alive past its original 30 s.
      cp.advanceClock(20_000);
      await a.heartbeat({ alive_time_s: 20, jobs_running: 1 });
      cp.advanceClock(20_000);
      assert.equal((await b.attach(id, exec)).outcome, 'conflict');
      assert.equal(cp.heartbeats.at(-1)!.instance_id, 'instance-a');
      assert.equal(cp.heartbeats.at(-1)!.version, VERSION);

      // instance-a dies: its lease runs out and instance-b takes over.
      cp.advanceClock(31_000);
      const taken = await b.attach(id, exec);
      assert.equal(taken.outcome, 'attached');
      assert.equal(taken.outcome === 'attached' && taken.execution?.id, exec);
      assert.deepEqual(
        cp.job(id).executions[0]!.attachHistory.map((h) => h.instance_id),
        ['instance-b'],
      );
      // The holder may always re-attach (a restarted process resuming its own execution).
      assert.equal((await b.attach(id, exec)).outcome, 'attached');
      assert.equal((await a.attach(id, exec)).outcome, 'conflict');
      // instance-a comes back: whatever it says about the execution is not held, and isNotHeld says so.
      const progress = { bytes_done: 1, bytes_total: 2, blobs_done: 0, blobs_total: 1 };
      for (const call of [a.updateStatus(id, exec, 'in-progress'), a.reportProgress(id, exec, progress), a.reportResult(id, exec, { success: true })]) {
        await rejectsWith(call, (e) => {
          assert.equal(e.status, 409);
          assert.equal(e.serverCode, 'EXECUTION_NOT_HELD');
          assert.ok(isNotHeld(e));
        });
      }
      // The holder's are taken.
      await b.reportProgress(id, exec, progress);
    });

    it('status updates are recorded and extend the lease', async () => {
      const id = cp.enqueueJob(planFor(7));
      const exec = await claimed(a, id);
      cp.advanceClock(25_000);
      await a.updateStatus(id, exec, 'initializing');
      await a.reportProgress(id, exec, { bytes_done: 10, bytes_total: 100, blobs_done: 1, blobs_total: 3 });
      cp.advanceClock(25_000);
      await a.updateStatus(id, exec, 'in-progress');
      assert.equal((await b.attach(id, exec)).outcome, 'conflict');
      const job = cp.job(id);
      assert.deepEqual(
        job.executions[0]!.statusHistory.map((s) => s.status),
        ['initializing', 'in-progress'],
      );
      assert.deepEqual(job.progress[0]!.body, { instance_id: 'instance-a', bytes_done: 10, bytes_total: 100, blobs_done: 1, blobs_total: 3 });
    });
  });

  describe('plans', () => {
    it('returns a checked plan; an unusable plan is INVALID_PLAN', async () => {
      const id = cp.enqueueJob(planFor(8, { extra_field: 'ignored' }));
      const plan = await a.plan(id, { localRegistry: LOCAL });
      assert.equal(plan.source.ref.registry, 'org-registry.example.com');
      assert.equal(plan.destination.ref.repository, 'install_789/app_8');
      assert.equal(plan.source.auth.kind, 'one-time-token');

      const outside = cp.enqueueJob(planFor(9, { destination: { reference: 'evil.example.com/x/app:1', auth: { kind: 'local' } } }));
      await assert.rejects(a.plan(outside, { localRegistry: LOCAL }), (e: unknown) => e instanceof FerryError && e.code === 'INVALID_PLAN' && /outside the local registry/.test(e.message));

      const unknownType = cp.enqueueJob({ ...planFor(10), type: 'helm-sync' });
      await assert.rejects(a.plan(unknownType), (e: unknown) => e instanceof FerryError && e.code === 'INVALID_PLAN' && /type "helm-sync"/.test(e.message));

      cp.setFault({ kind: 'huge', bytes: 3 * 1024 * 1024 }, { match: { path: '/plan' } });
      await assert.rejects(a.plan(id), (e: unknown) => e instanceof FerryError && e.code === 'INVALID_PLAN' && /larger than/.test(e.message));
      cp.setFault({ kind: 'malformed' }, { match: { path: '/plan' } });
      await assert.rejects(a.plan(id), (e: unknown) => e instanceof FerryError && e.code === 'INVALID_PLAN' && /not JSON/.test(e.message));
      // Still fine afterwards.
      assert.equal((await a.plan(id)).type, 'oci-sync');
    });

    it('a plan the control plane will not serve (404, 403) is INVALID_PLAN naming the control plane and what to check, not INTERNAL; an outage stays retryable', async () => {
      const id = cp.enqueueJob(planFor(11));
      cp.setFault({ kind: 'status', status: 404, body: { code: 'NOT_FOUND', message: 'no such plan' } }, { match: { path: '/plan' } });
      await assert.rejects(a.plan(id), (e: unknown) => {
        assert.ok(e instanceof FerryError);
        assert.equal(e.code, 'INVALID_PLAN', e.message);
        assert.equal(e.retryable, false);
        assert.match(e.message, new RegExp(`the control plane has no plan for job ${id}: check the job in the control plane`));
        assert.match(e.message, /HTTP 404 NOT_FOUND: no such plan/);
        return true;
      });
      cp.setFault({ kind: 'status', status: 403, body: { code: 'FORBIDDEN', message: 'not your job' } }, { match: { path: '/plan' } });
      await assert.rejects(a.plan(id), (e: unknown) => {
        assert.ok(e instanceof FerryError);
        assert.equal(e.code, 'INVALID_PLAN', e.message);
        assert.match(e.message, /the control plane refused runner \S+ the plan of job \S+: check that the runner token .* is this runner's/);
        return true;
      });
      cp.setFault({ kind: 'status', status: 503 }, { match: { path: '/plan' } });
      await assert.rejects(a.plan(id), (e: unknown) => e instanceof FerryError && e.retryable && e.code !== 'INVALID_PLAN');
      assert.equal((await a.plan(id)).type, 'oci-sync');
    });
  });

  describe('one-time token exchange', () => {
    it('binds the token to the first execution; renewals need no body', async () => {
      const id = cp.enqueueJob(planFor(11));
      const exec = await claimed(a, id);
      const plan = await a.plan(id);
      assert.equal(plan.source.auth.kind, 'one-time-token');
      const ott = plan.source.auth.kind === 'one-time-token' ? plan.source.auth.one_time_token : '';
      const first = await a.registryCredentials(id, exec, { oneTimeToken: ott });
      assert.equal(first.registry, 'org-registry.example.com');
      assert.equal(first.credential.kind, 'basic');
      const renewed = await a.registryCredentials(id, exec);
      assert.equal(renewed.credential.kind, 'basic');
      assert.notDeepEqual(renewed.credential, first.credential);
      // The bound execution repeating its token (an exchange whose answer was lost) is a renewal.
      await a.registryCredentials(id, exec, { oneTimeToken: ott });
      assert.deepEqual(
        cp.job(id).credentialsIssued.map((c) => c.with_token),
        [true, false, true],
      );
    });

    it('410 TOKEN_ALREADY_USED for any other use, 410 TOKEN_EXPIRED past expiry', async () => {
      const first = cp.enqueueJob(planFor(12));
      const ott = cp.job(first).oneTimeToken!;
      // A second job whose plan carries the same token (a replay).
      const replay = cp.enqueueJob(planFor(13, { source: { reference: 'org-registry.example.com/org_123/app_13:v1', auth: { kind: 'one-time-token', one_time_token: ott } } }));
      const e1 = await claimed(a, first);
      const e2 = await claimed(a, replay);
      await a.registryCredentials(first, e1, { oneTimeToken: ott });
      const used = await rejectsWith(a.registryCredentials(replay, e2, { oneTimeToken: ott }), (e) => {
        assert.equal(e.status, 410);
        assert.equal(e.kind, 'gone');
      });
      assert.equal(used.code, 'TOKEN_ALREADY_USED');
      assert.equal(used.retryable, false);

      const late = cp.enqueueJob(planFor(14), { oneTimeTokenTtlS: 60 });
      const e3 = await claimed(a, late);
      cp.advanceClock(61_000);
      const expired = await rejectsWith(a.registryCredentials(late, e3, { oneTimeToken: cp.job(late).oneTimeToken! }), () => {});
      assert.equal(expired.code, 'TOKEN_EXPIRED');
      // A renewal without ever exchanging the token is refused.
      await rejectsWith(a.registryCredentials(late, e3), (e) => assert.equal(e.serverCode, 'ONE_TIME_TOKEN_REQUIRED'));
    });

    it('ExecutionCredentials: exchanges once, caches, renews on refresh, answers only for the source registry', async () => {
      const id = cp.enqueueJob(planFor(15));
      const exec = await claimed(a, id);
      const ott = cp.job(id).oneTimeToken!;
      const creds = new ExecutionCredentials({ client: a, jobId: id, execId: exec, registry: 'org-registry.example.com', oneTimeToken: ott, logger: log.logger });
      assert.equal(await creds.resolve({ registry: 'registry.local:5000' }), undefined);
      const [c1, c2] = await Promise.all([creds.resolve({ registry: 'org-registry.example.com' }), creds.resolve({ registry: 'ORG-REGISTRY.example.com' })]);
      assert.equal(c1?.kind, 'basic');
      assert.deepEqual(c1, c2);
      assert.equal(cp.job(id).credentialsIssued.length, 1);
      const c3 = await creds.resolve({ registry: 'org-registry.example.com', refresh: true });
      assert.notDeepEqual(c3, c1);
      assert.deepEqual(
        cp.job(id).credentialsIssued.map((c) => c.with_token),
        [true, false],
      );

      // A replica resuming the execution from the plan (token and all) gets a renewal, not a 410.
      cp.advanceClock(31_000);
      assert.equal((await b.attach(id, exec)).outcome, 'attached');
      const resumed = new ExecutionCredentials({ client: b, jobId: id, execId: exec, registry: 'org-registry.example.com', oneTimeToken: ott, logger: log.logger });
      assert.equal((await resumed.resolve({ registry: 'org-registry.example.com' }))?.kind, 'basic');

      // A bearer-token answer becomes a bearer credential.
      cp.setIssueCredentials((_job, _plan) => ({ registry: 'org-registry.example.com', token: 'registry-bearer-token-xyz', expires_at: new Date(Date.now() + 60_000).toISOString() }));
      try {
        const c4 = await resumed.resolve({ registry: 'org-registry.example.com', refresh: true });
        assert.deepEqual({ ...c4, expiresAt: undefined }, { kind: 'bearer', token: 'registry-bearer-token-xyz', expiresAt: undefined });
        // Credentials for some other registry are not used.
        cp.setIssueCredentials(() => ({ registry: 'elsewhere.example.com', username: 'u', password: 'pull-secret-elsewhere', expires_at: new Date(Date.now() + 60_000).toISOString() }));
        await assert.rejects(resumed.resolve({ registry: 'org-registry.example.com', refresh: true }), (e: unknown) => e instanceof FerryError && e.code === 'SOURCE_AUTH' && e.side === 'source');
      } finally {
        cp.setIssueCredentials((job) => ({ registry: 'org-registry.example.com', username: 'ferry-pull', password: `pull-secret-${job.id}-x1`, expires_at: new Date(Date.now() + 900_000).toISOString() }));
      }
    });

    it('ExecutionCredentials: a token used elsewhere or expired fails with its contract code on the source side', async () => {
      const id = cp.enqueueJob(planFor(16), { oneTimeTokenTtlS: 10 });
      const exec = await claimed(a, id);
      cp.advanceClock(11_000);
      const creds = new ExecutionCredentials({ client: a, jobId: id, execId: exec, registry: 'org-registry.example.com', oneTimeToken: cp.job(id).oneTimeToken!, logger: log.logger });
      await assert.rejects(creds.resolve({ registry: 'org-registry.example.com' }), (e: unknown) => e instanceof FerryError && e.code === 'TOKEN_EXPIRED' && e.side === 'source');
    });
  });

  describe('results and cancellation', () => {
    it('results are final: identical repeats accepted, a different one refused for good', async () => {
      const id = cp.enqueueJob(planFor(17));
      const exec = await claimed(a, id);
      const ok = { success: false, error_code: 'SOURCE_NOT_FOUND', error_message: 'manifest unknown' } as const;
      await a.reportResult(id, exec, ok);
      await a.reportResult(id, exec, { error_message: 'manifest unknown', error_code: 'SOURCE_NOT_FOUND', success: false });
      assert.equal(cp.job(id).status, 'failed');
      const d = await deliver('result', () => a.reportResult(id, exec, { success: true }), { logger: log.logger, backoff: FAST });
      assert.equal(d.delivered, false);
      assert.equal(!d.delivered && d.final, true);
      assert.equal(!d.delivered && d.error.serverCode, 'RESULT_CONFLICT');
      assert.deepEqual(cp.job(id).result, { instance_id: 'instance-a', ...ok });
      // No further updates on a closed execution.
      await rejectsWith(a.updateStatus(id, exec, 'cleaning-up'), (e) => assert.equal(e.serverCode, 'EXECUTION_CLOSED'));
    });

    it('a failed result needs an error code, and never leaves the agent malformed', async () => {
      await assert.rejects(a.reportResult('job-x', 'exec-x', { success: false }), (e: unknown) => e instanceof FerryError && e.code === 'INTERNAL');
    });

    it('cancelled and timed-out jobs say stop, and refuse further reports', async () => {
      const id = cp.enqueueJob(planFor(18));
      const exec = await claimed(a, id);
      assert.equal(shouldStop((await a.jobStatus(id)).status), false);
      cp.cancelJob(id);
      const st = await a.jobStatus(id);
      assert.equal(st.status, 'cancelled');
      assert.equal(shouldStop(st.status), true);
      const d = await deliver('status', () => a.updateStatus(id, exec, 'in-progress'), { logger: log.logger, backoff: FAST });
      assert.equal(!d.delivered && d.final && d.error.serverCode, 'JOB_CANCELLED');
      assert.ok(!(await a.openExecutions()).some((e) => e.id === exec));

      const slow = cp.enqueueJob(planFor(19), { timeoutS: 60 });
      await claimed(a, slow);
      cp.advanceClock(61_000);
      assert.equal((await a.jobStatus(slow)).status, 'timed-out');
    });
  });

  describe('outages and retries', () => {
    it('an outage is a retryable network error; delivery backs off and succeeds once the control plane is back', async () => {
      const id = cp.enqueueJob(planFor(20));
      const exec = await claimed(a, id);
      await cp.goDown();
      await rejectsWith(a.jobStatus(id), (e) => {
        assert.equal(e.kind, 'network');
        assert.equal(e.retryable, true);
      });
      const started = Date.now();
      setTimeout(() => void cp.comeUp(), 150);
      const backoff = new Backoff({ ...FAST, random: () => 0.5 });
      const d = await deliver('status', () => a.updateStatus(id, exec, 'in-progress'), { logger: log.logger, backoff });
      assert.equal(d.delivered, true);
      assert.ok(d.attempts > 1, `attempts ${d.attempts}`);
      assert.ok(Date.now() - started >= 140);
      assert.ok(backoff.attempt >= 1);
      assert.deepEqual(cp.job(id).executions[0]!.statusHistory.map((s) => s.status), ['in-progress']);
    });

    it('5xx for N requests is retried, honouring Retry-After; 4xx other than 408/429 is final', async () => {
      const id = cp.enqueueJob(planFor(21));
      const exec = await claimed(a, id);
      cp.setFault({ kind: 'status', status: 503, retryAfterS: 0 }, { count: 3, match: { path: '/progress' } });
      const d = await deliver('progress', () => a.reportProgress(id, exec, { bytes_done: 1, bytes_total: 1, blobs_done: 1, blobs_total: 1 }), { logger: log.logger, backoff: FAST });
      assert.equal(d.delivered, true);
      assert.equal(d.attempts, 4);

      cp.setFault({ kind: 'status', status: 429 }, { count: 1, match: { path: '/progress' } });
      cp.setFault({ kind: 'status', status: 408 }, { count: 1, match: { path: '/progress' } });
      const d2 = await deliver('progress', () => a.reportProgress(id, exec, { bytes_done: 1, bytes_total: 1, blobs_done: 1, blobs_total: 1 }), { logger: log.logger, backoff: FAST });
      assert.equal(d2.attempts, 3);

      cp.setFault({ kind: 'status', status: 400, body: { code: 'BAD_REQUEST', message: 'no' } }, { match: { path: '/progress' } });
      const d3 = await deliver('progress', () => a.reportProgress(id, exec, { bytes_done: 1, bytes_total: 1, blobs_done: 1, blobs_total: 1 }), { logger: log.logger, backoff: FAST });
      assert.equal(d3.delivered, false);
      assert.equal(d3.attempts, 1);

      cp.setFault({ kind: 'status', status: 503, retryAfterS: 7 }, { match: { path: `/v1/runner-jobs/${id}` } });
      await rejectsWith(a.jobStatus(id), (e) => {
        assert.equal(e.kind, 'unavailable');
        assert.equal(e.retryAfterMs, 7000);
      });
    });

    it('a 401 during delivery is retried after the token file is re-read', async () => {
      const cpr = await startControlPlane({ token: 'first-token-1111' });
      const tf = join(dir, 'token-delivery');
      await writeFile(tf, 'first-token-1111');
      const c = client(cpr, log.logger, { tokens: new FileTokenSource(tf, log.logger) });
      try {
        const id = cpr.enqueueJob(planFor(22));
        const exec = await claimed(c, id);
        cpr.rotateToken('second-token-2222');
        await writeFile(tf, 'second-token-2222');
        const d = await deliver('result', () => c.reportResult(id, exec, { success: true }), { logger: log.logger, backoff: FAST });
        assert.equal(d.delivered, true);
        assert.equal(d.attempts, 2);
        assert.equal(cpr.job(id).status, 'finished');
      } finally {
        await c.close();
        await cpr.stop();
      }
    });

    it('a result survives a restart and is delivered by the next process', async () => {
      const storeDir = join(dir, 'pending');
      const id = cp.enqueueJob(planFor(23));
      const exec = await claimed(a, id);
      const result = { success: false, error_code: 'DESTINATION_REJECTED', error_message: 'tag is immutable' } as const;
      await cp.goDown();
      const store1 = await PendingResultStore.open(storeDir);
      const d = await reportResult(a, store1, id, exec, result, { logger: log.logger, backoff: FAST, maxAttempts: 2 });
      assert.equal(d.delivered, false);
      assert.equal((await store1.list()).length, 1);
      // "Restart": a new client and a new store over the same directory.
      await cp.comeUp();
      const a2 = client(cp, log.logger);
      try {
        const store2 = await PendingResultStore.open(storeDir);
        assert.deepEqual(await store2.get(id, exec), { job_id: id, exec_id: exec, result });
        assert.equal(await flushPendingResults(a2, store2, { logger: log.logger, backoff: FAST }), 1);
        assert.deepEqual(await store2.list(), []);
        // The restarted process has the same instance id (kept in the state directory).
        assert.deepEqual(cp.job(id).result, { instance_id: 'instance-a', ...result });
      } finally {
        await a2.close();
      }
    });

    it('a result whose answer was lost is delivered again and accepted as identical', async () => {
      const id = cp.enqueueJob(planFor(24));
      const exec = await claimed(a, id);
      cp.setFault({ kind: 'drop-response' }, { match: { path: '/result' } });
      const d = await deliver('result', () => a.reportResult(id, exec, { success: true }), { logger: log.logger, backoff: FAST });
      assert.equal(d.delivered, true);
      assert.deepEqual(
        cp.job(id).results.map((r) => r.status),
        [200, 200],
      );
    });

    it('a delivery stops at once when its signal aborts', async () => {
      await cp.goDown();
      const ac = new AbortController();
      setTimeout(() => ac.abort(), 50);
      try {
        await assert.rejects(deliver('status', () => a.updateStatus('job-0001', 'exec-0002', 'in-progress'), { logger: log.logger, signal: ac.signal, backoff: { initialMs: 1000, maxMs: 1000 } }), AbortedError);
      } finally {
        await cp.comeUp();
      }
    });
  });

  describe('hostile and broken responses', () => {
    it('a huge body is refused at the bound, streamed or declared, and the client stays usable', async () => {
      const c = client(cp, log.logger, { maxResponseBytes: 64 * 1024 });
      try {
        for (const declareLength of [false, true]) {
          cp.setFault({ kind: 'huge', bytes: 8 * 1024 * 1024, declareLength });
          await rejectsWith(c.availableJobs(1), (e) => {
            assert.equal(e.kind, 'too-large');
            assert.match(e.message, /larger than 65536 bytes/);
          });
        }
        assert.ok(Array.isArray(await c.availableJobs(1)));
      } finally {
        await c.close();
      }
    });

    it('malformed JSON, HTML and wrong shapes give a clear error, never a crash', async () => {
      cp.setFault({ kind: 'malformed' });
      await rejectsWith(a.availableJobs(1), (e) => {
        assert.equal(e.kind, 'malformed');
        assert.match(e.message, /not JSON/);
      });
      cp.setFault({ kind: 'raw', body: '<html><body>Bad gateway, but 200</body></html>', contentType: 'text/html' });
      await rejectsWith(a.openExecutions(), (e) => assert.equal(e.kind, 'malformed'));
      cp.setFault({ kind: 'raw', body: '' });
      await rejectsWith(a.jobStatus('job-0001'), (e) => assert.match(e.message, /empty/));
      cp.setFault({ kind: 'wrong-shape' });
      await rejectsWith(a.availableJobs(1), (e) => assert.match(e.message, /\$: expected an array, got an object/));
      cp.setFault({ kind: 'raw', body: JSON.stringify([{ job_id: 'j', id: 'e', instance_id: 'i', lease_expires_at: 'tomorrow' }]) });
      await rejectsWith(a.openExecutions(), (e) => assert.match(e.message, /\$\[0\]\.lease_expires_at: expected an RFC 3339 timestamp/));
      cp.setFault({ kind: 'raw', body: JSON.stringify({ id: '../../admin', status: 'pending', lease_expires_at: '2030-01-01T00:00:00Z' }), status: 201 });
      await rejectsWith(a.claim('job-0001'), (e) => assert.match(e.message, /\$\.id: is not an identifier/));
      cp.setFault({ kind: 'raw', body: JSON.stringify({ id: 'job-0001', status: 'paused' }) });
      await rejectsWith(a.jobStatus('job-0001'), (e) => assert.match(e.message, /\$\.status: expected one of/));
      // Deep nesting parses (or not) without blowing the stack, and is the wrong shape either way.
      cp.setFault({ kind: 'raw', body: `${'['.repeat(200_000)}${']'.repeat(200_000)}` });
      await rejectsWith(a.openExecutions(), (e) => assert.equal(e.kind, 'malformed'));
      cp.setFault({ kind: 'raw', body: JSON.stringify({ __proto__: { polluted: true }, registry: 'org-registry.example.com', expires_at: '2030-01-01T00:00:00Z' }) });
      await rejectsWith(a.registryCredentials('job-0001', 'exec-0002'), (e) => assert.match(e.message, /needs either username and password, or token/));
      assert.equal(({} as Record<string, unknown>).polluted, undefined);
    });

    it('a wrong-shape claim answer is retried into the same execution', async () => {
      const id = cp.enqueueJob(planFor(25));
      cp.setFault({ kind: 'wrong-shape' }, { match: { path: `/${id}/executions` } });
      await rejectsWith(a.claim(id), (e) => assert.equal(e.kind, 'malformed'));
      assert.equal((await a.claim(id)).outcome, 'already-held');
    });

    it('skips listed jobs of the wrong shape, keeps the good ones', async () => {
      cp.setFault({
        kind: 'raw',
        body: JSON.stringify([{ id: 'job-9001', type: 'oci-sync', status: 'available', created_at: '2026-01-01T00:00:00Z' }, { id: 42 }, 'junk', { id: 'job-9002', type: 'oci-sync', status: 'available', created_at: '2026-01-01T00:00:01Z' }]),
      });
      assert.deepEqual(
        (await a.availableJobs(5)).map((j) => j.id),
        ['job-9001', 'job-9002'],
      );
    });

    it('server error text is sanitized; redirects are not followed; hangs time out; resets are network errors', async () => {
      cp.setFault({ kind: 'status', status: 400, body: { code: 'BAD\nCODE', message: 'line one\nline two\u001b[31m red' } });
      const e = await rejectsWith(a.availableJobs(1), () => {});
      assert.doesNotMatch(e.message, /[\u0000-\u001f]/);
      assert.equal(e.serverCode, undefined);
      assert.match(e.message, /line one line two/);

      cp.setFault({ kind: 'raw', status: 302, body: '' });
      await rejectsWith(a.availableJobs(1), (e) => {
        assert.equal(e.kind, 'http');
        assert.match(e.message, /redirects are not followed/);
        assert.equal(isFinalDeliveryError(e), true);
      });

      const quick = client(cp, log.logger, { requestTimeoutMs: 200 });
      try {
        cp.setFault({ kind: 'hang' });
        await rejectsWith(quick.availableJobs(1), (e) => assert.equal(e.kind, 'timeout'));
      } finally {
        await quick.close();
      }

      cp.setFault({ kind: 'hang' });
      const ac = new AbortController();
      setTimeout(() => ac.abort(), 50);
      await assert.rejects(a.availableJobs(1, { signal: ac.signal }), AbortedError);

      cp.setFault({ kind: 'reset' });
      await rejectsWith(a.availableJobs(1), (e) => assert.equal(e.kind, 'network'));
      assert.ok(Array.isArray(await a.availableJobs(1)));
    });
  });
});

describe('backoff', () => {
  it('grows from 1 s to a 60 s cap with jitter in [d/2, d]', () => {
    const rng = createRng('backoff');
    const b = new Backoff({ random: () => rng.float() });
    const nominal = [1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000];
    for (const d of nominal) {
      assert.equal(b.nominal(), d);
      const delay = b.next();
      assert.ok(delay >= d / 2 && delay <= d, `${delay} outside [${d / 2}, ${d}]`);
    }
    b.reset();
    assert.equal(b.nominal(), 1000);
    assert.equal(new Backoff({ random: () => 0 }).next(), 500);
    assert.equal(new Backoff({ random: () => 0 }).next(5000), 5000, 'Retry-After raises the delay');
    assert.equal(new Backoff({ random: () => 0 }).next(600_000), 60_000, 'but never above the cap');
    for (let i = 0; i < 2000; i++) b.next();
    assert.equal(b.nominal(), 60_000);
  });
});
