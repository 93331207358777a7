import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { FerryError, UsageError } from '../../src/errors.ts';
import { scrubSecrets } from '../../src/log/logger.ts';
import type { Credential } from '../../src/auth/credentials.ts';
import {
  DockerConfigCredentials,
  dockerConfigPath,
  normalizeRegistryKey,
  parseDockerConfig,
  runCredentialHelper,
} from '../../src/auth/docker-config.ts';
import { parseCredsFlag } from '../../src/auth/cli-credentials.ts';

const b64 = (s: string): string => Buffer.from(s, 'utf8').toString('base64');

let root: string;
let n = 0;
before(() => {
  root = mkdtempSync(join(tmpdir(), 'ferry-docker-config-'));
});
after(() => {
  rmSync(root, { recursive: true, force: true });
});

/** A fresh directory under the test root. */
function dir(): string {
  const d = join(root, `d${++n}`);
  mkdirSync(d, { recursive: true });
  return d;
}

/** Write a config.json (object or raw text) in a fresh directory; returns its path. */
function writeConfig(content: unknown): string {
  const p = join(dir(), 'config.json');
  writeFileSync(p, typeof content === 'string' ? content : JSON.stringify(content, null, 2));
  return p;
}

/** Make `docker-credential-<name>` as a shell script in a fresh directory; returns an env with it first on PATH. */
function helperEnv(scripts: Record<string, string>): NodeJS.ProcessEnv {
  const bin = dir();
  for (const [name, body] of Object.entries(scripts)) {
    const p = join(bin, `docker-credential-${name}`);
    writeFileSync(p, `#!/bin/sh\n${body}\n`);
    chmodSync(p, 0o755);
  }
  return { ...process.env, PATH: `${bin}${delimiter}${process.env.PATH ?? ''}` };
}

/** An env whose PATH has no helpers at all (but the system tools). */
function envWithoutHelpers(): NodeJS.ProcessEnv {
  return { ...process.env, PATH: dir() };
}

async function rejectsWith(p: Promise<unknown>, code: string, ...parts: string[]): Promise<FerryError> {
  let caught: unknown;
  await assert.rejects(p, (e: unknown) => {
    caught = e;
    return true;
  });
  assert.ok(caught instanceof FerryError, `expected FerryError, got ${String(caught)}`);
  assert.equal(caught.code, code, caught.message);
  for (const part of parts) assert.ok(caught.message.includes(part), `message ${JSON.stringify(caught.message)} should include ${JSON.stringify(part)}`);
  return caught;
}

describe('normalizeRegistryKey', () => {
  const table: Array<[string, string]> = [
    ['https://index.docker.io/v1/', 'docker.io'],
    ['http://index.docker.io/v1/', 'docker.io'],
    ['index.docker.io', 'docker.io'],
    ['docker.io', 'docker.io'],
    ['registry-1.docker.io', 'docker.io'],
    ['https://registry-1.docker.io/v2/', 'docker.io'],
    ['https://Registry.Example.com/v2/', 'registry.example.com'],
    ['http://localhost:5000', 'localhost:5000'],
    ['localhost:5000', 'localhost:5000'],
    ['ghcr.io', 'ghcr.io'],
    ['ghcr.io/org/repo', 'ghcr.io'],
    ['[::1]:5000', '[::1]:5000'],
    ['  quay.io  ', 'quay.io'],
  ];
  for (const [key, want] of table) it(`${key} -> ${want}`, () => assert.equal(normalizeRegistryKey(key), want));
});

describe('dockerConfigPath', () => {
  it('prefers the explicit file, then $DOCKER_CONFIG, then ~/.docker', () => {
    assert.deepEqual(dockerConfigPath({ authFile: '/x/auth.json', env: { DOCKER_CONFIG: '/dc' } }), { path: '/x/auth.json', explicit: true });
    assert.deepEqual(dockerConfigPath({ env: { DOCKER_CONFIG: '/dc', HOME: '/h' } }), { path: join('/dc', 'config.json'), explicit: false });
    assert.deepEqual(dockerConfigPath({ env: { DOCKER_CONFIG: '', HOME: '/h' } }), { path: join('/h', '.docker', 'config.json'), explicit: false });
    assert.deepEqual(dockerConfigPath({ env: {}, homeDir: '/home/u' }), { path: join('/home/u', '.docker', 'config.json'), explicit: false });
  });
});

describe('DockerConfigCredentials: auths', () => {
  it('reads auth (base64 user:pass) keyed by the Hub URL, for every Hub alias in the request', async () => {
    const path = writeConfig({ auths: { 'https://index.docker.io/v1/': { auth: b64('hubuser:hub-pass:with:colons') } } });
    const p = new DockerConfigCredentials({ side: 'source', authFile: path });
    const want: Credential = { kind: 'basic', username: 'hubuser', password: 'hub-pass:with:colons' };
    assert.deepEqual(await p.resolve({ registry: 'docker.io' }), want);
    assert.deepEqual(await p.resolve({ registry: 'index.docker.io' }), want);
    assert.deepEqual(await p.resolve({ registry: 'registry-1.docker.io' }), want);
    assert.equal(await p.resolve({ registry: 'ghcr.io' }), undefined);
    assert.ok(p.description.includes(path));
  });

  for (const key of ['index.docker.io', 'docker.io', 'registry-1.docker.io', 'https://index.docker.io/v1/']) {
    it(`treats "${key}" as Docker Hub`, async () => {
      const path = writeConfig({ auths: { [key]: { username: 'u1', password: 'p-hub-alias' } } });
      const c = await new DockerConfigCredentials({ side: 'source', authFile: path }).resolve({ registry: 'docker.io' });
      assert.deepEqual(c, { kind: 'basic', username: 'u1', password: 'p-hub-alias' });
    });
  }

  it('strips scheme and path from other keys', async () => {
    const path = writeConfig({
      auths: {
        'https://registry.example.com/v2/': { auth: b64('alice:alice-secret') },
        'http://localhost:5000': { username: 'bob', password: 'bob-secret' },
        '[::1]:5001': { username: 'carol', password: 'carol-secret' },
      },
    });
    const p = new DockerConfigCredentials({ side: 'source', authFile: path });
    assert.deepEqual(await p.resolve({ registry: 'registry.example.com' }), { kind: 'basic', username: 'alice', password: 'alice-secret' });
    assert.deepEqual(await p.resolve({ registry: 'localhost:5000' }), { kind: 'basic', username: 'bob', password: 'bob-secret' });
    assert.deepEqual(await p.resolve({ registry: '[::1]:5001' }), { kind: 'basic', username: 'carol', password: 'carol-secret' });
    assert.equal(await p.resolve({ registry: 'localhost:5001' }), undefined);
  });

  it('auth wins over username/password in the same entry, as in docker', async () => {
    const path = writeConfig({ auths: { 'r.example': { auth: b64('fromauth:auth-pass-1'), username: 'x', password: 'field-pass-1' } } });
    assert.deepEqual(await new DockerConfigCredentials({ side: 'source', authFile: path }).resolve({ registry: 'r.example' }), {
      kind: 'basic',
      username: 'fromauth',
      password: 'auth-pass-1',
    });
  });

  it('identitytoken becomes an identity-token credential; registrytoken a bearer one', async () => {
    const path = writeConfig({
      auths: {
        'id.example': { auth: b64('u:ignored-pass'), identitytoken: 'refresh-token-abc' },
        'bearer.example': { registrytoken: 'bearer-token-xyz' },
      },
    });
    const p = new DockerConfigCredentials({ side: 'source', authFile: path });
    assert.deepEqual(await p.resolve({ registry: 'id.example' }), { kind: 'identity-token', token: 'refresh-token-abc' });
    assert.deepEqual(await p.resolve({ registry: 'bearer.example' }), { kind: 'bearer', token: 'bearer-token-xyz' });
  });

  it('skips empty entries and prefers the key docker login writes over aliases', async () => {
    const path = writeConfig({
      auths: {
        'docker.io': { username: 'alias', password: 'alias-pass' },
        'https://index.docker.io/v1/': { username: 'canonical', password: 'canonical-pass' },
        'empty.example': {},
        'null.example': null,
        'https://both.example': {},
        'both.example': { username: 'second', password: 'second-pass' },
      },
    });
    const p = new DockerConfigCredentials({ side: 'source', authFile: path });
    assert.deepEqual(await p.resolve({ registry: 'docker.io' }), { kind: 'basic', username: 'canonical', password: 'canonical-pass' });
    assert.equal(await p.resolve({ registry: 'empty.example' }), undefined);
    assert.equal(await p.resolve({ registry: 'null.example' }), undefined);
    assert.deepEqual(await p.resolve({ registry: 'both.example' }), { kind: 'basic', username: 'second', password: 'second-pass' });
  });

  it('registers every password and its base64 user:pass form', async () => {
    const path = writeConfig({
      auths: {
        'a.example': { auth: b64('ann:ann-password-1') },
        'b.example': { username: 'ben', password: 'ben-password-2' },
        'c.example': { identitytoken: 'identity-token-3' },
      },
    });
    await new DockerConfigCredentials({ side: 'source', authFile: path }).load();
    const line = `x ann-password-1 ${b64('ann:ann-password-1')} ben-password-2 ${b64('ben:ben-password-2')} identity-token-3 y`;
    assert.equal(scrubSecrets(line), 'x [REDACTED] [REDACTED] [REDACTED] [REDACTED] [REDACTED] y');
  });

  it('caches the parsed file; a refresh re-reads it', async () => {
    const path = writeConfig({ auths: { 'r.example': { username: 'u', password: 'first-pass' } } });
    const p = new DockerConfigCredentials({ side: 'source', authFile: path });
    assert.deepEqual(await p.resolve({ registry: 'r.example' }), { kind: 'basic', username: 'u', password: 'first-pass' });
    writeFileSync(path, JSON.stringify({ auths: { 'r.example': { username: 'u', password: 'second-pass' } } }));
    assert.deepEqual(await p.resolve({ registry: 'r.example' }), { kind: 'basic', username: 'u', password: 'first-pass' });
    assert.deepEqual(await p.resolve({ registry: 'r.example', refresh: true }), { kind: 'basic', username: 'u', password: 'second-pass' });
    assert.equal(await p.load(), await p.load());
  });
});

describe('DockerConfigCredentials: which file', () => {
  it('a missing default file means no credentials', async () => {
    const p = new DockerConfigCredentials({ side: 'source', env: { DOCKER_CONFIG: join(dir(), 'nowhere') } });
    assert.equal(await p.resolve({ registry: 'docker.io' }), undefined);
    const q = new DockerConfigCredentials({ side: 'source', env: {}, homeDir: dir() });
    assert.equal(await q.resolve({ registry: 'docker.io' }), undefined);
  });

  it('reads $DOCKER_CONFIG/config.json, else ~/.docker/config.json', async () => {
    const dc = writeConfig({ auths: { 'r.example': { username: 'from-dc', password: 'dc-password' } } });
    const home = dir();
    mkdirSync(join(home, '.docker'));
    writeFileSync(join(home, '.docker', 'config.json'), JSON.stringify({ auths: { 'r.example': { username: 'from-home', password: 'home-password' } } }));
    const viaEnv = new DockerConfigCredentials({ side: 'source', env: { DOCKER_CONFIG: join(dc, '..'), HOME: home } });
    assert.equal(viaEnv.path, dc);
    assert.deepEqual(await viaEnv.resolve({ registry: 'r.example' }), { kind: 'basic', username: 'from-dc', password: 'dc-password' });
    const viaHome = new DockerConfigCredentials({ side: 'source', env: { HOME: home } });
    assert.deepEqual(await viaHome.resolve({ registry: 'r.example' }), { kind: 'basic', username: 'from-home', password: 'home-password' });
  });

  it('an explicit file that is missing is a UsageError naming it', async () => {
    const missing = join(dir(), 'auth.json');
    const e = await rejectsWith(new DockerConfigCredentials({ side: 'source', authFile: missing }).resolve({ registry: 'docker.io' }), 'USAGE', missing, '--authfile', 'does not exist');
    assert.ok(e instanceof UsageError);
  });

  it('a directory given as the file is a UsageError naming it', async () => {
    const d = dir();
    await rejectsWith(new DockerConfigCredentials({ side: 'source', authFile: d }).resolve({ registry: 'docker.io' }), 'USAGE', d);
  });

  const malformed: Array<[string, string, string]> = [
    ['not JSON', '{"auths": {"r.example": {"auth": "c2VjcmV0LWluLWJyb2tlbi1maWxl", oops}}}', 'not valid JSON'],
    ['empty', '', 'not valid JSON'],
    ['a JSON array', '[]', 'not a JSON object'],
    ['auths not an object', '{"auths": []}', '"auths" is not an object'],
    ['entry not an object', '{"auths": {"r.example": "x"}}', 'auths["r.example"] is not an object'],
    ['auth not base64', '{"auths": {"r.example": {"auth": "!!!not base64!!!"}}}', 'auths["r.example"].auth is not base64'],
    ['auth without a colon', JSON.stringify({ auths: { 'r.example': { auth: b64('nocolonhere') } } }), 'does not decode to "username:password"'],
    ['password not a string', '{"auths": {"r.example": {"username": "u", "password": 123}}}', 'auths["r.example"].password is not a string'],
    ['credHelpers not an object', '{"credHelpers": "ecr-login"}', '"credHelpers" is not an object'],
    ['credHelpers value not a string', '{"credHelpers": {"r.example": 1}}', 'credHelpers["r.example"] is not a string'],
    ['credsStore not a string', '{"credsStore": true}', '"credsStore" is not a string'],
    ['credsStore with a path in it', '{"credsStore": "../../bin/sh"}', 'invalid helper "../../bin/sh"'],
    ['credHelpers with a space', '{"credHelpers": {"r.example": "a b"}}', 'invalid helper "a b"'],
  ];
  for (const [name, text, part] of malformed) {
    it(`a malformed explicit file (${name}) is a UsageError naming it`, async () => {
      const path = writeConfig(text);
      await rejectsWith(new DockerConfigCredentials({ side: 'source', authFile: path }).resolve({ registry: 'r.example' }), 'USAGE', path, part);
    });
  }

  it('a malformed default file is a UsageError too, and a JSON error never quotes the file', async () => {
    const path = writeConfig('{"auths": {"r.example": {"password": "hunter2-in-a-broken-file" oops}}}');
    const e = await rejectsWith(
      new DockerConfigCredentials({ side: 'source', env: { DOCKER_CONFIG: join(path, '..') } }).resolve({ registry: 'r.example' }),
      'USAGE',
      path,
      'not valid JSON',
    );
    assert.ok(!e.message.includes('hunter2'), e.message);
  });

  it('parseDockerConfig accepts an empty object, null sections and a BOM', () => {
    const c = parseDockerConfig('\ufeff{"auths": null, "credHelpers": {}, "credsStore": "", "HttpHeaders": {"User-Agent": "x"}}', '/f');
    assert.equal(c.auths.size, 0);
    assert.equal(c.credHelpers.size, 0);
    assert.equal(c.credsStore, undefined);
  });
});

// A helper that logs each call (args and stdin) and answers by server URL, like docker-credential-helpers.
function protocolHelper(log: string): string {
  return `
printf '%s|%s\\n' "$*" "$(cat)" >> '${log}'
url=$(tail -n 1 '${log}' | cut -d'|' -f2-)
case "$url" in
  https://index.docker.io/v1/) printf '{"ServerURL":"%s","Username":"hubuser","Secret":"hub-helper-secret"}' "$url" ;;
  localhost:5000) printf '{"ServerURL":"%s","Username":"<token>","Secret":"helper-identity-token"}\\n' "$url" ;;
  https://custom.example) printf '{"ServerURL":"%s","Username":"custom","Secret":"custom-helper-secret"}' "$url" ;;
  empty.example) printf '{"ServerURL":"%s","Username":"","Secret":""}' "$url" ;;
  *) echo "credentials not found in native keychain"; exit 1 ;;
esac`;
}

describe('DockerConfigCredentials: credential helpers', () => {
  it('credsStore: runs docker-credential-<name> get with the server URL on stdin', async () => {
    const log = join(dir(), 'calls.log');
    const env = helperEnv({ test: protocolHelper(log) });
    const path = writeConfig({ credsStore: 'test', auths: { 'https://custom.example': {} } });
    const p = new DockerConfigCredentials({ side: 'source', authFile: path, env });
    assert.deepEqual(await p.resolve({ registry: 'docker.io' }), { kind: 'basic', username: 'hubuser', password: 'hub-helper-secret' });
    assert.deepEqual(await p.resolve({ registry: 'localhost:5000' }), { kind: 'identity-token', token: 'helper-identity-token' });
    // The server URL is the key docker login wrote in auths, when there is one.
    assert.deepEqual(await p.resolve({ registry: 'custom.example' }), { kind: 'basic', username: 'custom', password: 'custom-helper-secret' });
    // "credentials not found" and an empty secret both mean no credentials.
    assert.equal(await p.resolve({ registry: 'unknown.example' }), undefined);
    assert.equal(await p.resolve({ registry: 'empty.example' }), undefined);
    const calls = readFileSync(log, 'utf8').trim().split('\n');
    assert.deepEqual(calls, ['get|https://index.docker.io/v1/', 'get|localhost:5000', 'get|https://custom.example', 'get|unknown.example', 'get|empty.example']);
    assert.equal(scrubSecrets('hub-helper-secret helper-identity-token'), '[REDACTED] [REDACTED]');
    assert.equal(scrubSecrets(b64('hubuser:hub-helper-secret')), '[REDACTED]');
  });

  it('caches helper answers until a refresh', async () => {
    const log = join(dir(), 'calls.log');
    const env = helperEnv({ test: protocolHelper(log) });
    const p = new DockerConfigCredentials({ side: 'source', authFile: writeConfig({ credsStore: 'test' }), env });
    await p.resolve({ registry: 'docker.io' });
    await p.resolve({ registry: 'docker.io' });
    assert.equal(readFileSync(log, 'utf8').trim().split('\n').length, 1);
    await p.resolve({ registry: 'docker.io', refresh: true });
    assert.equal(readFileSync(log, 'utf8').trim().split('\n').length, 2);
  });

  it('credHelpers per host win over auths and credsStore, and their "not found" is final', async () => {
    const log = join(dir(), 'calls.log');
    const env = helperEnv({
      test: protocolHelper(log),
      other: `cat >/dev/null; printf '{"Username":"other-user","Secret":"other-helper-secret"}'`,
    });
    const path = writeConfig({
      credsStore: 'other',
      credHelpers: { 'localhost:5000': 'test', 'https://nothing.example': 'test' },
      auths: { 'localhost:5000': { username: 'inline', password: 'inline-password' }, 'inline.example': { username: 'inl', password: 'inline-pass-2' } },
    });
    const p = new DockerConfigCredentials({ side: 'source', authFile: path, env });
    assert.deepEqual(await p.resolve({ registry: 'localhost:5000' }), { kind: 'identity-token', token: 'helper-identity-token' });
    assert.equal(await p.resolve({ registry: 'nothing.example' }), undefined);
    // inline auths come before the default store
    assert.deepEqual(await p.resolve({ registry: 'inline.example' }), { kind: 'basic', username: 'inl', password: 'inline-pass-2' });
    // and the default store answers for everything else
    assert.deepEqual(await p.resolve({ registry: 'ghcr.io' }), { kind: 'basic', username: 'other-user', password: 'other-helper-secret' });
  });

  it('a helper that is not on PATH is a USAGE error saying which program and how to fix it', async () => {
    const path = writeConfig({ credsStore: 'nosuchhelper' });
    const p = new DockerConfigCredentials({ side: 'source', authFile: path, env: envWithoutHelpers() });
    await rejectsWith(p.resolve({ registry: 'docker.io' }), 'USAGE', 'docker-credential-nosuchhelper', 'not on PATH', 'install', path, 'credsStore');
  });

  it('a helper that fails is the AUTH error of the side it answers for, quoting what it said (never INTERNAL)', async () => {
    const env = helperEnv({ test: `cat >/dev/null; echo "keychain is locked" >&2; exit 2` });
    const path = writeConfig({ credHelpers: { 'r.example': 'test' } });
    const s = await rejectsWith(
      new DockerConfigCredentials({ side: 'source', authFile: path, env }).resolve({ registry: 'r.example' }),
      'SOURCE_AUTH',
      'docker-credential-test',
      'exited with status 2',
      'keychain is locked',
      'credHelpers["r.example"]',
    );
    assert.equal(s.side, 'source');
    const d = await rejectsWith(new DockerConfigCredentials({ side: 'destination', authFile: path, env }).resolve({ registry: 'r.example' }), 'DESTINATION_AUTH', 'keychain is locked');
    assert.equal(d.side, 'destination');
  });

  it('a failed helper answer is not cached', async () => {
    const flag = join(dir(), 'ok');
    const env = helperEnv({ test: `cat >/dev/null; if [ -f '${flag}' ]; then printf '{"Username":"u","Secret":"later-secret-1"}'; else echo boom; exit 1; fi` });
    const p = new DockerConfigCredentials({ side: 'source', authFile: writeConfig({ credsStore: 'test' }), env });
    await rejectsWith(p.resolve({ registry: 'r.example' }), 'SOURCE_AUTH', 'boom');
    writeFileSync(flag, '');
    assert.deepEqual(await p.resolve({ registry: 'r.example' }), { kind: 'basic', username: 'u', password: 'later-secret-1' });
  });

  it('huge output is cut off at 64 KiB', async () => {
    const env = helperEnv({ test: `cat >/dev/null; yes aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa | head -c 1000000` });
    await rejectsWith(
      new DockerConfigCredentials({ side: 'source', authFile: writeConfig({ credsStore: 'test' }), env }).resolve({ registry: 'r.example' }),
      'SOURCE_AUTH',
      'more than 65536 bytes',
    );
  });

  it('output just under 64 KiB is fine', async () => {
    // Padded with a long ServerURL: the secret itself stays an ordinary size.
    const pad = `https://${'x'.repeat(65_000)}`;
    const env = helperEnv({ test: `cat >/dev/null; printf '{"ServerURL":"%s","Username":"big","Secret":"big-output-secret"}' '${pad}'` });
    const c = await new DockerConfigCredentials({ side: 'source', authFile: writeConfig({ credsStore: 'test' }), env }).resolve({ registry: 'r.example' });
    assert.deepEqual(c, { kind: 'basic', username: 'big', password: 'big-output-secret' });
  });

  it('a helper that hangs is stopped after the timeout', async () => {
    const env = helperEnv({ test: `exec sleep 30` });
    const started = Date.now();
    await rejectsWith(
      new DockerConfigCredentials({ side: 'source', authFile: writeConfig({ credsStore: 'test' }), env, helperTimeoutMs: 300 }).resolve({ registry: 'r.example' }),
      'SOURCE_AUTH',
      'did not answer',
      'within 0.3 s',
    );
    assert.ok(Date.now() - started < 5000);
  });

  it('output that is not JSON is an error that does not quote the output', async () => {
    const env = helperEnv({ test: `cat >/dev/null; echo 'Username=u Secret=leaky-secret-value'` });
    const e = await rejectsWith(runCredentialHelper('test', 'r.example', { env, side: 'source' }), 'SOURCE_AUTH', 'not JSON');
    assert.ok(!e.message.includes('leaky-secret-value'));
  });

  it('JSON of the wrong shape is an error', async () => {
    const env = helperEnv({ test: `cat >/dev/null; echo '{"Username":"u","Secret":42}'` });
    await rejectsWith(runCredentialHelper('test', 'r.example', { env, side: 'source' }), 'SOURCE_AUTH', '"Secret"');
    const env2 = helperEnv({ test: `cat >/dev/null; echo '["u","s"]'` });
    await rejectsWith(runCredentialHelper('test', 'r.example', { env: env2, side: 'source' }), 'SOURCE_AUTH', '"Secret"');
  });

  it('a helper that exits without reading stdin still works', async () => {
    const env = helperEnv({ test: `printf '{"Username":"quick","Secret":"quick-secret-1"}'` });
    assert.deepEqual(await runCredentialHelper('test', 'r.example', { env, side: 'source' }), { kind: 'basic', username: 'quick', password: 'quick-secret-1' });
  });
});

describe('parseCredsFlag', () => {
  it('splits user:pass at the first colon', () => {
    assert.deepEqual(parseCredsFlag('alice:s3cr:et:x', '--src-creds'), { kind: 'basic', username: 'alice', password: 's3cr:et:x' });
    assert.deepEqual(parseCredsFlag('bob:pa ss word', '--dst-creds'), { kind: 'basic', username: 'bob', password: 'pa ss word' });
  });

  it('reads env:NAME from the environment', () => {
    const env = { FERRY_SRC: 'carol:env-pass:1' };
    assert.deepEqual(parseCredsFlag('env:FERRY_SRC', '--src-creds', env), { kind: 'basic', username: 'carol', password: 'env-pass:1' });
  });

  it('reads process.env by default', () => {
    process.env.FERRY_TEST_CREDS_DEFAULT = 'dave:process-env-pass';
    try {
      assert.deepEqual(parseCredsFlag('env:FERRY_TEST_CREDS_DEFAULT', '--dst-creds'), { kind: 'basic', username: 'dave', password: 'process-env-pass' });
    } finally {
      delete process.env.FERRY_TEST_CREDS_DEFAULT;
    }
  });

  it('registers the password and the base64 form', () => {
    parseCredsFlag('erin:erin-flag-password', '--src-creds', {});
    parseCredsFlag('env:X', '--src-creds', { X: 'fred:fred-env-password' });
    assert.equal(
      scrubSecrets(`erin-flag-password ${b64('erin:erin-flag-password')} fred-env-password ${b64('fred:fred-env-password')}`),
      '[REDACTED] [REDACTED] [REDACTED] [REDACTED]',
    );
  });

  const bad: Array<[string, string, NodeJS.ProcessEnv, string[]]> = [
    ['no colon', 'just-a-password-1', {}, ['--src-creds', "has no ':'"]],
    ['empty user', ':pw-empty-user-1', {}, ['--src-creds', 'empty user name']],
    ['empty password', 'user:', {}, ['--src-creds', 'empty password']],
    ['empty value', '', {}, ['--src-creds']],
    ['unset variable', 'env:FERRY_NOPE', {}, ['--src-creds', 'FERRY_NOPE', 'not set']],
    ['empty variable', 'env:FERRY_EMPTY', { FERRY_EMPTY: '' }, ['--src-creds', 'FERRY_EMPTY', 'empty']],
    ['variable without colon', 'env:FERRY_NC', { FERRY_NC: 'env-pass-no-colon' }, ['--src-creds', 'FERRY_NC', "no ':'"]],
    ['variable with empty password', 'env:FERRY_EP', { FERRY_EP: 'user:' }, ['--src-creds', 'FERRY_EP', 'empty password']],
    ['variable with empty user', 'env:FERRY_EU', { FERRY_EU: ':env-pass-no-user' }, ['--src-creds', 'FERRY_EU', 'empty user']],
    ['bad variable name', 'env:1BAD-NAME', {}, ['--src-creds', '1BAD-NAME']],
    ['empty variable name', 'env:', {}, ['--src-creds', 'env:']],
  ];
  for (const [name, value, env, parts] of bad) {
    it(`rejects ${name} with a UsageError naming the flag, never the password`, () => {
      assert.throws(
        () => parseCredsFlag(value, '--src-creds', env),
        (e: unknown) => {
          assert.ok(e instanceof UsageError);
          for (const p of parts) assert.ok(e.message.includes(p), `message ${JSON.stringify(e.message)} should include ${JSON.stringify(p)}`);
          for (const secret of ['just-a-password-1', 'pw-empty-user-1', 'env-pass-no-colon', 'env-pass-no-user']) {
            assert.ok(!e.message.includes(secret), `message ${JSON.stringify(e.message)} leaks a secret`);
          }
          return true;
        },
      );
    });
  }
});
