// `npm run package`: ferry as single executables, one per target in pkg.config.json
// (dist/ferry for linux-x64, dist/ferry-linux-arm64), each a copy of the project's pinned
// Node 24 with ferry injected (Node's single-executable applications, SEA):
//
//   1. scripts/build.mjs --cjs: dist/ferry.cjs and dist/ferry-cloud.cjs, the CommonJS bundles of
//      ferry and of the cloud SDKs it loads on first use (ASCII), and dist/ferry-sea.cjs, the
//      SEA's small main script (src/sea/main.ts). Node 24's SEA runs its main script as CommonJS.
//      Each bundle is wrapped as a CommonJS function (src/sea/bundle.ts);
//   2. the target's Node writes the V8 code cache of each (scripts/sea-code-cache.ts). A
//      code cache only loads on the architecture that made it, so a foreign target's Node runs
//      under qemu-user (pkg.config.json "emulators");
//   3. the target's Node writes the SEA blob (`--experimental-sea-config`): the main script, and
//      the bundles and their code caches as assets;
//   4. postject injects the blob into a copy of that Node, flipping the sentinel fuse;
//   5. the result runs `version --json` and `--help` (under qemu for a foreign target) as a check.
//
// The x64 Node is node_modules/node (the `node` devDependency); another architecture's comes
// from the npm package node-linux-<arch> at the same version, checked against the integrity
// pinned in pkg.config.json, and is kept in node_modules/.cache/ferry-package/.
//
//   node scripts/package.mjs [--target NAME]... [--out-dir DIR]
//     --target   build only these targets (linux-x64, linux-arm64); default all
//     --out-dir  write the bundles and binaries into DIR (named as in pkg.config.json) instead of dist/
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { basename, delimiter, join, resolve } from 'node:path';
import { SEA_BUNDLES, wrapBundle } from '../src/sea/bundle.ts';

const root = new URL('..', import.meta.url).pathname;
const require = createRequire(join(root, 'package.json'));
const config = JSON.parse(readFileSync(join(root, 'pkg.config.json'), 'utf8'));

const argv = process.argv.slice(2);
const wanted = [];
let outDir = join(root, 'dist');
for (let i = 0; i < argv.length; i++) {
  if (argv[i] === '--target') wanted.push(argv[++i]);
  else if (argv[i] === '--out-dir') outDir = resolve(argv[++i] ?? fail('--out-dir needs a directory'));
  else fail(`unknown argument ${argv[i]} (use --target NAME, --out-dir DIR)`);
}
const targets = config.targets.filter((t) => wanted.length === 0 || wanted.includes(t.name));
for (const w of wanted) if (!config.targets.some((t) => t.name === w)) fail(`unknown target ${w}; pkg.config.json has ${config.targets.map((t) => t.name).join(', ')}`);

const nodeVersion = require('node/package.json').version;
const hostNode = join(root, 'node_modules/node/bin/node');
const hostArch = process.arch;

function fail(message) {
  console.error(`package: ${message}`);
  process.exit(1);
}

function onPath(cmd) {
  if (cmd.includes('/')) return existsSync(cmd);
  return (process.env.PATH ?? '').split(delimiter).some((dir) => dir && existsSync(join(dir, cmd)));
}

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', ...opts });
  if (r.error) fail(`${cmd}: ${r.error.message}`);
  if (r.status !== 0) fail(`${[cmd, ...args].join(' ')} exited ${r.status}\n${r.stdout ?? ''}${r.stderr ?? ''}`);
  return r;
}

/** How to run a program built for `arch` here: directly, or under the emulator. Undefined when neither is possible. */
function runnerFor(arch) {
  if (arch === hostArch) return [];
  const emulator = config.emulators?.[arch];
  if (!emulator || !onPath(emulator[0])) return undefined;
  const sysroot = emulator[emulator.indexOf('-L') + 1];
  if (emulator.includes('-L') && !existsSync(sysroot)) return undefined;
  return emulator;
}

/** The pinned Node for a target: this machine's from node_modules, another architecture's from its npm package. */
function nodeFor(target) {
  if (target.platform === process.platform && target.arch === hostArch) {
    const v = execFileSync(hostNode, ['--version'], { encoding: 'utf8' }).trim();
    if (v !== `v${nodeVersion}`) fail(`node_modules/node/bin/node is ${v}, but the node package says ${nodeVersion}: run npm ci`);
    return hostNode;
  }
  const pkgName = `node-${target.platform}-${target.arch}`;
  const spec = `${pkgName}@${nodeVersion}`;
  const integrity = config.nodePackages?.[spec];
  if (!integrity) fail(`pkg.config.json has no integrity for ${spec}; add it (npm view ${spec} dist.integrity)`);
  const cacheDir = join(root, 'node_modules/.cache/ferry-package', `${pkgName}-${nodeVersion}`);
  const binary = join(cacheDir, 'node');
  if (existsSync(binary)) return binary;
  mkdirSync(cacheDir, { recursive: true });
  console.log(`package: fetching ${spec} (npm pack) for the ${target.name} runtime`);
  const work = mkdtempSync(join(cacheDir, '.fetch-'));
  try {
    const packed = run('npm', ['pack', spec, '--pack-destination', work, '--json', '--silent'], { cwd: work });
    const file = join(work, JSON.parse(packed.stdout)[0].filename);
    const actual = `sha512-${createHash('sha512').update(readFileSync(file)).digest('base64')}`;
    if (actual !== integrity) fail(`${spec}: integrity ${actual} is not the pinned ${integrity}`);
    run('tar', ['-xzf', file, '-C', work, 'package/bin/node']);
    renameSync(join(work, 'package/bin/node'), binary);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  return binary;
}

/** Where a bundle, wrapped for the executable, waits to go into the blob. */
function wrappedPath(bundle) {
  return join(outDir, `${bundle.asset}.sea.js`);
}

async function main() {
  mkdirSync(outDir, { recursive: true });
  run(hostNode, [join(root, 'scripts/build.mjs'), '--cjs', '--out-dir', outDir], { stdio: 'inherit' });
  const main = join(outDir, basename(config.main));
  // The bundles as the executable carries them: wrapped as CommonJS functions, ASCII (src/sea/bundle.ts).
  for (const b of SEA_BUNDLES) writeFileSync(wrappedPath(b), wrapBundle(readFileSync(join(outDir, b.asset), 'utf8')), 'latin1');
  const { inject } = require('postject');

  for (const target of targets) {
    const started = Date.now();
    const output = join(outDir, basename(target.output));
    const node = nodeFor(target);
    const runner = runnerFor(target.arch);
    const codeCache = target.bundleCodeCache ?? config.bundleCodeCache;
    if (!runner) {
      const emulator = config.emulators?.[target.arch]?.[0] ?? `an emulator for ${target.arch}`;
      fail(
        `${target.name}: its Node must run here to make the code cache${codeCache ? ' (a code cache is specific to the architecture that made it)' : ''} and the blob, and to check the result, ` +
          `and ${emulator} with its runtime libraries is missing. Install them: sudo bash scripts/install-system-deps.sh (or build only this machine's target: --target ${config.targets.find((t) => t.arch === hostArch)?.name ?? hostArch})`,
      );
    }
    const cacheFileFor = (b) => `${output}.${b.asset}.codecache`;
    const seaConfig = `${output}.sea-config.json`;
    const blob = `${output}.blob`;
    const injected = `${output}.inject`;
    const sea = {
      main,
      output: blob,
      disableExperimentalSEAWarning: target.disableExperimentalSEAWarning ?? config.disableExperimentalSEAWarning,
      useSnapshot: target.useSnapshot ?? config.useSnapshot,
      // The main script is small; the code cache that matters is the bundle's, an asset.
      useCodeCache: false,
      execArgv: target.execArgv ?? config.execArgv ?? [],
      // `--node-options="..."` (anywhere on the command line, taken out before ferry sees it) adds
      // flags after these, so it can also override them: the heap cap (pkg.config.json). NODE_OPTIONS
      // could only add flags, never override one of these, and is not read by the executable.
      execArgvExtension: 'cli',
      assets: Object.fromEntries(SEA_BUNDLES.flatMap((b) => [[b.asset, wrappedPath(b)], ...(codeCache ? [[b.codeCache, cacheFileFor(b)]] : [])])),
    };
    writeFileSync(seaConfig, JSON.stringify(sea, null, 2));
    try {
      // The target's own Node makes the code cache and the blob: same version, same architecture.
      const [cmd, ...pre] = [...runner, node];
      // Under the executable's own V8 flags: V8 rejects a code cache made under other flags.
      if (codeCache) for (const b of SEA_BUNDLES) run(cmd, [...pre, ...sea.execArgv, join(root, 'scripts/sea-code-cache.ts'), b.asset, wrappedPath(b), cacheFileFor(b)]);
      run(cmd, [...pre, '--experimental-sea-config', seaConfig], { cwd: outDir });
      // postject rewrites the whole file in one write, which leaves it in the page cache as large
      // folios; every process then maps those whole (fault-around), and `dist/ferry version` ran in
      // 64-75 MiB instead of 42. So the blob goes into a scratch copy, and the output is copied from it
      // as any installer would copy the file (docs/performance.md, "peak RSS").
      rmSync(output, { force: true });
      copyFileSync(node, injected);
      chmodSync(injected, 0o755);
      // postject's ELF library (LIEF in WebAssembly) prints through console.log / console.warn, e.g. "Can't find
      // string offset for section name '.note.100'" for Node's many ELF notes: harmless, kept out of the output.
      // Failures still throw.
      const log = console.log;
      const warn = console.warn;
      console.log = () => {};
      console.warn = () => {};
      try {
        await inject(injected, 'NODE_SEA_BLOB', readFileSync(blob), { sentinelFuse: config.sentinelFuse });
      } finally {
        console.log = log;
        console.warn = warn;
      }
      copyFileSync(injected, output);
      chmodSync(output, 0o755);
    } finally {
      for (const f of [seaConfig, blob, ...SEA_BUNDLES.map(cacheFileFor), injected]) rmSync(f, { force: true });
    }
    // The check: the binary starts and answers; the whole command line loads from the bundle
    // (yargs in CommonJS, every command's definitions) with its code cache accepted — a rejected
    // cache would print a warning.
    const [cmd, ...pre] = [...runner, output];
    const r = run(cmd, [...pre, 'version', '--json'], { env: { ...process.env, NODE_OPTIONS: '' } });
    const info = JSON.parse(r.stdout);
    if (info.node !== `v${nodeVersion}`) fail(`${output} runs Node ${info.node}, expected v${nodeVersion}`);
    if (r.stderr.trim()) fail(`${output} wrote to stderr on start-up:\n${r.stderr}`);
    const help = run(cmd, [...pre, '--help'], { env: { ...process.env, NODE_OPTIONS: '' } });
    if (!help.stdout.includes('ferry copy') || help.stderr.trim()) fail(`${output} --help did not print the usage, or warned:\n${help.stdout}${help.stderr}`);
    const mib = (statSync(output).size / 2 ** 20).toFixed(1);
    const how = runner.length ? ` (checked under ${runner[0]})` : '';
    console.log(`package: ${output}: ferry ${info.version} (commit ${info.commit}), Node ${info.node}, ${target.name}, ${mib} MiB, code cache ${codeCache ? 'on' : 'off'}, ${((Date.now() - started) / 1000).toFixed(1)} s${how}`);
  }
}

try {
  await main();
} finally {
  for (const b of SEA_BUNDLES) rmSync(wrappedPath(b), { force: true });
}
