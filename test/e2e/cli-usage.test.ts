// The command line's small manners, as an operator meets them: --version, a bad number, a
// digest reference in messages, unknown flags, and the credential hint naming the command's
// own flag.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { startDistribution, type DistributionRegistry } from '../harness/distribution.ts';
import { clientFor } from '../harness/oci-client.ts';
import { pushImage } from '../harness/fixtures.ts';
import { formatTarget } from '../../src/reference/reference.ts';
import { linesWithDuplicateKeys } from '../harness/log-lines.ts';
import { runFerry, tempStateHome } from './ferry-cli.ts';

const ZERO_DIGEST = `sha256:${'0'.repeat(64)}`;

describe('ferry\'s command line', () => {
  test('ferry --version answers like ferry version, also with --json', async () => {
    const [flag, command, flagJson, commandJson] = await Promise.all([
      runFerry(['--version']),
      runFerry(['version']),
      runFerry(['--version', '--json']),
      runFerry(['version', '--json']),
    ]);
    assert.equal(flag.code, 0, flag.stderr);
    assert.match(flag.stdout, /^ferry \d+\.\d+\.\d+ \(commit \S+, node v\d+/);
    assert.equal(flag.stdout, command.stdout);
    assert.equal(flagJson.code, 0, flagJson.stderr);
    assert.deepEqual(flagJson.json, commandJson.json);
  });

  test('a number flag given text says what was given, not "NaN"', async () => {
    const r = await runFerry(['copy', '--json', '--concurrency', 'abc', 'a.example/x:1', 'b.example/x:1']);
    assert.equal(r.code, 2);
    assert.equal(r.json.error.code, 'USAGE');
    assert.equal(r.json.error.message, '--concurrency must be a whole number from 1 to 256, not "abc"');
    assert.doesNotMatch(r.stderr, /NaN/);
    const half = await runFerry(['copy', '--json', '--concurrency', '2.5', 'a.example/x:1', 'b.example/x:1']);
    assert.equal(half.json.error.message, '--concurrency must be a whole number from 1 to 256, not 2.5');
    const twice = await runFerry(['copy', '--json', '--concurrency', '2', '--concurrency', '3', 'a.example/x:1', 'b.example/x:1']);
    assert.equal(twice.json.error.message, '--concurrency was given 2 times; give it once');
    // The agent's number settings too.
    const agent = await runFerry(['agent', '--max-jobs', 'abc', '--control-plane-url', 'https://cp.example', '--runner-id', 'r-1', '--token-file', '/dev/null', '--local-registry', 'localhost:5000']);
    assert.equal(agent.code, 2);
    assert.match(agent.stderr, /--max-jobs: must be an integer from 1 to 64, got "abc"/);
    assert.doesNotMatch(agent.stderr, /NaN|got null/);
  });

  test('"Unknown arguments" names each unknown flag once, as it was typed', async () => {
    const r = await runFerry(['copy', '--dst-cred', 'x', '--src-thing=1', '--fooBar=2', 'a.example/x:1', 'b.example/x:1']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /^ferry: USAGE: Unknown arguments: dst-cred, src-thing, fooBar$/m);
    const one = await runFerry(['inspect', '--src-creds', 'a:b', 'a.example/x:1']);
    assert.match(one.stderr, /^ferry: USAGE: Unknown argument: src-creds$/m);
    // Kebab-case flags still work (negated booleans included): it gets as far as the network.
    const ok = await runFerry(['copy', '--json', '--no-create-repository', '--dry-run', '--log-level', 'silent', '127.0.0.1:1/x:1', '127.0.0.1:1/y:1']);
    assert.equal(ok.json.error.code, 'REGISTRY_UNAVAILABLE', ok.stderr);
  });

  test('formatTarget writes a tag after ":" and a digest after "@"', () => {
    assert.equal(formatTarget('reg.example/app', 'v1'), 'reg.example/app:v1');
    assert.equal(formatTarget('reg.example/app', ZERO_DIGEST), `reg.example/app@${ZERO_DIGEST}`);
    assert.equal(formatTarget('127.0.0.1:5000/app', 'v1'), '127.0.0.1:5000/app:v1');
  });
});

describe('messages against a registry', () => {
  let plain: DistributionRegistry;
  let basic: DistributionRegistry;
  before(async () => {
    [plain, basic] = await Promise.all([startDistribution(), startDistribution({ auth: 'htpasswd', users: { alice: 's3cret-Alice!' } })]);
    await pushImage(clientFor(plain), 'team/app', 'v1');
    await pushImage(clientFor(basic, { username: 'alice', password: 's3cret-Alice!' }), 'team/app', 'v1');
  });
  after(async () => {
    await Promise.all([plain?.stop(), basic?.stop()]);
  });

  test('a digest reference prints as name@sha256:…, in inspect and copy messages', async () => {
    const env = { XDG_STATE_HOME: tempStateHome() };
    const inspect = await runFerry(['inspect', '--json', `${plain.host}/team/app@${ZERO_DIGEST}`], { env });
    assert.equal(inspect.code, 1);
    assert.equal(inspect.json.error.code, 'SOURCE_NOT_FOUND');
    assert.equal(inspect.json.error.message, `${plain.host}/team/app@${ZERO_DIGEST} not found (check the repository and digest)`);
    const copy = await runFerry(['copy', '--json', `${plain.host}/team/app@${ZERO_DIGEST}`, `${plain.host}/team/copy:v1`], { env });
    assert.equal(copy.json.error.code, 'SOURCE_NOT_FOUND');
    assert.match(copy.json.error.message, new RegExp(`team/app@${ZERO_DIGEST} not found`));
    assert.doesNotMatch(copy.stderr, /team\/app:sha256:/);
    const tag = await runFerry(['inspect', '--json', `${plain.host}/team/app:nope`], { env });
    assert.equal(tag.json.error.message, `${plain.host}/team/app:nope not found (check the repository and tag)`);
  });

  test('a copy\'s log lines, at trace level, each name a key once', async () => {
    const r = await runFerry(['copy', '--log-level', 'trace', '--src-creds', 'alice:s3cret-Alice!', `${basic.host}/team/app:v1`, `${plain.host}/team/logged:v1`], {
      env: { XDG_STATE_HOME: tempStateHome() },
    });
    assert.equal(r.code, 0, r.stderr);
    assert.ok(r.stderr.split('\n').filter((l) => l.startsWith('{')).length >= 3, `few log lines at trace level:\n${r.stderr}`);
    assert.deepEqual(linesWithDuplicateKeys(r.stderr), []);
  });

  test('a registry that wants credentials: each command names its own flag', async () => {
    const env = { XDG_STATE_HOME: tempStateHome() };
    const inspect = await runFerry(['inspect', '--json', `${basic.host}/team/app:v1`], { env });
    assert.equal(inspect.code, 1);
    assert.equal(inspect.json.error.code, 'SOURCE_AUTH');
    assert.match(inspect.json.error.message, /\(check --creds or --authfile\)$/);
    assert.doesNotMatch(inspect.stderr, /--src-creds/);
    const copy = await runFerry(['copy', '--json', `${basic.host}/team/app:v1`, `${plain.host}/team/app2:v1`], { env });
    assert.equal(copy.json.error.code, 'SOURCE_AUTH');
    assert.match(copy.json.error.message, /\(check --src-creds or --authfile\)$/);
    const push = await runFerry(['copy', '--json', `${plain.host}/team/app:v1`, `${basic.host}/team/pushed:v1`], { env });
    assert.equal(push.json.error.code, 'DESTINATION_AUTH');
    assert.match(push.json.error.message, /\(check --dst-creds or --authfile\)$/);
  });
});
