// The registry-to-registry pipe (src/ends/registry/blob-pipe.ts, src/transport/raw-http.ts): blobs from
// FERRY_PIPE_MIN_BYTES on (by default every blob between plain-HTTP registries) are read on
// ferry's own connection and written straight into the destination's upload. These copies go through real distribution registries, with the fault
// proxy in front to break the source's responses and the destination's requests, and check
// what the pipe must keep from the regular path: byte-exact results, a broken download
// continued with Range inside the same upload, and nothing committed from a corrupt source.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { pushLargeImage } from '../harness/fixtures.ts';
import { runFerry, tempStateHome } from './ferry-cli.ts';
import { startProxiedRegistries, type ProxiedRegistries } from './proxied-registries.ts';

const MiB = 1024 * 1024;
const PIPED = 'blob piped registry to registry';
/** Only the 6 MiB layers take the pipe, not the config: the counts below are per layer. */
const LAYERS_ONLY = String(1 * MiB);

/** Debug log lines (JSON) from ferry's stderr with this message. */
function logLines(stderr: string, msg: string): Record<string, unknown>[] {
  return stderr
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .filter((l) => l.msg === msg);
}

describe('the registry-to-registry pipe', () => {
  const env = { XDG_STATE_HOME: tempStateHome() };
  let regs: ProxiedRegistries;

  before(async () => {
    regs = await startProxiedRegistries();
    // Two 6 MiB layers and a small config.
    await pushLargeImage(regs.srcC, 'pipe/app', 'v1', { layerCount: 2, layerSize: 6 * MiB });
    // Three small layers.
    await pushLargeImage(regs.srcC, 'pipe/small', 'v1', { layerCount: 3, layerSize: 150 * 1024 });
  });
  after(() => regs?.stop());

  async function assertCopied(repo: string): Promise<void> {
    const want = await regs.srcC.verifyImage('pipe/app', 'v1');
    const got = await regs.dstC.verifyImage(repo, 'v1');
    assert.equal(got.digest, want.digest);
    assert.deepEqual(got.blobs.map((b) => b.digest).sort(), want.blobs.map((b) => b.digest).sort());
  }

  test('every layer goes through the pipe, small ones too; FERRY_PIPE_MIN_BYTES sets a floor, and off turns it off', async () => {
    const r = await runFerry(['copy', '--json', '--log-level', 'debug', `${regs.src.host}/pipe/app:v1`, `${regs.dst.host}/pipe/one:v1`], { env });
    assert.equal(r.code, 0, r.stderr);
    // (The config went up from memory: it was read to learn the image's platform.)
    assert.equal(logLines(r.stderr, PIPED).length, 2, 'both 6 MiB layers piped');
    assert.equal(r.json.transfer.bytes_transferred, r.json.transfer.bytes_total);
    await assertCopied('pipe/one');

    const small = await runFerry(['copy', '--json', '--log-level', 'debug', `${regs.src.host}/pipe/small:v1`, `${regs.dst.host}/pipe/small:v1`], { env });
    assert.equal(small.code, 0, small.stderr);
    assert.equal(logLines(small.stderr, PIPED).length, 3, 'the three 150 KiB layers piped');
    const floor = await runFerry(['copy', '--json', '--log-level', 'debug', `${regs.src.host}/pipe/small:v1`, `${regs.dst.host}/pipe/floor:v1`], { env: { ...env, FERRY_PIPE_MIN_BYTES: LAYERS_ONLY } });
    assert.equal(floor.code, 0, floor.stderr);
    assert.equal(logLines(floor.stderr, PIPED).length, 0, 'below FERRY_PIPE_MIN_BYTES: the regular way');
    for (const repo of ['pipe/small', 'pipe/floor']) {
      const want = await regs.srcC.verifyImage('pipe/small', 'v1');
      assert.equal((await regs.dstC.verifyImage(repo, 'v1')).digest, want.digest);
    }

    const off = await runFerry(['copy', '--json', '--log-level', 'debug', `${regs.src.host}/pipe/app:v1`, `${regs.dst.host}/pipe/off:v1`], { env: { ...env, FERRY_PIPE_MIN_BYTES: 'off' } });
    assert.equal(off.code, 0, off.stderr);
    assert.equal(logLines(off.stderr, PIPED).length, 0);
    await assertCopied('pipe/off');
  });

  test('chunked uploads: every PATCH and the final PUT are piped from one download', async () => {
    regs.srcProxy.resetLog();
    regs.dstProxy.resetLog();
    const r = await runFerry(['copy', '--json', '--log-level', 'debug', `${regs.srcProxy.host}/pipe/app:v1`, `${regs.dstProxy.host}/pipe/chunked:v1`], {
      env: { ...env, FERRY_UPLOAD_CHUNK_BYTES: String(2 * MiB), FERRY_PIPE_MIN_BYTES: LAYERS_ONLY },
    });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(logLines(r.stderr, PIPED).length, 2);
    // 6 MiB in 2 MiB chunks: 2 PATCHes and the PUT per layer; one GET per layer.
    assert.equal(regs.dstProxy.count({ method: 'PATCH' }), 4);
    for (const line of logLines(r.stderr, PIPED)) {
      assert.equal(regs.srcProxy.count({ method: 'GET', path: new RegExp(`/blobs/${line.digest as string}$`) }), 1, 'each layer read once for all its chunks');
    }
    await assertCopied('pipe/chunked');
  });

  test('a download cut mid-body continues with Range inside the same upload', async () => {
    regs.srcProxy.resetLog();
    const rule = regs.srcProxy.addRule({ method: 'GET', path: /\/blobs\/sha256:/, action: 'reset-after-bytes', bytes: 3 * MiB + 123, times: 2 });
    try {
      const r = await runFerry(['copy', '--json', '--log-level', 'debug', `${regs.srcProxy.host}/pipe/app:v1`, `${regs.dst.host}/pipe/cut:v1`], { env: { ...env, FERRY_PIPE_MIN_BYTES: LAYERS_ONLY } });
      assert.equal(r.code, 0, r.stderr);
      assert.equal(rule.hits(), 2);
      assert.equal(logLines(r.stderr, PIPED).length, 2);
      assert.equal(logLines(r.stderr, 'download interrupted; resuming with Range from the last byte received').length, 2);
      const ranged = regs.srcProxy.requests.filter((q) => q.range !== undefined);
      assert.equal(ranged.length, 2, 'each cut layer read on from where it broke');
      for (const q of ranged) assert.match(q.range!, /^bytes=3145851-6291455$/);
      // Nothing started over: each layer went up in one session (one POST per blob).
      assert.equal(r.json.transfer.bytes_transferred, r.json.transfer.bytes_total);
      await assertCopied('pipe/cut');
    } finally {
      rule.remove();
    }
  });

  test('a corrupt source byte: DIGEST_MISMATCH, and the destination never gets the blob', async () => {
    const rule = regs.srcProxy.addRule({ method: 'GET', path: /\/blobs\/sha256:/, action: 'corrupt-byte', offset: 5 * MiB });
    try {
      const r = await runFerry(['copy', '--json', '--log-level', 'debug', `${regs.srcProxy.host}/pipe/app:v1`, `${regs.dst.host}/pipe/corrupt:v1`], { env: { ...env, FERRY_PIPE_MIN_BYTES: LAYERS_ONLY } });
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /DIGEST_MISMATCH/);
      assert.equal(logLines(r.stderr, PIPED).length, 0);
      const manifest = JSON.parse((await regs.srcC.getManifest('pipe/app', 'v1')).bytes.toString('utf8')) as { layers: { digest: string }[] };
      for (const layer of manifest.layers) {
        assert.equal(await regs.dstC.blobExists('pipe/corrupt', layer.digest), false, `${layer.digest} must not be in the destination`);
      }
      assert.equal(await regs.dstC.headManifest('pipe/corrupt', 'v1'), undefined);
    } finally {
      rule.remove();
    }
  });

  test('a PATCH cut mid-body: the blob starts over the regular way (distribution drops a cut session; a retry never takes the pipe)', async () => {
    regs.dstProxy.resetLog();
    const rule = regs.dstProxy.addRule({ method: 'PATCH', path: /\/blobs\/uploads\//, action: 'reset-after-bytes', on: 'request', bytes: 1 * MiB, times: 1 });
    try {
      const r = await runFerry(['copy', '--json', '--log-level', 'debug', `${regs.src.host}/pipe/app:v1`, `${regs.dstProxy.host}/pipe/patchcut:v1`], {
        env: { ...env, FERRY_UPLOAD_CHUNK_BYTES: String(2 * MiB), FERRY_PIPE_MIN_BYTES: LAYERS_ONLY },
      });
      assert.equal(r.code, 0, r.stderr);
      assert.equal(rule.hits(), 1);
      const piped = logLines(r.stderr, PIPED);
      assert.equal(piped.length, 1, 'the layer that was not cut');
      const after = logLines(r.stderr, 'blob uploaded after interruptions');
      assert.equal(after.length, 1, r.stderr);
      assert.equal(after[0]!.restarts, 1);
      assert.notEqual(after[0]!.digest, piped[0]!.digest);
      await assertCopied('pipe/patchcut');
    } finally {
      rule.remove();
    }
  });
});
