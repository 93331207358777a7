// Hostile inputs, end to end: the real `ferry copy` CLI reads from a hostile registry
// (test/harness/hostile-registry.ts) and writes into a real distribution 2.8 registry; the real
// `ferry agent` runs some of the same inputs as control-plane jobs, and copes with a control
// plane whose answers are huge, malformed or of the wrong shape. Each hostile input must end in
// a clear error (exit 1, SOURCE_INVALID or DIGEST_MISMATCH, a message naming the problem) with
// nothing written under a wrong digest and no tag at the destination. Every log line of every
// ferry process is kept, and none may hold a password or token. Each case records a row for
// docs/faults.md (## Hostile inputs) with recordFault().
import { after, before, describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { runFerry, type FerryRun } from '../e2e/ferry-cli.ts';
import { makeTestPki, startConnectProxy, type ConnectProxy, type TestPki } from '../harness/cloud-registry.ts';
import { startControlPlane, type ControlPlane } from '../harness/control-plane.ts';
import { startDistribution, type DistributionRegistry } from '../harness/distribution.ts';
import {
  HOSTILE_CDN_NAME,
  HOSTILE_HTTPS_NAME,
  OCI,
  content,
  descriptorOf,
  jsonContent,
  makeArtifact,
  makeImage,
  makeIndex,
  sha256,
  startHostileRegistry,
  type Content,
  type HostileRegistry,
  type HostileRepo,
  type Image,
} from '../harness/hostile-registry.ts';
import { clientFor, type OciClient } from '../harness/oci-client.ts';
import { makeTempDir } from '../harness/process.ts';
import { seededBytes, seedFor } from '../harness/seed.ts';
import { killAgents, startAgent, type AgentWorld, type RunningAgent } from '../agent/agent-harness.ts';
import { recordFault } from './report.ts';

const MiB = 1024 * 1024;
const MAX_MANIFEST = 4 * MiB;
const DST_USER = { name: 'hostile-pusher', password: `dst-${seededBytes(seedFor('hostile/dst-password'), 12).toString('hex')}` };
const METADATA_V4 = '169.254.169.254';
const METADATA_V6 = '[fd00:ec2::254]';

/** Every line every ferry process of this suite wrote (stdout and stderr), by process. */
const outputs: Array<{ what: string; text: string }> = [];
/** Secrets that must never appear in any of them (besides those the registries issued). */
const oneTimeTokens: string[] = [];
const runnerTokens: string[] = [];

let reg: HostileRegistry;
let dst: DistributionRegistry;
let dstC: OciClient;
let pki: TestPki;
let proxy: ConnectProxy;
/** State dirs, runner-token files: removed at exit. */
const temp = makeTempDir('hostile').path;

before(async () => {
  pki = makeTestPki([HOSTILE_HTTPS_NAME, HOSTILE_CDN_NAME]);
  [reg, dst, proxy] = await Promise.all([
    startHostileRegistry({ tls: { cert: pki.cert, key: pki.key } }),
    startDistribution({ auth: 'htpasswd', users: { [DST_USER.name]: DST_USER.password } }),
    startConnectProxy(),
  ]);
  proxy.route(HOSTILE_HTTPS_NAME, reg.tlsPort!);
  proxy.route(HOSTILE_CDN_NAME, reg.tlsPort!);
  dstC = clientFor(dst, { username: DST_USER.name, password: DST_USER.password });
  // Learn Basic auth once now: two first requests at the same time (tests run two at a time)
  // would both answer the same challenge, and the harness client gives up on the second.
  await dstC.ping();
});

after(async () => {
  killAgents();
  await Promise.all([reg?.stop(), dst?.stop(), proxy?.stop()]);
});

let runs = 0;
/** `ferry copy` from `source` into the destination's `repo:v1`, with every log line kept. */
async function ferryCopy(source: string, repo: string, opts: { https?: boolean; referrers?: boolean; destination?: string } = {}): Promise<FerryRun> {
  const args = ['copy', '--json', '--log-level', 'debug', '--state-dir', join(temp, `state-${runs++}`), '--src-creds', 'env:HOSTILE_SRC_CREDS', '--dst-creds', 'env:HOSTILE_DST_CREDS'];
  if (opts.referrers) args.push('--referrers');
  if (opts.https) args.push('--ca-file', pki.caPath);
  args.push(source, opts.destination ?? `${dst.host}/${repo}:v1`);
  const env: NodeJS.ProcessEnv = {
    HOSTILE_SRC_CREDS: `${reg.user}:${reg.password}`,
    HOSTILE_DST_CREDS: `${DST_USER.name}:${DST_USER.password}`,
    // HTTPS names resolve only through the CONNECT proxy; the loopback registries are reached directly.
    HTTPS_PROXY: opts.https ? proxy.url : undefined,
    NO_PROXY: opts.https ? '127.0.0.1,localhost' : undefined,
    https_proxy: undefined,
    HTTP_PROXY: undefined,
    http_proxy: undefined,
    no_proxy: undefined,
    NODE_EXTRA_CA_CERTS: undefined,
  };
  const run = await runFerry(args, { env, timeoutMs: 120_000 });
  outputs.push({ what: `ferry copy ${source}`, text: run.stdout + run.stderr });
  return run;
}

/** The destination holds no tag in `repo`, and nothing under any of `digests` (blob or manifest). */
async function assertNothingWritten(repo: string, digests: string[]): Promise<void> {
  assert.equal(await dstC.headManifest(repo, 'v1'), undefined, `a tag was written to ${repo}`);
  assert.deepEqual(await dstC.listTags(repo), [], `${repo} has tags`);
  for (const d of digests) {
    assert.equal(await dstC.blobExists(repo, d), false, `${repo} holds a blob under the wrong digest ${d}`);
    assert.equal(await dstC.headManifest(repo, d), undefined, `${repo} holds a manifest under the wrong digest ${d}`);
  }
}

/**
 * No HTTPS run tried to reach a metadata / link-local address, nor anything over plain HTTP:
 * the proxy is their only way out, and it records every CONNECT and every plain request.
 */
function assertNoMetadataRequest(): void {
  const bad = (s: string) => s.includes('169.254.') || s.toLowerCase().includes('fd00:ec2');
  assert.deepEqual(proxy.connects.filter((c) => bad(c.target)), [], 'a CONNECT to a metadata address was attempted');
  assert.deepEqual(proxy.plainRequests, [], 'a plain-HTTP request went out');
}

interface Refusal {
  fault: string;
  action: string;
  code: 'SOURCE_INVALID' | 'DIGEST_MISMATCH';
  message: RegExp;
  /** Digests that must not exist at the destination afterwards. */
  wrong?: string[];
  https?: boolean;
  referrers?: boolean;
}

/** Run one hostile input through `ferry copy` and check the refusal; records the report row. */
async function refused(t: TestContext, slug: string, source: string, r: Refusal): Promise<FerryRun> {
  const repo = `hostile/${slug}`;
  const run = await ferryCopy(source, repo, { https: r.https ?? false, referrers: r.referrers ?? false });
  assert.equal(run.code, 1, `exit ${run.code}; stderr:\n${run.stderr.slice(-3000)}`);
  assert.equal(run.json?.error?.code, r.code, run.stdout);
  assert.match(run.json.error.message, r.message);
  assert.match(run.stderr, new RegExp(`^ferry: ${r.code}: `, 'm'));
  await assertNothingWritten(repo, r.wrong ?? []);
  recordFault(t, { suite: 'hostile', fault: r.fault, action: r.action, bytesResent: 0, outcome: `${r.code}, exit 1; nothing written, no tag` });
  return run;
}

/** A fresh image served under `repo:v1` (HTTP or HTTPS: the same server). */
function served(repoName: string, opts: Parameters<typeof makeImage>[1] = {}): { repo: HostileRepo; img: Image } {
  const img = makeImage(repoName, opts);
  const repo = reg.repo(repoName).image(img, 'v1');
  return { repo, img };
}

const src = (repo: string, ref = ':v1') => `${reg.host}/${repo}${ref}`;
const srcTls = (repo: string, ref = ':v1') => `${HOSTILE_HTTPS_NAME}/${repo}${ref}`;

/** A JSON document padded past the manifest limit with an annotation. */
function oversizeManifest(img: Image): Content {
  return jsonContent(
    { schemaVersion: 2, mediaType: OCI.manifest, config: descriptorOf(img.config), layers: img.layers.map((l) => descriptorOf(l)), annotations: { pad: 'x'.repeat(MAX_MANIFEST) } },
    OCI.manifest,
  );
}

/** The same bytes with a run of them changed: same size, another digest. */
function tampered(c: Content): Buffer {
  const b = Buffer.from(c.bytes);
  for (let i = 10; i < Math.min(b.length, 60); i++) b[i] = b[i]! ^ 0xff;
  return b;
}

/** Every blob distribution stores must hash to the name it is stored under. */
function assertStoreIntact(): number {
  const root = join(dst.storageDir, 'docker/registry/v2/blobs/sha256');
  if (!existsSync(root)) return 0;
  let n = 0;
  for (const prefix of readdirSync(root)) {
    for (const hex of readdirSync(join(root, prefix))) {
      const data = join(root, prefix, hex, 'data');
      if (!existsSync(data)) continue;
      assert.equal(createHash('sha256').update(readFileSync(data)).digest('hex'), hex, `the destination stores ${hex} under a wrong digest`);
      n++;
    }
  }
  return n;
}

describe('hostile inputs through ferry copy', () => {
  describe('manifests', { concurrency: 2 }, () => {
    test('a manifest larger than 4 MiB, with its Content-Length', async (t) => {
      const { img } = served('oversize-declared');
      reg.repo('oversize-declared').manifest('v1', oversizeManifest(img));
      await refused(t, 'oversize-declared', src('oversize-declared'), {
        fault: 'manifest larger than 4 MiB (Content-Length says so)',
        action: 'refused on the Content-Length, before reading the body',
        code: 'SOURCE_INVALID',
        message: /is 419\d{4} bytes, more than the 4194304-byte limit/,
      });
    });

    test('a manifest larger than 4 MiB, chunked (no Content-Length)', async (t) => {
      const { img } = served('oversize-chunked');
      reg.repo('oversize-chunked').manifest('v1', oversizeManifest(img), { chunked: true });
      await refused(t, 'oversize-chunked', src('oversize-chunked'), {
        fault: 'manifest larger than 4 MiB, chunked (no Content-Length)',
        action: 'stopped reading at the 4 MiB bound',
        code: 'SOURCE_INVALID',
        message: /larger than the 4194304-byte limit/,
      });
    });

    test('manifest bytes that do not match the pinned digest', async (t) => {
      const { img } = served('pinned-mismatch');
      const other = makeImage('pinned-mismatch-other');
      reg.repo('pinned-mismatch').manifest(img.manifest.digest, other.manifest);
      await refused(t, 'pinned-mismatch', src('pinned-mismatch', `@${img.manifest.digest}`), {
        fault: 'manifest bytes do not match the digest asked for (repo@sha256:…)',
        action: 'hashed the bytes as they arrived; refused them',
        code: 'DIGEST_MISMATCH',
        message: new RegExp(`hashes to ${other.manifest.digest}, not ${img.manifest.digest}`),
        wrong: [img.manifest.digest, other.manifest.digest],
      });
    });

    test('a lying Docker-Content-Digest on a tag', async (t) => {
      const { img } = served('lying-header');
      const claimed = makeImage('lying-header-claimed').manifest.digest;
      reg.repo('lying-header').manifest('v1', img.manifest, { headerDigest: claimed });
      await refused(t, 'lying-header', src('lying-header'), {
        fault: 'tag served with a Docker-Content-Digest that is not the hash of the bytes',
        action: 'compared the header with the hash of the bytes; refused',
        code: 'DIGEST_MISMATCH',
        message: new RegExp(`hashes to ${img.manifest.digest}, not ${claimed}`),
        wrong: [claimed],
      });
    });

    test("an index child served with another manifest's bytes", async (t) => {
      const a = makeImage('child-mismatch-a');
      const b = makeImage('child-mismatch-b');
      const index = makeIndex([descriptorOf(a.manifest, { platform: { os: 'linux', architecture: 'amd64' } })]);
      const repo = reg.repo('child-mismatch').image(a).image(b).manifest('v1', index).manifest(index.digest, index);
      repo.manifest(a.manifest.digest, b.manifest);
      await refused(t, 'child-mismatch', src('child-mismatch'), {
        fault: "index child manifest served with another manifest's bytes",
        action: 'hashed the child as it arrived; refused it',
        code: 'DIGEST_MISMATCH',
        message: new RegExp(`hashes to ${b.manifest.digest}, not ${a.manifest.digest}`),
        wrong: [a.manifest.digest, index.digest],
      });
    });

    test('an index that refers to itself (its child digest served with its own bytes)', async (t) => {
      // An index cannot contain its own digest (hashing), but a registry can fake the loop:
      // serve the index's own bytes for the child it lists. Sizes agree; only the hash tells.
      const child = sha256(seededBytes(seedFor('hostile/self-index/child'), 64));
      let self = makeIndex([{ mediaType: OCI.index, digest: child, size: 0 }]);
      for (let i = 0; i < 3; i++) self = makeIndex([{ mediaType: OCI.index, digest: child, size: self.size }]);
      reg.repo('self-index').manifest('v1', self).manifest(self.digest, self).manifest(child, self);
      await refused(t, 'self-index', src('self-index'), {
        fault: 'index that refers to itself (the child digest is served with the index’s own bytes)',
        action: 'verified the child against its digest before following it; refused',
        code: 'DIGEST_MISMATCH',
        message: new RegExp(`hashes to ${self.digest}, not ${child}`),
        wrong: [child, self.digest],
      });
      assert.equal(reg.repo('self-index').requests.filter((r) => r.method === 'GET' && r.path.endsWith(child)).length, 1, 'the fake cycle was followed more than once');
    });

    test('an index chain nested 8 deep', async (t) => {
      const leaf = makeImage('deep-index-leaf');
      const repo = reg.repo('deep-index').image(leaf);
      let top: Content = leaf.manifest;
      const chain: Content[] = [];
      for (let i = 0; i < 8; i++) {
        top = makeIndex([descriptorOf(top)], { annotations: { level: String(8 - i) } });
        repo.manifest(top.digest, top);
        chain.push(top);
      }
      repo.manifest('v1', top);
      await refused(t, 'deep-index', src('deep-index'), {
        fault: 'index chain nested 8 levels deep',
        action: 'stopped following at the 4-level bound',
        code: 'SOURCE_INVALID',
        message: /nests more than 4 levels deep/,
        wrong: chain.map((c) => c.digest),
      });
      assert.ok(!repo.requests.some((r) => r.path.endsWith(leaf.manifest.digest)), 'ferry followed the chain to its end');
    });

    test('a manifest whose size is not what its descriptor says', async (t) => {
      const a = makeImage('size-lie');
      const index = makeIndex([descriptorOf(a.manifest, { size: a.manifest.size + 17 })]);
      reg.repo('size-lie').image(a).manifest('v1', index).manifest(index.digest, index);
      await refused(t, 'size-lie', src('size-lie'), {
        fault: 'index child whose size differs from its descriptor',
        action: 'compared the size with the descriptor; refused',
        code: 'SOURCE_INVALID',
        message: new RegExp(`is ${a.manifest.size} bytes but its descriptor says ${a.manifest.size + 17}`),
        wrong: [index.digest],
      });
    });

    test('a manifest that is not JSON', async (t) => {
      reg.repo('not-json').manifest('v1', content(Buffer.from('<html><body>502 Bad Gateway, but 200</body></html>'), OCI.manifest));
      await refused(t, 'not-json', src('not-json'), {
        fault: 'manifest that is not JSON (an HTML page)',
        action: 'parsed it; refused',
        code: 'SOURCE_INVALID',
        message: /manifest is not valid JSON/,
      });
    });
  });

  describe('media types', { concurrency: 2 }, () => {
    test('an unknown manifest media type at the top', async (t) => {
      const img = makeImage('unknown-manifest-type', { manifestMediaType: 'application/vnd.example.unknown.manifest.v1+json' });
      reg.repo('unknown-manifest-type').image(img, 'v1');
      await refused(t, 'unknown-manifest-type', src('unknown-manifest-type'), {
        fault: 'unknown manifest media type (application/vnd.example.unknown.manifest.v1+json)',
        action: 'refused before reading any blob',
        code: 'SOURCE_INVALID',
        message: /unknown manifest media type "application\/vnd\.example\.unknown\.manifest\.v1\+json"/,
        wrong: [img.manifest.digest],
      });
      assert.ok(!reg.repo('unknown-manifest-type').requests.some((r) => r.path.includes('/blobs/')), 'ferry read a blob of an unknown manifest');
    });

    test('a Docker schema 1 manifest', async (t) => {
      const v1 = jsonContent({ schemaVersion: 1, name: 'schema1', tag: 'v1', architecture: 'amd64', fsLayers: [], history: [], signatures: [] }, 'application/vnd.docker.distribution.manifest.v1+prettyjws');
      reg.repo('schema1').manifest('v1', v1);
      await refused(t, 'schema1', src('schema1'), {
        fault: 'Docker schema 1 manifest (application/vnd.docker.distribution.manifest.v1+prettyjws)',
        action: 'refused: only schema 2 / OCI is copied',
        code: 'SOURCE_INVALID',
        message: /unsupported manifest schemaVersion 1/,
      });
    });

    test('an index entry with an unknown media type', async (t) => {
      const a = makeImage('unknown-entry');
      const index = makeIndex([{ mediaType: 'application/vnd.example.unknown.v1+json', digest: a.manifest.digest, size: a.manifest.size }]);
      reg.repo('unknown-entry').image(a).manifest('v1', index);
      await refused(t, 'unknown-entry', src('unknown-entry'), {
        fault: 'index entry with an unknown media type',
        action: 'refused the index',
        code: 'SOURCE_INVALID',
        message: /has unknown media type "application\/vnd\.example\.unknown\.v1\+json"/,
        wrong: [index.digest],
      });
    });

    test('an index that lists the same child 40 times: fetched once, copied byte-exact', async (t) => {
      // Not hostile, but odd: each listing used to be fetched from the source in parallel.
      const child = makeImage('repeated-child');
      const index = makeIndex(Array.from({ length: 40 }, () => descriptorOf(child.manifest)));
      const repo = reg.repo('repeated-child').image(child).manifest('v1', index);
      const run = await ferryCopy(src('repeated-child'), 'hostile/repeated-child');
      assert.equal(run.code, 0, run.stderr.slice(-3000));
      assert.equal((await dstC.verifyImage('hostile/repeated-child', 'v1')).digest, index.digest);
      const gets = repo.requests.filter((r) => r.method === 'GET' && r.path.endsWith(`/manifests/${child.manifest.digest}`));
      assert.equal(gets.length, 1, `the child was fetched ${gets.length} times`);
      recordFault(t, { suite: 'hostile', fault: 'index listing the same child 40 times', action: 'fetched the child once', bytesResent: 0, outcome: 'byte-exact, exit 0' });
    });

    test('unknown layer and config media types in a valid manifest are copied byte-exact', async (t) => {
      // Blobs are opaque to a registry: copying them whatever their type is what registries do.
      const { img } = served('unknown-layer-type', { layerMediaType: 'application/vnd.example.weird.layer.v1', configMediaType: 'application/vnd.example.weird.config.v1+json' });
      const run = await ferryCopy(src('unknown-layer-type'), 'hostile/unknown-layer-type');
      assert.equal(run.code, 0, run.stderr.slice(-3000));
      const v = await dstC.verifyImage('hostile/unknown-layer-type', 'v1');
      assert.equal(v.digest, img.manifest.digest);
      assert.deepEqual(v.blobs.map((b) => b.digest).sort(), [img.config, ...img.layers].map((b) => b.digest).sort());
      recordFault(t, { suite: 'hostile', fault: 'unknown layer and config media types in a valid manifest', action: 'copied the blobs as opaque bytes, verified', bytesResent: 0, outcome: 'byte-exact, exit 0' });
    });
  });

  describe('blobs', { concurrency: 2 }, () => {
    test('layer bytes that do not match their digest (same size)', async (t) => {
      const { repo, img } = served('layer-mismatch', { layers: 2, layerSize: 300_000 });
      const bad = img.layers[1]!;
      repo.blob(bad, { bytes: tampered(bad) });
      await refused(t, 'layer-mismatch', src('layer-mismatch'), {
        fault: 'layer bytes do not match their digest (same size)',
        action: 'held back the last chunk until the digest checked out; the upload was never committed',
        code: 'DIGEST_MISMATCH',
        message: new RegExp(`blob ${bad.digest} in .* hashes to sha256:[0-9a-f]{64}; refusing to copy it`),
        wrong: [bad.digest, sha256(tampered(bad)), img.manifest.digest],
      });
    });

    test('config bytes that do not match their digest', async (t) => {
      const { repo, img } = served('config-mismatch');
      repo.blob(img.config, { bytes: tampered(img.config) });
      await refused(t, 'config-mismatch', src('config-mismatch'), {
        fault: 'config blob bytes do not match their digest',
        action: 'verified the config as it was read; refused',
        code: 'DIGEST_MISMATCH',
        message: new RegExp(`blob ${img.config.digest} .* hashes to`),
        wrong: [img.config.digest, sha256(tampered(img.config)), img.manifest.digest],
      });
    });
  });

  describe('referrers', { concurrency: 2 }, () => {
    /** An image with one real referrer (an SBOM whose subject is the image). */
    function withReferrer(name: string) {
      const { repo, img } = served(name);
      const subject = descriptorOf(img.manifest);
      const art = makeArtifact(`${name}/sbom`, subject);
      for (const b of art.blobs) repo.blob(b);
      repo.manifest(art.manifest.digest, art.manifest);
      return { repo, img, art };
    }
    const page = (...ds: Content[]) => makeIndex(ds.map((d) => descriptorOf(d, { artifactType: 'application/vnd.example.sbom.v1+json' }))).bytes;

    test('a referrers response that lists the subject itself', async (t) => {
      const { repo, img } = withReferrer('referrers-self-subject');
      repo.referrers.set(img.manifest.digest, { pages: [page(img.manifest)] });
      await refused(t, 'referrers-self-subject', src('referrers-self-subject'), {
        fault: 'referrers response that lists the subject as its own referrer',
        action: "checked each referrer's subject; refused the response",
        code: 'SOURCE_INVALID',
        message: new RegExp(`lists ${img.manifest.digest} as a referrer of ${img.manifest.digest}, but its subject is not set`),
        referrers: true,
        wrong: [img.manifest.digest],
      });
    });

    test('a referrer whose referrers list itself', async (t) => {
      const { repo, img, art } = withReferrer('referrers-self-loop');
      repo.referrers.set(img.manifest.digest, { pages: [page(art.manifest)] });
      repo.referrers.set(art.manifest.digest, { pages: [page(art.manifest)] });
      await refused(t, 'referrers-self-loop', src('referrers-self-loop'), {
        fault: 'referrer whose referrers list itself',
        action: "checked each referrer's subject; refused the response",
        code: 'SOURCE_INVALID',
        message: new RegExp(`lists ${art.manifest.digest} as a referrer of ${art.manifest.digest}, but its subject is ${img.manifest.digest}`),
        referrers: true,
        wrong: [img.manifest.digest, art.manifest.digest],
      });
    });

    test('a referrer whose referrers point back to the subject', async (t) => {
      const { repo, img, art } = withReferrer('referrers-back');
      repo.referrers.set(img.manifest.digest, { pages: [page(art.manifest)] });
      repo.referrers.set(art.manifest.digest, { pages: [page(img.manifest)] });
      await refused(t, 'referrers-back', src('referrers-back'), {
        fault: 'referrer whose referrers point back to the subject (a 2-cycle)',
        action: "checked each referrer's subject; refused the response",
        code: 'SOURCE_INVALID',
        message: new RegExp(`lists ${img.manifest.digest} as a referrer of ${art.manifest.digest}, but its subject is not set`),
        referrers: true,
        wrong: [img.manifest.digest, art.manifest.digest],
      });
    });

    test('referrers pagination whose Link loops back to the first page', async (t) => {
      const { repo, img, art } = withReferrer('referrers-paging');
      repo.referrers.set(img.manifest.digest, { pages: [page(art.manifest), page(art.manifest)], loopTo: 0 });
      const run = await refused(t, 'referrers-paging', src('referrers-paging'), {
        fault: 'referrers pagination whose Link header loops back to the first page',
        action: 'noticed the Link to a page already read; refused',
        code: 'SOURCE_INVALID',
        message: /referrers pagination of referrers-paging@sha256:[0-9a-f]{64} loops: page 2 links back/,
        referrers: true,
        wrong: [img.manifest.digest],
      });
      assert.ok(run);
      assert.equal(repo.requests.filter((r) => r.path.includes('/referrers/')).length, 2, 'ferry read the looping pages more than once');
    });

    test('an endless chain of referrers (each a new artifact)', async (t) => {
      const { repo, img } = served('referrers-chain');
      const made = new Map<string, Content>();
      repo.dynamicReferrers = (subject) => {
        let m = made.get(subject);
        if (!m) {
          const art = makeArtifact(`referrers-chain/${made.size}`, { mediaType: OCI.manifest, digest: subject, size: 0 });
          for (const b of art.blobs) repo.blob(b);
          repo.manifest(art.manifest.digest, art.manifest);
          m = art.manifest;
          made.set(subject, m);
        }
        return m;
      };
      await refused(t, 'referrers-chain', src('referrers-chain'), {
        fault: 'endless chain of referrers (a referrer of a referrer of …, each new)',
        action: 'stopped at the 3-level referrer bound',
        code: 'SOURCE_INVALID',
        message: /referrers nest more than 3 levels/,
        referrers: true,
        wrong: [img.manifest.digest],
      });
      assert.ok(made.size <= 4, `ferry followed ${made.size} levels`);
    });
  });

  describe('token realms and redirects (HTTPS registry)', { concurrency: 2 }, () => {
    const realms: Array<[string, string, RegExp, string]> = [
      ['realm-metadata-v4', `http://${METADATA_V4}/latest/api/token`, /token realm from hostile-registry\.test points at a link-local\/metadata address \(169\.254\.169\.254\)/, `token realm at ${METADATA_V4} (cloud metadata)`],
      ['realm-metadata-v6', `http://${METADATA_V6}/latest/api/token`, /token realm from hostile-registry\.test points at a link-local\/metadata address \(\[fd00:ec2::254\]\)/, `token realm at ${METADATA_V6} (EC2 metadata, IPv6)`],
      ['realm-plain-http', `http://${HOSTILE_HTTPS_NAME}/token`, /token realm from hostile-registry\.test downgrades HTTPS to plain HTTP/, 'token realm over plain HTTP for an HTTPS registry'],
    ];
    for (const [slug, realm, message, fault] of realms) {
      test(fault, async (t) => {
        const { repo } = served(slug);
        repo.realm = realm;
        await refused(t, slug, srcTls(slug), { fault, action: 'refused the challenge before any request to the realm', code: 'SOURCE_INVALID', message, https: true });
        assert.deepEqual(reg.requests.filter((r) => r.path.startsWith('/token') && r.path.includes(encodeURIComponent(`repository:${slug}:`))), [], 'a token was fetched anyway');
        assertNoMetadataRequest();
      });
    }

    test("the destination's token realm at the metadata address: refused, and blamed on the destination", async (t) => {
      // The same refusal as the source's, but the destination sent it: DESTINATION_REJECTED, not SOURCE_INVALID.
      served('dst-realm-source');
      reg.repo('dst-realm-metadata').realm = `http://${METADATA_V4}/latest/api/token`;
      const run = await ferryCopy(src('dst-realm-source'), 'unused', { https: true, destination: `${HOSTILE_HTTPS_NAME}/dst-realm-metadata:v1` });
      assert.equal(run.code, 1, run.stderr.slice(-3000));
      assert.equal(run.json?.error?.code, 'DESTINATION_REJECTED', run.stdout);
      assert.match(run.json.error.message, /token realm from hostile-registry\.test points at a link-local\/metadata address \(169\.254\.169\.254\)/);
      assert.match(run.stderr, /^ferry: DESTINATION_REJECTED: /m);
      assertNoMetadataRequest();
      recordFault(t, { suite: 'hostile', fault: `destination's token realm at ${METADATA_V4} (cloud metadata)`, action: 'refused the challenge before any request to the realm', bytesResent: 0, outcome: 'DESTINATION_REJECTED, exit 1; nothing written' });
    });

    const redirects: Array<[string, string, RegExp, string]> = [
      ['redirect-metadata-v4', `http://${METADATA_V4}/latest/meta-data/iam/security-credentials/`, /redirect from hostile-registry\.test points at a link-local\/metadata address \(169\.254\.169\.254\)/, `blob download redirected to ${METADATA_V4}`],
      ['redirect-metadata-v6', `http://${METADATA_V6}/latest/meta-data/`, /redirect from hostile-registry\.test points at a link-local\/metadata address \(\[fd00:ec2::254\]\)/, `blob download redirected to ${METADATA_V6}`],
      ['redirect-plain-http', `http://${HOSTILE_CDN_NAME}/cdn/redirect-plain-http/x`, /redirect from hostile-registry\.test downgrades HTTPS to plain HTTP \(cdn\.hostile-cdn\.test\)/, 'blob download redirected to plain HTTP (HTTPS registry)'],
    ];
    for (const [slug, target, message, fault] of redirects) {
      test(fault, async (t) => {
        const { repo, img } = served(slug);
        for (const b of [img.config, ...img.layers]) repo.blob(b, { redirect: target });
        await refused(t, slug, srcTls(slug), {
          fault,
          action: 'refused the redirect before connecting',
          code: 'SOURCE_INVALID',
          message,
          https: true,
          wrong: [img.manifest.digest],
        });
        assertNoMetadataRequest();
        assert.deepEqual(reg.requests.filter((r) => r.role === 'cdn' && r.path.includes(`/${slug}/`)), [], 'the redirect was followed');
      });
    }

    test('a blob download redirected to plain HTTP on another host (HTTP registry on loopback)', async (t) => {
      const { repo, img } = served('redirect-plain-http-loopback');
      for (const b of [img.config, ...img.layers]) repo.blob(b, { redirect: `http://${HOSTILE_CDN_NAME}:${reg.host.split(':')[1]}/cdn/x` });
      await refused(t, 'redirect-plain-http-loopback', src('redirect-plain-http-loopback'), {
        fault: 'blob download from a loopback registry redirected to plain HTTP on a non-loopback host',
        action: 'refused the redirect before connecting',
        code: 'SOURCE_INVALID',
        message: /redirect from 127\.0\.0\.1:\d+ to plain-HTTP host cdn\.hostile-cdn\.test:\d+; refusing/,
        wrong: [img.manifest.digest],
      });
    });

    test('a blob download that redirects to itself', async (t) => {
      const { repo, img } = served('redirect-loop');
      for (const b of [img.config, ...img.layers]) repo.blob(b, { redirect: `http://${reg.host}/v2/redirect-loop/blobs/${b.digest}` });
      await refused(t, 'redirect-loop', src('redirect-loop'), {
        fault: 'blob download that redirects to itself (a redirect loop)',
        action: 'followed 5 redirects, then refused',
        code: 'SOURCE_INVALID',
        message: /more than 5 redirects from 127\.0\.0\.1:\d+ \(a redirect loop\?\); refusing/,
        wrong: [img.manifest.digest],
      });
    });

    test('a blob download redirected to another host gets no Authorization', async (t) => {
      const { repo, img } = served('redirect-other-host');
      repo.redirectBlobs(img, `https://${HOSTILE_CDN_NAME}`);
      const run = await ferryCopy(srcTls('redirect-other-host'), 'hostile/redirect-other-host', { https: true });
      assert.equal(run.code, 0, run.stderr.slice(-3000));
      const cdn = reg.requests.filter((r) => r.role === 'cdn' && r.path.includes('/redirect-other-host/'));
      assert.ok(cdn.length >= 1 + img.layers.length, `the CDN served ${cdn.length} requests`);
      for (const r of cdn) {
        assert.equal(r.host, HOSTILE_CDN_NAME, 'the CDN was asked under another name (a stale Host header)');
        assert.equal(r.headers.authorization, undefined, 'Authorization reached another host');
        const seen = JSON.stringify(r.headers) + r.path;
        for (const s of [reg.password, ...reg.issuedTokens]) assert.ok(!seen.includes(s), 'a credential reached another host');
      }
      // The registry itself did get credentials: there was something to leak.
      assert.ok(reg.requests.some((r) => r.role === 'registry' && r.path.includes('/redirect-other-host/') && String(r.headers.authorization).startsWith('Bearer ')));
      assert.equal((await dstC.verifyImage('hostile/redirect-other-host', 'v1')).digest, img.manifest.digest);
      recordFault(t, {
        suite: 'hostile',
        fault: 'blob download redirected to another host (HTTPS CDN)',
        action: 'followed it without Authorization (the CDN recorded none) and with the CDN’s own Host',
        bytesResent: 0,
        outcome: 'byte-exact, exit 0',
      });
    });
  });

  test('the destination stores nothing under a wrong digest', () => {
    assert.ok(assertStoreIntact() > 0, 'the destination stores no blob at all: the check checked nothing');
  });
});

// ---------------------------------------------------------------------------------------------
// The agent: the same inputs as control-plane jobs, and a hostile control plane.

function agentWorld(cp: ControlPlane): AgentWorld {
  const tokenFile = join(mkdtempSync(join(temp, 'runner-')), 'runner-token');
  writeFileSync(tokenFile, cp.token, { mode: 0o600 });
  runnerTokens.push(cp.token);
  return { cp, local: dst, tokenFile } as unknown as AgentWorld;
}

function runAgent(world: AgentWorld, what: string): RunningAgent {
  const agent = startAgent(world, mkdtempSync(join(temp, 'agent-state-')), ['--exit-when-idle', '--max-jobs', '5', '--local-registry-creds', 'env:HOSTILE_LOCAL_CREDS'], {
    HOSTILE_LOCAL_CREDS: `${DST_USER.name}:${DST_USER.password}`,
  });
  void agent.exited.then(() => outputs.push({ what, text: agent.logs() }));
  return agent;
}

/** The agent exits by itself (it neither crashed nor hung): a generous bound, only to end a hung run. */
async function exitCode(agent: RunningAgent): Promise<number | null> {
  let timer: NodeJS.Timeout | undefined;
  const hung = new Promise<'hung'>((resolve) => (timer = setTimeout(() => resolve('hung'), 150_000)));
  const r = await Promise.race([agent.exited, hung]);
  clearTimeout(timer);
  if (r === 'hung') {
    agent.proc.kill('SIGKILL');
    assert.fail(`the agent did not exit:\n${agent.logs().slice(-4000)}`);
  }
  return r;
}

function jobPlan(source: string, dstRepo: string): object {
  return {
    type: 'oci-sync',
    source: { reference: source, auth: { kind: 'one-time-token' } },
    destination: { reference: `${dst.host}/${dstRepo}:v1`, auth: { kind: 'local' } },
    platforms: 'all',
    referrers: false,
  };
}

function basicCredentials() {
  return { registry: reg.host, username: reg.user, password: reg.password, expires_at: new Date(Date.now() + 600_000).toISOString() };
}

describe('hostile inputs through ferry agent', () => {
  test('hostile sources fail their jobs with the error code, and nothing is written', async (t) => {
    const cp = await startControlPlane({ settings: { heartbeat_interval_s: 1, poll_interval_s: 1, lease_s: 30 }, issueCredentials: basicCredentials });
    try {
      // The same kinds of input as above, in repositories of their own.
      const oversize = makeImage('agent-oversize');
      reg.repo('agent/oversize').image(oversize).manifest('v1', oversizeManifest(oversize));
      const mismatch = served('agent/layer-mismatch', { layerSize: 200_000 });
      mismatch.repo.blob(mismatch.img.layers[0]!, { bytes: tampered(mismatch.img.layers[0]!) });
      const child = sha256(seededBytes(seedFor('hostile/agent/self-index'), 64));
      let self = makeIndex([{ mediaType: OCI.index, digest: child, size: 0 }]);
      for (let i = 0; i < 3; i++) self = makeIndex([{ mediaType: OCI.index, digest: child, size: self.size }]);
      reg.repo('agent/self-index').manifest('v1', self).manifest(child, self);
      const leaf = makeImage('agent-deep');
      const deep = reg.repo('agent/deep-index').image(leaf);
      let top: Content = leaf.manifest;
      for (let i = 0; i < 8; i++) {
        top = makeIndex([descriptorOf(top)], { annotations: { level: String(i) } });
        deep.manifest(top.digest, top);
      }
      deep.manifest('v1', top);
      reg.repo('agent/unknown-type').image(makeImage('agent-unknown', { manifestMediaType: 'application/vnd.example.unknown.manifest.v1+json' }), 'v1');

      const cases = [
        { repo: 'agent/oversize', code: 'SOURCE_INVALID', message: /more than the 4194304-byte limit/, fault: 'manifest larger than 4 MiB, as an agent job' },
        { repo: 'agent/layer-mismatch', code: 'DIGEST_MISMATCH', message: /hashes to sha256:[0-9a-f]{64}; refusing to copy it/, fault: 'layer bytes do not match their digest, as an agent job', wrong: [mismatch.img.layers[0]!.digest] },
        { repo: 'agent/self-index', code: 'DIGEST_MISMATCH', message: new RegExp(`hashes to ${self.digest}, not ${child}`), fault: 'index that refers to itself, as an agent job', wrong: [child] },
        { repo: 'agent/deep-index', code: 'SOURCE_INVALID', message: /nests more than 4 levels deep/, fault: 'index chain nested 8 deep, as an agent job' },
        { repo: 'agent/unknown-type', code: 'SOURCE_INVALID', message: /unknown manifest media type/, fault: 'unknown manifest media type, as an agent job' },
      ];
      const ids = cases.map((c) => cp.enqueueJob(jobPlan(src(c.repo), `hostile-${c.repo}`)));
      const agent = runAgent(agentWorld(cp), 'ferry agent (hostile sources)');
      assert.equal(await exitCode(agent), 0, agent.logs().slice(-4000));
      for (const [i, c] of cases.entries()) {
        const job = cp.job(ids[i]!);
        oneTimeTokens.push(job.oneTimeToken!);
        assert.equal(job.status, 'failed', `${c.repo}: ${JSON.stringify(job.result)}`);
        assert.equal(job.result?.error_code, c.code, `${c.repo}: ${JSON.stringify(job.result)}`);
        assert.match(String(job.result?.error_message), c.message);
        assert.equal(job.results.length, 1, 'the result was reported more than once');
        await assertNothingWritten(`hostile-${c.repo}`, c.wrong ?? []);
        recordFault(t, { suite: 'hostile', fault: c.fault, action: `the job failed; the agent reported ${c.code} to the control plane`, bytesResent: 0, outcome: `${c.code} reported; nothing written, no tag` });
      }
      // The agent logged each failure with its code.
      for (const c of cases) assert.ok(agent.logs().split('\n').some((l) => l.includes(`"code":"${c.code}"`) && c.message.test(l)), `no log line for ${c.repo}`);
    } finally {
      await cp.stop();
    }
  });

  test('a control plane that answers huge, malformed or wrong-shaped: the agent backs off, never runs a bad plan', async (t) => {
    const cp = await startControlPlane({ settings: { heartbeat_interval_s: 1, poll_interval_s: 1, lease_s: 30 }, issueCredentials: basicCredentials });
    try {
      const good = served('cp/good');
      // Three jobs whose plans come back broken, each naming a real image that must not be copied.
      const planRepos = ['cp/plan-huge', 'cp/plan-malformed', 'cp/plan-wrong-shape'];
      for (const r of planRepos) served(r);
      const [hugePlan, malformedPlan, wrongPlan, goodJob] = [...planRepos, 'cp/good'].map((r) => cp.enqueueJob(jobPlan(src(r), `hostile-${r}`))) as [string, string, string, string];
      const runner = '/v1/runners/';
      const faults = [
        // Polling: the job list 100 MiB long, then claims answered with broken JSON and with the wrong shape.
        { what: 'job list: a 100 MiB body', fault: { kind: 'huge', bytes: 100 * MiB }, match: { method: 'GET', path: new RegExp(`^${runner}[^/]+/jobs$`) } },
        { what: 'claim: malformed JSON', fault: { kind: 'malformed' }, match: { method: 'POST', path: /^\/v1\/runner-jobs\/[^/]+\/executions$/ } },
        { what: 'claim: an array instead of the execution', fault: { kind: 'wrong-shape' }, match: { method: 'POST', path: /^\/v1\/runner-jobs\/[^/]+\/executions$/ } },
        // Plans.
        { what: 'plan: a 100 MiB body', fault: { kind: 'huge', bytes: 100 * MiB }, match: { method: 'GET', path: `/${hugePlan}/plan` } },
        { what: 'plan: malformed JSON', fault: { kind: 'malformed' }, match: { method: 'GET', path: `/${malformedPlan}/plan` } },
        { what: 'plan: the wrong shape', fault: { kind: 'wrong-shape' }, match: { method: 'GET', path: `/${wrongPlan}/plan` } },
        // The good job's token exchange, status updates and status polls.
        { what: 'token exchange: a 100 MiB body (declared)', fault: { kind: 'huge', bytes: 100 * MiB, declareLength: true }, match: { method: 'POST', path: /\/registry-credentials$/ } },
        { what: 'token exchange: malformed JSON', fault: { kind: 'malformed' }, match: { method: 'POST', path: /\/registry-credentials$/ } },
        { what: 'token exchange: the wrong shape', fault: { kind: 'wrong-shape' }, match: { method: 'POST', path: /\/registry-credentials$/ } },
        { what: 'status update: a 100 MiB body', fault: { kind: 'huge', bytes: 100 * MiB }, match: { method: 'PATCH', path: `/${goodJob}/executions/` } },
        { what: 'status update: the wrong shape', fault: { kind: 'wrong-shape' }, match: { method: 'PATCH', path: `/${goodJob}/executions/` } },
        { what: 'job status: malformed JSON', fault: { kind: 'malformed' }, match: { method: 'GET', path: new RegExp(`/${goodJob}$`) } },
        { what: 'job status: the wrong shape', fault: { kind: 'wrong-shape' }, match: { method: 'GET', path: new RegExp(`/${goodJob}$`) } },
      ] as const;
      for (const f of faults) cp.setFault(f.fault as never, { count: 1, match: f.match });

      const agent = runAgent(agentWorld(cp), 'ferry agent (hostile control plane)');
      assert.equal(await exitCode(agent), 0, agent.logs().slice(-4000));
      const logs = agent.logs();
      const lines = logs.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { msg: string; problem?: string; code?: string });

      // Every fault was served (the test exercised what it says).
      for (const f of faults) {
        const hit = cp.requests.some((r) => r.fault === f.fault.kind && r.method === f.match.method && (typeof f.match.path === 'string' ? r.path.includes(f.match.path) : f.match.path.test(r.path)));
        assert.ok(hit, `fault not served: ${f.what}`);
      }
      // Broken plans fail their jobs with INVALID_PLAN; nothing of theirs is read or written.
      const expectPlan: Array<[string, RegExp, string, string]> = [
        [hugePlan, /the plan is larger than 1048576 bytes/, 'plan response of 100 MiB', 'stopped reading at 1 MiB; failed the job without running it'],
        [malformedPlan, /invalid plan: not JSON/, 'plan response that is not JSON', 'could not parse it; failed the job without running it'],
        [wrongPlan, /invalid plan: plan must be an object, got an array/, 'plan response of the wrong shape (an array)', 'checked its shape; failed the job without running it'],
      ];
      for (const [i, [id, message, fault, action]] of expectPlan.entries()) {
        const job = cp.job(id);
        oneTimeTokens.push(job.oneTimeToken!);
        assert.equal(job.status, 'failed', JSON.stringify(job.result));
        assert.equal(job.result?.error_code, 'INVALID_PLAN');
        assert.match(String(job.result?.error_message), message);
        assert.equal(reg.repo(planRepos[i]!).requests.length, 0, `the broken plan of ${id} was run`);
        await assertNothingWritten(`hostile-${planRepos[i]}`, []);
        recordFault(t, { suite: 'hostile', fault: `control plane: ${fault}`, action, bytesResent: 0, outcome: 'INVALID_PLAN reported; nothing read from the source, nothing written' });
      }
      // The good job got through every other fault.
      const job = cp.job(goodJob);
      oneTimeTokens.push(job.oneTimeToken!);
      assert.equal(job.status, 'finished', JSON.stringify(job.result));
      assert.equal((await dstC.verifyImage('hostile-cp/good', 'v1')).digest, good.img.manifest.digest);

      // The agent said what was wrong and backed off, then kept going.
      const backoffs = lines.filter((l) => l.msg === 'control plane unavailable; backing off').map((l) => l.problem ?? '');
      assert.ok(backoffs.some((p) => /jobs is larger than 1048576 bytes/.test(p)), `no back-off for the huge job list: ${backoffs.join(' | ')}`);
      assert.ok(backoffs.some((p) => /executions is malformed: the body is not JSON/.test(p)), `no back-off for the malformed claim: ${backoffs.join(' | ')}`);
      assert.ok(backoffs.some((p) => /executions is malformed: \$: expected an object, got an array/.test(p)), `no back-off for the wrong-shape claim: ${backoffs.join(' | ')}`);
      const retries = lines.filter((l) => l.msg === 'could not get the source credentials; retrying').map((l) => l.problem ?? '');
      assert.ok(retries.some((p) => /registry-credentials is larger than 1048576 bytes/.test(p)), retries.join(' | '));
      assert.ok(retries.some((p) => /registry-credentials is malformed: the body is not JSON/.test(p)), retries.join(' | '));
      assert.ok(retries.some((p) => /registry-credentials is malformed: \$: expected an object, got an array/.test(p)), retries.join(' | '));
      assert.ok(lines.some((l) => l.msg === 'job status check failed' && /is malformed/.test(l.problem ?? '')), 'no log line for the broken job status');
      // The same execution was kept through the broken claim answer, and the token exchange
      // whose answer was lost was renewed for it.
      assert.equal(cp.jobs().filter((j) => j.executions.length !== 1).length, 0, 'a job got more than one execution');
      assert.ok(lines.some((l) => l.msg === 'attached an open execution'), 'the claimed execution was not attached');
      assert.ok(job.credentialsIssued.length >= 2, `credentials issued ${job.credentialsIssued.length} times`);

      const rows: Array<[string, string, string]> = [
        ['control plane: job list of 100 MiB (streamed)', 'stopped reading past 1 MiB and dropped the connection; logged it, backed off, polled again', 'jobs listed on the next poll'],
        ['control plane: claim answered with malformed JSON', 'logged "malformed: the body is not JSON", backed off, polled again', 'claimed on a later poll'],
        ['control plane: claim answered with the wrong shape (an array)', 'logged the shape error, backed off; found its own execution on the next poll and attached it', 'one execution for the job'],
        ['control plane: token exchange of 100 MiB (declared), not JSON, wrong shape', 'refused each answer, retried with backoff (the token was bound to this execution, so the retry is a renewal)', 'credentials obtained; the job finished byte-exact'],
        ['control plane: status update answered with 100 MiB', 'refused the answer, sent the update again in the background; the copy went on', 'the job finished byte-exact'],
        ['control plane: job status (cancel watch) malformed or of the wrong shape', 'logged it, checked again a second later; the copy went on', 'the job finished byte-exact'],
      ];
      for (const [fault, action, outcome] of rows) recordFault(t, { suite: 'hostile', fault, action, bytesResent: 0, outcome });
    } finally {
      await cp.stop();
    }
  });
});

test('no password, registry token, runner token or one-time token appears in any log line of any ferry process', () => {
  const secrets = [reg.password, Buffer.from(`${reg.user}:${reg.password}`).toString('base64'), DST_USER.password, Buffer.from(`${DST_USER.name}:${DST_USER.password}`).toString('base64'), ...reg.issuedTokens, ...runnerTokens, ...oneTimeTokens];
  // There were secrets to leak, and every one of them was in use.
  assert.ok(reg.issuedTokens.length >= 10, `only ${reg.issuedTokens.length} registry tokens were issued`);
  assert.ok(runnerTokens.length >= 2 && oneTimeTokens.length >= 9, 'the agent runs did not record their tokens');
  assert.ok(outputs.length >= 25, `only ${outputs.length} ferry processes were captured`);
  const lines = outputs.flatMap((o) => o.text.split('\n').map((line) => ({ what: o.what, line })));
  for (const s of secrets) {
    assert.ok(s.length >= 8);
    const leak = lines.find((l) => l.line.includes(s));
    assert.equal(leak, undefined, `a secret (${s.slice(0, 4)}…) appears in the logs of ${leak?.what}: ${leak?.line.slice(0, 300)}`);
  }
});
