// `ferry inspect`, `ferry version`, and HTTP proxies from the environment.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, request as httpRequest, type Server } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { spawnSync } from 'node:child_process';
import { startDistribution, type DistributionRegistry } from '../harness/distribution.ts';
import { clientFor } from '../harness/oci-client.ts';
import { pushMultiArch } from '../harness/fixtures.ts';
import { runFerry, tempStateHome } from './ferry-cli.ts';

describe('ferry inspect and version', () => {
  let reg: DistributionRegistry;
  before(async () => {
    reg = await startDistribution();
  });
  after(async () => {
    await reg?.stop();
  });

  test('inspect --json describes an index: platforms, layers, size counted once', async () => {
    const idx = await pushMultiArch(clientFor(reg), 'ins/app', 'v1', { sharedLayerSize: 5000, ownLayerSize: 700 });
    const r = await runFerry(['inspect', '--json', `${reg.host}/ins/app:v1`]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.json.digest, idx.digest);
    assert.equal(r.json.media_type, 'application/vnd.oci.image.index.v1+json');
    assert.equal(r.json.platforms.length, 3);
    assert.equal(r.json.layers.length, 6);
    const manifests = idx.manifestBytes.length + idx.children!.reduce((n, c) => n + c.manifestBytes.length, 0);
    const blobs = idx.blobs.reduce((n, b) => n + b.size, 0);
    assert.equal(r.json.size, manifests + blobs);
    const text = await runFerry(['inspect', `${reg.host}/ins/app:v1`]);
    assert.equal(text.code, 0);
    assert.match(text.stdout, /linux\/arm\/v7/);
  });

  test('inspect of a missing tag: SOURCE_NOT_FOUND, exit 1', async () => {
    const r = await runFerry(['inspect', '--json', `${reg.host}/ins/app:nope`]);
    assert.equal(r.code, 1);
    assert.equal(r.json.error.code, 'SOURCE_NOT_FOUND');
  });

  test('npm run build makes one file that runs a real copy', async () => {
    const root = new URL('../../', import.meta.url).pathname;
    const built = spawnSync(process.execPath, ['scripts/build.mjs'], { cwd: root, encoding: 'utf8' });
    assert.equal(built.status, 0, built.stderr);
    await pushMultiArch(clientFor(reg), 'bundle/app', 'v1');
    const r = spawnSync(process.execPath, [`${root}dist/ferry.mjs`, 'copy', '--json', `${reg.host}/bundle/app:v1`, `${reg.host}/bundle/copy:v1`], {
      encoding: 'utf8',
      env: { ...process.env, XDG_STATE_HOME: tempStateHome() },
    });
    assert.equal(r.status, 0, r.stderr);
    const report = JSON.parse(r.stdout);
    assert.equal(report.image.digest, (await clientFor(reg).verifyImage('bundle/copy', 'v1')).digest);
  });

  test('version prints version, commit and Node', async () => {
    const r = await runFerry(['version', '--json']);
    assert.equal(r.code, 0);
    assert.match(r.json.version, /^\d+\.\d+\.\d+/);
    assert.equal(r.json.node, process.version);
    assert.ok(r.json.commit);
  });
});

describe('HTTP_PROXY is honoured', () => {
  let reg: DistributionRegistry;
  let proxy: Server;
  let proxyPort = 0;
  const proxied: string[] = [];
  before(async () => {
    reg = await startDistribution();
    // A forward proxy: requests arrive in absolute form (GET http://host/path).
    proxy = createServer((req, res) => {
      proxied.push(`${req.method} ${req.url}`);
      const target = new URL(req.url!);
      const up = httpRequest({ host: target.hostname, port: target.port, path: target.pathname + target.search, method: req.method, headers: req.headers }, (r) => {
        res.writeHead(r.statusCode ?? 502, r.headers);
        r.pipe(res);
      });
      up.on('error', () => res.destroy());
      req.pipe(up);
    });
    // …or as a CONNECT tunnel, which is how undici (and every HTTPS client) uses a proxy.
    proxy.on('connect', (req, clientSocket, head) => {
      proxied.push(`CONNECT ${req.url}`);
      const [host, port] = req.url!.split(':');
      const upstream = connect(Number(port), host!, () => {
        clientSocket.write('HTTP/1.1 200 Connection Established\r\n\r\n');
        upstream.write(head);
        upstream.pipe(clientSocket);
        clientSocket.pipe(upstream);
      });
      upstream.on('error', () => clientSocket.destroy());
      clientSocket.on('error', () => upstream.destroy());
    });
    await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
    proxyPort = (proxy.address() as AddressInfo).port;
  });
  after(async () => {
    proxy?.close();
    await reg?.stop();
  });

  test('a copy goes through the proxy named by HTTP_PROXY', async () => {
    await pushMultiArch(clientFor(reg), 'px/app', 'v1');
    const r = await runFerry(['copy', '--json', `${reg.host}/px/app:v1`, `${reg.host}/px/copy:v1`], {
      timeoutMs: 60_000,
      env: { HTTP_PROXY: `http://127.0.0.1:${proxyPort}`, NO_PROXY: '', XDG_STATE_HOME: tempStateHome() },
    });
    assert.equal(r.code, 0, r.stderr);
    assert.ok(
      proxied.some((p) => p.includes('/v2/px/app/manifests/v1') || p === `CONNECT ${reg.host}`),
      `proxy saw: ${proxied.slice(0, 5).join(', ')}`,
    );
  });
});
