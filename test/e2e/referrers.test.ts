// Referrers (signatures, SBOMs, attestations) where the customer can find them, and re-syncs that
// cost nothing. `ferry copy --referrers` between a registry with the referrers API and registries
// without one: distribution 2.8 and crane's `registry serve` (both answer 404 at
// /v2/<name>/referrers/<digest>). No registry packaged for this machine serves the API, so the one
// with it is the spec registry in the test process (test/harness/spec-registry.ts), which answers a
// manifest with a subject with OCI-Subject as the spec says. What ferry leaves at the destination is
// read back with the harness's own client and with a peer client (`oras discover`); requests are
// counted at fault proxies in front of the registries.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { startDistribution, type DistributionRegistry } from '../harness/distribution.ts';
import { startCraneRegistry, type CraneRegistry } from '../harness/crane-registry.ts';
import { startSpecRegistry, type SpecRegistry } from '../harness/spec-registry.ts';
import { startFaultProxy, type FaultProxy, type ProxiedRequest } from '../harness/fault-proxy.ts';
import { clientFor, RegistryHttpError, type OciClient } from '../harness/oci-client.ts';
import { MEDIA, pushArtifactFor, pushCosignTags, pushImage, pushMultiArch, referrersTag, type PushedManifest } from '../harness/fixtures.ts';
import { runFerry, tempStateHome } from './ferry-cli.ts';

const run = promisify(execFile);

interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  artifactType?: string;
  annotations?: Record<string, string>;
}

/**
 * A referrer's entry as the spec asks a client to write it into the fallback index, worked out
 * here from the bytes pushed: artifactType, or the config's media type; every annotation.
 */
function specEntry(m: PushedManifest): Descriptor {
  const doc = JSON.parse(m.manifestBytes.toString('utf8')) as { mediaType: string; artifactType?: string; config: { mediaType: string }; annotations?: Record<string, string> };
  const d: Descriptor = { mediaType: doc.mediaType, digest: m.digest, size: m.manifestBytes.byteLength, artifactType: doc.artifactType ?? doc.config.mediaType };
  if (doc.annotations) d.annotations = doc.annotations;
  return d;
}

/** The fallback index under `sha256-<hex of subject>`, or undefined (404). */
async function fallbackIndex(c: OciClient, repo: string, subject: string): Promise<{ digest: string; manifests: Descriptor[]; doc: Record<string, unknown> } | undefined> {
  try {
    const got = await c.getManifest(repo, referrersTag(subject));
    const doc = JSON.parse(got.bytes.toString('utf8')) as Record<string, unknown> & { manifests: Descriptor[] };
    return { digest: got.digest, manifests: doc.manifests, doc };
  } catch (e) {
    if (e instanceof RegistryHttpError && e.status === 404) return undefined;
    throw e;
  }
}

const WRITES = new Set(['PUT', 'POST', 'PATCH', 'DELETE']);

function writes(requests: ProxiedRequest[]): string[] {
  return requests.filter((q) => WRITES.has(q.method)).map((q) => `${q.method} ${q.path}`);
}

function show(requests: ProxiedRequest[]): string {
  return requests.map((q) => `${q.method} ${q.path} ${q.status}`).join('\n');
}

/** A signed image as a vendor publishes one: an SBOM and a signature with `subject`, and cosign's .sig. */
async function pushSignedImage(c: OciClient, repo: string, fallbackTag: boolean) {
  const img = await pushImage(c, repo, 'v1');
  const sbom = await pushArtifactFor(c, repo, img.descriptor, { fallbackTag });
  const sig = await pushArtifactFor(c, repo, img.descriptor, { fallbackTag, artifactType: 'application/vnd.dev.cosign.artifact.sig.v1+json' });
  const [cosign] = await pushCosignTags(c, repo, img.digest);
  return { img, sbom, sig, cosign: cosign! };
}

/** The signed image: a three-platform index, an SBOM of the index, cosign's .sig and .att. */
async function pushSignedIndex(c: OciClient, repo: string, fallbackTag: boolean) {
  const idx = await pushMultiArch(c, repo, 'v1');
  const sbom = await pushArtifactFor(c, repo, idx.descriptor, { fallbackTag });
  const cosign = await pushCosignTags(c, repo, idx.digest, { kinds: ['sig', 'att'] });
  return { idx, referrers: [sbom, ...cosign], subjects: [idx.digest, ...idx.children!.map((ch) => ch.digest), sbom.digest, ...cosign.map((x) => x.digest)] };
}

describe('referrers where the customer can find them', () => {
  let api: SpecRegistry;
  let dist: DistributionRegistry;
  /** A second distribution 2.8, the source where one without the API is wanted at both ends. */
  let vendor: DistributionRegistry;
  let crane: CraneRegistry;
  let apiProxy: FaultProxy;
  let distProxy: FaultProxy;
  let vendorProxy: FaultProxy;
  let apiC: OciClient;
  let distC: OciClient;
  let vendorC: OciClient;
  let craneC: OciClient;
  const env = { XDG_STATE_HOME: tempStateHome() };

  before(async () => {
    [api, dist, vendor, crane] = await Promise.all([startSpecRegistry(), startDistribution(), startDistribution(), startCraneRegistry()]);
    [apiProxy, distProxy, vendorProxy] = await Promise.all([startFaultProxy(api.host), startFaultProxy(dist.host), startFaultProxy(vendor.host)]);
    apiC = clientFor(api);
    distC = clientFor(dist);
    vendorC = clientFor(vendor);
    craneC = clientFor(crane);
  });
  after(async () => {
    await Promise.all([apiProxy?.stop(), distProxy?.stop(), vendorProxy?.stop()]);
    await Promise.all([api?.stop(), dist?.stop(), vendor?.stop(), crane?.stop()]);
  });

  test('from a registry with the API into distribution 2.8 and crane\'s registry: the fallback index lists the SBOM and the signature as the spec says; oras discover finds them', async () => {
    const { img, sbom, sig, cosign } = await pushSignedImage(apiC, 'find/app', false);
    assert.equal(await fallbackIndex(apiC, 'find/app', img.digest), undefined, 'the source has the API: no fallback tag there');
    for (const [c, host] of [
      [distC, dist.host],
      [craneC, crane.host],
    ] as const) {
      const r = await runFerry(['copy', '--json', '--referrers', `${api.host}/find/app:v1`, `${host}/find/app:v1`], { env });
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(
        r.json.image.referrers.map((x: { digest: string }) => x.digest).sort(),
        [sbom.digest, sig.digest, cosign.digest].sort(),
      );
      const index = await fallbackIndex(c, 'find/app', img.digest);
      assert.ok(index, `${host}: no fallback index under ${referrersTag(img.digest)}`);
      assert.equal(index.doc.mediaType, MEDIA.ociIndex);
      assert.equal(index.doc.schemaVersion, 2);
      // The API's order at the source; each entry with artifactType and annotations. cosign's
      // signature has no subject: its tag is how clients find it, not the index.
      assert.deepEqual(index.manifests, [specEntry(sbom), specEntry(sig)]);
      for (const m of [sbom, sig]) assert.equal((await c.verifyImage('find/app', m.digest)).digest, m.digest);
      assert.equal((await c.headManifest('find/app', `${referrersTag(img.digest)}.sig`))?.digest, cosign.digest);
    }

    // A peer client at the customer's side finds them through the fallback tag.
    const { stdout } = await run('oras', ['discover', '--plain-http', '--format', 'json', `${dist.host}/find/app:v1`]);
    const found = (JSON.parse(stdout) as { referrers: Array<{ digest: string; artifactType: string; annotations?: Record<string, string> }> }).referrers;
    assert.deepEqual(
      found.map((f) => [f.digest, f.artifactType]).sort(),
      [
        [sbom.digest, specEntry(sbom).artifactType],
        [sig.digest, specEntry(sig).artifactType],
      ].sort(),
    );
    assert.deepEqual(found.find((f) => f.digest === sbom.digest)?.annotations, specEntry(sbom).annotations);
  });

  test('an existing fallback index keeps the entries others pushed; a second copy writes nothing', async () => {
    const { img, sbom, sig } = await pushSignedImage(apiC, 'merge/app', false);
    // Someone else's attestation of the same image, listed at the destination before ferry came.
    const foreign = await pushArtifactFor(distC, 'merge/app', img.descriptor, { artifactType: 'application/vnd.example.foreign.v1', seed: 'foreign' });
    const before = await fallbackIndex(distC, 'merge/app', img.digest);
    assert.deepEqual(before?.manifests.map((m) => m.digest), [foreign.digest]);

    const first = await runFerry(['copy', '--json', '--referrers', `${api.host}/merge/app:v1`, `${distProxy.host}/merge/app:v1`], { env });
    assert.equal(first.code, 0, first.stderr);
    const merged = await fallbackIndex(distC, 'merge/app', img.digest);
    assert.ok(merged);
    assert.deepEqual(merged.manifests[0], before!.manifests[0], 'the entry another client pushed changed or moved');
    assert.deepEqual(merged.manifests, [before!.manifests[0], specEntry(sbom), specEntry(sig)]);

    distProxy.resetLog();
    const second = await runFerry(['copy', '--json', '--referrers', `${api.host}/merge/app:v1`, `${distProxy.host}/merge/app:v1`], { env });
    assert.equal(second.code, 0, second.stderr);
    assert.deepEqual(writes(distProxy.requests), [], `the second copy wrote at the destination:\n${show(distProxy.requests)}`);
    assert.equal((await fallbackIndex(distC, 'merge/app', img.digest))?.digest, merged.digest);
    assert.equal(second.json.transfer.blobs_copied, 0);
  });

  test('a writer that replaces the fallback index right after ferry wrote it: ferry reads it back and merges again (distribution 2.8, no conditional writes)', async () => {
    const { img, sbom, sig } = await pushSignedImage(apiC, 'race/app', false);
    const other = await pushArtifactFor(distC, 'race/app', img.descriptor, { artifactType: 'application/vnd.example.other.v1', seed: 'other', fallbackTag: false });
    let raced = false;
    // The other client read the tag before ferry wrote it (404: nothing yet) and writes its own list now.
    const rule = distProxy.addRule({
      method: 'PUT',
      path: new RegExp(`/manifests/${referrersTag(img.digest)}$`),
      times: 1,
      action: 'hook',
      whileHeld: async () => {
        const index = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MEDIA.ociIndex, manifests: [other.descriptor] }));
        await distC.pushManifest('race/app', referrersTag(img.digest), index, MEDIA.ociIndex);
        raced = true;
      },
    });
    try {
      const r = await runFerry(['copy', '--json', '--referrers', `${api.host}/race/app:v1`, `${distProxy.host}/race/app:v1`], { env });
      assert.equal(r.code, 0, r.stderr);
    } finally {
      rule.remove();
    }
    assert.ok(raced, 'the other writer did not run');
    const index = await fallbackIndex(distC, 'race/app', img.digest);
    assert.deepEqual(index?.manifests.map((m) => m.digest), [other.digest, sbom.digest, sig.digest]);
  });

  test('a writer between ferry\'s read and its write: the conditional write is refused (412) and ferry merges again', async () => {
    // A registry without the referrers API that honours If-Match (the spec registry with its API off).
    const cond = await startSpecRegistry({ referrersApi: false });
    const condProxy = await startFaultProxy(cond.host);
    const condC = clientFor(cond);
    try {
      const img = await pushImage(apiC, 'cond/app', 'v1');
      const sbom = await pushArtifactFor(apiC, 'cond/app', img.descriptor, { fallbackTag: false });
      const first = await pushArtifactFor(condC, 'cond/app', img.descriptor, { artifactType: 'application/vnd.example.first.v1', seed: 'first' });
      const late = await pushArtifactFor(condC, 'cond/app', img.descriptor, { artifactType: 'application/vnd.example.late.v1', seed: 'late', fallbackTag: false });
      let raced = false;
      // Ferry's read of the tag (a HEAD, the ETag) reaches the registry; before its answer is back, another writer adds `late`.
      const rule = condProxy.addRule({
        method: 'HEAD',
        path: new RegExp(`/manifests/${referrersTag(img.digest)}$`),
        times: 1,
        action: 'hook',
        whileHeld: async () => {
          const doc = JSON.parse((await condC.getManifest('cond/app', referrersTag(img.digest))).bytes.toString('utf8')) as { manifests: unknown[] };
          doc.manifests.push(late.descriptor);
          await condC.pushManifest('cond/app', referrersTag(img.digest), Buffer.from(JSON.stringify(doc)), MEDIA.ociIndex);
          raced = true;
        },
      });
      const r = await runFerry(['copy', '--json', '--referrers', `${api.host}/cond/app:v1`, `${condProxy.host}/cond/app:v1`], { env });
      rule.remove();
      assert.equal(r.code, 0, r.stderr);
      assert.ok(raced, 'the other writer did not run');
      const refused = condProxy.requests.filter((q) => q.method === 'PUT' && q.path.endsWith(referrersTag(img.digest)));
      assert.deepEqual(
        refused.map((q) => q.status),
        [412, 201],
        `ferry's conditional write should be refused once, then succeed:\n${show(condProxy.requests)}`,
      );
      const index = await fallbackIndex(condC, 'cond/app', img.digest);
      assert.deepEqual(index?.manifests.map((m) => m.digest), [first.digest, late.digest, sbom.digest]);
    } finally {
      await condProxy.stop();
      await cond.stop();
    }
  });

  test('into a registry with the API: no fallback tag; the API lists them; a second copy writes nothing', async () => {
    const { img, sbom, sig, cosign } = await pushSignedImage(distC, 'toapi/app', true);
    const r = await runFerry(['copy', '--json', '--referrers', `${dist.host}/toapi/app:v1`, `${apiProxy.host}/toapi/app:v1`], { env });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(await fallbackIndex(apiC, 'toapi/app', img.digest), undefined, 'a fallback tag was written where the API serves');
    const listed = JSON.parse(await (await apiC.request('GET', `/v2/toapi/app/referrers/${img.digest}`)).text()) as { manifests: Descriptor[] };
    assert.deepEqual(listed.manifests.map((m) => m.digest).sort(), [sbom.digest, sig.digest].sort());
    assert.equal((await apiC.headManifest('toapi/app', `${referrersTag(img.digest)}.sig`))?.digest, cosign.digest);

    apiProxy.resetLog();
    const again = await runFerry(['copy', '--json', '--referrers', `${dist.host}/toapi/app:v1`, `${apiProxy.host}/toapi/app:v1`], { env });
    assert.equal(again.code, 0, again.stderr);
    assert.deepEqual(writes(apiProxy.requests), [], show(apiProxy.requests));
  });

  describe('a warm re-sync of a signed image (three platforms, an SBOM, cosign .sig and .att)', () => {
    /**
     * The budget (docs/performance.md): nothing written; at the source the root, one tag list, at
     * most one listing per subject (the API's answer or the fallback index) and a GET per cosign
     * tag; at the destination the tag's HEAD and at most one request per referrer. A process's
     * first look at a registry asks once more whether it serves the API: a 404 from the source's,
     * or, at a destination with it, its listing after the fallback tag's 404 (`dstExtra`). The
     * agent remembers (test/agent/referrers-resync.test.ts holds it to the budget without these).
     */
    async function warm(from: { proxy: FaultProxy; c: OciClient; fallback: boolean }, to: { proxy: FaultProxy }, dstExtra: number) {
      const repo = `warm/${from.fallback ? 'fb' : 'api'}-${to.proxy === apiProxy ? 'api' : 'fb'}`;
      const { referrers, subjects } = await pushSignedIndex(from.c, repo, from.fallback);
      const args = ['copy', '--json', '--referrers', `${from.proxy.host}/${repo}:v1`, `${to.proxy.host}/${repo}:v1`];
      const cold = await runFerry(args, { env });
      assert.equal(cold.code, 0, cold.stderr);
      from.proxy.resetLog();
      to.proxy.resetLog();
      const r = await runFerry(args, { env });
      assert.equal(r.code, 0, r.stderr);
      const src = from.proxy.requests;
      const dst = to.proxy.requests;
      console.log(`# ${repo}: warm re-sync: source ${src.length} requests, destination ${dst.length} (${referrers.length} referrers, ${subjects.length} subjects)`);

      assert.deepEqual(writes(dst), [], `the warm re-sync wrote at the destination:\n${show(dst)}`);
      assert.ok(dst.length <= 1 + referrers.length + dstExtra, `destination: ${dst.length} requests, budget ${1 + referrers.length + dstExtra}:\n${show(dst)}`);

      const probes = src.filter((q) => q.path.includes('/referrers/') && q.status === 404);
      assert.ok(probes.length <= 1, `the source was asked more than once whether it serves the referrers API:\n${show(src)}`);
      const listings = src.filter((q) => !probes.includes(q) && /\/referrers\/|\/manifests\/sha256-[0-9a-f]{64}$/.test(q.path));
      const perSubject = new Map<string, number>();
      for (const q of listings) {
        const hex = /(?:referrers\/sha256:|manifests\/sha256-)([0-9a-f]{64})$/.exec(q.path)![1]!;
        perSubject.set(hex, (perSubject.get(hex) ?? 0) + 1);
      }
      for (const [hex, n] of perSubject) assert.equal(n, 1, `subject ${hex} listed ${n} times at the source:\n${show(src)}`);
      assert.ok(listings.length <= subjects.length);
      const cosign = src.filter((q) => /\/manifests\/sha256-[0-9a-f]{64}\.(sig|att|sbom)$/.test(q.path));
      assert.equal(cosign.length, 2, `one GET per cosign tag that exists:\n${show(src)}`);
      const rest = src.filter((q) => !probes.includes(q) && !listings.includes(q) && !cosign.includes(q));
      assert.deepEqual(
        rest.map((q) => `${q.method} ${q.path.replace(/\?.*$/, '')}`),
        [`GET /v2/${repo}/manifests/v1`, `GET /v2/${repo}/tags/list`],
        `beyond the listings the source is asked for the root and its tag list only:\n${show(src)}`,
      );
      return { src: src.length, dst: dst.length };
    }

    test('distribution 2.8 (fallback tag) into distribution 2.8', async () => {
      const n = await warm({ proxy: vendorProxy, c: vendorC, fallback: true }, { proxy: distProxy }, 0);
      // No API anywhere. Source: the root, the tag list, the API's 404, the index's fallback tag, the
      // two cosign tags. Destination: the tag, the fallback index, the two cosign tags.
      assert.deepEqual(n, { src: 6, dst: 4 });
    });

    test('a registry with the API into distribution 2.8', async () => {
      // Source: the root, the tag list, the API for each of the 7 subjects, the two cosign tags.
      const n = await warm({ proxy: apiProxy, c: apiC, fallback: false }, { proxy: distProxy }, 0);
      assert.deepEqual(n, { src: 11, dst: 4 });
    });

    test('distribution 2.8 into a registry with the API', async () => {
      // Destination: the tag, the fallback tag (404), the API's listing of the index, the two cosign tags.
      const n = await warm({ proxy: vendorProxy, c: vendorC, fallback: true }, { proxy: apiProxy }, 1);
      assert.deepEqual(n, { src: 6, dst: 5 });
    });
  });

  test('--platform with --referrers: the referrers of the index left behind are counted, from the API, the fallback tag and cosign tags', async () => {
    for (const [name, c, host, fallback] of [
      ['fallback', vendorC, vendor.host, true],
      ['api', apiC, api.host, false],
    ] as const) {
      const repo = `plat/${name}`;
      const idx = await pushMultiArch(c, repo, 'v1');
      const sbom = await pushArtifactFor(c, repo, idx.descriptor, { fallbackTag: fallback });
      const [sig] = await pushCosignTags(c, repo, idx.digest);
      const amd = idx.children!.find((ch) => ch.descriptor.platform?.architecture === 'amd64')!;
      const amdSbom = await pushArtifactFor(c, repo, amd.descriptor, { fallbackTag: fallback, seed: `${repo}/amd64` });
      const r = await runFerry(['copy', '--json', '--referrers', '--platform', 'linux/amd64', `${host}/${repo}:v1`, `${dist.host}/${repo}-amd64:v1`], { env });
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual([...r.json.referrers_left_behind].sort(), [sbom.digest, sig!.digest].sort(), `${name}: left behind`);
      assert.deepEqual(
        r.json.image.referrers.map((x: { digest: string }) => x.digest),
        [amdSbom.digest],
        `${name}: the chosen platform's own referrers are copied`,
      );
      const text = await runFerry(['copy', '--referrers', '--platform', 'linux/amd64', `${host}/${repo}:v1`, `${dist.host}/${repo}-amd64:v1`], { env });
      assert.equal(text.code, 0, text.stderr);
      assert.match(text.stdout + text.stderr, /2 referrer\(s\) of the original index were left behind/);
    }
  });

  test('ferry inspect lists referrers found through the API, the fallback tag and cosign tags (text and --json)', async () => {
    const viaApi = await pushSignedImage(apiC, 'look/app', false);
    const viaTag = await pushSignedImage(distC, 'look/app', true);
    for (const [host, s, listedBy] of [
      [api.host, viaApi, 'api'],
      [dist.host, viaTag, 'fallback-tag'],
    ] as const) {
      const j = await runFerry(['inspect', '--json', `${host}/look/app:v1`], { env });
      assert.equal(j.code, 0, j.stderr);
      const refs = j.json.referrers as Array<{ digest: string; artifact_type: string; subject: string; found_by: string; tag?: string }>;
      assert.deepEqual(
        refs.map((x) => [x.digest, x.found_by, x.subject, x.tag ?? '']).sort(),
        [
          [s.sbom.digest, listedBy, s.img.digest, ''],
          [s.sig.digest, listedBy, s.img.digest, ''],
          [s.cosign.digest, 'cosign-tag', s.img.digest, `${referrersTag(s.img.digest)}.sig`],
        ].sort(),
      );
      assert.equal(refs.find((x) => x.digest === s.sbom.digest)?.artifact_type, specEntry(s.sbom).artifactType);

      const text = await runFerry(['inspect', `${host}/look/app:v1`], { env });
      assert.equal(text.code, 0, text.stderr);
      assert.match(text.stdout, /^ {2}referrers: 3$/m);
      const where = listedBy === 'api' ? 'referrers API' : 'fallback tag';
      assert.match(text.stdout, new RegExp(`^ {4}${s.sbom.digest} {2}${specEntry(s.sbom).artifactType!.replace(/[.+]/g, '\\$&')} {2}\\(${where}\\)$`, 'm'));
      assert.match(text.stdout, new RegExp(`^ {4}${s.cosign.digest} .*\\(tag ${referrersTag(s.img.digest)}\\.sig\\)$`, 'm'));
    }
    await pushImage(distC, 'look/bare', 'v1');
    const bare = await runFerry(['inspect', `${dist.host}/look/bare:v1`], { env });
    assert.equal(bare.code, 0, bare.stderr);
    assert.match(bare.stdout, /^ {2}referrers: none/m);
  });
});
