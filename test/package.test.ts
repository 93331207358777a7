// The single executables (`npm run package`): built once here, into a temp dir, then run the
// way an operator would: `version`, every command's help, and a real `ferry copy` against a
// real registry, checked with an independent client. The arm64 binary runs under Debian's
// qemu-user (pkg.config.json "emulators"), with the arm64 C/C++ runtime from the *-arm64-cross
// packages (scripts/install-system-deps.sh installs both).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, closeSync, copyFileSync, existsSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startDistribution, type DistributionRegistry } from './harness/distribution.ts';
import { clientFor } from './harness/oci-client.ts';
import { pushImage, pushMultiArch } from './harness/fixtures.ts';
import { AwsStandin, TEST_ACCESS_KEY_ID, TEST_ACCOUNT, TEST_SECRET_ACCESS_KEY } from './harness/aws-standin.ts';
import { awsApiHosts, makeTestPki, S3_LAYER_HOST, startAwsApis, startConnectProxy, startEcrRegistry, startGarRegistry } from './harness/cloud-registry.ts';
import { GcpStandin } from './harness/gcp-standin.ts';
import { freshHome, isolatedEnv, proxyEnv } from './cloud/cloud-e2e.ts';

const ECR_PASSWORD = 'eyJwYXlsb2FkIjoiZmVycnktcGFja2FnZS1lY3IifQ';
const READER_ROLE = `arn:aws:iam::${TEST_ACCOUNT}:role/ferry-reader`;

const root = new URL('../', import.meta.url).pathname;
const config = JSON.parse(readFileSync(join(root, 'pkg.config.json'), 'utf8')) as {
  targets: Array<{ name: string; arch: string; output: string }>;
  emulators: Record<string, string[]>;
};
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string };
const nodeVersion = (JSON.parse(readFileSync(join(root, 'node_modules/node/package.json'), 'utf8')) as { version: string }).version;
const arm64Emulator = config.emulators.arm64!;

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a command to its end, without blocking the event loop (the registry's clients live in this process too). */
function run(argv: string[], env: NodeJS.ProcessEnv = {}, timeoutMs = 120_000): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(argv[0]!, argv.slice(1), {
      // NODE_OPTIONS would apply to the binary too (it is Node): keep the test runner's out.
      env: { ...process.env, NODE_OPTIONS: '', DOCKER_CONFIG: join(tmpdir(), 'ferry-no-docker-config'), ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, stdout, stderr });
    });
  });
}

function gitCommit(): string {
  const r = spawnSync('git', ['rev-parse', '--short=12', 'HEAD'], { cwd: root, encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : 'unknown';
}

describe('npm run package: single executables', () => {
  let out: string;
  let x64: string;
  let arm64: string;
  let reg: DistributionRegistry;
  /** HEAD when the build started and when it ended (a commit can land meanwhile). */
  const commits = new Set<string>();

  before(async () => {
    // A missing emulator is a failure that says what to install, not a skip.
    const onPath = (cmd: string) => (process.env.PATH ?? '').split(':').some((d) => d && existsSync(join(d, cmd)));
    assert.ok(onPath(arm64Emulator[0]!), `${arm64Emulator[0]} not found: install qemu-user (sudo bash scripts/install-system-deps.sh)`);
    const sysroot = arm64Emulator[arm64Emulator.indexOf('-L') + 1]!;
    assert.ok(existsSync(join(sysroot, 'lib/libstdc++.so.6')), `${sysroot} lacks the arm64 C/C++ runtime: install libc6-arm64-cross libgcc-s1-arm64-cross libstdc++6-arm64-cross (sudo bash scripts/install-system-deps.sh)`);

    out = mkdtempSync(join(tmpdir(), 'ferry-package-'));
    commits.add(gitCommit());
    const [built, registry] = await Promise.all([run([process.execPath, join(root, 'scripts/package.mjs'), '--out-dir', out], {}, 240_000), startDistribution()]);
    reg = registry;
    commits.add(gitCommit());
    assert.equal(built.code, 0, `npm run package failed:\n${built.stdout}\n${built.stderr}`);
    x64 = join(out, 'ferry');
    arm64 = join(out, 'ferry-linux-arm64');
    await pushMultiArch(clientFor(reg), 'pkg/app', 'v1');
  });

  after(async () => {
    await reg?.stop();
    if (out) rmSync(out, { recursive: true, force: true });
  });

  test('the binaries are what pkg.config.json names, one file each, with the pinned Node inside', async () => {
    assert.deepEqual(
      config.targets.map((t) => t.output),
      ['dist/ferry', 'dist/ferry-linux-arm64'],
    );
    for (const file of [x64, arm64]) {
      const st = statSync(file);
      assert.ok(st.isFile() && (st.mode & 0o111) !== 0, `${file} is an executable file`);
      assert.ok(st.size > 50 * 2 ** 20, `${file} holds a Node runtime (${st.size} bytes)`);
    }
    // ELF headers: x86-64 (62) and AArch64 (183) machines.
    const machine = (file: string) => {
      const header = Buffer.alloc(20);
      const fd = openSync(file, 'r');
      try {
        readSync(fd, header, 0, 20, 0);
      } finally {
        closeSync(fd);
      }
      return header.readUInt16LE(18);
    };
    assert.equal(machine(x64), 62);
    assert.equal(machine(arm64), 183);
  });

  test('dist/ferry version: version, git commit and Node', async () => {
    const r = await run([x64, 'version', '--json']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stderr, '');
    const info = JSON.parse(r.stdout);
    assert.deepEqual(info, { version: pkg.version, commit: info.commit, node: `v${nodeVersion}` });
    assert.ok(commits.has(info.commit), `commit ${info.commit} is HEAD (${[...commits].join(' or ')})`);
    const text = await run([x64, 'version']);
    assert.equal(text.stdout, `ferry ${pkg.version} (commit ${info.commit}, node v${nodeVersion})\n`);
  });

  test('the packaged file is not left in the page cache in a shape that inflates every run (peak RSS)', async () => {
    // Written in one piece (as postject writes), the file sits in the page cache as large folios
    // that each process maps whole: `version` peaked at 64-75 MiB against 42 for a copy of the
    // same bytes. The build copies its result out of a scratch file, as an installer would.
    const maxRssKiB = async (binary: string) => {
      const r = await run(['/usr/bin/time', '-f', 'maxrss=%M', binary, 'version']);
      assert.equal(r.code, 0, r.stderr);
      return Number(/maxrss=(\d+)/.exec(r.stderr)?.[1]);
    };
    const copy = join(out, 'ferry-copied');
    copyFileSync(x64, copy);
    chmodSync(copy, 0o755);
    try {
      const [packaged, copied] = [await maxRssKiB(x64), await maxRssKiB(copy)];
      assert.ok(packaged > 0 && copied > 0);
      assert.ok(packaged <= copied + 8 * 1024, `dist/ferry version peaked at ${packaged} KiB, a plain copy of it at ${copied} KiB`);
    } finally {
      rmSync(copy, { force: true });
    }
  });

  test('dist/ferry runs every command of the bundle, with its code cache accepted', async () => {
    const help = await run([x64, '--help']);
    assert.equal(help.code, 0, help.stderr);
    // A rejected code cache would say so here (src/sea/main.ts).
    assert.equal(help.stderr, '');
    const commandsOf = (text: string) => [...text.matchAll(/^ {2}ferry (\w+)/gm)].map((m) => m[1]!);
    const commands = commandsOf(help.stdout);
    // Every command of the sources, the agent among them: a help text the parse misses fails here.
    const fromSource = await run([process.execPath, join(root, 'src/main.ts'), '--help']);
    assert.equal(fromSource.code, 0, fromSource.stderr);
    assert.deepEqual(commands, commandsOf(fromSource.stdout), help.stdout);
    for (const c of ['copy', 'inspect', 'sync', 'agent', 'version']) assert.ok(commands.includes(c), `${c} missing from:\n${help.stdout}`);
    for (const command of commands) {
      const r = await run([x64, command!, '--help']);
      assert.equal(r.code, 0, `${command} --help: ${r.stderr}`);
      assert.match(r.stdout, new RegExp(`^ferry ${command}`), `${command} --help`);
    }
    // Bad usage still answers with the usage error and exit code 2.
    const bad = await run([x64, 'copy', '--json', 'not a reference', `${reg.host}/x/y:z`]);
    assert.equal(bad.code, 2, bad.stderr);
    assert.equal(JSON.parse(bad.stdout).error.code, 'USAGE');
    // The agent's configuration check runs (and names what is missing) inside the binary too.
    const agent = await run([x64, 'agent'], { FERRY_RUNNER_TOKEN: '' });
    assert.equal(agent.code, 2, agent.stderr);
    assert.match(agent.stderr, /USAGE: .*control-plane-url/s);
  });

  test('dist/ferry starts under its heap cap; --node-options overrides it, NODE_OPTIONS does not reach it', async () => {
    // A preload that reports the heap limit V8 was started with, and the flags.
    const probe = join(out, 'heap-probe.cjs');
    writeFileSync(probe, "process.stderr.write('heap ' + JSON.stringify({ limit: require('node:v8').getHeapStatistics().heap_size_limit / 1048576, execArgv: process.execArgv }) + '\\n');\n");
    const heapOf = (r: Run) => {
      assert.equal(r.code, 0, r.stderr);
      const line = r.stderr.split('\n').find((l) => l.startsWith('heap '));
      return line ? (JSON.parse(line.slice(5)) as { limit: number; execArgv: string[] }) : undefined;
    };
    const execArgv = (JSON.parse(readFileSync(join(root, 'pkg.config.json'), 'utf8')) as { execArgv: string[] }).execArgv;
    const cap = Number(execArgv.find((f) => f.startsWith('--max-old-space-size='))?.split('=')[1]);
    assert.ok(cap > 0, 'the executable has a heap cap');
    const own = heapOf(await run([x64, `--node-options=--require ${probe}`, 'version']));
    assert.ok(own, 'the --node-options preload did not run');
    assert.deepEqual(own.execArgv.slice(0, execArgv.length), execArgv);
    assert.ok(own.limit >= cap && own.limit <= cap + 8, `heap limit ${own.limit} MiB under --max-old-space-size=${cap}`);
    const raised = heapOf(await run([x64, 'version', `--node-options=--max-old-space-size=${cap * 3} --require ${probe}`]));
    assert.ok(raised && raised.limit >= cap * 3 && raised.limit <= cap * 3 + 8, `--node-options did not raise the cap: ${JSON.stringify(raised)}`);
    assert.equal(heapOf(await run([x64, 'version'], { NODE_OPTIONS: `--require ${probe}` })), undefined, 'NODE_OPTIONS reached the binary');
  });

  test('the main bundle\'s code cache is made after a training copy: it holds what a copy compiles, not only the top level', async () => {
    // scripts/sea-code-cache.ts runs the bundle's copy against scripts/sea-training.ts's registry
    // first. A cache made straight after compiling holds little beyond each module's top level.
    const { wrapBundle, MAIN_BUNDLE } = await import('../src/sea/bundle.ts');
    const { execArgv } = JSON.parse(readFileSync(join(root, 'pkg.config.json'), 'utf8')) as { execArgv: string[] };
    const work = mkdtempSync(join(tmpdir(), 'ferry-codecache-'));
    try {
      const wrapped = join(work, 'ferry.cjs.sea.js');
      writeFileSync(wrapped, wrapBundle(readFileSync(join(out, MAIN_BUNDLE.asset), 'latin1')), 'latin1');
      const trained = await run([process.execPath, ...execArgv, join(root, 'scripts/sea-code-cache.ts'), MAIN_BUNDLE.asset, wrapped, join(work, 'trained')]);
      assert.equal(trained.code, 0, trained.stderr);
      const report = JSON.parse(trained.stdout) as { transfer: { blobs_copied: number }; image: { platforms: unknown[] } };
      assert.equal(report.transfer.blobs_copied, 7, 'the training copy moved every blob of its two-platform image');
      assert.equal(report.image.platforms.length, 2);
      const untrained = await run([
        process.execPath,
        ...execArgv,
        '--input-type=module',
        '-e',
        `import { compileBundle, MAIN_BUNDLE } from ${JSON.stringify(join(root, 'src/sea/bundle.ts'))}; import { readFileSync, writeFileSync } from 'node:fs';
         writeFileSync(${JSON.stringify(join(work, 'untrained'))}, compileBundle(MAIN_BUNDLE, readFileSync(${JSON.stringify(wrapped)}, 'latin1')).createCachedData());`,
      ]);
      assert.equal(untrained.code, 0, untrained.stderr);
      const [t, u] = [statSync(join(work, 'trained')).size, statSync(join(work, 'untrained')).size];
      assert.ok(t > 3 * u, `trained cache ${t} bytes against ${u} untrained: the training copy's functions are not in it`);
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
  });

  test('dist/ferry copy: a real copy between repositories of a real registry, byte-exact; inspect agrees', async () => {
    const state = mkdtempSync(join(tmpdir(), 'ferry-state-'));
    try {
      const r = await run([x64, 'copy', '--json', `${reg.host}/pkg/app:v1`, `${reg.host}/pkg/copy-x64:v1`], { XDG_STATE_HOME: state });
      assert.equal(r.code, 0, r.stderr);
      const report = JSON.parse(r.stdout);
      const copied = await clientFor(reg).verifyImage('pkg/copy-x64', 'v1');
      assert.equal(report.image.digest, copied.digest);
      assert.equal(copied.digest, (await clientFor(reg).verifyImage('pkg/app', 'v1')).digest);
      const inspect = await run([x64, 'inspect', '--json', `${reg.host}/pkg/copy-x64:v1`]);
      assert.equal(inspect.code, 0, inspect.stderr);
      assert.equal(JSON.parse(inspect.stdout).digest, copied.digest);
      assert.equal(JSON.parse(inspect.stdout).platforms.length, 3);
    } finally {
      rmSync(state, { recursive: true, force: true });
    }
  });

  test('start-up: a copy between registries without a proxy loads neither undici nor node:http nor node:assert', async () => {
    // undici comes in on first use only (src/transport/http.ts), a small blob that cannot take the
    // pipe goes up as an in-memory body on ferry's own connections (src/ends/registry/blob-upload.ts), the
    // agent's health server loads node:http when it starts, and yargs and pino get a stand-in for
    // node:assert (scripts/build.mjs). Each of those, undone, brings the modules back.
    const work = mkdtempSync(join(tmpdir(), 'ferry-modules-'));
    try {
      const preload = join(work, 'modules.cjs');
      const list = join(work, 'modules.txt');
      writeFileSync(preload, `process.on('exit', () => require('node:fs').writeFileSync(${JSON.stringify(list)}, process.moduleLoadList.join('\\n')));\n`);
      // One platform: ferry reads its config for the report, and sends it on from memory. The
      // registry under another name, so the blobs are copied, not mounted.
      await pushImage(clientFor(reg), 'pkg/single', 'v1');
      const otherName = reg.host.replace(/^127\.0\.0\.1:/, 'localhost:');
      assert.notEqual(otherName, reg.host);
      const r = await run([process.execPath, '--require', preload, join(out, 'ferry.cjs'), 'copy', '--json', `${reg.host}/pkg/single:v1`, `${otherName}/pkg/modules:v1`], { XDG_STATE_HOME: work });
      assert.equal(r.code, 0, r.stderr);
      assert.equal(JSON.parse(r.stdout).transfer.blobs_copied, 3, 'the copy ran: the config and two layers');
      const loaded = readFileSync(list, 'utf8').split('\n');
      assert.ok(loaded.includes('NativeModule net') && loaded.includes('NativeModule crypto'), 'the list is the real one');
      for (const m of ['NativeModule http', 'NativeModule assert', 'NativeModule _http_client']) assert.ok(!loaded.includes(m), `${m} was loaded`);
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
  });

  test('start-up: the bundle\'s yargs factory does not look for a package.json from the working directory up', () => {
    // scripts/build.mjs, noYargsVersionGuess: the factory still adds --help, not the version guess.
    for (const file of ['ferry.cjs', 'ferry.mjs']) {
      const bundle = readFileSync(join(out, file), 'latin1');
      const factory = /function YargsFactory\(_shim\) \{[\s\S]*?\n\}\n/.exec(bundle);
      assert.ok(factory, `${file}: yargs' factory is bundled`);
      assert.match(factory[0], /yargs\.help\(\)/);
      assert.doesNotMatch(factory[0], /yargs\.version\(\)/, `${file}: the factory still guesses a version`);
    }
  });

  test('the cloud SDKs are a bundle of their own, and ferry.cjs only requires it', () => {
    // esbuild names each bundled module's path in a comment: the SDKs' modules must all be in
    // ferry-cloud.cjs, none in ferry.cjs (scripts/build.mjs, cloudSplit), which reaches them only
    // through the cloud bundle's require id (src/sea/bundle.ts, CLOUD_BUNDLE).
    const main = readFileSync(join(out, 'ferry.cjs'), 'latin1');
    const cloud = readFileSync(join(out, 'ferry-cloud.cjs'), 'latin1');
    const sdkModule = /^\/\/ node_modules\/(@aws-sdk|@smithy|google-auth-library|gaxios|gcp-metadata)\//m;
    assert.doesNotMatch(main, sdkModule);
    for (const pkgName of ['@aws-sdk/client-ecr', '@aws-sdk/client-sts', '@aws-sdk/credential-providers', 'google-auth-library']) {
      assert.match(cloud, new RegExp(`^// node_modules/${pkgName}/`, 'm'), `${pkgName} is in ferry-cloud.cjs`);
    }
    assert.match(main, /require\("\.\/ferry-cloud\.cjs"\)/);
    assert.ok(main.length < cloud.length, `ferry.cjs (${main.length} bytes) is the smaller part, ferry-cloud.cjs ${cloud.length}`);
  });

  test('dist/ferry copy from Artifact Registry: google-auth-library loads from the cloud bundle inside the binary', async () => {
    // The metadata server's token (ADC), the registry behind TLS under its real name, reached
    // through the CONNECT proxy only.
    const token = 'ya29.ferry-package-test-vm-token-0123456789';
    const gcp = await GcpStandin.start({ projectId: 'ferry-test-project', accessToken: (via) => (via === 'metadata' ? token : undefined) });
    const pki = makeTestPki(['us-west1-docker.pkg.dev']);
    const proxy = await startConnectProxy();
    const gar = await startGarRegistry({ gcp, pki, proxy, location: 'us-west1', password: token, repositories: ['ferry-test-project/images'] });
    try {
      const img = await pushMultiArch(gar.client, 'ferry-test-project/images/app', 'v1');
      const home = freshHome();
      const env = isolatedEnv({ GCE_METADATA_HOST: gcp.metadataHost, ...proxyEnv(proxy.url) }, home);
      const r = await run([x64, 'copy', '--json', '--ca-file', pki.caPath, `${gar.host}/ferry-test-project/images/app:v1`, `${reg.host}/pkg/from-gar:v1`], env as NodeJS.ProcessEnv);
      assert.equal(r.code, 0, r.stderr);
      assert.doesNotMatch(r.stderr, /code cache/, 'the cloud bundle\'s code cache was accepted');
      assert.equal((await clientFor(reg).verifyImage('pkg/from-gar', 'v1')).digest, img.digest);
      assert.ok(gcp.count('metadata:token') >= 1, 'the token came from the metadata server');
      assert.ok(proxy.connects.some((c) => c.target === `${gar.host}:443` && c.routed), 'the registry was reached through the proxy');
      assert.ok(!r.stderr.includes(token) && !r.stdout.includes(token), 'the token reached the output');
    } finally {
      await Promise.all([gar.stop(), proxy.stop()]);
      await gcp.close();
    }
  });

  test('dist/ferry copy from Amazon ECR: the cloud SDKs load inside the binary; STS and the ECR API through the proxy', async () => {
    // The AWS SDK is a second bundle, loaded on first use (src/sea/main.ts): only a copy from a
    // cloud registry runs it. The stand-ins sit behind TLS fronts under the real names,
    // reachable only through the CONNECT proxy (no AWS_ENDPOINT_URL_*).
    const aws = await AwsStandin.start({ region: 'us-west-2', ecrPassword: ECR_PASSWORD, roles: [{ arn: READER_ROLE }] });
    const apiNames = awsApiHosts('us-west-2');
    const pki = makeTestPki([aws.registryHost(), S3_LAYER_HOST, apiNames.sts, apiNames.ecr]);
    const proxy = await startConnectProxy();
    const ecr = await startEcrRegistry({ aws, pki, proxy, password: ECR_PASSWORD });
    const apis = await startAwsApis({ aws, pki, proxy });
    try {
      aws.addRepository('team/app');
      const img = await pushMultiArch(ecr.client, 'team/app', 'v1');
      const home = freshHome();
      const env = isolatedEnv(
        { AWS_EC2_METADATA_SERVICE_ENDPOINT: aws.env().AWS_EC2_METADATA_SERVICE_ENDPOINT, AWS_REGION: 'us-west-2', AWS_ACCESS_KEY_ID: TEST_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY: TEST_SECRET_ACCESS_KEY, ...proxyEnv(proxy.url) },
        home,
      );
      const r = await run([x64, 'copy', '--json', '--ca-file', pki.caPath, '--src-aws-role-arn', READER_ROLE, `${ecr.host}/team/app:v1`, `${reg.host}/pkg/from-ecr:v1`], env as NodeJS.ProcessEnv);
      assert.equal(r.code, 0, r.stderr);
      assert.doesNotMatch(r.stderr, /code cache/, 'the cloud bundle\'s code cache was accepted');
      assert.equal((await clientFor(reg).verifyImage('pkg/from-ecr', 'v1')).digest, img.digest);
      assert.equal(aws.count('GetAuthorizationToken'), 1);
      const tunnels = proxy.connects.filter((c) => c.routed).map((c) => c.target);
      for (const name of [apiNames.sts, apiNames.ecr, ecr.host]) assert.ok(tunnels.includes(`${name}:443`), `no tunnel to ${name}: ${tunnels.join(', ')}`);
      assert.ok(!r.stderr.includes(ECR_PASSWORD) && !r.stderr.includes(TEST_SECRET_ACCESS_KEY), 'a secret reached the log');
    } finally {
      await Promise.all([apis.stop(), ecr.stop(), proxy.stop(), aws.close()]);
    }
  });

  test('dist/ferry-linux-arm64 under qemu: version, --help, then a real copy', async () => {
    const v = await run([...arm64Emulator, arm64, 'version', '--json']);
    assert.equal(v.code, 0, v.stderr);
    assert.equal(v.stderr, '');
    const info = JSON.parse(v.stdout);
    assert.deepEqual(info, { version: pkg.version, commit: info.commit, node: `v${nodeVersion}` });
    assert.ok(commits.has(info.commit), `commit ${info.commit} is HEAD (${[...commits].join(' or ')})`);

    // The code cache was made by the arm64 Node itself (under qemu), so it is accepted: no warning.
    const help = await run([...arm64Emulator, arm64, '--help']);
    assert.equal(help.code, 0, help.stderr);
    assert.equal(help.stderr, '');
    assert.match(help.stdout, /ferry copy/);

    const state = mkdtempSync(join(tmpdir(), 'ferry-state-'));
    try {
      const r = await run([...arm64Emulator, arm64, 'copy', '--json', `${reg.host}/pkg/app:v1`, `${reg.host}/pkg/copy-arm64:v1`], { XDG_STATE_HOME: state });
      assert.equal(r.code, 0, r.stderr);
      assert.ok(!/rejected/i.test(r.stderr), r.stderr);
      const report = JSON.parse(r.stdout);
      const copied = await clientFor(reg).verifyImage('pkg/copy-arm64', 'v1');
      assert.equal(report.image.digest, copied.digest);
      assert.equal(copied.digest, (await clientFor(reg).verifyImage('pkg/app', 'v1')).digest);
    } finally {
      rmSync(state, { recursive: true, force: true });
    }
  });
});
