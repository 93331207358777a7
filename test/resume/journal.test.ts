// The upload journal against real registries, with journal entries set up exactly: the test
// opens an upload session itself, PATCHes the first chunk of a layer (as a killed ferry would
// have), and writes the journal entry ferry would have written. Then `ferry copy` runs with that
// --state-dir and must continue, restart or clean up, as the registry's state demands.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startDistribution, type DistributionRegistry } from '../harness/distribution.ts';
import { startCraneRegistry, type CraneRegistry } from '../harness/crane-registry.ts';
import { startFaultProxy, type FaultProxy } from '../harness/fault-proxy.ts';
import { clientFor, type OciClient } from '../harness/oci-client.ts';
import { layerSeed, pushImage, type PushedManifest } from '../harness/fixtures.ts';
import { seededBytes } from '../harness/seed.ts';
import { runFerry, tempStateHome } from '../e2e/ferry-cli.ts';
import { JOURNAL_VERSION, UploadJournal, encodeEntry, type JournalEntry } from '../../src/ends/registry/journal.ts';
import { MiB, journalFiles, logLines } from './helpers.ts';

const LAYER = 72 * MiB; // past the 64 MiB monolithic limit: chunked
const CHUNK = 8 * MiB;
const env = { FERRY_UPLOAD_CHUNK_BYTES: String(CHUNK) };
const silent = { warn() {}, info() {}, debug() {}, error() {} } as never;

interface Partial {
  entry: JournalEntry;
  location: string;
}

/** Open an upload of `bytes` at `host` and PATCH its first `prefix` bytes, as a killed ferry would have. */
async function partialUpload(client: OciClient, host: string, repo: string, digest: string, bytes: Buffer, prefix: number, source: string): Promise<Partial> {
  const base = `http://${host}`;
  const post = await client.request('POST', `/v2/${repo}/blobs/uploads/`, { repo, push: true });
  await post.arrayBuffer();
  let location = new URL(post.headers.get('location')!, base).href;
  if (prefix > 0) {
    const res = await client.request('PATCH', location, {
      repo,
      push: true,
      body: bytes.subarray(0, prefix),
      headers: { 'content-type': 'application/octet-stream', 'content-length': String(prefix), 'content-range': `0-${prefix - 1}` },
    });
    await res.arrayBuffer();
    location = new URL(res.headers.get('location')!, base).href;
  }
  const now = new Date().toISOString();
  const entry: JournalEntry = { version: JOURNAL_VERSION, registry: host, repository: repo, digest, size: bytes.byteLength, location, offset: prefix, source, started_at: now, updated_at: now };
  return { entry, location };
}

function writeEntry(stateDir: string, entry: JournalEntry): string {
  const journal = UploadJournal.inStateDir(stateDir, silent);
  mkdirSync(journal.dir, { recursive: true });
  const file = journal.fileFor(entry);
  writeFileSync(file, encodeEntry(entry));
  return file;
}

function messages(stderr: string, prefix: string): Array<Record<string, any>> {
  return logLines(stderr).filter((l) => typeof l.msg === 'string' && l.msg.startsWith(prefix));
}

describe('journaled uploads on distribution 2.8', () => {
  let src: DistributionRegistry;
  let dst: DistributionRegistry;
  let proxy: FaultProxy;
  let srcC: OciClient;
  let dstC: OciClient;
  let viaProxy: OciClient;

  before(async () => {
    [src, dst] = await Promise.all([startDistribution(), startDistribution()]);
    proxy = await startFaultProxy(dst.host);
    srcC = clientFor(src);
    dstC = clientFor(dst);
    viaProxy = clientFor(proxy);
  });
  after(async () => {
    await proxy?.stop();
    await Promise.all([src?.stop(), dst?.stop()]);
  });

  async function image(repo: string, label: string): Promise<{ pushed: PushedManifest; layer: Buffer; digest: string }> {
    const pushed = await pushImage(srcC, repo, 'v1', { layerSizes: [LAYER, 2048], seed: label });
    const layer = seededBytes(layerSeed(label, 0), LAYER);
    const digest = pushed.blobs.find((b) => b.size === LAYER)!.digest;
    return { pushed, layer, digest };
  }

  test('a live journaled session is continued from its acknowledged offset: the prefix is re-read only to hash it', async () => {
    const { pushed, layer, digest } = await image('j/live', 'journal/live');
    const state = tempStateHome();
    const srcName = `${src.host}/j/live:v1`;
    const { entry } = await partialUpload(viaProxy, proxy.host, 'j/live', digest, layer, 3 * CHUNK, srcName);
    writeEntry(state, entry);
    const before = proxy.uploadedBytes();
    const r = await runFerry(['copy', '--json', '--state-dir', state, srcName, `${proxy.host}/j/live:v1`], { env });
    assert.equal(r.code, 0, r.stderr);
    const t = r.json.transfer;
    assert.equal(t.blobs_resumed, 1);
    assert.equal(t.blobs_restarted, 0);
    assert.equal(t.bytes_reread_for_hash, 3 * CHUNK);
    assert.equal(t.bytes_resent, 0);
    // Only what the registry lacked went up: the layer's tail, the small blobs and the manifest.
    const small = pushed.blobs.filter((b) => b.digest !== digest).reduce((n, b) => n + b.size, 0);
    assert.equal(proxy.uploadedBytes() - before, LAYER - 3 * CHUNK + small + pushed.manifestBytes.byteLength);
    assert.equal(messages(r.stderr, 'continuing a journaled upload')[0]?.offset, 3 * CHUNK);
    const got = await dstC.verifyImage('j/live', 'v1');
    assert.equal(got.digest, pushed.digest);
    assert.equal(journalFiles(state).size, 0, 'the entry is removed once the blob is committed');
  });

  test('a session the registry expired (restarted without a fixed http.secret): deleted, blob restarted, logged, copy succeeds', async () => {
    // Its own destination: distribution with a random secret per start, as a misconfigured replica.
    const lost = await startDistribution({ httpSecret: null });
    try {
      const { pushed, layer, digest } = await image('j/expired', 'journal/expired');
      const state = tempStateHome();
      const srcName = `${src.host}/j/expired:v1`;
      const { entry } = await partialUpload(clientFor(lost), lost.host, 'j/expired', digest, layer, 2 * CHUNK, srcName);
      writeEntry(state, entry);
      await lost.restart();
      const r = await runFerry(['copy', '--json', '--state-dir', state, srcName, `${lost.host}/j/expired:v1`], { env });
      assert.equal(r.code, 0, r.stderr);
      const why = messages(r.stderr, 'journaled upload cannot be continued');
      assert.equal(why.length, 1, r.stderr);
      assert.equal(why[0]!.digest, digest);
      assert.match(why[0]!.reason, /404|expired|status/);
      assert.equal(messages(r.stderr, 'stale journal entry').length, 1, 'the old session was deleted');
      assert.equal(r.json.transfer.blobs_restarted, 1);
      assert.equal(r.json.transfer.blobs_resumed, 0);
      assert.equal(r.json.transfer.bytes_resent, 2 * CHUNK, 'the journaled prefix went again');
      const got = await clientFor(lost).verifyImage('j/expired', 'v1');
      assert.equal(got.digest, pushed.digest);
      assert.equal(journalFiles(state).size, 0);
    } finally {
      await lost.stop();
    }
  });

  test('a torn or corrupt journal file: warned about, ignored, the copy succeeds', async () => {
    const { pushed, layer, digest } = await image('j/torn', 'journal/torn');
    const state = tempStateHome();
    const srcName = `${src.host}/j/torn:v1`;
    const { entry } = await partialUpload(dstC, dst.host, 'j/torn', digest, layer, CHUNK, srcName);
    const file = writeEntry(state, entry);
    const whole = encodeEntry(entry);
    writeFileSync(file, whole.slice(0, Math.floor(whole.length / 2))); // torn mid-write
    // And a second one that parses but was edited (checksum no longer matches), plus plain garbage.
    writeFileSync(join(UploadJournal.inStateDir(state, silent).dir, '0'.repeat(64) + '.json'), encodeEntry(entry).replace(`"offset":${CHUNK}`, `"offset":${2 * CHUNK}`));
    writeFileSync(join(UploadJournal.inStateDir(state, silent).dir, '1'.repeat(64) + '.json'), '\u0000\u0001garbage');
    const r = await runFerry(['copy', '--json', '--state-dir', state, srcName, `${dst.host}/j/torn:v1`], { env });
    assert.equal(r.code, 0, r.stderr);
    const warnings = messages(r.stderr, 'journal file is torn or corrupt');
    assert.ok(warnings.length >= 2, r.stderr);
    assert.ok(warnings.some((w) => w.problem === 'checksum mismatch'));
    assert.ok(warnings.some((w) => /not JSON/.test(w.problem)));
    assert.equal(r.json.transfer.blobs_resumed, 0);
    const got = await dstC.verifyImage('j/torn', 'v1');
    assert.equal(got.digest, pushed.digest);
    assert.equal(journalFiles(state).size, 0, 'corrupt files are removed, not left to warn forever');
  });

  test('the source changed between runs: stale entries are dropped and their sessions DELETEd', async () => {
    const old = await image('j/moving', 'journal/moving-old');
    const state = tempStateHome();
    const srcName = `${src.host}/j/moving:v1`;
    const partial = await partialUpload(viaProxy, proxy.host, 'j/moving', old.digest, old.layer, 2 * CHUNK, srcName);
    writeEntry(state, partial.entry);
    // The tag now points at another image (other layers).
    const fresh = await image('j/moving', 'journal/moving-new');
    assert.notEqual(fresh.pushed.digest, old.pushed.digest);
    proxy.resetLog();
    const r = await runFerry(['copy', '--json', '--state-dir', state, srcName, `${proxy.host}/j/moving:v1`], { env });
    assert.equal(r.code, 0, r.stderr);
    const stale = messages(r.stderr, 'stale journal entry');
    assert.equal(stale.length, 1, r.stderr);
    assert.equal(stale[0]!.digest, old.digest);
    assert.match(stale[0]!.reason, /source changed/);
    const sessionPath = new URL(partial.location).pathname;
    assert.ok(proxy.requests.some((q) => q.method === 'DELETE' && q.path.startsWith(sessionPath)), 'the old upload session was DELETEd');
    // The registry no longer knows the session.
    const status = await viaProxy.request('GET', partial.location, { repo: 'j/moving', push: true, ok: [404] });
    assert.equal(status.status, 404);
    const got = await dstC.verifyImage('j/moving', 'v1');
    assert.equal(got.digest, fresh.pushed.digest);
    assert.equal(journalFiles(state).size, 0);
  });
});

describe('journaled uploads on crane\'s registry (no upload status)', () => {
  let src: DistributionRegistry;
  let dst: CraneRegistry;

  before(async () => {
    [src, dst] = await Promise.all([startDistribution(), startCraneRegistry()]);
  });
  after(async () => {
    await Promise.all([src?.stop(), dst?.stop()]);
  });

  test('status unsupported: the session is deleted and the blob restarted; the copy succeeds', async () => {
    const srcC = clientFor(src);
    const dstC = clientFor(dst);
    const label = 'journal/crane';
    const pushed = await pushImage(srcC, 'j/crane', 'v1', { layerSizes: [LAYER, 2048], seed: label });
    const layer = seededBytes(layerSeed(label, 0), LAYER);
    const digest = pushed.blobs.find((b) => b.size === LAYER)!.digest;
    const state = tempStateHome();
    const srcName = `${src.host}/j/crane:v1`;
    const { entry } = await partialUpload(dstC, dst.host, 'j/crane', digest, layer, CHUNK, srcName);
    writeEntry(state, entry);
    const r = await runFerry(['copy', '--json', '--state-dir', state, srcName, `${dst.host}/j/crane:v1`], { env });
    assert.equal(r.code, 0, r.stderr);
    const why = messages(r.stderr, 'journaled upload cannot be continued');
    assert.equal(why.length, 1, r.stderr);
    assert.match(why[0]!.reason, /unsupported/);
    assert.equal(r.json.transfer.blobs_restarted, 1);
    const got = await dstC.verifyImage('j/crane', 'v1');
    assert.equal(got.digest, pushed.digest);
    assert.equal(journalFiles(state).size, 0);
  });
});
