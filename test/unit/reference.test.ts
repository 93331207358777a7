import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { FerryError, UsageError } from '../../src/errors.ts';
import {
  DOCKER_HUB,
  formatReference,
  parseReference,
  referenceTarget,
  registryEndpoint,
  repositoryName,
  withTarget,
  type Reference,
} from '../../src/reference/reference.ts';
import { digestOf, DigestVerifier, isDigest, parseDigest } from '../../src/reference/digest.ts';
import { formatPlatform, parsePlatform, platformMatches, type Platform } from '../../src/reference/platform.ts';

const H256 = 'a'.repeat(64);
const D256 = `sha256:${H256}`;
const D512 = `sha512:${'0123456789abcdef'.repeat(8)}`;

/** Assert fn throws a UsageError whose message contains every one of parts. */
function throwsUsage(fn: () => unknown, ...parts: string[]): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof UsageError, `expected UsageError, got ${String(e)}`);
    assert.ok(e instanceof FerryError);
    assert.equal(e.code, 'USAGE');
    for (const p of parts) assert.ok(e.message.includes(p), `message ${JSON.stringify(e.message)} should include ${JSON.stringify(p)}`);
    return true;
  });
}

describe('parseReference: valid references', () => {
  const cases: Array<[string, Reference, string]> = [
    // Docker Hub short forms
    ['alpine', { registry: 'docker.io', repository: 'library/alpine', tag: 'latest' }, 'docker.io/library/alpine:latest'],
    ['alpine:3.19', { registry: 'docker.io', repository: 'library/alpine', tag: '3.19' }, 'docker.io/library/alpine:3.19'],
    ['library/alpine', { registry: 'docker.io', repository: 'library/alpine', tag: 'latest' }, 'docker.io/library/alpine:latest'],
    ['bitnami/redis:7.2', { registry: 'docker.io', repository: 'bitnami/redis', tag: '7.2' }, 'docker.io/bitnami/redis:7.2'],
    ['docker.io/alpine', { registry: 'docker.io', repository: 'library/alpine', tag: 'latest' }, 'docker.io/library/alpine:latest'],
    ['docker.io/library/alpine:edge', { registry: 'docker.io', repository: 'library/alpine', tag: 'edge' }, 'docker.io/library/alpine:edge'],
    ['index.docker.io/alpine', { registry: 'docker.io', repository: 'library/alpine', tag: 'latest' }, 'docker.io/library/alpine:latest'],
    ['index.docker.io/foo/bar', { registry: 'docker.io', repository: 'foo/bar', tag: 'latest' }, 'docker.io/foo/bar:latest'],
    ['registry-1.docker.io/alpine', { registry: 'docker.io', repository: 'library/alpine', tag: 'latest' }, 'docker.io/library/alpine:latest'],
    ['Docker.IO/alpine', { registry: 'docker.io', repository: 'library/alpine', tag: 'latest' }, 'docker.io/library/alpine:latest'],
    // docker:// prefix and whitespace
    ['docker://alpine', { registry: 'docker.io', repository: 'library/alpine', tag: 'latest' }, 'docker.io/library/alpine:latest'],
    ['docker://ghcr.io/org/app:v1', { registry: 'ghcr.io', repository: 'org/app', tag: 'v1' }, 'ghcr.io/org/app:v1'],
    ['  quay.io/org/app:v1  ', { registry: 'quay.io', repository: 'org/app', tag: 'v1' }, 'quay.io/org/app:v1'],
    // other registries, nesting, separators
    ['ghcr.io/org/team/app', { registry: 'ghcr.io', repository: 'org/team/app', tag: 'latest' }, 'ghcr.io/org/team/app:latest'],
    ['GHCR.io/org/app', { registry: 'ghcr.io', repository: 'org/app', tag: 'latest' }, 'ghcr.io/org/app:latest'],
    ['example.com/a.b/c_d/e__f/g-h/i---j', { registry: 'example.com', repository: 'a.b/c_d/e__f/g-h/i---j', tag: 'latest' }, 'example.com/a.b/c_d/e__f/g-h/i---j:latest'],
    ['my-registry.internal.example/app:1.0.0-rc.1_build', { registry: 'my-registry.internal.example', repository: 'app', tag: '1.0.0-rc.1_build' }, 'my-registry.internal.example/app:1.0.0-rc.1_build'],
    ['example.com/app:UPPER_tag', { registry: 'example.com', repository: 'app', tag: 'UPPER_tag' }, 'example.com/app:UPPER_tag'],
    ['example.com/app:_underscore', { registry: 'example.com', repository: 'app', tag: '_underscore' }, 'example.com/app:_underscore'],
    // ports, localhost, IPs
    ['localhost/app', { registry: 'localhost', repository: 'app', tag: 'latest' }, 'localhost/app:latest'],
    ['localhost:5000/app', { registry: 'localhost:5000', repository: 'app', tag: 'latest' }, 'localhost:5000/app:latest'],
    ['localhost:5000/app:v2', { registry: 'localhost:5000', repository: 'app', tag: 'v2' }, 'localhost:5000/app:v2'],
    ['registry.example.com:443/ns/app:1', { registry: 'registry.example.com:443', repository: 'ns/app', tag: '1' }, 'registry.example.com:443/ns/app:1'],
    ['127.0.0.1:5000/app', { registry: '127.0.0.1:5000', repository: 'app', tag: 'latest' }, '127.0.0.1:5000/app:latest'],
    ['myhost:5000/app', { registry: 'myhost:5000', repository: 'app', tag: 'latest' }, 'myhost:5000/app:latest'],
    ['[::1]:5000/app:v1', { registry: '[::1]:5000', repository: 'app', tag: 'v1' }, '[::1]:5000/app:v1'],
    ['[::1]/app', { registry: '[::1]', repository: 'app', tag: 'latest' }, '[::1]/app:latest'],
    ['[FE80::1]:5000/app', { registry: '[fe80::1]:5000', repository: 'app', tag: 'latest' }, '[fe80::1]:5000/app:latest'],
    ['[2001:db8::1]:65535/a/b', { registry: '[2001:db8::1]:65535', repository: 'a/b', tag: 'latest' }, '[2001:db8::1]:65535/a/b:latest'],
    // `localhost:5000` without a path is Docker Hub's library/localhost at tag 5000, as in docker
    ['localhost:5000', { registry: 'docker.io', repository: 'library/localhost', tag: '5000' }, 'docker.io/library/localhost:5000'],
    // a first component without '.', ':' or localhost is a Hub namespace, not a host
    ['myhost/app', { registry: 'docker.io', repository: 'myhost/app', tag: 'latest' }, 'docker.io/myhost/app:latest'],
    // digests
    [`alpine@${D256}`, { registry: 'docker.io', repository: 'library/alpine', digest: D256 }, `docker.io/library/alpine@${D256}`],
    [`alpine:3.19@${D256}`, { registry: 'docker.io', repository: 'library/alpine', tag: '3.19', digest: D256 }, `docker.io/library/alpine:3.19@${D256}`],
    [`localhost:5000/app@${D256}`, { registry: 'localhost:5000', repository: 'app', digest: D256 }, `localhost:5000/app@${D256}`],
    [`localhost:5000/app:v1@${D512}`, { registry: 'localhost:5000', repository: 'app', tag: 'v1', digest: D512 }, `localhost:5000/app:v1@${D512}`],
    [`docker://[::1]:5000/app@${D256}`, { registry: '[::1]:5000', repository: 'app', digest: D256 }, `[::1]:5000/app@${D256}`],
  ];

  for (const [input, want, formatted] of cases) {
    it(JSON.stringify(input), () => {
      const ref = parseReference(input);
      assert.deepEqual(ref, want);
      assert.equal(formatReference(ref), formatted);
      // The canonical form is a fixed point.
      assert.deepEqual(parseReference(formatted), want);
    });
  }

  it('does not set tag latest when only a digest is given', () => {
    const ref = parseReference(`alpine@${D256}`);
    assert.equal(ref.tag, undefined);
    assert.ok(!('tag' in ref));
    assert.equal(referenceTarget(ref), D256);
  });

  it('accepts a 128-character tag and a name of exactly 255 characters', () => {
    const tag = `t${'x'.repeat(127)}`;
    assert.equal(parseReference(`example.com/app:${tag}`).tag, tag);
    const path = 'a'.repeat(255 - 'example.com/'.length);
    assert.equal(parseReference(`example.com/${path}`).repository, path);
  });
});

describe('parseReference: invalid references', () => {
  const cases: Array<[string, string, string[]]> = [
    ['empty', '', ['empty image reference']],
    ['blank', '   ', ['empty image reference']],
    ['only the prefix', 'docker://', ['empty image reference']],
    ['uppercase repository', 'example.com/MyApp:v1', ['"MyApp"', 'lowercase']],
    ['uppercase Hub repository', 'Alpine', ['"Alpine"', 'lowercase']],
    ['uppercase nested component', 'ghcr.io/org/Team/app', ['"Team"', 'lowercase']],
    ['uppercase Hub namespace', 'MyOrg/app', ['"MyOrg"', 'lowercase']],
    ['empty path component', 'example.com//app', ['component ""']],
    ['trailing slash', 'example.com/app/', ['component ""']],
    ['leading separator', 'example.com/-app', ['"-app"']],
    ['trailing separator', 'example.com/app_', ['"app_"']],
    ['triple underscore', 'example.com/a___b', ['"a___b"']],
    ['double dot', 'example.com/a..b', ['"a..b"']],
    ['space in path', 'example.com/my app', ['"my app"']],
    ['registry without a path', 'example.com/', ['repository path is empty']],
    ['empty tag', 'alpine:', ['tag ""']],
    ['tag starting with dot', 'alpine:.hidden', ['tag ".hidden"']],
    ['tag starting with dash', 'alpine:-x', ['tag "-x"']],
    ['tag with bad character', 'alpine:v1+build', ['tag "v1+build"']],
    ['tag of 129 characters', `alpine:${'a'.repeat(129)}`, [`tag "${'a'.repeat(129)}"`, '1-128']],
    ['digest without algorithm', 'alpine@abc', ['invalid reference "alpine@abc"', '"abc"']],
    ['empty digest', 'alpine@', ['invalid reference "alpine@"']],
    ['short sha256', `alpine@sha256:${'a'.repeat(63)}`, ['64 lowercase hex']],
    ['long sha256', `alpine@sha256:${'a'.repeat(65)}`, ['64 lowercase hex']],
    ['uppercase digest hex', `alpine@sha256:${'A'.repeat(64)}`, ['lowercase hex', `"${'A'.repeat(64)}"`]],
    ['non-hex digest', `alpine@sha256:${'g'.repeat(64)}`, ['lowercase hex']],
    ['sha512 with sha256 length', `alpine@sha512:${H256}`, ['128 lowercase hex']],
    ['unsupported algorithm', `alpine@md5:${'a'.repeat(32)}`, ['"md5"', 'sha256 and sha512']],
    ['port out of range', 'localhost:65536/app', ['port "65536"']],
    ['port zero', 'localhost:0/app', ['port "0"']],
    ['non-numeric port', 'example.com:http/app', ['port "http"']],
    ['empty port', 'example.com:/app', ['port ""']],
    ['bad host part', 'bad_host.example.com/app', ['"bad_host"']],
    ['host part with leading dash', '-x.example.com/app', ['"-x"']],
    ['empty host part', 'a..b/app', ['part ""']],
    ['unterminated IPv6', '[::1:5000/app', ['unterminated IPv6']],
    ['IPv6 with junk after', '[::1]x/app', ['bad registry "[::1]x"']],
    ['not an IPv6 address', '[zz::1]:5000/app', ['bad IPv6 address "[zz::1]"']],
    ['IPv6 with bad port', '[::1]:99999/app', ['port "99999"']],
    ['name too long', `example.com/${'a'.repeat(244)}`, ['256 characters', 'more than 255']],
    // Docker counts `docker.io/` against the limit too.
    ['Hub name too long', `library/${'a'.repeat(238)}`, ['256 characters']],
  ];
  for (const [name, input, parts] of cases) {
    it(`${name}: ${JSON.stringify(input.length > 60 ? `${input.slice(0, 60)}…` : input)}`, () => {
      throwsUsage(() => parseReference(input), ...parts);
    });
  }

  it('quotes the original input in every message', () => {
    throwsUsage(() => parseReference('docker://example.com/Bad'), 'invalid reference "docker://example.com/Bad"');
  });
});

describe('formatReference, registryEndpoint and friends', () => {
  it('formats without tag or digest', () => {
    assert.equal(formatReference({ registry: 'example.com', repository: 'a/b' }), 'example.com/a/b');
  });
  it('sends Docker Hub to registry-1.docker.io and everything else as is', () => {
    const table: Array<[string, string]> = [
      [DOCKER_HUB, 'registry-1.docker.io'],
      ['ghcr.io', 'ghcr.io'],
      ['localhost:5000', 'localhost:5000'],
      ['[::1]:5000', '[::1]:5000'],
    ];
    for (const [reg, endpoint] of table) assert.equal(registryEndpoint(reg), endpoint, reg);
    assert.equal(registryEndpoint(parseReference('index.docker.io/alpine').registry), 'registry-1.docker.io');
  });
  it('referenceTarget prefers the digest, then the tag, then latest', () => {
    assert.equal(referenceTarget(parseReference(`a.io/x:v1@${D256}`)), D256);
    assert.equal(referenceTarget(parseReference('a.io/x:v1')), 'v1');
    assert.equal(referenceTarget({ registry: 'a.io', repository: 'x' }), 'latest');
  });
  it('repositoryName and withTarget', () => {
    const ref = parseReference('alpine:3');
    assert.equal(repositoryName(ref), 'docker.io/library/alpine');
    assert.deepEqual(withTarget(ref, { digest: D256 }), { registry: 'docker.io', repository: 'library/alpine', digest: D256 });
    assert.deepEqual(withTarget(ref, {}), { registry: 'docker.io', repository: 'library/alpine' });
  });
});

describe('parseDigest', () => {
  it('accepts sha256 and sha512', () => {
    assert.deepEqual(parseDigest(D256), { algorithm: 'sha256', hex: H256 });
    assert.deepEqual(parseDigest(D512), { algorithm: 'sha512', hex: '0123456789abcdef'.repeat(8) });
    assert.ok(isDigest(D256));
    assert.ok(isDigest(D512));
  });
  const bad: Array<[string, string[]]> = [
    ['', ['invalid digest ""']],
    [H256, ['expected <algorithm>:<hex>']],
    [`sha256:`, ['invalid digest "sha256:"']],
    [`:${H256}`, ['expected <algorithm>:<hex>']],
    [`SHA256:${H256}`, ['expected <algorithm>:<hex>']],
    [`sha1:${'a'.repeat(40)}`, ['unsupported digest algorithm "sha1"']],
    [`sha256+b64u:${H256}`, ['unsupported digest algorithm "sha256+b64u"']],
    [`sha256:${'a'.repeat(63)}`, ['must be 64 lowercase hex']],
    [`sha256:${'a'.repeat(128)}`, ['must be 64 lowercase hex']],
    [`sha256:${'F'.repeat(64)}`, ['must be 64 lowercase hex']],
    [`sha512:${H256}`, ['must be 128 lowercase hex']],
    [`sha256:${'a'.repeat(63)}!`, ['expected <algorithm>:<hex>']],
    [` ${D256}`, ['expected <algorithm>:<hex>']],
    [`${D256}\n`, ['expected <algorithm>:<hex>']],
  ];
  for (const [value, parts] of bad) {
    it(`rejects ${JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value)}`, () => {
      throwsUsage(() => parseDigest(value), ...parts);
      assert.equal(isDigest(value), false);
    });
  }
  it('digestOf and DigestVerifier agree', () => {
    const bytes = new TextEncoder().encode('hello');
    const d = digestOf(bytes);
    assert.equal(d, 'sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824');
    const v = new DigestVerifier(d);
    v.update(bytes.subarray(0, 2));
    v.update(bytes.subarray(2));
    assert.equal(v.bytes, 5);
    assert.equal(v.actual(), d);
    assert.match(digestOf(bytes, 'sha512'), /^sha512:[0-9a-f]{128}$/);
    assert.throws(() => new DigestVerifier('nope'), UsageError);
  });
});

describe('parsePlatform / platformMatches', () => {
  const good: Array<[string, Platform]> = [
    ['linux/amd64', { os: 'linux', architecture: 'amd64' }],
    ['linux/arm64/v8', { os: 'linux', architecture: 'arm64', variant: 'v8' }],
    ['linux/arm/v7', { os: 'linux', architecture: 'arm', variant: 'v7' }],
    ['windows/amd64', { os: 'windows', architecture: 'amd64' }],
    ['linux/ppc64le', { os: 'linux', architecture: 'ppc64le' }],
  ];
  for (const [s, p] of good) {
    it(`parses ${s}`, () => {
      const got = parsePlatform(s);
      assert.deepEqual(got, p);
      if (p.variant === undefined) assert.ok(!('variant' in got));
      assert.equal(formatPlatform(got), s);
    });
  }
  for (const s of ['', 'linux', 'linux/', '/amd64', 'linux/amd64/', 'linux/arm/v7/x', 'Linux/AMD64', 'linux/amd 64', 'linux//v8']) {
    it(`rejects ${JSON.stringify(s)}`, () => throwsUsage(() => parsePlatform(s), `"${s}"`, 'os/arch[/variant]'));
  }

  const matches: Array<[string, Platform | undefined, boolean]> = [
    ['linux/amd64', { os: 'linux', architecture: 'amd64' }, true],
    ['linux/amd64', { os: 'linux', architecture: 'arm64' }, false],
    ['linux/amd64', { os: 'windows', architecture: 'amd64' }, false],
    ['linux/amd64', undefined, false],
    // a request without a variant matches any variant
    ['linux/arm64', { os: 'linux', architecture: 'arm64', variant: 'v8' }, true],
    ['linux/arm', { os: 'linux', architecture: 'arm', variant: 'v6' }, true],
    ['linux/arm/v7', { os: 'linux', architecture: 'arm', variant: 'v7' }, true],
    ['linux/arm/v7', { os: 'linux', architecture: 'arm', variant: 'v6' }, false],
    ['linux/arm/v7', { os: 'linux', architecture: 'arm' }, false],
    // arm64 without a variant is arm64/v8; amd64 without one is amd64/v1 (containerd's normalization)
    ['linux/arm64/v8', { os: 'linux', architecture: 'arm64' }, true],
    ['linux/arm64/v8', { os: 'linux', architecture: 'arm64', variant: 'v8' }, true],
    ['linux/arm64/v9', { os: 'linux', architecture: 'arm64' }, false],
    ['linux/amd64/v1', { os: 'linux', architecture: 'amd64' }, true],
    ['linux/amd64/v3', { os: 'linux', architecture: 'amd64' }, false],
  ];
  for (const [want, have, expected] of matches) {
    it(`${want} ${expected ? 'matches' : 'does not match'} ${have ? formatPlatform(have) : 'no platform'}`, () => {
      assert.equal(platformMatches(parsePlatform(want), have), expected);
    });
  }
});
