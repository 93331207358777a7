// Where `npm test`, `npm run demo` and the other npm scripts start, on whatever Node the machine
// has (18 or later; ferry itself needs 22.12, which this installs):
//
//   node scripts/ensure-deps.mjs [--no-system] SCRIPT [ARGS...]
//
//  1. installs the npm packages (`npm ci`) when node_modules is missing or does not match
//     package-lock.json. They include the pinned Node 24 runtime (the `node` package), so a
//     machine with an older Node gets the one ferry needs without touching its own;
//  2. unless --no-system: checks the programs the tests and the demo run against (distribution,
//     crane, skopeo, ...) and installs the missing ones (scripts/install-system-deps.sh, as root),
//     or says exactly what to run;
//  3. runs SCRIPT (a file under the project) with the pinned runtime, node_modules/.bin/node, named
//     by its path. Never `node` from PATH: the shell that npm starts may already have looked `node`
//     up (and remembered the machine's) before step 1 created node_modules/.bin/node.
//
// Written for old Nodes: no syntax or API newer than Node 18, nothing imported from node_modules.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const MIN_NODE_MAJOR = 18;
const root = fileURLToPath(new URL('..', import.meta.url));
export const PINNED_NODE = join(root, 'node_modules', '.bin', 'node');

function readJson(path) {
  try {
    return JSON.parse(readFileSync(path, 'utf8'));
  } catch {
    return undefined;
  }
}

/** "22.12" from ">=22.12" (package.json engines); the one form ferry uses. */
export function engineMinimum(range) {
  const m = /^>=\s*(\d+)(?:\.(\d+))?(?:\.(\d+))?$/.exec(String(range).trim());
  if (!m) throw new Error(`package.json engines.node is "${range}"; scripts/ensure-deps.mjs understands only ">=X.Y"`);
  return [Number(m[1]), Number(m[2] || 0), Number(m[3] || 0)];
}

/** Whether Node `version` ("v20.20.2" or "20.20.2") is at least `minimum` ([major, minor, patch]). */
export function satisfies(version, minimum) {
  const have = String(version).replace(/^v/, '').split('.').map(Number);
  for (let i = 0; i < 3; i++) {
    if ((have[i] || 0) !== minimum[i]) return (have[i] || 0) > minimum[i];
  }
  return true;
}

/**
 * Why `npm ci` must run, or undefined when node_modules is what package-lock.json says: every
 * package it lists is installed at its version (optional ones, such as another platform's
 * esbuild, only if installed), and the pinned runtime answers with the locked version.
 */
export function whyInstall(dir = root) {
  const lock = readJson(join(dir, 'package-lock.json'));
  const installed = readJson(join(dir, 'node_modules', '.package-lock.json'));
  if (!existsSync(join(dir, 'node_modules'))) return 'node_modules is missing';
  if (!lock || !lock.packages) return 'package-lock.json is missing or unreadable';
  if (!installed || !installed.packages) return 'node_modules was not installed by npm ci';
  for (const [path, want] of Object.entries(lock.packages)) {
    if (path === '') continue;
    const have = installed.packages[path];
    if (!have) {
      if (want.optional) continue;
      return `${path.replace(/^.*node_modules\//, '')} is not installed`;
    }
    if (have.version !== want.version) return `${path.replace(/^.*node_modules\//, '')} is ${have.version}, package-lock.json says ${want.version}`;
  }
  const locked = lock.packages['node_modules/node'];
  if (!locked) return undefined;
  const pinned = join(dir, 'node_modules', '.bin', 'node');
  if (!existsSync(pinned)) return 'the pinned Node runtime (node_modules/.bin/node) is missing';
  const r = spawnSync(pinned, ['--version'], { encoding: 'utf8' });
  const version = (r.stdout || '').trim();
  if (r.status !== 0 || version !== `v${locked.version}`) return `node_modules/.bin/node answers "${version || (r.error && r.error.message) || 'nothing'}", not v${locked.version}`;
  return undefined;
}

/**
 * npm's warning that this machine's Node is older than package.json's engines (EBADENGINE, about
 * ferry itself) is expected here: the packages being installed bring the Node that runs ferry.
 * This drops exactly that warning (said once in plain words before npm runs instead) and passes
 * every other line through, EBADENGINE warnings about other packages included.
 */
export function engineWarningFilter(packageName, write) {
  let block;
  let partial = '';
  const line = (l) => {
    if (block) {
      block.push(l);
      if (/^npm warn EBADENGINE }\s*$/.test(l)) {
        if (!block.some((b) => b.includes(`package: '${packageName}@`))) for (const b of block) write(`${b}\n`);
        block = undefined;
      }
    } else if (/^npm warn EBADENGINE Unsupported engine \{\s*$/.test(l)) {
      block = [l];
    } else {
      write(`${l}\n`);
    }
  };
  return {
    push(chunk) {
      const lines = (partial + chunk).split('\n');
      partial = lines.pop();
      for (const l of lines) line(l);
    },
    end() {
      if (partial) line(partial);
      partial = '';
      if (block) for (const b of block) write(`${b}\n`);
      block = undefined;
    },
  };
}

function npmCi(pkg) {
  const minimum = engineMinimum(pkg.engines.node);
  if (!satisfies(process.version, minimum)) {
    console.log(
      `ferry: this machine's Node is ${process.version}; ferry needs ${pkg.engines.node}. That is fine: the packages ` +
        'include the pinned Node 24 (node_modules/.bin/node), which runs everything from here on. ' +
        "(npm's EBADENGINE warning about ferry and this Node is expected; it is not shown.)",
    );
  }
  return new Promise((resolve) => {
    const child = spawn('npm', ['ci', '--no-audit', '--no-fund'], { cwd: root, stdio: ['inherit', 'inherit', 'pipe'] });
    const filter = engineWarningFilter(pkg.name, (s) => process.stderr.write(s));
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (d) => filter.push(d));
    child.on('error', (e) => {
      console.error(`ferry: cannot run npm (${e.message}). npm comes with Node: install Node 18 or later with its npm (see README.md, "The two commands").`);
      resolve(1);
    });
    child.on('close', (code, signal) => {
      filter.end();
      resolve(code === null ? `${signal}` : code);
    });
  });
}

function missingSystemPrograms() {
  const missing = ['docker-registry', 'crane', 'oras', 'skopeo', 'openssl', 'qemu-aarch64'].filter((bin) => {
    try {
      execFileSync('sh', ['-c', `command -v ${bin}`], { stdio: 'ignore' });
      return false;
    } catch {
      return true;
    }
  });
  // GNU time: the benchmark's CPU and peak-memory figures (`time` alone is the shell keyword).
  if (!existsSync('/usr/bin/time')) missing.push('/usr/bin/time');
  // The arm64 C/C++ runtime that qemu-aarch64 runs ferry's arm64 single executable with.
  for (const lib of ['libc.so.6', 'libgcc_s.so.1', 'libstdc++.so.6']) {
    if (!existsSync(`/usr/aarch64-linux-gnu/lib/${lib}`)) missing.push(`/usr/aarch64-linux-gnu/lib/${lib}`);
  }
  return missing;
}

/** Run the script with the pinned runtime; this process ends as it does (signals included). */
function runPinned(script, args) {
  const child = spawn(PINNED_NODE, [script, ...args], { cwd: process.cwd(), stdio: 'inherit' });
  // Ctrl-C reaches the child from the terminal by itself (one process group): passing SIGINT on
  // too would make one Ctrl-C two (and a second Ctrl-C means "quit at once" to ferry). This
  // process only waits for the child's end. SIGTERM and SIGHUP, sent to this process alone, are
  // passed on.
  const handlers = [
    ['SIGINT', () => undefined],
    ['SIGTERM', () => child.kill('SIGTERM')],
    ['SIGHUP', () => child.kill('SIGHUP')],
  ];
  for (const [sig, h] of handlers) process.on(sig, h);
  child.on('error', (e) => {
    console.error(`ferry: cannot start ${PINNED_NODE}: ${e.message}`);
    process.exit(1);
  });
  child.on('close', (code, signal) => {
    for (const [sig, h] of handlers) process.off(sig, h);
    if (signal) process.kill(process.pid, signal);
    else process.exit(code === null ? 1 : code);
  });
}

async function main(argv) {
  const major = Number(process.versions.node.split('.')[0]);
  if (major < MIN_NODE_MAJOR) {
    console.error(`ferry: this Node is ${process.version}; the npm scripts need Node ${MIN_NODE_MAJOR} or later to start (they install ferry's own Node 24). See README.md, "The two commands".`);
    process.exit(1);
  }
  const system = argv[0] !== '--no-system';
  const rest = system ? argv : argv.slice(1);
  const [script, ...args] = rest;
  if (!script) {
    console.error('usage: node scripts/ensure-deps.mjs [--no-system] SCRIPT [ARGS...]');
    process.exit(2);
  }
  const pkg = readJson(join(root, 'package.json'));
  const why = whyInstall();
  if (why) {
    console.log(`ferry: installing the npm packages with npm ci (${why}), including the pinned Node 24 runtime…`);
    const status = await npmCi(pkg);
    if (status !== 0) {
      console.error(`ferry: npm ci failed (${status}); nothing else was run.`);
      process.exit(typeof status === 'number' ? status : 1);
    }
    const still = whyInstall();
    if (still) {
      console.error(`ferry: after npm ci, ${still}. Run \`npm ci\` by hand to see why.`);
      process.exit(1);
    }
  }
  if (system) {
    const missing = missingSystemPrograms();
    if (missing.length > 0) {
      console.log(`ferry: missing system programs: ${missing.join(', ')}`);
      const r = spawnSync('bash', [join(root, 'scripts', 'install-system-deps.sh')], { stdio: 'inherit' });
      if (r.status !== 0) process.exit(r.status === null ? 1 : r.status);
    }
  }
  runPinned(script, args);
}

if (process.argv[1] && pathToFileURL(process.argv[1]).href === import.meta.url) await main(process.argv.slice(2));
