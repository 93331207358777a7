// `ferry agent` end to end: the real agent process against the reference control plane, a
// token-auth vendor registry and a local registry.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { clientFor, type OciClient } from '../harness/oci-client.ts';
import { pushArtifactFor, pushImage, pushLargeImage, pushMultiArch, type PushedManifest } from '../harness/fixtures.ts';
import { startFaultProxy, type FaultProxy } from '../harness/fault-proxy.ts';
import { linesWithDuplicateKeys } from '../harness/log-lines.ts';
import { killAgents, plan, startAgent, startWorld, tempState, waitFor, VENDOR_USER, type AgentWorld } from './agent-harness.ts';

const MiB = 1024 * 1024;

/** Stall the downloads of an image's layers (not its config, which the engine reads first). */
function stallLayers(proxy: FaultProxy, img: PushedManifest, ms: number, times?: number) {
  const layers = img.blobs.filter((b) => !(b.mediaType ?? '').includes('config')).map((b) => b.digest.split(':')[1]);
  return proxy.addRule({ method: 'GET', path: new RegExp(`/blobs/sha256:(${layers.join('|')})`), action: 'stall', ms, then: 'continue', ...(times ? { times } : {}) });
}

/** Upload sessions the local registry still holds for a repository (distribution's storage layout). */
function openUploads(world: AgentWorld, repo: string): string[] {
  const dir = join(world.local.storageDir, 'docker/registry/v2/repositories', repo, '_uploads');
  return existsSync(dir) ? readdirSync(dir) : [];
}

function listTree(dir: string): string[] {
  return readdirSync(dir, { recursive: true }).map(String);
}

/** Secrets that must never show in any log line. */
function assertNoSecrets(world: AgentWorld, logs: string, extra: string[] = []): void {
  const secrets = [world.cp.token, VENDOR_USER.password, ...world.issuedTokens, ...extra];
  for (const j of world.cp.jobs()) if (j.oneTimeToken) secrets.push(j.oneTimeToken);
  for (const s of secrets) assert.ok(!logs.includes(s), `a secret (${s.slice(0, 6)}…) appears in the agent's logs`);
}

describe('ferry agent', () => {
  let world: AgentWorld;
  let vendorC: OciClient;
  let localC: OciClient;
  let proxy: FaultProxy;

  before(async () => {
    world = await startWorld();
    vendorC = clientFor(world.vendor, { username: VENDOR_USER.name, password: VENDOR_USER.password });
    localC = clientFor(world.local);
    proxy = await startFaultProxy(world.vendor.host);
  });
  after(async () => {
    killAgents();
    await proxy?.stop();
    await world?.stop();
  });

  test('full job lifecycle: claim, exchange the token, copy byte-exact, report the image', async () => {
    const idx = await pushMultiArch(vendorC, 'org_1/app', 'v1');
    const sbom = await pushArtifactFor(vendorC, 'org_1/app', idx.descriptor);
    const jobId = world.cp.enqueueJob(plan(world, 'org_1/app', 'v1', 'install_1/app'));
    const agent = startAgent(world, tempState(), ['--exit-when-idle']);
    assert.equal(await agent.exited, 0, agent.logs().slice(-3000));
    const job = world.cp.job(jobId);
    assert.equal(job.status, 'finished');
    assert.equal(job.executions.length, 1);
    assert.equal(job.results.length, 1, 'result reported more than once');
    const image = (job.result!.outputs as { image: { digest: string; platforms: unknown[]; referrers: Array<{ digest: string }>; size: number } }).image;
    assert.equal(image.digest, idx.digest);
    assert.equal(image.platforms.length, 3);
    assert.ok(image.referrers.some((r) => r.digest === sbom.digest));
    assert.ok(image.size > 0);
    assert.deepEqual(
      job.executions[0]!.statusHistory.map((s) => s.status),
      ['initializing', 'in-progress'],
    );
    assert.equal(job.credentialsIssued.filter((c) => c.with_token).length, 1);
    assert.equal((await localC.verifyImage('install_1/app', 'v1')).digest, idx.digest);
    assert.ok(world.cp.heartbeats.length >= 1, 'no heartbeat');
    assertNoSecrets(world, agent.logs());
    // Every line (debug level: all of them) has each key once ("result delivered" had job_id twice).
    assert.deepEqual(linesWithDuplicateKeys(agent.logs()), []);
    assert.match(agent.logs(), /"msg":"result delivered"/);
  });

  test('a one-time token used twice: the second job fails with TOKEN_ALREADY_USED', async () => {
    await pushImage(vendorC, 'org_2/app', 'v1');
    const p = plan(world, 'org_2/app', 'v1', 'install_1/app2') as { source: { auth: Record<string, string> } };
    p.source.auth.one_time_token = 'ott_shared_between_two_jobs_0001';
    const first = world.cp.enqueueJob(p);
    let agent = startAgent(world, tempState(), ['--exit-when-idle']);
    assert.equal(await agent.exited, 0);
    assert.equal(world.cp.job(first).status, 'finished');
    const second = world.cp.enqueueJob(structuredClone(p));
    agent = startAgent(world, tempState(), ['--exit-when-idle']);
    assert.equal(await agent.exited, 0);
    const job = world.cp.job(second);
    assert.equal(job.status, 'failed');
    assert.equal(job.result!.error_code, 'TOKEN_ALREADY_USED');
    assertNoSecrets(world, agent.logs(), ['ott_shared_between_two_jobs_0001']);
  });

  test('an expired one-time token fails the job with TOKEN_EXPIRED', async () => {
    await pushImage(vendorC, 'org_2b/app', 'v1');
    const jobId = world.cp.enqueueJob(plan(world, 'org_2b/app', 'v1', 'install_1/expired'), { oneTimeTokenTtlS: 0.001 });
    await new Promise((r) => setTimeout(r, 20));
    const agent = startAgent(world, tempState(), ['--exit-when-idle']);
    assert.equal(await agent.exited, 0, agent.logs().slice(-4000));
    const job = world.cp.job(jobId);
    assert.equal(job.status, 'failed');
    assert.equal(job.result!.error_code, 'TOKEN_EXPIRED');
    assert.equal(await localC.headManifest('install_1/expired', 'v1'), undefined);
  });

  test('a second SIGTERM exits at once, leaving the running job open', async () => {
    const img = await pushLargeImage(vendorC, 'org_2c/app', 'v1', { layerCount: 1, layerSize: 2 * MiB });
    const stall = stallLayers(proxy, img, 60_000);
    const jobId = world.cp.enqueueJob(plan(world, 'org_2c/app', 'v1', 'install_1/twice', {}, proxy.host));
    const state = tempState();
    const agent = startAgent(world, state, ['--shutdown-grace', '600']);
    await waitFor('the job to start', () => world.cp.job(jobId).executions.length > 0, 90_000);
    await new Promise((r) => setTimeout(r, 300));
    agent.proc.kill('SIGTERM');
    await agent.waitForLog(/stopping: no new jobs/, 10_000);
    const second = Date.now();
    agent.proc.kill('SIGTERM');
    assert.equal(await agent.exited, 0);
    assert.ok(Date.now() - second < 10_000, 'the second SIGTERM did not stop the agent promptly');
    stall.remove();
    assert.equal(world.cp.job(jobId).results.length, 0);
    // Finish it, so later tests start from an empty queue.
    const again = startAgent(world, state, ['--exit-when-idle']);
    assert.equal(await again.exited, 0);
    assert.equal(world.cp.job(jobId).status, 'finished');
  });

  test('a plan whose destination lies outside the local registry fails with INVALID_PLAN', async () => {
    const bad = plan(world, 'org_2/app', 'v1', 'x') as { destination: { reference: string } };
    bad.destination.reference = 'registry.example.com/elsewhere/app:v1';
    const jobId = world.cp.enqueueJob(bad);
    const agent = startAgent(world, tempState(), ['--exit-when-idle']);
    assert.equal(await agent.exited, 0);
    assert.equal(world.cp.job(jobId).result!.error_code, 'INVALID_PLAN');
  });

  test('a plan the control plane will not serve (404, 403) fails the job with INVALID_PLAN, saying what to check, not INTERNAL', async () => {
    for (const [status, remedy] of [
      [404, /the control plane has no plan for job \S+: check the job in the control plane/],
      [403, /the control plane refused runner \S+ the plan of job \S+: check that the runner token/],
    ] as const) {
      const jobId = world.cp.enqueueJob(plan(world, 'org_2/app', 'v1', 'install_1/refused'));
      world.cp.setFault({ kind: 'status', status, body: { code: status === 404 ? 'NOT_FOUND' : 'FORBIDDEN', message: 'refused' } }, { match: { method: 'GET', path: `/${jobId}/plan` } });
      const agent = startAgent(world, tempState(), ['--exit-when-idle']);
      assert.equal(await agent.exited, 0, agent.logs().slice(-3000));
      const result = world.cp.job(jobId).result!;
      assert.equal(result.error_code, 'INVALID_PLAN', `HTTP ${status}: ${result.error_message}`);
      assert.match(result.error_message!, remedy);
    }
  });

  test('a job cancelled mid-copy stops its transfers, deletes upload sessions and reports nothing', async () => {
    const img = await pushLargeImage(vendorC, 'org_3/app', 'v1', { layerCount: 2, layerSize: 8 * MiB });
    // Layer downloads stall, so the copy is mid-transfer (upload sessions open) when the cancel comes.
    const stall = stallLayers(proxy, img, 60_000);
    const jobId = world.cp.enqueueJob(plan(world, 'org_3/app', 'v1', 'install_1/cancel', {}, proxy.host));
    const agent = startAgent(world, tempState(), ['--exit-when-idle']);
    await waitFor('an upload session to open', () => openUploads(world, 'install_1/cancel').length > 0, 60_000);
    const cancelledAt = Date.now();
    world.cp.cancelJob(jobId);
    await agent.waitForLog(/control plane stopped the job/, 20_000);
    const code = await agent.exited;
    stall.remove();
    assert.equal(code, 0);
    assert.ok(Date.now() - cancelledAt < 20_000, 'transfers did not stop promptly');
    const job = world.cp.job(jobId);
    assert.equal(job.status, 'cancelled');
    assert.equal(job.results.length, 0, 'a result was reported after the cancel');
    // distribution 2.8 re-creates `hashstates/` when the aborted PUT's handler finishes after the
    // DELETE; a session is live only while its `startedat` and `data` files exist.
    const live = openUploads(world, 'install_1/cancel').filter((u) => {
      const files = listTree(join(world.local.storageDir, 'docker/registry/v2/repositories/install_1/cancel/_uploads', u));
      return files.includes('startedat') || files.includes('data');
    });
    assert.deepEqual(live, [], 'upload sessions left open');
    const deletes = world.local.logs().split('\n').filter((l) => /"DELETE \/v2\/install_1\/cancel\/blobs\/uploads\/[^"]+" 204/.test(l));
    assert.ok(deletes.length >= 1, 'no upload session was deleted');
  });

  test('control plane unreachable for 15 s mid-job: the job completes and the result is delivered', async () => {
    const img = await pushLargeImage(vendorC, 'org_4/app', 'v1', { layerCount: 1, layerSize: 4 * MiB });
    const stall = stallLayers(proxy, img, 4000, 1);
    const jobId = world.cp.enqueueJob(plan(world, 'org_4/app', 'v1', 'install_1/outage', {}, proxy.host));
    const agent = startAgent(world, tempState(), ['--exit-when-idle']);
    await waitFor('the job to start', () => world.cp.job(jobId).executions.length > 0, 90_000);
    await world.cp.goDown();
    const downAt = Date.now();
    await new Promise((r) => setTimeout(r, 15_000));
    const upAt = Date.now();
    await world.cp.comeUp();
    assert.equal(await agent.exited, 0, agent.logs().slice(-2000));
    stall.remove();
    const job = world.cp.job(jobId);
    if (job.status !== 'finished') console.log(agent.logs().slice(-6000));
    assert.equal(job.status, 'finished');
    assert.equal(job.results.length, 1);
    // The job met the outage and waited it out: warnings of this job, logged while the control
    // plane was down, that a request to it was refused and will be tried again.
    const refused = `ECONNREFUSED 127.0.0.1:${world.cp.port}`;
    const waited = logLines(agent.logs()).filter(
      (l) => l.level === 40 && l.job_id === jobId && l.time >= downAt && l.time <= upAt && /; retrying$/.test(String(l.msg)) && String(l.problem).includes(refused),
    );
    assert.ok(waited.length >= 1, `no warning of job ${jobId} that the control plane (${refused}) was retried during the outage`);
    // The poll loop backed off too.
    assert.ok(
      logLines(agent.logs()).some((l) => l.level === 40 && l.msg === 'control plane unavailable; backing off' && l.time >= downAt && l.time <= upAt && String(l.problem).includes(refused)),
      'the poll loop did not back off during the outage',
    );
    // The retry paths' lines too (they log the job's ids for callers without a job-bound logger).
    assert.deepEqual(linesWithDuplicateKeys(agent.logs()), []);
  });

  test('SIGKILL mid-job, then a restart: attaches, renews credentials, finishes, reports once', async () => {
    const img = await pushLargeImage(vendorC, 'org_5/app', 'v1', { layerCount: 2, layerSize: 6 * MiB });
    const stall = stallLayers(proxy, img, 60_000);
    const jobId = world.cp.enqueueJob(plan(world, 'org_5/app', 'v1', 'install_1/killed', {}, proxy.host));
    const state = tempState();
    const first = startAgent(world, state);
    await waitFor('an upload to start', () => openUploads(world, 'install_1/killed').length > 0, 60_000);
    first.proc.kill('SIGKILL');
    await first.exited;
    stall.remove();
    const second = startAgent(world, state, ['--exit-when-idle']);
    assert.equal(await second.exited, 0, second.logs().slice(-3000));
    assert.match(second.logs(), /attached an open execution/);
    const job = world.cp.job(jobId);
    assert.equal(job.status, 'finished');
    assert.equal(job.executions.length, 1, 'the job ran under a second execution');
    assert.equal(job.results.length, 1);
    assert.ok(job.credentialsIssued.length >= 2, 'credentials were not renewed after the restart');
    const v = await localC.verifyImage('install_1/killed', 'v1');
    assert.equal(v.digest, (await vendorC.getManifest('org_5/app', 'v1')).digest);
  });

  test('SIGTERM mid-job: exits 0 within the grace period, leaves the job open; the next run resumes it', async () => {
    const img = await pushLargeImage(vendorC, 'org_6/app', 'v1', { layerCount: 1, layerSize: 4 * MiB });
    const stall = stallLayers(proxy, img, 60_000);
    const jobId = world.cp.enqueueJob(plan(world, 'org_6/app', 'v1', 'install_1/term', {}, proxy.host));
    const state = tempState();
    const agent = startAgent(world, state, ['--shutdown-grace', '1']);
    await waitFor('the job to start', () => world.cp.job(jobId).executions.length > 0, 90_000);
    await new Promise((r) => setTimeout(r, 500));
    agent.proc.kill('SIGTERM');
    assert.equal(await agent.exited, 0, agent.logs().slice(-3000));
    stall.remove();
    assert.match(agent.logs(), /left open/);
    let job = world.cp.job(jobId);
    assert.equal(job.results.length, 0, 'a job interrupted by shutdown must not be failed');
    assert.equal(job.executions[0]!.closed, false);
    const again = startAgent(world, state, ['--exit-when-idle']);
    assert.equal(await again.exited, 0);
    job = world.cp.job(jobId);
    assert.equal(job.status, 'finished');
    assert.equal(job.results.length, 1);
  });

  test('three agents with one runner id share 30 jobs: each runs exactly once', async () => {
    const jobIds: string[] = [];
    for (let i = 0; i < 30; i++) {
      await pushImage(vendorC, `fleet/app${i}`, 'v1', { layerSizes: [2000 + i, 3000] });
      jobIds.push(world.cp.enqueueJob(plan(world, `fleet/app${i}`, 'v1', `install_1/fleet${i}`, { referrers: false })));
    }
    const agents = [0, 1, 2].map(() => startAgent(world, tempState(), ['--exit-when-idle', '--max-jobs', '3', '--log-level', 'info']));
    const codes = await Promise.all(agents.map((a) => a.exited));
    assert.deepEqual(codes, [0, 0, 0]);
    for (const id of jobIds) {
      const job = world.cp.job(id);
      assert.equal(job.status, 'finished', `job ${id} is ${job.status}`);
      assert.equal(job.executions.length, 1);
      assert.equal(job.results.length, 1, `job ${id} reported ${job.results.length} results`);
    }
    const ranBy = new Set(jobIds.map((id) => world.cp.job(id).executions[0]!.instance_id));
    assert.ok(ranBy.size >= 2, 'only one agent did any work');
  });

  test('health endpoints: /healthz, /readyz and Prometheus /metrics; SIGTERM when idle exits 0', async () => {
    const agent = startAgent(world, tempState(), ['--health-addr', '127.0.0.1:0']);
    const line = await agent.waitForLog(/health server listening/);
    const url = `http://${JSON.parse(line).addr as string}`;
    assert.equal((await fetch(`${url}/healthz`)).status, 200);
    let ready = 0;
    for (let i = 0; i < 50 && ready !== 200; i++) {
      ready = (await fetch(`${url}/readyz`)).status;
      if (ready !== 200) await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(ready, 200);
    const text = await (await fetch(`${url}/metrics`)).text();
    assertPrometheusText(text);
    assert.match(text, /ferry_jobs_total\{outcome="succeeded"\}/);
    assert.match(text, /ferry_blobs_total\{action="copied"\}/);
    assert.match(text, /^ferry_build_info\{version="[^"]+",commit="[^"]+",node="v\d+[^"]*"\} 1$/m);
    assert.match(text, /^process_cpu_seconds_total [0-9.]+$/m);
    assert.match(text, /^process_resident_memory_bytes [1-9]\d+$/m);
    assert.match(text, /^ferry_pending_results 0$/m);
    assert.match(text, /^ferry_bytes_resent_total 0$/m);

    // Runner token rotated at the control plane: not ready until the new token is in the file.
    const readyz = async () => (await fetch(`${url}/readyz`)).status;
    const oldToken = world.cp.token;
    world.cp.rotateToken('ferry-rotated-runner-token-987654321');
    await waitForAsync('readyz to turn 503 after the token was rejected', async () => (await readyz()) === 503, 20_000);
    writeFileSync(world.tokenFile, 'ferry-rotated-runner-token-987654321');
    await waitForAsync('readyz to recover with the rotated token', async () => (await readyz()) === 200, 30_000);
    assertNoSecrets(world, agent.logs(), [oldToken, 'ferry-rotated-runner-token-987654321']);
    agent.proc.kill('SIGTERM');
    assert.equal(await agent.exited, 0);
  });
});

async function waitForAsync(what: string, fn: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await fn())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** The agent's JSON log lines (anything else on its stderr is skipped). */
function logLines(text: string): Array<Record<string, unknown> & { level: number; time: number; msg: string }> {
  const out = [];
  for (const line of text.split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      out.push(JSON.parse(line));
    } catch {
      // a line cut by the end of the capture
    }
  }
  return out;
}

// The Prometheus text format (0.0.4), line by line.
const METRIC_NAME = '[a-zA-Z_:][a-zA-Z0-9_:]*';
const LABEL = '[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\\\\n]|\\\\[\\\\"n])*"';
const VALUE = '(?:[+-]?(?:[0-9]+(?:\\.[0-9]*)?|\\.[0-9]+)(?:[eE][+-]?[0-9]+)?|NaN|[+-]Inf)';
const SAMPLE_LINE = new RegExp(`^(${METRIC_NAME})(\\{(?:${LABEL}(?:,${LABEL})*,?)?\\})? ${VALUE}(?: -?[0-9]+)?$`);
const HELP_LINE = new RegExp(`^# HELP (${METRIC_NAME}) (?:[^\\\\\\n]|\\\\[\\\\n])*$`);
const TYPE_LINE = new RegExp(`^# TYPE (${METRIC_NAME}) (counter|gauge|histogram|summary|untyped)$`);
const FAMILY_SUFFIXES: Record<string, string[]> = { histogram: ['_bucket', '_sum', '_count'], summary: ['', '_sum', '_count'] };

/**
 * Every line is a HELP or TYPE line, or a sample of the family the last TYPE line declared
 * (a histogram's as NAME_bucket with an `le` label, NAME_sum, NAME_count); each family is
 * declared once.
 */
function assertPrometheusText(text: string): void {
  const lines = text.trim().split('\n');
  assert.ok(lines.length > 5);
  const declared = new Set<string>();
  let family: { name: string; type: string } | undefined;
  for (const l of lines) {
    const type = TYPE_LINE.exec(l);
    if (type) {
      assert.ok(!declared.has(type[1]!), `${type[1]} declared twice`);
      declared.add(type[1]!);
      family = { name: type[1]!, type: type[2]! };
      continue;
    }
    if (HELP_LINE.test(l)) continue;
    const sample = SAMPLE_LINE.exec(l);
    assert.ok(sample, `not a Prometheus sample line: ${JSON.stringify(l)}`);
    assert.ok(family, `a sample before any TYPE line: ${l}`);
    const names = (FAMILY_SUFFIXES[family.type] ?? ['']).map((suffix) => family!.name + suffix);
    assert.ok(names.includes(sample[1]!), `${sample[1]} is not a sample of the ${family.type} ${family.name}`);
    if (sample[1] === `${family.name}_bucket`) assert.match(sample[2] ?? '', /[{,]le="[^"]+"/, `a histogram bucket without le: ${l}`);
  }
}

test('the Prometheus text check rejects what is not the format', () => {
  const good = '# HELP x_total Things.\n# TYPE x_total counter\nx_total{a="b\\"c"} 1\nx_total{a="d"} +Inf\n# HELP h Durations.\n# TYPE h histogram\nh_bucket{le="0.5"} 2\nh_sum 1.5e-3\nh_count 2';
  assertPrometheusText(good);
  for (const bad of ['x_total 1 junk', 'x_total{a="b"} NaN junk', 'junk x_total +Inf', 'x_total{a="b} 1', 'x_total{a="b"}1', 'y_total 1', 'h_bucket 2', 'x_total{a="b"\n} 1']) {
    assert.throws(() => assertPrometheusText(`${good.split('\nh_count')[0]}\n${bad}`), `accepted ${JSON.stringify(bad)}`);
  }
});
