// The first run of a fresh clone: `npm test` and `npm run demo` start on the machine's Node,
// whatever its version (18 or later), install ferry's packages with the pinned Node 24, and run
// the rest on that pinned runtime, by its path (scripts/ensure-deps.mjs). And dist/ferry.mjs on
// a Node older than package.json's engines refuses in one line.
//
// An old Node is the machine's own (/usr/bin/node, when it is older than ferry needs) and,
// always, the pinned one told by a preloaded module that it is older (process.versions.node),
// so the tests mean the same on a machine whose own Node is new.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { engineMinimum, engineWarningFilter, satisfies, whyInstall } from '../scripts/ensure-deps.mjs';
import { createRng, seedFor } from './harness/seed.ts';

const root = new URL('../', import.meta.url).pathname;
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { name: string; engines: { node: string }; scripts: Record<string, string> };
const lockedNode = (JSON.parse(readFileSync(join(root, 'package-lock.json'), 'utf8')) as { packages: Record<string, { version: string }> }).packages['node_modules/node']!.version;
const pinned = realpathSync(join(root, 'node_modules/.bin/node'));

/** Arguments that make the pinned runtime believe it is Node `version`, before any other code runs. */
function pretend(version: string): string[] {
  const code = `Object.defineProperty(process.versions,'node',{value:'${version}'});Object.defineProperty(process,'version',{value:'v${version}'});`;
  return ['--import', `data:text/javascript,${encodeURIComponent(code)}`];
}

/** Old Nodes to start things with: [label, argv prefix]. */
function oldNodes(): Array<[string, string[]]> {
  const out: Array<[string, string[]]> = [['the pinned Node told it is 18.0.0', [process.execPath, ...pretend('18.0.0')]]];
  const system = '/usr/bin/node';
  if (existsSync(system)) {
    const v = spawnSync(system, ['--version'], { encoding: 'utf8' }).stdout.trim();
    if (!satisfies(v, engineMinimum(pkg.engines.node))) out.push([`the machine's ${system} (${v})`, [system]]);
  }
  return out;
}

const work = mkdtempSync(join(tmpdir(), 'ferry-first-run-'));
after(() => rmSync(work, { recursive: true, force: true }));

/** A script that tells which Node runs it. */
function whoRunsMe(): string {
  const file = join(work, 'who.mjs');
  writeFileSync(file, "console.log(JSON.stringify({ version: process.version, execPath: process.execPath, args: process.argv.slice(2) })); process.exitCode = Number(process.argv[2] ?? 0);\n");
  return file;
}

test('every npm script that runs project code starts with ensure-deps, as its one command', () => {
  for (const name of ['test', 'demo', 'bench', 'build', 'package', 'typecheck', 'docs']) {
    const s = pkg.scripts[name];
    assert.ok(s, `package.json has no "${name}" script`);
    // One command: a second `node …` after `&&` would be looked up by the shell, which may have
    // remembered the machine's node before npm ci created node_modules/.bin/node.
    assert.doesNotMatch(s, /&&|\|\||;|\|/, `"${name}": ${s}`);
    const m = /^node scripts\/ensure-deps\.mjs (--no-system )?(\S+)/.exec(s);
    assert.ok(m, `"${name}" does not start with node scripts/ensure-deps.mjs: ${s}`);
    assert.ok(existsSync(join(root, m[2]!)), `"${name}" runs ${m[2]}, which does not exist`);
  }
  assert.match(pkg.scripts.test!, /scripts\/test\.mjs --typecheck$/, 'npm test typechecks first');
  assert.doesNotMatch(pkg.scripts.test!, /--no-system/, 'npm test installs the system packages the tests need');
  assert.doesNotMatch(pkg.scripts.demo!, /--no-system/);
});

test('.ci/run runs exactly the README\'s test command, with nothing before it', () => {
  const commands = readFileSync(join(root, '.ci/run'), 'utf8')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#') && !l.startsWith('set ') && !/^cd "\$\(dirname "\$0"\)\/\.\."$/.test(l));
  assert.deepEqual(commands, ['npm test']);
  assert.match(readFileSync(join(root, 'README.md'), 'utf8'), /\| Run the tests \| `npm test` \|/);
});

test('on an old Node, ensure-deps runs the script with the pinned runtime, by path, and ends as it does', () => {
  const who = whoRunsMe();
  for (const [label, node] of oldNodes()) {
    const r = spawnSync(node[0]!, [...node.slice(1), join(root, 'scripts/ensure-deps.mjs'), '--no-system', who, '3', 'x y'], { cwd: root, encoding: 'utf8' });
    assert.equal(r.status, 3, `${label}: exit ${r.status}\n${r.stdout}\n${r.stderr}`);
    const ran = JSON.parse(r.stdout.trim().split('\n').pop()!) as { version: string; execPath: string; args: string[] };
    assert.equal(ran.version, `v${lockedNode}`, label);
    assert.equal(realpathSync(ran.execPath), pinned, label);
    assert.deepEqual(ran.args, ['3', 'x y'], label);
    assert.doesNotMatch(r.stdout, /installing/, `${label}: installed although node_modules is complete`);
  }
});

test('a Node older than 18 is told what it needs, and nothing runs', () => {
  const who = whoRunsMe();
  const r = spawnSync(process.execPath, [...pretend('16.20.0'), join(root, 'scripts/ensure-deps.mjs'), '--no-system', who], { cwd: root, encoding: 'utf8' });
  assert.equal(r.status, 1);
  assert.match(r.stderr, /this Node is v16\.20\.0; the npm scripts need Node 18 or later/);
  assert.equal(r.stdout, '');
});

test('whyInstall: node_modules must match package-lock.json, optional packages only when installed', () => {
  assert.equal(whyInstall(root), undefined, 'this checkout is installed');
  const dir = mkdtempSync(join(tmpdir(), 'ferry-why-install-'));
  try {
    assert.equal(whyInstall(dir), 'node_modules is missing');
    const lock = {
      lockfileVersion: 3,
      packages: {
        '': { name: 'x' },
        'node_modules/a': { version: '1.0.0' },
        'node_modules/b/node_modules/c': { version: '2.0.0' },
        'node_modules/@esbuild/darwin-arm64': { version: '0.28.2', optional: true },
      },
    };
    writeFileSync(join(dir, 'package-lock.json'), JSON.stringify(lock));
    mkdirSync(join(dir, 'node_modules'));
    assert.equal(whyInstall(dir), 'node_modules was not installed by npm ci');
    const installed = (packages: Record<string, { version: string }>) => writeFileSync(join(dir, 'node_modules/.package-lock.json'), JSON.stringify({ packages }));
    installed({ 'node_modules/a': { version: '1.0.0' }, 'node_modules/b/node_modules/c': { version: '2.0.0' } });
    assert.equal(whyInstall(dir), undefined);
    installed({ 'node_modules/a': { version: '0.9.0' }, 'node_modules/b/node_modules/c': { version: '2.0.0' } });
    assert.equal(whyInstall(dir), 'a is 0.9.0, package-lock.json says 1.0.0');
    installed({ 'node_modules/a': { version: '1.0.0' } });
    assert.equal(whyInstall(dir), 'c is not installed');
    installed({ 'node_modules/a': { version: '1.0.0' }, 'node_modules/b/node_modules/c': { version: '2.0.0' }, 'node_modules/@esbuild/darwin-arm64': { version: '0.27.0' } });
    assert.equal(whyInstall(dir), '@esbuild/darwin-arm64 is 0.27.0, package-lock.json says 0.28.2');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('npm\'s EBADENGINE warning about ferry itself is dropped; every other line passes, however npm splits its output', () => {
  const npmOutput = [
    'npm warn deprecated inflight@1.0.6: This module is not supported',
    'npm warn EBADENGINE Unsupported engine {',
    `npm warn EBADENGINE   package: '${pkg.name}@0.1.0',`,
    "npm warn EBADENGINE   required: { node: '>=22.12' },",
    "npm warn EBADENGINE   current: { node: 'v20.20.2', npm: '11.19.1' }",
    'npm warn EBADENGINE }',
    'npm warn EBADENGINE Unsupported engine {',
    "npm warn EBADENGINE   package: 'other@2.0.0',",
    "npm warn EBADENGINE   required: { node: '>=26' },",
    "npm warn EBADENGINE   current: { node: 'v20.20.2', npm: '11.19.1' }",
    'npm warn EBADENGINE }',
    'npm error something else',
  ].join('\n');
  const expected = `${npmOutput.split('\n').filter((_, i) => i === 0 || i > 5).join('\n')}\n`;
  const rng = createRng(seedFor('ebadengine-filter'));
  for (let round = 0; round < 50; round++) {
    let out = '';
    const f = engineWarningFilter(pkg.name, (s) => (out += s));
    for (let at = 0; at < npmOutput.length; ) {
      const n = 1 + rng.int(40);
      f.push(npmOutput.slice(at, at + n));
      at += n;
    }
    f.end();
    assert.equal(out, expected, `round ${round}`);
  }
  // A block cut off by npm's end is shown, not swallowed.
  let out = '';
  const f = engineWarningFilter(pkg.name, (s) => (out += s));
  f.push(npmOutput.split('\n').slice(0, 3).join('\n'));
  f.end();
  assert.equal(out, `${npmOutput.split('\n').slice(0, 3).join('\n')}\n`);
});

test('dist/ferry.mjs on a Node older than engines says so in one line and exits 2', () => {
  const out = mkdtempSync(join(tmpdir(), 'ferry-build-'));
  try {
    const built = spawnSync(process.execPath, [join(root, 'scripts/build.mjs'), '--out-dir', out], { cwd: root, encoding: 'utf8' });
    assert.equal(built.status, 0, built.stderr);
    const [major, minor] = engineMinimum(pkg.engines.node);
    const old = `${major}.${minor - 1}.0`;
    const nodes: Array<[string, string[]]> = [[`the pinned Node told it is ${old}`, [process.execPath, ...pretend(old)]], ...oldNodes()];
    for (const [label, node] of nodes) {
      for (const args of [['version'], ['copy', 'a.example/x:1', 'b.example/x:1'], ['agent', '--help']]) {
        const r = spawnSync(node[0]!, [...node.slice(1), join(out, 'ferry.mjs'), ...args], { encoding: 'utf8' });
        assert.equal(r.status, 2, `${label} ${args.join(' ')}: ${r.stdout}${r.stderr}`);
        assert.equal(r.stdout, '');
        const lines = r.stderr.trimEnd().split('\n');
        assert.equal(lines.length, 1, `${label}: ${r.stderr}`);
        assert.match(lines[0]!, new RegExp(`^ferry: needs Node\\.js ${major}\\.${minor} or later; this is Node\\.js v`));
      }
    }
    // The Node that is new enough runs it.
    const r = spawnSync(process.execPath, [join(out, 'ferry.mjs'), 'version'], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^ferry \d+\.\d+\.\d+/);
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});
