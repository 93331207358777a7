// What a blob's transfer waits for on a slow registry. The destination's proxy holds some answers
// for a while; the proxies' logs show which requests ferry sent before those answers came back:
//   - the destination's HEADs (does it have the blob?) run ahead of the transfers, so the next
//     blob's HEAD does not wait for the previous blob's upload;
//   - a small blob's download starts while its upload session (POST) is being opened;
//   - the destination's manifest HEAD (is the tag up to date?) goes out with the source's manifest GET.
// One transfer at a time (--concurrency 1), so the order is the engine's, not luck's.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { pushLargeImage } from '../harness/fixtures.ts';
import { runFerry, tempStateHome } from './ferry-cli.ts';
import { startProxiedRegistries, type ProxiedRegistries } from './proxied-registries.ts';

const HEAD_DELAY_MS = 300;
const POST_DELAY_MS = 400;

describe('round trips on a slow registry', () => {
  const env = { XDG_STATE_HOME: tempStateHome() };
  let regs: ProxiedRegistries;
  let layers: string[];

  before(async () => {
    regs = await startProxiedRegistries();
    const pushed = await pushLargeImage(regs.srcC, 'trips/app', 'v1', { layerCount: 3, layerSize: 96 * 1024 });
    layers = (JSON.parse(pushed.manifestBytes.toString()) as { layers: Array<{ digest: string }> }).layers.map((l) => l.digest);
  });
  after(() => regs?.stop());

  test('HEADs run ahead of the transfers, and a download overlaps its upload session being opened', async () => {
    regs.srcProxy.resetLog();
    regs.dstProxy.resetLog();
    regs.dstProxy.addRule({ action: 'delay', method: 'HEAD', path: /\/blobs\/sha256:/, ms: HEAD_DELAY_MS });
    regs.dstProxy.addRule({ action: 'delay', method: 'POST', path: /\/blobs\/uploads\/$/, ms: POST_DELAY_MS });
    try {
      const r = await runFerry(['copy', '--json', '--concurrency', '1', `${regs.srcProxy.host}/trips/app:v1`, `${regs.dstProxy.host}/trips/copy:v1`], { env });
      assert.equal(r.code, 0, r.stderr);
    } finally {
      regs.dstProxy.clearRules();
    }
    const want = await regs.srcC.verifyImage('trips/app', 'v1');
    const got = await regs.dstC.verifyImage('trips/copy', 'v1');
    assert.equal(got.digest, want.digest);

    const dst = regs.dstProxy.requests;
    const firstPut = dst.find((q) => q.method === 'PUT' && q.path.includes('/blobs/uploads/'));
    assert.ok(firstPut, 'a blob was uploaded');
    const headsBefore = dst.filter((q) => q.method === 'HEAD' && q.path.includes('/blobs/') && q.at < firstPut.at).length;
    assert.ok(headsBefore >= 2, `the second blob's HEAD went out before the first blob's upload (${headsBefore} HEADs before it)`);

    for (const layer of layers) {
      const get = regs.srcProxy.requests.find((q) => q.method === 'GET' && q.path.endsWith(`/blobs/${layer}`));
      assert.ok(get, `${layer} downloaded`);
      // The session this blob went up in: the last POST before its PUT (which names the digest).
      const put = dst.find((q) => q.method === 'PUT' && q.path.includes('/blobs/uploads/') && q.path.includes(layer.slice('sha256:'.length)));
      assert.ok(put, `${layer} uploaded`);
      const post = dst.filter((q) => q.method === 'POST' && q.at <= put.at).at(-1);
      assert.ok(post, `an upload session was asked for before ${layer}'s upload`);
      // Sent before the POST's answer could be back (it may even go out first).
      assert.ok(get.at < post.at + POST_DELAY_MS, `${layer}'s download started ${get.at - post.at} ms after its POST, not before the POST's answer (held ${POST_DELAY_MS} ms)`);
    }
  });

  test("the destination's manifest HEAD goes out with the source's manifest GET, not after its answer", async () => {
    const GET_DELAY_MS = 400;
    regs.srcProxy.resetLog();
    regs.dstProxy.resetLog();
    regs.srcProxy.addRule({ action: 'delay', method: 'GET', path: /\/manifests\/v1$/, ms: GET_DELAY_MS });
    try {
      const r = await runFerry(['copy', '--json', `${regs.srcProxy.host}/trips/app:v1`, `${regs.dstProxy.host}/trips/early:v1`], { env });
      assert.equal(r.code, 0, r.stderr);
    } finally {
      regs.srcProxy.clearRules();
    }
    assert.equal((await regs.dstC.verifyImage('trips/early', 'v1')).digest, (await regs.srcC.verifyImage('trips/app', 'v1')).digest);
    const get = regs.srcProxy.requests.find((q) => q.method === 'GET' && q.path.endsWith('/manifests/v1'));
    const heads = regs.dstProxy.requests.filter((q) => q.method === 'HEAD' && q.path.endsWith('/manifests/v1'));
    assert.ok(get, 'the source manifest was fetched');
    assert.equal(heads.length, 1, 'one HEAD of the destination tag');
    assert.ok(heads[0]!.at < get.at + GET_DELAY_MS, `the destination HEAD went out ${heads[0]!.at - get.at} ms after the source GET, not before its answer (held ${GET_DELAY_MS} ms)`);
  });
});
