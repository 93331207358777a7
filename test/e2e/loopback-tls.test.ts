// A registry on loopback that speaks TLS (what `kubectl port-forward` or an SSH tunnel puts on
// 127.0.0.1): ferry tries HTTPS first and falls back to plain HTTP, as docker and crane do.
// A real distribution 2.8 serving TLS itself (http.tls, a certificate for IP:127.0.0.1 from a
// test CA), reached through a TCP forwarder on loopback (a port-forward) that records whether
// each connection began in TLS or in plain HTTP; a plain distribution; and a second plain
// distribution on the TLS one's storage to seed and check it without trusting ferry. A
// non-loopback name is never downgraded.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { runFerry, tempStateHome, type FerryRun } from './ferry-cli.ts';
import { makeTestPki, startConnectProxy, type ConnectProxy, type TestPki } from '../harness/cloud-registry.ts';
import { startDistribution, type DistributionRegistry } from '../harness/distribution.ts';
import { clientFor, type OciClient } from '../harness/oci-client.ts';
import { pushImage } from '../harness/fixtures.ts';
import { HttpTransport } from '../../src/transport/http.ts';

const PLAIN_NAME = 'plain-registry.test';

/**
 * A port-forward: a TCP forwarder on 127.0.0.1 to `port`. `opened` says how each connection began:
 * `tls` (a TLS record), `plain` (anything else, an HTTP request) or `none` (closed without a byte).
 */
async function portForward(port: number): Promise<{ host: string; opened: string[]; stop(): void }> {
  const opened: string[] = [];
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    sockets.add(client);
    const upstream = connect(port, '127.0.0.1');
    sockets.add(upstream);
    let first = true;
    client.on('data', (d: Buffer) => {
      if (first) opened.push(d[0] === 0x16 ? 'tls' : 'plain');
      first = false;
    });
    client.on('close', () => {
      if (first) opened.push('none');
      upstream.destroy();
    });
    client.pipe(upstream).pipe(client);
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
    upstream.on('close', () => client.destroy());
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return {
    host: `127.0.0.1:${(server.address() as AddressInfo).port}`,
    opened,
    stop() {
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
}

let pki: TestPki;
/** Serves TLS on 127.0.0.1 (ferry reaches it through `forward`). */
let tlsRegistry: DistributionRegistry;
let tls: { host: string; opened: string[]; stop(): void };
/** The same storage over plain HTTP: seeds and checks the TLS registry's content. */
let tlsView: OciClient;
let tlsViewRegistry: DistributionRegistry;
let plain: DistributionRegistry;
let plainC: OciClient;
let proxy: ConnectProxy;
const stateHome = tempStateHome();

before(async () => {
  pki = makeTestPki(['127.0.0.1', 'localhost']);
  [tlsRegistry, plain, proxy] = await Promise.all([startDistribution({ tls: { certPath: pki.certPath, keyPath: pki.keyPath, caPath: pki.caPath } }), startDistribution(), startConnectProxy()]);
  tls = await portForward(Number(tlsRegistry.host.split(':')[1]));
  tlsViewRegistry = await startDistribution({ storageDir: tlsRegistry.storageDir });
  tlsView = clientFor(tlsViewRegistry);
  plainC = clientFor(plain);
  // A name that is not loopback, reached through the proxy, whose server speaks plain HTTP.
  proxy.route(PLAIN_NAME, Number(plain.host.split(':')[1]));
});

after(async () => {
  tls?.stop();
  await Promise.all([tlsRegistry?.stop(), tlsViewRegistry?.stop(), plain?.stop(), proxy?.stop()]);
});

let runs = 0;
function ferry(args: string[], env: NodeJS.ProcessEnv = {}): Promise<FerryRun> {
  return runFerry(['copy', '--json', '--log-level', 'debug', '--state-dir', join(stateHome, `s${runs++}`), ...args], {
    env: { HTTPS_PROXY: undefined, https_proxy: undefined, HTTP_PROXY: undefined, http_proxy: undefined, NO_PROXY: undefined, no_proxy: undefined, NODE_EXTRA_CA_CERTS: undefined, ...env },
    timeoutMs: 120_000,
  });
}

/** Lines where ferry says which scheme it speaks to a registry, with why. */
function schemeLines(run: FerryRun): Array<{ registry: string; scheme: string; why: string }> {
  return run.stderr
    .split('\n')
    .filter((l) => l.startsWith('{') && l.includes('"msg":"speaking '))
    .map((l) => JSON.parse(l) as { registry: string; scheme: string; why: string });
}

/** Connections to the TLS registry from here on: every one began in TLS (the question and the requests alike). */
function connectionsFrom(): () => string[] {
  const start = tls.opened.length;
  return () => tls.opened.slice(start);
}

async function seed(client: OciClient, repo: string): Promise<string> {
  return (await pushImage(client, repo, 'v1', { layerSizes: [300_000, 4096] })).digest;
}

describe('a registry on loopback that speaks TLS', () => {
  test('HTTPS first: copied from it and into it, its certificate verified with --ca-file; plain loopback registries still get plain HTTP', async () => {
    const digest = await seed(tlsView, 'tls/src');
    const connections = connectionsFrom();
    const out = await ferry(['--ca-file', pki.caPath, `${tls.host}/tls/src:v1`, `${plain.host}/from-tls:v1`]);
    assert.equal(out.code, 0, out.stderr.slice(-3000));
    assert.equal((await plainC.verifyImage('from-tls', 'v1')).digest, digest);
    const back = await ferry(['--ca-file', pki.caPath, `${plain.host}/from-tls:v1`, `${tls.host}/tls/back:v1`]);
    assert.equal(back.code, 0, back.stderr.slice(-3000));
    assert.equal((await tlsView.verifyImage('tls/back', 'v1')).digest, digest);
    for (const run of [out, back]) {
      const said = schemeLines(run);
      assert.ok(said.some((l) => l.registry === tls.host && l.scheme === 'https' && /answered a TLS hello/.test(l.why)), JSON.stringify(said));
      assert.ok(said.some((l) => l.registry === plain.host && l.scheme === 'http' && /in plain HTTP/.test(l.why)), JSON.stringify(said));
    }
    assert.ok(connections().length >= 3, `${connections().length} connections`);
    assert.deepEqual([...new Set(connections())], ['tls'], 'a connection to the TLS registry began in plain HTTP');
  });

  test('a certificate ferry cannot verify is reported as such, never answered with plain HTTP', async () => {
    await seed(tlsView, 'tls/unverified');
    const connections = connectionsFrom();
    const run = await ferry([`${tls.host}/tls/unverified:v1`, `${plain.host}/unverified:v1`]);
    assert.equal(run.code, 1, run.stderr.slice(-3000));
    assert.equal(run.json?.error?.code, 'REGISTRY_UNAVAILABLE', run.stdout);
    assert.match(run.json.error.message, /TLS verification failed for 127\.0\.0\.1:\d+ \((UNABLE_TO_GET_ISSUER_CERT_LOCALLY|UNABLE_TO_VERIFY_LEAF_SIGNATURE|SELF_SIGNED_CERT_IN_CHAIN)\): add its CA with --ca-file or NODE_EXTRA_CA_CERTS \(it speaks TLS, so ferry does not fall back to plain HTTP\)/);
    assert.ok(connections().length >= 2, 'the registry was not asked, then connected to with TLS');
    assert.deepEqual([...new Set(connections())], ['tls'], 'ferry fell back to plain HTTP');
  });

  test('--plain-http HOST:PORT forces plain HTTP: no TLS hello, plain requests only', async () => {
    await seed(plainC, 'forced');
    const ok = await ferry(['--plain-http', plain.host, `${plain.host}/forced:v1`, `${plain.host}/forced-copy:v1`]);
    assert.equal(ok.code, 0, ok.stderr.slice(-3000));
    // Source and destination both said so; neither asked.
    const said = schemeLines(ok).map((l) => `${l.scheme}: ${l.why}`);
    assert.ok(said.length >= 1);
    assert.deepEqual([...new Set(said)], ['http: named with --plain-http'], 'the registry named with --plain-http was asked anyway');
    // Named so, even a TLS registry is spoken to in plain HTTP (and refuses it).
    const connections = connectionsFrom();
    const forced = await ferry(['--plain-http', tls.host, '--ca-file', pki.caPath, `${tls.host}/tls/src:v1`, `${plain.host}/never:v1`]);
    assert.equal(forced.code, 1, forced.stderr.slice(-3000));
    assert.notEqual(forced.json?.error?.code, 'INTERNAL', forced.stdout);
    assert.ok(connections().length >= 1);
    assert.deepEqual([...new Set(connections())], ['plain'], 'ferry sent a TLS hello to a registry named with --plain-http');
  });

  test('a host that is not loopback is never downgraded: HTTPS to a plain-HTTP server fails, nothing goes out in plain HTTP', async () => {
    await seed(plainC, 'never-downgraded');
    const run = await ferry([`${PLAIN_NAME}/never-downgraded:v1`, `${plain.host}/never-downgraded-copy:v1`], { HTTPS_PROXY: proxy.url, NO_PROXY: '127.0.0.1,localhost' });
    assert.equal(run.code, 1, run.stderr.slice(-3000));
    assert.equal(run.json?.error?.code, 'REGISTRY_UNAVAILABLE', run.stdout);
    assert.ok(proxy.connects.some((c) => c.target === `${PLAIN_NAME}:443`), 'ferry did not try HTTPS');
    assert.deepEqual(proxy.plainRequests, [], 'a plain-HTTP request went out');
    assert.ok(!schemeLines(run).some((l) => l.registry === PLAIN_NAME), 'a non-loopback registry was asked which scheme it speaks');
  });
});

describe('the scheme question (HttpTransport.resolveScheme)', () => {
  test('non-loopback: HTTPS without asking; named: HTTP without asking; loopback: asked once and the answer kept', async () => {
    const t = new HttpTransport({ plainHttp: [plain.host] });
    assert.deepEqual(await t.resolveScheme('registry.example.com'), { scheme: 'https', decided: true, why: 'not loopback' });
    assert.deepEqual(await t.resolveScheme('127.0.0.2.example.com:443'), { scheme: 'https', decided: true, why: 'not loopback' });
    assert.deepEqual(await t.resolveScheme(plain.host), { scheme: 'http', decided: true, why: 'named with --plain-http' });
    assert.deepEqual(await t.resolveScheme(tls.host), { scheme: 'https', decided: true, why: 'it answered a TLS hello' });
    const viaLocalhost = `localhost:${tls.host.split(':')[1]}`;
    assert.equal((await t.resolveScheme(viaLocalhost)).scheme, 'https');
    assert.deepEqual(await new HttpTransport().resolveScheme(plain.host), { scheme: 'http', decided: true, why: 'it answered a TLS hello in plain HTTP' });
    await t.close();
  });

  test('no answer decides nothing: plain HTTP for now, asked again next time', async () => {
    const { createServer } = await import('node:net');
    // A port nobody listens on (yet).
    const probe = createServer();
    const port = await new Promise<number>((r) => probe.listen(0, '127.0.0.1', () => r((probe.address() as import('node:net').AddressInfo).port)));
    await new Promise<void>((r) => probe.close(() => r()));
    const t = new HttpTransport();
    const first = await t.resolveScheme(`127.0.0.1:${port}`);
    assert.equal(first.scheme, 'http');
    assert.equal(first.decided, false);
    assert.match(first.why, /ECONNREFUSED/);
    // Now a TLS server comes up there: the next question finds it.
    const { createServer: createHttps } = await import('node:https');
    const server = createHttps({ cert: pki.cert, key: pki.key }, (_q, s) => s.end());
    await new Promise<void>((r) => server.listen(port, '127.0.0.1', () => r()));
    try {
      assert.deepEqual(await t.resolveScheme(`127.0.0.1:${port}`), { scheme: 'https', decided: true, why: 'it answered a TLS hello' });
    } finally {
      server.close();
      await t.close();
    }
  });
});
