// What a blob's transfer waits for on a slow registry. The proxies hold some answers until
// ferry has sent a request that must not wait for them; an answer released only because the
// hold ran out (10 s) means ferry waited:
//   - the destination's HEADs (does it have the blob?) run ahead of the transfers, so the next
//     blob's HEAD does not wait for the previous blob's upload;
//   - a small blob's download starts while its upload session (POST) is being opened;
//   - the destination's manifest HEAD (is the tag up to date?) goes out with the source's manifest GET;
//   - an index's children are written at once (the index after them).
// One transfer at a time (--concurrency 1), so the order is the engine's, not luck's. Nothing
// is inferred from when requests arrived: a condition releases each held answer.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { pushLargeImage, pushMultiArch } from '../harness/fixtures.ts';
import type { ProxiedRequest } from '../harness/fault-proxy.ts';
import { runFerry, tempStateHome } from './ferry-cli.ts';
import { startProxiedRegistries, type ProxiedRegistries } from './proxied-registries.ts';

const BLOB_HEAD = /\/blobs\/sha256:[0-9a-f]{64}$/;
const BLOB_GET = /\/blobs\/sha256:[0-9a-f]{64}$/;
const UPLOAD_OPEN = /\/blobs\/uploads\/$/;
const UPLOAD_COMMIT = /\/blobs\/uploads\/.+digest=/;

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
    const dstLog = regs.dstProxy.requests;
    const srcLog = regs.srcProxy.requests;
    const blobHeads = () => new Set(dstLog.filter((q) => q.method === 'HEAD' && BLOB_HEAD.test(q.path)).map((q) => q.path)).size;
    const blobGets = () => srcLog.filter((q) => q.method === 'GET' && BLOB_GET.test(q.path)).length;
    // The first blob's upload is not committed until a second blob's HEAD has gone out.
    regs.dstProxy.addRule({ action: 'hold', method: 'PUT', path: UPLOAD_COMMIT, times: 1, until: () => blobHeads() >= 2 });
    // The n-th upload session is not opened until the n-th blob download has started.
    regs.dstProxy.addRule({
      action: 'hold',
      method: 'POST',
      path: UPLOAD_OPEN,
      until: (post: ProxiedRequest) => blobGets() >= dstLog.filter((q) => q.method === 'POST' && UPLOAD_OPEN.test(q.path)).indexOf(post) + 1,
    });
    try {
      const r = await runFerry(['copy', '--json', '--concurrency', '1', `${regs.srcProxy.host}/trips/app:v1`, `${regs.dstProxy.host}/trips/copy:v1`], { env });
      assert.equal(r.code, 0, r.stderr);
    } finally {
      regs.dstProxy.clearRules();
    }
    const want = await regs.srcC.verifyImage('trips/app', 'v1');
    const got = await regs.dstC.verifyImage('trips/copy', 'v1');
    assert.equal(got.digest, want.digest);

    const firstPut = dstLog.find((q) => q.method === 'PUT' && UPLOAD_COMMIT.test(q.path));
    assert.ok(firstPut, 'a blob was uploaded');
    assert.equal(firstPut.held, 'condition', "the first upload's commit was answered only when its hold ran out: the second blob's HEAD waited for it");
    const posts = dstLog.filter((q) => q.method === 'POST' && UPLOAD_OPEN.test(q.path));
    assert.ok(posts.length >= layers.length, `${posts.length} upload sessions for ${layers.length} layers and a config`);
    for (const [i, post] of posts.entries()) {
      assert.equal(post.held, 'condition', `upload session ${i + 1} was answered only when its hold ran out: its blob's download waited for it`);
    }
    for (const layer of layers) {
      assert.ok(srcLog.some((q) => q.method === 'GET' && q.path.endsWith(`/blobs/${layer}`)), `${layer} downloaded`);
      assert.ok(dstLog.some((q) => q.method === 'PUT' && q.path.includes(layer.slice('sha256:'.length))), `${layer} uploaded`);
    }
  });

  test("the destination's manifest HEAD goes out with the source's manifest GET, not after its answer", async () => {
    regs.srcProxy.resetLog();
    regs.dstProxy.resetLog();
    const dstHeads = () => regs.dstProxy.requests.filter((q) => q.method === 'HEAD' && q.path.endsWith('/manifests/v1')).length;
    // The source's manifest is not answered until the destination's tag has been asked about.
    regs.srcProxy.addRule({ action: 'hold', method: 'GET', path: /\/manifests\/v1$/, times: 1, until: () => dstHeads() >= 1 });
    try {
      const r = await runFerry(['copy', '--json', `${regs.srcProxy.host}/trips/app:v1`, `${regs.dstProxy.host}/trips/early:v1`], { env });
      assert.equal(r.code, 0, r.stderr);
    } finally {
      regs.srcProxy.clearRules();
    }
    assert.equal((await regs.dstC.verifyImage('trips/early', 'v1')).digest, (await regs.srcC.verifyImage('trips/app', 'v1')).digest);
    const get = regs.srcProxy.requests.find((q) => q.method === 'GET' && q.path.endsWith('/manifests/v1'));
    assert.ok(get, 'the source manifest was fetched');
    assert.equal(dstHeads(), 1, 'one HEAD of the destination tag');
    assert.equal(get.held, 'condition', "the source's manifest was answered only when its hold ran out: the destination HEAD waited for it");
  });

  test("an index's children go up at once, not one after another, and the index after them", async () => {
    const idx = await pushMultiArch(regs.srcC, 'trips/multi', 'v1');
    const children = idx.children!.map((c) => c.digest);
    regs.dstProxy.resetLog();
    const dstLog = regs.dstProxy.requests;
    const childPuts = () => dstLog.filter((q) => q.method === 'PUT' && children.some((d) => q.path.endsWith(`/manifests/${d}`)));
    // The first child's write is not answered until every child's write has gone out.
    regs.dstProxy.addRule({ action: 'hold', method: 'PUT', path: /\/manifests\/sha256:/, times: 1, until: () => childPuts().length >= children.length });
    try {
      const r = await runFerry(['copy', '--json', `${regs.srcProxy.host}/trips/multi:v1`, `${regs.dstProxy.host}/trips/multi-copy:v1`], { env });
      assert.equal(r.code, 0, r.stderr);
    } finally {
      regs.dstProxy.clearRules();
    }
    assert.equal((await regs.dstC.verifyImage('trips/multi-copy', 'v1')).digest, idx.digest);
    const puts = childPuts();
    assert.equal(puts.length, children.length, 'each child written once');
    assert.equal(puts[0]!.held, 'condition', "the first child's write was answered only when its hold ran out: the others waited for it");
    const tagPut = dstLog.find((q) => q.method === 'PUT' && q.path.endsWith('/manifests/v1'));
    assert.ok(tagPut && puts.every((p) => p.doneAt !== undefined && p.doneAt <= tagPut.at), 'the index went up after its children were answered');
  });
});
