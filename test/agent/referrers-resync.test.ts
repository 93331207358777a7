// The agent's periodic re-sync of a signed image costs nothing: one `ferry agent` runs the same plan
// twice (referrers on, the plans' default), and the second job's requests are counted at fault
// proxies in front of the vendor registry and of the local registry. The local registry is
// distribution 2.8 (no referrers API: the fallback index) or the spec registry (the API). The
// budget (docs/performance.md): the second job writes nothing; at the source it asks for the root,
// the tag list, at most one listing per subject and each cosign tag; at the destination for the
// tag and at most one thing per referrer. Unlike one `ferry copy` process, the agent remembers from
// the first job whether each registry serves the referrers API, so it never asks again.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { startFaultProxy, type FaultProxy, type ProxiedRequest } from '../harness/fault-proxy.ts';
import { startSpecRegistry, type SpecRegistry } from '../harness/spec-registry.ts';
import { clientFor, type OciClient } from '../harness/oci-client.ts';
import { pushArtifactFor, pushCosignTags, pushMultiArch, referrersTag } from '../harness/fixtures.ts';
import { killAgents, startAgent, startWorld, tempState, waitFor, VENDOR_USER, type AgentWorld } from './agent-harness.ts';

const WRITES = new Set(['PUT', 'POST', 'PATCH', 'DELETE']);

function show(requests: ProxiedRequest[]): string {
  return requests.map((q) => `${q.method} ${q.path} ${q.status}`).join('\n');
}

describe('the agent re-syncs a signed image', () => {
  let world: AgentWorld;
  let spec: SpecRegistry;
  let vendorC: OciClient;
  let vendorProxy: FaultProxy;
  let localProxy: FaultProxy;
  let specProxy: FaultProxy;

  before(async () => {
    [world, spec] = await Promise.all([startWorld(), startSpecRegistry()]);
    vendorC = clientFor(world.vendor, { username: VENDOR_USER.name, password: VENDOR_USER.password });
    [vendorProxy, localProxy, specProxy] = await Promise.all([startFaultProxy(world.vendor.host), startFaultProxy(world.local.host), startFaultProxy(spec.host)]);
  });
  after(async () => {
    killAgents();
    await Promise.all([vendorProxy?.stop(), localProxy?.stop(), specProxy?.stop()]);
    await Promise.all([world?.stop(), spec?.stop()]);
  });

  for (const kind of ['distribution 2.8 (fallback index)', 'a registry with the referrers API'] as const) {
    test(`into ${kind}: the second job writes nothing and stays within the request budget`, async () => {
      const local = kind.startsWith('distribution') ? localProxy : specProxy;
      const localC = clientFor({ host: local.target });
      const repo = kind.startsWith('distribution') ? 'signed/fb' : 'signed/api';
      // Three platforms; an SBOM of the index in the vendor's fallback tag; cosign's .sig and .att.
      const idx = await pushMultiArch(vendorC, repo, 'v1');
      const sbom = await pushArtifactFor(vendorC, repo, idx.descriptor);
      const cosign = await pushCosignTags(vendorC, repo, idx.digest, { kinds: ['sig', 'att'] });
      const referrers = [sbom, ...cosign];
      const subjects = 1 + idx.children!.length + referrers.length;

      const plan = {
        type: 'oci-sync',
        source: { reference: `${vendorProxy.host}/${repo}:v1`, auth: { kind: 'one-time-token' } },
        destination: { reference: `${local.host}/install_1/${repo}:v1`, auth: { kind: 'local' } },
        platforms: 'all',
        referrers: true,
      };
      const agent = startAgent(world, tempState(), ['--local-registry', local.host]);
      try {
        const first = world.cp.enqueueJob(plan);
        await waitFor(`the first job (${kind})`, () => ['finished', 'failed'].includes(world.cp.job(first).status));
        assert.equal(world.cp.job(first).status, 'finished', agent.logs().slice(-3000));
        vendorProxy.resetLog();
        local.resetLog();
        const second = world.cp.enqueueJob(structuredClone(plan));
        await waitFor(`the second job (${kind})`, () => ['finished', 'failed'].includes(world.cp.job(second).status));
        assert.equal(world.cp.job(second).status, 'finished', agent.logs().slice(-3000));
      } finally {
        agent.proc.kill('SIGTERM');
        await agent.exited;
      }
      // The vendor registry's 401 to a job's first request is its token challenge (each job brings its own credentials), referrers or not.
      const src = vendorProxy.requests.filter((q) => q.status !== 401);
      const dst = local.requests;
      console.log(`# agent into ${kind}: second job: source ${src.length} requests, destination ${dst.length} (${referrers.length} referrers, ${subjects} subjects)`);

      // What the customer finds is all there.
      const image = await localC.verifyImage(`install_1/${repo}`, 'v1');
      assert.equal(image.digest, idx.digest);
      for (const [i, kind] of ['sig', 'att'].entries()) {
        assert.equal((await localC.headManifest(`install_1/${repo}`, `${referrersTag(idx.digest)}.${kind}`))?.digest, cosign[i]!.digest);
      }

      assert.deepEqual(
        dst.filter((q) => WRITES.has(q.method)),
        [],
        `the second job wrote at the destination:\n${show(dst)}`,
      );
      // The tag, and per referrer one thing at most: the fallback index (or the API's listing) of the index, each cosign tag.
      assert.ok(dst.length <= 1 + referrers.length, `destination: ${dst.length} requests, budget ${1 + referrers.length}:\n${show(dst)}`);
      assert.equal(dst.filter((q) => q.path.includes('/referrers/') && q.status === 404).length, 0, `the agent asked again whether the local registry serves the referrers API:\n${show(dst)}`);

      const listings = src.filter((q) => /\/referrers\/|\/manifests\/sha256-[0-9a-f]{64}$/.test(q.path));
      assert.deepEqual(
        listings.map((q) => `${q.method} ${q.path} ${q.status}`),
        [`GET /v2/${repo}/manifests/${referrersTag(idx.digest)} 200`],
        `at the source (no API, remembered from the first job) only the fallback tag that exists is read:\n${show(src)}`,
      );
      const others = src.filter((q) => !listings.includes(q)).map((q) => `${q.method} ${q.path.replace(/\?.*$/, '')}`);
      assert.deepEqual(
        others.sort(),
        [
          `GET /v2/${repo}/manifests/${referrersTag(idx.digest)}.att`,
          `GET /v2/${repo}/manifests/${referrersTag(idx.digest)}.sig`,
          `GET /v2/${repo}/manifests/v1`,
          `GET /v2/${repo}/tags/list`,
        ],
        show(src),
      );
    });
  }
});
