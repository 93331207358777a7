// Agent configuration: flags over FERRY_* variables over the config file over defaults, and
// every mistake reported at start naming the setting the way the user wrote it.
import assert from 'node:assert/strict';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import yargs from 'yargs';
import { UsageError } from '../../src/errors.ts';
import { scrubSecrets } from '../../src/log/logger.ts';
import { AGENT_OPTIONS, loadAgentConfig, optionsMarkdown, parseHostPort, tokenSourceFor, yargsOptions, type LoadConfigInput } from '../../src/agent/config.ts';

let dir: string;
let tokenPath: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ferry-config-'));
  tokenPath = join(dir, 'token');
  await writeFile(tokenPath, 'file-runner-token-123456\n', { mode: 0o600 });
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

const BASE_ENV = {
  FERRY_CONTROL_PLANE_URL: 'https://cp.example.com',
  FERRY_RUNNER_ID: 'runner-1',
  FERRY_RUNNER_TOKEN: 'env-runner-token-123456',
  FERRY_LOCAL_REGISTRY: '123456789012.dkr.ecr.us-west-2.amazonaws.com/install_789',
};

function load(input: LoadConfigInput) {
  return loadAgentConfig({ cwd: dir, ...input, env: input.env ?? {} });
}

async function problem(input: LoadConfigInput, ...patterns: RegExp[]): Promise<string> {
  try {
    await load(input);
  } catch (e) {
    assert.ok(e instanceof UsageError, String(e));
    for (const p of patterns) assert.match(e.message, p);
    return e.message;
  }
  assert.fail('expected a UsageError');
}

async function configFile(name: string, content: unknown): Promise<string> {
  const p = join(dir, name);
  await writeFile(p, typeof content === 'string' ? content : JSON.stringify(content));
  return p;
}

describe('agent configuration', () => {
  it('transfer tuning from the same variables as ferry copy; bad values named', async () => {
    const d = await load({ env: BASE_ENV });
    assert.equal(d.transfer.upload.chunkBytes, 64 * 1024 * 1024);
    assert.equal(d.transfer.bodyTimeoutMs, undefined);
    const c = await load({ env: { ...BASE_ENV, FERRY_UPLOAD_CHUNK_BYTES: String(8 * 1024 * 1024), FERRY_READ_TIMEOUT_SECONDS: '2.5', FERRY_ECR_PART_BYTES: String(5 * 1024 * 1024) } });
    assert.equal(c.transfer.upload.chunkBytes, 8 * 1024 * 1024);
    assert.equal(c.transfer.upload.monolithicMaxBytes, 8 * 1024 * 1024);
    assert.equal(c.transfer.upload.ecrPartBytes, 5 * 1024 * 1024);
    assert.equal(c.transfer.bodyTimeoutMs, 2500);
    await problem({ env: { ...BASE_ENV, FERRY_UPLOAD_CHUNK_BYTES: 'lots' } }, /FERRY_UPLOAD_CHUNK_BYTES/, /1 MiB to 1 GiB/);
    await problem({ env: { ...BASE_ENV, FERRY_READ_TIMEOUT_SECONDS: '0' } }, /FERRY_READ_TIMEOUT_SECONDS/);
  });

  it('defaults', async () => {
    const c = await load({ env: BASE_ENV });
    assert.equal(c.controlPlaneUrl, 'https://cp.example.com/');
    assert.equal(c.runnerId, 'runner-1');
    assert.deepEqual(c.token, { kind: 'env' });
    assert.equal(c.stateDir, '/var/lib/ferry');
    assert.deepEqual(c.localRegistry, { host: '123456789012.dkr.ecr.us-west-2.amazonaws.com', prefix: 'install_789' });
    assert.equal(c.localRegistryCredential, undefined);
    assert.deepEqual(c.plainHttp, []);
    assert.equal(c.maxJobs, 2);
    assert.equal(c.concurrency, 24);
    assert.equal(c.registryConcurrency, undefined, 'unset: each registry by its protocol');
    assert.equal(c.healthAddr, undefined);
    assert.equal(c.logLevel, 'info');
    assert.equal(c.shutdownGraceS, 30);
    assert.equal(c.exitWhenIdle, false);
    assert.equal(c.insecureControlPlane, false);
    assert.equal(await tokenSourceFor(c, BASE_ENV).token(), 'env-runner-token-123456');
  });

  it('flags beat the environment, which beats the config file', async () => {
    const file = await configFile('prec.json', { 'max-jobs': 5, concurrency: 3, 'shutdown-grace': 12, 'log-level': 'debug', 'state-dir': 'state' });
    const c = await load({ env: { ...BASE_ENV, FERRY_CONFIG: file, FERRY_CONCURRENCY: '4', FERRY_LOG_LEVEL: 'warn' }, flags: { 'log-level': 'error' } });
    assert.equal(c.maxJobs, 5, 'file');
    assert.equal(c.concurrency, 4, 'env over file');
    assert.equal(c.registryConcurrency, 4, 'set: also the most towards one registry');
    assert.equal(c.logLevel, 'error', 'flag over env');
    assert.equal(c.shutdownGraceS, 12);
    assert.equal(c.stateDir, join(dir, 'state'), 'relative paths resolve against the working directory');
    assert.equal(c.configFile, file);
  });

  it('names the setting as written: flag, variable or config-file key', async () => {
    await problem({ env: BASE_ENV, flags: { 'max-jobs': 0 } }, /--max-jobs: must be an integer from 1 to 64, got 0/);
    await problem({ env: { ...BASE_ENV, FERRY_MAX_JOBS: 'two' } }, /FERRY_MAX_JOBS: must be an integer from 1 to 64, got "two"/);
    const file = await configFile('bad.json', { concurrency: 1000 });
    await problem({ env: BASE_ENV, flags: { config: file } }, new RegExp(`"concurrency" in ${file.replace(/[.]/g, '\\.')}: must be an integer from 1 to 256, got 1000`));
    await problem({ env: { ...BASE_ENV, FERRY_SHUTDOWN_GRACE: '-1' } }, /FERRY_SHUTDOWN_GRACE: must be a number from 0 to 3600/);
    await problem({ env: { ...BASE_ENV, FERRY_EXIT_WHEN_IDLE: 'maybe' } }, /FERRY_EXIT_WHEN_IDLE: must be true or false, got "maybe"/);
    await problem({ env: BASE_ENV, flags: { 'log-level': 'loud' } }, /--log-level: "loud" is not one of fatal, error/);
    await problem({ env: BASE_ENV, flags: { 'health-addr': 'localhost' } }, /--health-addr: "localhost" is not HOST:PORT or :PORT/);
    await problem({ env: BASE_ENV, flags: { 'runner-id': 'runner one' } }, /--runner-id: "runner one" is not a valid runner id/);
    await problem({ env: BASE_ENV, flags: { 'max-jobs': ['1', '2'] } }, /--max-jobs: given more than once/);
  });

  it('reports every problem at once, and the required settings by flag and variable', async () => {
    const msg = await problem({ env: { FERRY_MAX_JOBS: 'x' } }, /--control-plane-url \(FERRY_CONTROL_PLANE_URL\): required/, /--runner-id \(FERRY_RUNNER_ID\): required/, /--local-registry \(FERRY_LOCAL_REGISTRY\): required/, /no runner token: set --token-file \(FERRY_TOKEN_FILE\)/, /FERRY_MAX_JOBS/);
    assert.equal(msg.split('\n').length, 6);
  });

  it('control-plane URL: https, or http to loopback, or with --insecure-control-plane', async () => {
    await problem({ env: { ...BASE_ENV, FERRY_CONTROL_PLANE_URL: 'http://cp.example.com' } }, /FERRY_CONTROL_PLANE_URL: plain http is allowed only for loopback hosts; use https:\/\/ or set --insecure-control-plane/);
    const c = await load({ env: { ...BASE_ENV, FERRY_CONTROL_PLANE_URL: 'http://cp.example.com' }, flags: { 'insecure-control-plane': true } });
    assert.equal(c.insecureControlPlane, true);
    assert.equal((await load({ env: { ...BASE_ENV, FERRY_CONTROL_PLANE_URL: 'http://127.0.0.1:8080' } })).controlPlaneUrl, 'http://127.0.0.1:8080/');
    await problem({ env: { ...BASE_ENV, FERRY_CONTROL_PLANE_URL: 'https://u:p@cp.example.com' } }, /must not contain credentials/);
  });

  it('the runner token comes from a file or FERRY_RUNNER_TOKEN, never a flag or the config file', async () => {
    const c = await load({ env: BASE_ENV, flags: { 'token-file': tokenPath } });
    assert.deepEqual(c.token, { kind: 'file', path: tokenPath });
    assert.equal(await tokenSourceFor(c, BASE_ENV).token(), 'file-runner-token-123456', 'the file wins over the variable');
    assert.deepEqual(c.warnings, []);

    await problem({ env: BASE_ENV, flags: { token: 'abc' } }, /never taken from a flag value/);
    const withToken = await configFile('token.json', { token: 'abc' });
    await problem({ env: { ...BASE_ENV, FERRY_CONFIG: withToken } }, /"token" in .*never kept in the config file/);
    await problem({ env: BASE_ENV, flags: { 'token-file': join(dir, 'missing') } }, /--token-file: cannot read .*missing \(ENOENT\)/);
    const empty = join(dir, 'empty-token');
    await writeFile(empty, '\n');
    await problem({ env: BASE_ENV, flags: { 'token-file': empty } }, /--token-file .*empty-token: the runner token is empty/);
    await problem({ env: { ...BASE_ENV, FERRY_RUNNER_TOKEN: 'has space inside' } }, /FERRY_RUNNER_TOKEN: the runner token contains whitespace/);

    const open = join(dir, 'open-token');
    await writeFile(open, 'open-token-value-1234');
    await chmod(open, 0o644);
    assert.match((await load({ env: BASE_ENV, flags: { 'token-file': open } })).warnings.join(), /readable by every user/);
  });

  it('local registry and its credentials', async () => {
    const c = await load({ env: { ...BASE_ENV, FERRY_LOCAL_REGISTRY: 'Registry.Local:5000/team/apps/', FERRY_LOCAL_REGISTRY_CREDS: 'env:REG_AUTH', REG_AUTH: 'robot:s3cret-password' } });
    assert.deepEqual(c.localRegistry, { host: 'registry.local:5000', prefix: 'team/apps' });
    assert.deepEqual(c.localRegistryCredential, { credential: { kind: 'basic', username: 'robot', password: 's3cret-password' }, source: 'env:REG_AUTH' });
    assert.equal(scrubSecrets('pw=s3cret-password'), 'pw=[REDACTED]', 'the password is registered as a secret');
    assert.deepEqual((await load({ env: { ...BASE_ENV, FERRY_LOCAL_REGISTRY: 'localhost:5000' } })).localRegistry, { host: 'localhost:5000' });

    await problem({ env: { ...BASE_ENV, FERRY_LOCAL_REGISTRY: 'myregistry' } }, /FERRY_LOCAL_REGISTRY: "myregistry" is not a registry host/);
    await problem({ env: { ...BASE_ENV, FERRY_LOCAL_REGISTRY: 'https://registry.local' } }, /FERRY_LOCAL_REGISTRY: .*without a scheme/);
    await problem({ env: { ...BASE_ENV, FERRY_LOCAL_REGISTRY: 'registry.local/Team' } }, /FERRY_LOCAL_REGISTRY: .*lowercase/);
    await problem({ env: { ...BASE_ENV, FERRY_LOCAL_REGISTRY_CREDS: 'robot:pw' } }, /FERRY_LOCAL_REGISTRY_CREDS: must be env:NAME/);
    await problem({ env: { ...BASE_ENV, FERRY_LOCAL_REGISTRY_CREDS: 'env:NOPE' } }, /FERRY_LOCAL_REGISTRY_CREDS: the variable NOPE is not set/);
    await problem({ env: { ...BASE_ENV, FERRY_LOCAL_REGISTRY_CREDS: 'env:REG', REG: 'no-colon' } }, /the variable REG must hold USER:PASSWORD/);
  });

  it('lists, addresses and booleans', async () => {
    const c = await load({ env: { ...BASE_ENV, FERRY_PLAIN_HTTP: 'a.local:5000, B.local', FERRY_EXIT_WHEN_IDLE: 'yes', FERRY_HEALTH_ADDR: ':9464' } });
    assert.deepEqual(c.plainHttp, ['a.local:5000', 'b.local']);
    assert.equal(c.exitWhenIdle, true);
    assert.deepEqual(c.healthAddr, { host: '0.0.0.0', port: 9464 });
    assert.deepEqual((await load({ env: BASE_ENV, flags: { 'plain-http': ['x.local', 'y.local:1'] } })).plainHttp, ['x.local', 'y.local:1']);
    await problem({ env: { ...BASE_ENV, FERRY_PLAIN_HTTP: 'http://x' } }, /FERRY_PLAIN_HTTP: "http:\/\/x" is not a HOST\[:PORT\]/);
    assert.deepEqual(parseHostPort('[::1]:9000'), { host: '::1', port: 9000 });
    assert.deepEqual(parseHostPort('127.0.0.1:0'), { host: '127.0.0.1', port: 0 });
    assert.throws(() => parseHostPort('h:70000'), /out of range/);
  });

  it('config file: JSON object of flag names; unknown keys are refused with a hint', async () => {
    await problem({ env: BASE_ENV, flags: { config: await configFile('snake.json', { max_jobs: 3 }) } }, /unknown keys "max_jobs" \(keys are flag names, e.g. "max-jobs"\)/);
    await problem({ env: BASE_ENV, flags: { config: await configFile('array.json', [1]) } }, /must hold a JSON object/);
    await problem({ env: BASE_ENV, flags: { config: await configFile('broken.json', '{"max-jobs": ') } }, /--config: .*is not valid JSON/);
    await problem({ env: BASE_ENV, flags: { config: join(dir, 'absent.json') } }, /--config: cannot read .*absent\.json \(ENOENT\)/);
    const full = await configFile('full.json', {
      'control-plane-url': 'https://cp.vendor.example',
      'runner-id': 'r-9',
      'token-file': tokenPath,
      'local-registry': 'registry.local:5000',
      'plain-http': ['registry.local:5000'],
      'exit-when-idle': true,
    });
    const c = await load({ flags: { config: full } });
    assert.equal(c.runnerId, 'r-9');
    assert.deepEqual(c.plainHttp, ['registry.local:5000']);
    assert.equal(c.exitWhenIdle, true);
  });

  it('option definitions drive yargs and the docs from one source', async () => {
    const opts = yargsOptions();
    assert.deepEqual(Object.keys(opts).sort(), AGENT_OPTIONS.map((o) => o.flag).sort());
    for (const o of Object.values(opts)) assert.ok(!('default' in o), 'defaults are applied by loadAgentConfig, not yargs');
    assert.equal(opts['max-jobs']!.defaultDescription, '2');
    assert.match(opts['max-jobs']!.describe, /\[env: FERRY_MAX_JOBS\]/);

    const argv = await yargs(['--max-jobs', '4', '--plain-http', 'a.local', '--plain-http', 'b.local', '--exit-when-idle', '--runner-id', 'r-1'])
      .options(yargsOptions())
      .strict()
      .parse();
    const c = await load({ env: BASE_ENV, flags: argv as Record<string, unknown> });
    assert.equal(c.maxJobs, 4);
    assert.equal(c.concurrency, 24, 'a flag left unset does not hide the default chain');
    assert.equal(c.registryConcurrency, undefined);
    assert.deepEqual(c.plainHttp, ['a.local', 'b.local']);
    assert.equal(c.exitWhenIdle, true);
    assert.equal(c.runnerId, 'r-1');

    // An unset boolean flag must not come out of yargs as false and mask the environment.
    const bare = await yargs([]).options(yargsOptions()).parse();
    assert.equal((await load({ env: { ...BASE_ENV, FERRY_EXIT_WHEN_IDLE: 'true' }, flags: bare as Record<string, unknown> })).exitWhenIdle, true);

    const md = optionsMarkdown();
    for (const o of AGENT_OPTIONS) {
      assert.ok(md.includes(`\`--${o.flag}\``));
      assert.ok(md.includes(`\`${o.env}\``));
    }
    assert.match(md, /FERRY_RUNNER_TOKEN/);
  });
});
