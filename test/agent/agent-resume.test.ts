// The agent killed mid-upload (SIGKILL) and restarted with the same state directory: it attaches
// to its open execution and continues each journaled upload from the offset the local registry
// reports, not from zero, and reports exactly one result. The local registry is the harness's
// spec-following registry (test/harness/spec-registry.ts), which keeps the bytes of a PATCH the
// kill cut mid-body, as distribution 3.x does; distribution 2.8 would invalidate that session
// (test/resume/sigkill.test.ts). The layers are larger than one chunk of the agent's default
// upload tuning (64 MiB), so they go up in chunks and are journaled. The same for a hard stop
// (a second SIGTERM): the copy is suspended, its sessions are kept (not DELETEd) and continued.
import { after, before, describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { clientFor } from '../harness/oci-client.ts';
import { pushLargeImage, type PushedManifest } from '../harness/fixtures.ts';
import { startSpecRegistry, type SpecRegistry } from '../harness/spec-registry.ts';
import { createRng, seedFor, SUITE_SEED } from '../harness/seed.ts';
import { recordFault } from '../faults/report.ts';
import { journalFiles } from '../resume/helpers.ts';
import { DEFAULT_UPLOAD_TUNING } from '../../src/ends/registry/blob-upload.ts';
import { logLines, mib } from '../resume/helpers.ts';
import { killAgents, plan, startAgent, startWorld, tempState, waitFor, VENDOR_USER, type AgentWorld, type RunningAgent } from './agent-harness.ts';

const MiB = 1024 * 1024;
const CHUNK = DEFAULT_UPLOAD_TUNING.chunkBytes;
/** Three chunks per layer: 64 + 64 + the rest (which rides on the commit PUT). */
const LAYER_SIZE = 2 * CHUNK + 22 * MiB + 12_345;

describe('ferry agent: stopped mid-upload, restarted, continues from the registry\'s offset', () => {
  let world: AgentWorld;
  let reg: SpecRegistry;
  let img: PushedManifest;
  let imageBytes = 0;

  before(async () => {
    [world, reg] = await Promise.all([startWorld(), startSpecRegistry()]);
    const vendorC = clientFor(world.vendor, { username: VENDOR_USER.name, password: VENDOR_USER.password });
    img = await pushLargeImage(vendorC, 'org_r/app', 'v1', { layerCount: 2, layerSize: LAYER_SIZE });
    imageBytes = img.blobs.reduce((n, b) => n + b.size, 0);
  });
  after(async () => {
    killAgents();
    await reg?.stop();
    await world?.stop();
  });

  /**
   * Run a job copying the image into `repo` of the spec registry; once the registry has received
   * a seeded share of it, `stop` the agent. Then restart the agent with the same state directory
   * and check that it attached, continued every upload from what the registry held, and reported once.
   */
  async function stopAndResume(t: TestContext, label: string, repo: string, stop: (agent: RunningAgent) => Promise<void>) {
    const rng = createRng(seedFor(`agent/resume/${label}`));
    const point = Math.floor((0.25 + rng.float() * 0.5) * imageBytes);
    console.log(`# seed ${SUITE_SEED}; ${label} after the local registry received ${mib(point)} of ${mib(imageBytes)} MiB`);
    const p = { ...(plan(world, 'org_r/app', 'v1', repo) as Record<string, unknown>), referrers: false, destination: { reference: `${reg.host}/${repo}:v1`, auth: { kind: 'local' } } };
    const jobId = world.cp.enqueueJob(p);
    const state = tempState();
    const base = reg.receivedTotal();

    const first = startAgent(world, state, ['--local-registry', reg.host, '--shutdown-grace', '600']);
    const reached = new Promise<void>((resolve) => reg.onReceived(base + point, resolve));
    const outcome = await Promise.race([reached.then(() => 'reached' as const), first.exited.then(() => 'exited' as const)]);
    assert.equal(outcome, 'reached', `the agent exited before the stop point:\n${first.logs().slice(-3000)}`);
    await stop(first);
    await first.exited;
    // What the agent wrote before it went is still reaching the registry (socket buffers): wait
    // until its requests have ended, then the sessions hold what the next agent will find.
    await waitFor('the registry to finish the requests of the stopped agent', () => reg.sessions().every((s) => s.repository !== repo || s.active === 0), 60_000);
    const atStop = reg.receivedTotal() - base;
    const open = reg.sessions().filter((s) => s.repository === repo && s.state === 'open');
    const journaled = [...journalFiles(state).values()].map((d) => d?.entry).filter(Boolean);
    assert.equal(world.cp.job(jobId).results.length, 0, 'the stopped agent reported a result');
    const deletes = reg.requests.filter((r) => r.method === 'DELETE' && r.path.startsWith(`/v2/${repo}/blobs/uploads/`));
    assert.deepEqual(deletes, [], 'the stopped agent deleted upload sessions');
    assert.ok(journaled.length >= 1, 'no upload was journaled when the agent stopped');
    for (const e of journaled) assert.equal(e.owner, `job ${jobId}`, 'the agent journals its uploads under the job');

    const second = startAgent(world, state, ['--local-registry', reg.host, '--exit-when-idle']);
    assert.equal(await second.exited, 0, second.logs().slice(-4000));
    assert.match(second.logs(), /attached an open execution/);
    const job = world.cp.job(jobId);
    assert.equal(job.status, 'finished');
    assert.equal(job.executions.length, 1, 'the job ran under a second execution');
    assert.equal(job.results.length, 1, 'exactly one result');
    const v = await clientFor(reg).verifyImage(repo, 'v1');
    assert.equal(v.digest, img.digest, 'byte-exact at the local registry');

    const logs = logLines(second.logs());
    const continued = logs.filter((l) => l.msg?.startsWith('continuing a journaled upload'));
    const restarted = logs.filter((l) => l.msg?.startsWith('journaled upload cannot be continued'));
    const finished = logs.find((l) => l.msg === 'job finished');
    assert.ok(finished, 'no "job finished" log line');
    const transfer = finished.transfer;
    const perBlob = reg.receivedPerBlob(repo);
    const resent = img.blobs.reduce((n, b) => n + (perBlob.get(b.digest)?.received ?? 0) - b.size, 0);
    console.log(
      `# ${label}: ${mib(atStop)} MiB received when the agent exited; open sessions held ${open.map((s) => mib(s.offset)).join(', ')} MiB; ` +
        `the restarted agent continued at ${continued.map((l) => `${mib(l.offset)} (journaled ${mib(l.journaled_offset)})`).join(', ')} MiB; ` +
        `report: blobs_resumed ${transfer.blobs_resumed}, blobs_restarted ${transfer.blobs_restarted}, bytes_resent ${transfer.bytes_resent}, ` +
        `bytes_reread_for_hash ${mib(transfer.bytes_reread_for_hash)} MiB; the registry received ${resent} bytes twice`,
    );

    assert.equal(restarted.length, 0, 'a journaled upload had to start over');
    assert.ok(continued.length >= 1, 'no journaled upload was continued');
    // Each continued at exactly what the registry held when the agent went away.
    const nonZero = (xs: number[]) => xs.filter((o) => o > 0).sort((a, b) => a - b);
    assert.deepEqual(nonZero(continued.map((l) => l.offset)), nonZero(open.map((s) => s.offset)));
    assert.equal(transfer.blobs_restarted, 0);
    assert.ok(transfer.bytes_resent <= continued.length * CHUNK, `${transfer.bytes_resent} bytes re-sent for ${continued.length} interrupted blobs`);
    for (const b of img.blobs) {
      const row = perBlob.get(b.digest);
      assert.ok(row, `no session of ${b.digest} at the registry`);
      assert.ok(row.received - b.size <= CHUNK, `${b.digest}: ${row.received - b.size} bytes received twice`);
    }
    recordFault(t, {
      suite: 'resume',
      fault: `agent ${label} mid-upload (2 × ${mib(LAYER_SIZE)} MiB layers, ${mib(CHUNK)} MiB chunks), restarted; spec registry as the local registry`,
      action: `sessions kept; attached its execution; continued ${continued.length} journaled upload(s) from the registry's offset (${continued.map((l) => mib(l.offset)).join(', ')} MiB), 0 restarts; one result`,
      bytesResent: Math.max(resent, transfer.bytes_resent),
      outcome: 'byte-exact',
    });
    return continued;
  }

  test('SIGKILL: attaches to its execution, continues the journaled uploads mid-chunk, reports once', async (t) => {
    const continued = await stopAndResume(t, 'SIGKILLed', 'install_r/killed', async (agent) => {
      agent.proc.kill('SIGKILL');
    });
    // The registry's offset, not the journal's, is where each upload went on (stopAndResume checks
    // they are the registry's): never behind what was journaled. Whether the kill left a session
    // mid-chunk, or a whole chunk acknowledged but not yet journaled, depends on the seed (bytes
    // already in the socket buffers keep arriving after the kill); both go past the journal.
    for (const l of continued) assert.ok(l.offset >= l.journaled_offset, `continued at ${l.offset}, behind the journaled ${l.journaled_offset}`);
    const pastJournal = continued.filter((l) => l.offset > l.journaled_offset);
    console.log(`# SIGKILLed: ${pastJournal.length} of ${continued.length} continued past the journaled offset, ${continued.filter((l) => l.offset % CHUNK !== 0).length} mid-chunk`);
  });

  test('hard stop (second SIGTERM): the copy is suspended, its sessions kept and continued', async (t) => {
    await stopAndResume(t, 'hard-stopped', 'install_r/stopped', async (agent) => {
      agent.proc.kill('SIGTERM');
      await agent.waitForLog(/stopping: no new jobs/, 10_000);
      agent.proc.kill('SIGTERM');
      assert.equal(await agent.exited, 0);
      assert.match(agent.logs(), /left open/);
    });
  });
});
