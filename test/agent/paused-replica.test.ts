// A replica that was paused past its lease (SIGSTOP: a node that hangs, a VM that is suspended,
// a partition) while another replica attached its execution. When it comes back (SIGCONT) it
// must stop that job at once, because the control plane answers it 409 EXECUTION_NOT_HELD, and
// report nothing: the job is copied and reported once, by the replica that holds it.
import { after, before, describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { startFaultProxy, type FaultProxy } from '../harness/fault-proxy.ts';
import { pushLargeImage } from '../harness/fixtures.ts';
import { clientFor, type OciClient } from '../harness/oci-client.ts';
import { killAgents, plan, startAgent, startWorld, tempState, waitFor, VENDOR_USER, type AgentWorld } from './agent-harness.ts';

const MiB = 1024 * 1024;
const LEASE_S = 4;
const DST = 'install_p/app';

/** Upload sessions of a repository the local registry still holds open (distribution's storage layout). */
function liveUploads(world: AgentWorld, repo: string): string[] {
  const dir = join(world.local.storageDir, 'docker/registry/v2/repositories', repo, '_uploads');
  if (!existsSync(dir)) return [];
  // distribution 2.8 may re-create `hashstates/` after a DELETE; a session lives while it has `startedat` or `data`.
  return readdirSync(dir).filter((u) => {
    const files = readdirSync(join(dir, u), { recursive: true }).map(String);
    return files.includes('startedat') || files.includes('data');
  });
}

describe('a replica paused past its lease', () => {
  let world: AgentWorld;
  let vendorC: OciClient;
  let localC: OciClient;
  let proxy: FaultProxy;

  before(async () => {
    world = await startWorld({ leaseS: LEASE_S });
    vendorC = clientFor(world.vendor, { username: VENDOR_USER.name, password: VENDOR_USER.password });
    localC = clientFor(world.local);
    proxy = await startFaultProxy(world.vendor.host);
  });
  after(async () => {
    killAgents();
    await proxy?.stop();
    await world?.stop();
  });

  test('SIGSTOP past the lease, another replica attaches, SIGCONT: the paused one stops at once, the job is copied and reported once', async (t: TestContext) => {
    const img = await pushLargeImage(vendorC, 'org_p/app', 'v1', { layerCount: 2, layerSize: 4 * MiB });
    const layers = img.blobs.filter((b) => !(b.mediaType ?? '').includes('config')).map((b) => b.digest.split(':')[1]);
    const layerGet = new RegExp(`/blobs/sha256:(${layers.join('|')})`);
    // The first replica copies the config, then waits on both layers with their upload sessions
    // open: one layer's download hangs after its headers, the other's answer is held back. It is
    // frozen there, idle, and the held answer is let through while it is frozen: when it thaws, the
    // bytes of a layer are waiting for it, and it must ask before it writes them. The second
    // replica's downloads take 2 s each, so it is still copying when the first one comes back.
    let releaseHeld = false;
    proxy.addRule({ method: 'GET', path: layerGet, action: 'stall', ms: 120_000, then: 'continue', times: 1 });
    proxy.addRule({ method: 'GET', path: layerGet, action: 'hold', until: () => releaseHeld, maxMs: 120_000, times: 1 });
    proxy.addRule({ method: 'GET', path: layerGet, action: 'delay', ms: 2000 });
    const jobId = world.cp.enqueueJob(plan(world, 'org_p/app', 'v1', DST, {}, proxy.host));
    const config = img.blobs.find((b) => (b.mediaType ?? '').includes('config'))!.digest.split(':')[1]!;
    const configStored = () => existsSync(join(world.local.storageDir, 'docker/registry/v2/repositories', DST, '_layers/sha256', config, 'link'));

    const a = startAgent(world, tempState(), ['--exit-when-idle']);
    await waitFor(
      'the first replica to store the config and wait on both layers, their upload sessions open',
      () => configStored() && liveUploads(world, DST).length >= 2 && proxy.requests.filter((r) => r.method === 'GET' && layerGet.test(r.path)).length >= 2,
      60_000,
    );
    const aInstance = world.cp.job(jobId).executions[0]!.instance_id;
    a.proc.kill('SIGSTOP');
    try {
      // Not --exit-when-idle: the job is not available to it until the paused one's lease runs out.
      const b = startAgent(world, tempState());
      await waitFor('the second replica to attach the execution', () => world.cp.job(jobId).executions[0]!.attachHistory.length > 0, 60_000);
      const bInstance = world.cp.job(jobId).executions[0]!.instance_id;
      assert.notEqual(bInstance, aInstance);
      releaseHeld = true;
      await waitFor('the held layer to be answered', () => proxy.requests.some((r) => r.held !== undefined), 10_000);
      a.proc.kill('SIGCONT');
      await a.waitForLog(/another instance holds this execution now/, 30_000);
      assert.equal(await a.exited, 0, a.logs().slice(-3000));
      await waitFor('the job to finish', () => world.cp.job(jobId).status === 'finished', 60_000);
      b.proc.kill('SIGTERM');
      assert.equal(await b.exited, 0, b.logs().slice(-3000));
      assert.match(a.logs(), /job left to the instance that holds it now/);

      const job = world.cp.job(jobId);
      assert.equal(job.status, 'finished');
      assert.equal((await localC.verifyImage(DST, 'v1')).digest, img.digest);
      // Reported once, by the replica that holds the job; nothing, not even an error, from the paused one.
      const resultPosts = world.cp.requests.filter((r) => r.method === 'POST' && r.path.endsWith('/result'));
      assert.deepEqual(
        resultPosts.map((r) => [(r.body as { instance_id?: string }).instance_id, (r.body as { success?: boolean }).success, r.status]),
        [[bInstance, true, 200]],
      );
      // What the paused one said after it came back was refused as not held, and it said nothing after that.
      const fromA = world.cp.requests.filter((r) => r.method !== 'GET' && (r.body as { instance_id?: string } | undefined)?.instance_id === aInstance);
      const refused = fromA.filter((r) => r.status === 409);
      assert.ok(refused.length >= 1, 'the paused replica never heard EXECUTION_NOT_HELD');
      const afterRefusal = fromA.slice(fromA.indexOf(refused[0]!) + 1).filter((r) => !r.path.endsWith('/heart-beats'));
      assert.ok(
        afterRefusal.every((r) => r.status === 409),
        `the paused replica went on after EXECUTION_NOT_HELD: ${JSON.stringify(afterRefusal.map((r) => [r.method, r.path, r.status]))}`,
      );

      // Copied once: the tag written once, each blob committed once, and the paused replica's
      // upload sessions deleted (no one else could continue them).
      const log = world.local.logs().split('\n');
      const manifestPuts = log.filter((l) => new RegExp(`"PUT /v2/${DST}/manifests/v1 HTTP/1.1" 201`).test(l));
      assert.equal(manifestPuts.length, 1, 'the tag was written more than once');
      for (const blob of img.blobs) {
        const hex = blob.digest.split(':')[1]!;
        const commits = log.filter((l) => new RegExp(`"(PUT|POST) /v2/${DST}/blobs/uploads/[^"]*digest=sha256(:|%3A)${hex}[^"]*" 201`).test(l));
        if (commits.length > 1) {
          const mentions = (logs: string) => logs.split('\n').filter((l) => l.includes(hex)).join('\n');
          assert.fail(
            `blob ${blob.digest} (${blob.mediaType}) was committed ${commits.length} times:\n${log.filter((l) => l.includes(hex)).join('\n')}\n` +
              `--- paused replica:\n${mentions(a.logs())}\n--- other replica:\n${mentions(b.logs())}`,
          );
        }
      }
      assert.ok(log.some((l) => new RegExp(`"DELETE /v2/${DST}/blobs/uploads/[^"]+" 204`).test(l)), 'the paused replica did not delete its upload sessions');
      assert.deepEqual(liveUploads(world, DST), [], 'upload sessions left open');
      t.diagnostic(`paused replica: ${fromA.length} requests carrying its instance id, ${refused.length} refused as not held`);
    } finally {
      a.proc.kill('SIGCONT');
    }
  });
});
