// The transport and registry client against small real HTTP servers that misbehave the way
// hostile or unusual registries do: redirects to other hosts, token realms at metadata
// addresses, challenges with several scopes.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { HttpTransport } from '../../src/transport/http.ts';
import { parseChallenges, mergeScopes } from '../../src/transport/challenge.ts';
import { parseRetryAfter, backoffDelay, DEFAULT_RETRY } from '../../src/transport/retry.ts';
import { classifyHost, isLoopbackHost, isMetadataOrLinkLocal } from '../../src/transport/address.ts';
import { RegistryClient, rangeEnd } from '../../src/registry/client.ts';
import { readBounded } from '../../src/registry/body.ts';
import { StaticCredentials } from '../../src/auth/credentials.ts';
import { silentLogger } from '../../src/log/logger.ts';
import { FerryError } from '../../src/errors.ts';

function listen(handler: (req: import('node:http').IncomingMessage, res: import('node:http').ServerResponse) => void, host = '127.0.0.1'): Promise<{ server: Server; port: number }> {
  return new Promise((resolve) => {
    const server = createServer(handler);
    server.listen(0, host, () => resolve({ server, port: (server.address() as AddressInfo).port }));
  });
}

describe('challenges and scopes', () => {
  test('several challenges, quoted values with commas and escapes', () => {
    const c = parseChallenges('Bearer realm="https://auth.example/token",service="reg.example",scope="repository:a/b:pull,push repository:c:pull", Basic realm="x\\"y"');
    assert.equal(c.length, 2);
    assert.equal(c[0]!.scheme, 'bearer');
    assert.equal(c[0]!.params.realm, 'https://auth.example/token');
    assert.equal(c[0]!.params.scope, 'repository:a/b:pull,push repository:c:pull');
    assert.equal(c[1]!.scheme, 'basic');
    assert.equal(c[1]!.params.realm, 'x"y');
  });

  test('scopes merge per resource, also when the name holds host:port', () => {
    assert.deepEqual(mergeScopes(['repository:localhost:5000/a:pull', 'repository:localhost:5000/a:push', 'repository:b:pull']), [
      'repository:b:pull',
      'repository:localhost:5000/a:pull,push',
    ]);
  });

  test('Retry-After in seconds and as a date; backoff grows and is capped', () => {
    assert.equal(parseRetryAfter('3'), 3000);
    const now = Date.parse('2026-01-01T00:00:00Z');
    assert.equal(parseRetryAfter('Thu, 01 Jan 2026 00:00:05 GMT', now), 5000);
    assert.equal(parseRetryAfter('soon'), undefined);
    const d1 = backoffDelay(DEFAULT_RETRY, 1, () => 1);
    const d4 = backoffDelay(DEFAULT_RETRY, 4, () => 1);
    const d30 = backoffDelay(DEFAULT_RETRY, 30, () => 1);
    assert.ok(d4 > d1);
    assert.ok(d30 <= DEFAULT_RETRY.maxDelayMs);
  });

  test('upload Range headers', () => {
    assert.equal(rangeEnd('0-1023'), 1024);
    assert.equal(rangeEnd('bytes=0-99'), 100);
    assert.equal(rangeEnd('0-0'), 0);
    assert.equal(rangeEnd('garbage'), undefined);
  });

  test('address classes', () => {
    assert.ok(isLoopbackHost('127.0.0.1') && isLoopbackHost('::1') && isLoopbackHost('localhost'));
    assert.ok(!isLoopbackHost('10.0.0.1'));
    assert.ok(isMetadataOrLinkLocal('169.254.169.254') && isMetadataOrLinkLocal('fd00:ec2::254') && isMetadataOrLinkLocal('fe80::1'));
    assert.ok(!isMetadataOrLinkLocal('8.8.8.8'));
  });

  test('every spelling of a metadata or link-local address is one: numeric IPv4 forms, IPv4 inside IPv6, zones, case, a trailing dot', () => {
    const metadata = [
      '169.254.169.254',
      '2852039166', // decimal
      '0xa9fea9fe', // hex
      '0xA9.0xFE.0xA9.0xFE',
      '0251.0376.0251.0376', // octal
      '169.254.43518', // three parts
      '169.16689662', // two parts
      '169.254.169.254.',
      '::ffff:169.254.169.254', // IPv4-mapped
      '[::ffff:a9fe:a9fe]',
      '::ffff:0:169.254.169.254', // IPv4-translated
      '::169.254.169.254', // IPv4-compatible
      '64:ff9b::169.254.169.254', // NAT64
      'fd00:ec2::254',
      '[FD00:EC2:0:0:0:0:0:254]',
      'metadata.google.internal',
      'metadata.google.internal.',
      'METADATA.Google.Internal.',
      'metadata',
      'instance-data.ec2.internal.',
      '100.100.100.200',
      '%31%36%39.254.169.254', // percent-encoded, as the URL parser decodes it
    ];
    for (const h of metadata) assert.equal(classifyHost(h), 'metadata', h);
    for (const h of ['169.254.1.1', 'fe80::1', 'fe80::1%eth0', '[fe80::1%25eth0]', 'FEBF::1', '::ffff:169.254.0.1']) assert.equal(classifyHost(h), 'link-local', h);
    for (const h of ['127.0.0.1', '127.1', '::1', '[0:0:0:0:0:0:0:1]', '::ffff:127.0.0.1', 'LOCALHOST.', 'registry.localhost']) assert.equal(classifyHost(h), 'loopback', h);
    for (const h of ['registry.example.com', 'metadata.example.com', '10.0.0.1', '::', '8.8.8.8', '169.255.0.1', 'fec0::1']) assert.equal(classifyHost(h), 'other', h);
  });
});

describe('redirects and token realms', () => {
  let registry: { server: Server; port: number };
  let other: { server: Server; port: number };
  const seenByOther: IncomingHttpHeaders[] = [];
  let redirectTarget = '';
  let realm = '';

  before(async () => {
    // "Another host": the same machine under another name (localhost vs 127.0.0.1).
    other = await listen((req, res) => {
      seenByOther.push(req.headers);
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': '5' });
      res.end('hello');
    });
    registry = await listen((req, res) => {
      if (req.headers.authorization !== `Basic ${Buffer.from('u:secret-pw').toString('base64')}`) {
        res.writeHead(401, { 'www-authenticate': realm || 'Basic realm="r"' });
        return res.end();
      }
      if (req.url?.includes('/blobs/')) {
        res.writeHead(307, { location: redirectTarget });
        return res.end();
      }
      res.writeHead(404);
      res.end();
    });
  });
  after(() => {
    registry.server.close();
    other.server.close();
  });

  function client(): RegistryClient {
    return new RegistryClient({
      registry: `127.0.0.1:${registry.port}`,
      side: 'source',
      transport: new HttpTransport({}),
      credentials: new StaticCredentials({ kind: 'basic', username: 'u', password: 'secret-pw' }, undefined, 'test'),
      logger: silentLogger(),
    });
  }

  test('a redirect to another host is followed without Authorization', async () => {
    redirectTarget = `http://localhost:${other.port}/bucket/blob?sig=1`;
    realm = '';
    const res = await client().openBlob('a/b', `sha256:${'a'.repeat(64)}`, 0);
    assert.equal(res.status, 200);
    assert.equal((await readBounded(res.body, 1024, 'the blob', 'source')).toString(), 'hello');
    assert.equal(seenByOther.length, 1);
    assert.equal(seenByOther[0]!.authorization, undefined, 'Authorization was forwarded to another host');
  });

  test('a redirect to a metadata address is refused', async () => {
    redirectTarget = 'http://169.254.169.254/latest/meta-data/';
    await assert.rejects(client().openBlob('a/b', `sha256:${'b'.repeat(64)}`, 0), (e: FerryError) => e.code === 'SOURCE_INVALID' && /metadata/.test(e.message));
  });

  test('a redirect to another spelling of a metadata address is refused before any connection', async () => {
    const targets = [
      'http://[::ffff:169.254.169.254]/latest/meta-data/',
      'http://metadata.google.internal./computeMetadata/v1/',
      'http://METADATA.GOOGLE.INTERNAL/computeMetadata/v1/',
      'http://2852039166/latest/meta-data/',
      'http://0xa9.0xfe.0xa9.0xfe/latest/meta-data/',
      'http://[64:ff9b::a9fe:a9fe]/latest/meta-data/',
      'http://[fe80::1]/',
    ];
    for (const target of targets) {
      redirectTarget = target;
      await assert.rejects(client().openBlob('a/b', `sha256:${'b'.repeat(64)}`, 0), (e: FerryError) => e.code === 'SOURCE_INVALID' && /link-local\/metadata address/.test(e.message), target);
    }
  });

  test('a redirect whose Location is not a URL is SOURCE_INVALID, not INTERNAL', async () => {
    redirectTarget = 'http://[::1';
    await assert.rejects(client().openBlob('a/b', `sha256:${'c'.repeat(64)}`, 0), (e: FerryError) => e.code === 'SOURCE_INVALID' && /Location from 127\.0\.0\.1:\d+ is not a URL: "http:\/\/\[::1"/.test(e.message));
  });

  test('a token realm at a metadata name with a trailing dot is refused', async () => {
    realm = 'Bearer realm="http://metadata.google.internal./token",service="x"';
    const c = new RegistryClient({
      registry: `127.0.0.1:${registry.port}`,
      side: 'source',
      transport: new HttpTransport({}),
      credentials: new StaticCredentials({ kind: 'anonymous' }, undefined, 'none'),
      logger: silentLogger(),
    });
    await assert.rejects(c.headManifest('a/b', 'v1'), (e: FerryError) => e.code === 'SOURCE_INVALID' && /token realm .* link-local\/metadata address \(metadata\.google\.internal\.\)/.test(e.message));
    realm = '';
  });

  test('a token realm at a metadata address is refused', async () => {
    realm = 'Bearer realm="http://169.254.169.254/token",service="x"';
    const c = new RegistryClient({
      registry: `127.0.0.1:${registry.port}`,
      side: 'source',
      transport: new HttpTransport({}),
      credentials: new StaticCredentials({ kind: 'anonymous' }, undefined, 'none'),
      logger: silentLogger(),
    });
    await assert.rejects(c.headManifest('a/b', 'v1'), (e: FerryError) => e.code === 'SOURCE_INVALID' && /token realm/.test(e.message));
    realm = '';
  });

  test('plain HTTP to a non-loopback host is refused before any connection', async () => {
    const t = new HttpTransport({});
    assert.equal(t.schemeFor('registry.example.com'), 'https');
    assert.equal(t.schemeFor('127.0.0.1:5000'), 'http');
    assert.equal(new HttpTransport({ plainHttp: ['registry.lan:5000'] }).schemeFor('registry.lan:5000'), 'http');
    await assert.rejects(t.request({ method: 'GET', url: new URL('http://registry.example.com/v2/') }), (e: FerryError) => e.code === 'SOURCE_INVALID' && /refusing plain HTTP/.test(e.message));
  });
});

describe('failures that are not bugs in ferry are never INTERNAL', () => {
  test('a proxy that refuses the tunnel: REGISTRY_UNAVAILABLE naming the proxy, not INTERNAL "cancelled"', async () => {
    const { startConnectProxy } = await import('../harness/cloud-registry.ts');
    const proxy = await startConnectProxy();
    const saved = process.env.HTTPS_PROXY;
    process.env.HTTPS_PROXY = proxy.url;
    const t = new HttpTransport({});
    try {
      await assert.rejects(t.request({ method: 'GET', url: new URL('https://refused.example/v2/') }), (e: FerryError) => {
        assert.equal(e.code, 'REGISTRY_UNAVAILABLE', e.message);
        assert.match(e.message, /the proxy refused to open a tunnel to refused\.example \(HTTP 403\): check HTTPS_PROXY \/ NO_PROXY/);
        assert.equal(e.retryable, false);
        return true;
      });
      assert.deepEqual(proxy.connects.map((c) => c.target), ['refused.example:443']);
    } finally {
      if (saved === undefined) delete process.env.HTTPS_PROXY;
      else process.env.HTTPS_PROXY = saved;
      await t.close();
      await proxy.stop();
    }
  });

  test('hostile registry answers: a token with a line break, a referrers Link that is not a URL, a refused mount whose Location is not a URL', async () => {
    let token = 'abc\r\nx-evil: 1';
    let link = '';
    const digest = `sha256:${'d'.repeat(64)}`;
    const { server, port } = await listen((req, res) => {
      if (req.url!.startsWith('/token')) return res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ token }));
      if (!req.headers.authorization) return res.writeHead(401, { 'www-authenticate': `Bearer realm="http://127.0.0.1:${port}/token",service="x"` }).end();
      if (req.url!.includes('/referrers/')) {
        const body = JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests: [] });
        return res.writeHead(200, { 'content-type': 'application/vnd.oci.image.index.v1+json', link, 'content-length': Buffer.byteLength(body) }).end(body);
      }
      if (req.method === 'POST' && req.url!.includes('mount=')) return res.writeHead(202, { location: 'http://[::1', 'content-length': 0 }).end();
      res.writeHead(404, { 'content-length': 0 }).end();
    });
    const c = (side: 'source' | 'destination' = 'source') =>
      new RegistryClient({ registry: `127.0.0.1:${port}`, side, transport: new HttpTransport({}), credentials: new StaticCredentials({ kind: 'anonymous' }, undefined, 'none'), logger: silentLogger() });
    try {
      await assert.rejects(c().headManifest('a/b', 'v1'), (e: FerryError) => e.code === 'SOURCE_AUTH' && /sent no usable token/.test(e.message));
      token = 'good-token';
      link = '<http://[::1>; rel="next"';
      await assert.rejects(c().getReferrers('a/b', digest as never), (e: FerryError) => e.code === 'SOURCE_INVALID' && /referrers pagination Link from 127\.0\.0\.1:\d+ is not a URL/.test(e.message));
      link = `<http://localhost:${port}/v2/a/b/referrers/${digest}?page=2>; rel="next"`;
      await assert.rejects(c().getReferrers('a/b', digest as never), (e: FerryError) => e.code === 'SOURCE_INVALID' && /another host/.test(e.message));
      // A mount the registry refused (202): its session's Location is checked before it is deleted; not a URL: left alone, not INTERNAL.
      assert.equal(await c('destination').mountBlob('a/b', digest as never, 'c/d'), false);
    } finally {
      server.close();
    }
  });
});
