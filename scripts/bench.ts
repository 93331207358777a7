// `npm run bench`: ferry against skopeo, crane and oras, side by side on the same two
// registries, in the same run. Writes bench/RESULTS.md and bench/results.json.
//
//   npm run bench                                  every workload, 5 runs per tool
//   npm run bench -- --workload big,many --runs 3  some workloads
//   npm run bench -- --quick                       tiny workloads, 1 run: a smoke test (writes bench/.work/quick/)
//   npm run bench -- --tools ferry,oras            some tools
// Only a whole run (every workload and tool, ferry as shipped, 3 runs or more) replaces the
// published bench/RESULTS.md; a partial one writes bench/.work/partial/ unless --out says where.
//   npm run bench -- --ferry-node-args=--cpu-prof,--cpu-prof-dir=/tmp/prof   profile ferry's runs
//
// Workloads: big, many, multiarch, huge (= huge-512m + huge-2g), fleet, warm.
//
//   npm run bench -- --wan                         the WAN mode (bench/wan/): TLS registries by
//                                                  name through a latency proxy, RTT 50 ms; needs root
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { readFileSync, writeFileSync } from 'node:fs';
import { runBench } from '../bench/run.ts';
import { evaluateTargets, toMarkdown, type BenchResults } from '../bench/report.ts';
import { runWanBench } from '../bench/wan/run.ts';
import { evaluateWanTargets, WAN_RESULTS_FILE, withWanSection, type WanResults } from '../bench/wan/report.ts';

const root = new URL('..', import.meta.url).pathname;

const { values } = parseArgs({
  options: {
    runs: { type: 'string' },
    workload: { type: 'string' },
    tools: { type: 'string' },
    quick: { type: 'boolean', default: false },
    out: { type: 'string' },
    ferry: { type: 'string', default: 'binary' },
    'no-build': { type: 'boolean', default: false },
    'fleet-parallel': { type: 'string', default: '4' },
    'ferry-fleet': { type: 'string', default: 'agent' },
    'agent-max-jobs': { type: 'string', default: '8' },
    'crane-jobs': { type: 'string' },
    'oras-concurrency': { type: 'string' },
    'ferry-concurrency': { type: 'string' },
    'ferry-node-args': { type: 'string' },
    'ferry-baseline': { type: 'string' },
    timeout: { type: 'string', default: '900' },
    'startup-runs': { type: 'string' },
    render: { type: 'string' },
    wan: { type: 'boolean', default: false },
    'wan-rtt': { type: 'string', default: '50' },
    'wan-bandwidth': { type: 'string' },
    'wan-bandwidth-scope': { type: 'string', default: 'link' },
    'wan-window': { type: 'string', default: 'tcp' },
    'wan-max-window': { type: 'string' },
    help: { type: 'boolean', default: false },
  },
  allowPositionals: false,
});

if (values.help) {
  console.log(`usage: node scripts/bench.ts [options]
  --runs N                 runs per tool per workload (default 5; --quick: 1)
  --workload a,b           big, many, multiarch, huge, huge-512m, huge-2g, fleet, warm, warm-signed,
                           throttled, throttled-fleet (default: all)
  --tools a,b              ferry, skopeo, crane, oras, node-floor (the reference Node copier, big and many only) (default: all)
  --quick                  tiny workloads, a smoke test; output to bench/.work/quick unless --out
  --out DIR                where RESULTS.md and results.json go (default: bench/ for a whole run —
                           every workload and tool, ferry as shipped, 3 runs or more; else
                           bench/.work/partial, so a partial run never replaces the published one)
  --ferry binary|bundle|source   run ferry as what ships, the single executable dist/ferry (default;
                           built first for this machine with scripts/package.mjs), as the bundle
                           dist/ferry.mjs (built first with scripts/build.mjs), or from src/main.ts
  --no-build               use the existing dist/ferry or dist/ferry.mjs
  --fleet-parallel N       processes at once for CLI fleet syncs (default 4)
  --ferry-fleet agent|cli  ferry's fleet/warm sync: one \`ferry agent\` fed by the reference control
                           plane (default), or parallel \`ferry copy\` processes like the peers
  --agent-max-jobs N       the agent's --max-jobs (default 8)
  --crane-jobs N, --oras-concurrency N, --ferry-concurrency N   per-image parallelism (default: the tool's own)
  --ferry-node-args a,b    extra node flags for ferry (e.g. --cpu-prof,--cpu-prof-dir=/tmp/prof)
  --ferry-baseline FILE    also run this ferry bundle (.mjs) or executable as tool "ferry-baseline":
                           before/after comparisons in the same run (see docs/performance.md)
  --timeout S              per run (default 900)
  --render DIR             only rewrite DIR/RESULTS.md (and the targets) from DIR/results.json
  --startup-runs N         'ferry version' start-up runs (default 20; --quick: 2); dist/ferry too when it exists

WAN mode (bench/wan/, docs/performance.md "The WAN lab"; needs root):
  --wan                    registries serving TLS (test CA), reached by name through a latency proxy;
                           workloads many, multiarch, fleet (5 images × 4 installs; ferry as one agent,
                           the peers --fleet-parallel CLIs at once), big (200 Mbit/s). Writes
                           results-wan.json and the WAN section of RESULTS.md (bench/ for a whole run:
                           every WAN workload and tool, ferry as shipped, 3 runs or more, the default link)
  --wan-rtt MS             round-trip time (default 50; the issue's other settings: 20, 150)
  --wan-bandwidth MBIT     cap every workload's link at MBIT Mbit/s each way (default: none; big: 200)
  --wan-bandwidth-scope link|connection   one link shared by every connection (default) or a cap per connection
  --wan-window tcp|none    model TCP's window (initial 10 segments, slow start, cap; default) or only delay
  --wan-max-window BYTES   the window's cap (default 4 MiB)`);
  process.exit(0);
}

if (values.render !== undefined) {
  const file = join(values.render, 'results.json');
  const results = JSON.parse(readFileSync(file, 'utf8')) as BenchResults;
  results.targets = evaluateTargets(results);
  writeFileSync(file, `${JSON.stringify(results, null, 2)}\n`);
  const wanFile = join(values.render, WAN_RESULTS_FILE);
  if (existsSync(wanFile)) {
    const wan = JSON.parse(readFileSync(wanFile, 'utf8')) as WanResults;
    wan.targets = evaluateWanTargets(wan);
    writeFileSync(wanFile, `${JSON.stringify(wan, null, 2)}\n`);
  }
  writeFileSync(join(values.render, 'RESULTS.md'), withWanSection(toMarkdown(results), values.render));
  console.log(`rewrote ${join(values.render, 'RESULTS.md')}`);
  process.exit(0);
}

const int = (v: string | undefined, name: string): number | undefined => {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) {
    console.error(`--${name} wants a whole number, not ${v}`);
    process.exit(2);
  }
  return n;
};
const list = (v: string | undefined) => (v ? v.split(',').map((s) => s.trim()).filter(Boolean) : undefined);

const quick = values.quick;
if (values['ferry-fleet'] !== 'agent' && values['ferry-fleet'] !== 'cli') {
  console.error(`--ferry-fleet is agent or cli, not ${values['ferry-fleet']}`);
  process.exit(2);
}
const node = process.execPath;
/** Node running a bundle with the flags its shebang starts Node with, as running it directly would. */
function bundleCommand(entry: string, extraNodeArgs: string[]): string[] {
  const shebang = readFileSync(entry, 'utf8').split('\n', 1)[0] ?? '';
  const shebangFlags = shebang.startsWith('#!') ? shebang.split(/\s+/).filter((a) => a.startsWith('--')) : [];
  return [node, ...shebangFlags, ...extraNodeArgs, entry];
}
const nodeArgs = list(values['ferry-node-args']) ?? [];
const singleExecutable = join(root, 'dist/ferry');
let ferryCommand: string[];
let ferryLabel: string;
if (values.ferry === 'source') {
  ferryCommand = [node, ...nodeArgs, join(root, 'src/main.ts')];
  ferryLabel = 'node src/main.ts (sources, type stripping)';
} else if (values.ferry === 'bundle') {
  const entry = join(root, 'dist/ferry.mjs');
  if (!values['no-build']) {
    console.log('bench: building the bundle (scripts/build.mjs)…');
    const r = spawnSync(node, [join(root, 'scripts/build.mjs')], { cwd: root, stdio: 'inherit' });
    if (r.status !== 0) {
      console.error('bench: the build failed; run with --ferry source to benchmark the sources');
      process.exit(1);
    }
  } else if (!existsSync(entry)) {
    console.error('bench: dist/ferry.mjs not found (npm run build), or drop --no-build');
    process.exit(1);
  }
  ferryCommand = bundleCommand(entry, nodeArgs);
  ferryLabel = 'node dist/ferry.mjs (the bundle)';
} else if (values.ferry === 'binary') {
  if (!values['no-build']) {
    console.log('bench: building the single executable for this machine (scripts/build.mjs --cjs, scripts/package.mjs)…');
    const target = `linux-${process.arch}`;
    for (const step of [['scripts/build.mjs', '--cjs'], ['scripts/package.mjs', '--target', target]]) {
      const r = spawnSync(node, [join(root, step[0]!), ...step.slice(1)], { cwd: root, stdio: 'inherit' });
      if (r.status !== 0) {
        console.error('bench: building the single executable failed; run with --ferry bundle to benchmark the bundle');
        process.exit(1);
      }
    }
  } else if (!existsSync(singleExecutable)) {
    console.error('bench: dist/ferry (the single executable) not found: npm run package, or drop --no-build');
    process.exit(1);
  }
  if (nodeArgs.length) console.warn('bench: --ferry-node-args is ignored for the single executable');
  ferryCommand = [singleExecutable];
  ferryLabel = 'dist/ferry (the single executable)';
} else {
  console.error(`--ferry is bundle, source or binary, not ${values.ferry}`);
  process.exit(2);
}

// A partial run (some workloads or tools, another ferry, a profile, few runs) must not replace the published table.
const runsWanted = int(values.runs, 'runs') ?? (quick ? 1 : 5);
const wholeRun =
  !values.workload && !values.tools && !values['ferry-baseline'] && !values['ferry-node-args'] && (values.ferry ?? 'binary') === 'binary' && runsWanted >= 3;
const outDir = values.out ? resolve(values.out) : join(root, quick ? 'bench/.work/quick' : wholeRun ? 'bench' : 'bench/.work/partial');

// How each tool is run, the same in both modes.
const tool = {
  ferryCommand,
  ferryLabel,
  // A baseline bundle runs under its own shebang's flags too (the heap and young-generation caps):
  // without them it ran with V8's defaults beside a capped ferry, and the two were not comparable.
  baselineCommand: values['ferry-baseline'] ? (/\.(m?js|ts)$/.test(values['ferry-baseline']) ? bundleCommand(resolve(values['ferry-baseline']), []) : [values['ferry-baseline']]) : undefined,
  craneJobs: int(values['crane-jobs'], 'crane-jobs'),
  orasConcurrency: int(values['oras-concurrency'], 'oras-concurrency'),
  ferryConcurrency: int(values['ferry-concurrency'], 'ferry-concurrency'),
};

if (values.wan) {
  const num = (v: string | undefined, name: string): number | undefined => {
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isFinite(n) || n <= 0) {
      console.error(`--${name} wants a positive number, not ${v}`);
      process.exit(2);
    }
    return n;
  };
  const scope = values['wan-bandwidth-scope'];
  const window = values['wan-window'];
  if (scope !== 'link' && scope !== 'connection') {
    console.error(`--wan-bandwidth-scope is link or connection, not ${scope}`);
    process.exit(2);
  }
  if (window !== 'tcp' && window !== 'none') {
    console.error(`--wan-window is tcp or none, not ${window}`);
    process.exit(2);
  }
  const link = {
    rttMs: num(values['wan-rtt'], 'wan-rtt') ?? 50,
    bandwidthMbps: num(values['wan-bandwidth'], 'wan-bandwidth'),
    bandwidthScope: scope,
    window,
    maxWindowBytes: num(values['wan-max-window'], 'wan-max-window'),
  } as const;
  // Only a whole WAN run at the default link replaces the published WAN section.
  const wholeWan = wholeRun && link.rttMs === 50 && !link.bandwidthMbps && scope === 'link' && window === 'tcp' && !link.maxWindowBytes;
  const wanOut = values.out ? resolve(values.out) : join(root, quick ? 'bench/.work/quick-wan' : wholeWan ? 'bench' : 'bench/.work/partial-wan');
  const wan = await runWanBench({
    runs: runsWanted,
    quick,
    workloads: list(values.workload),
    tools: list(values.tools),
    outDir: wanOut,
    workDir: join(root, 'bench/.work'),
    tool,
    link,
    fleetParallel: int(values['fleet-parallel'], 'fleet-parallel') ?? 4,
    agentMaxJobs: int(values['agent-max-jobs'], 'agent-max-jobs') ?? 8,
    timeoutMs: (int(values.timeout, 'timeout') ?? 900) * 1000,
    log: (line) => console.log(line),
  });
  const failedWan = wan.workloads.flatMap((w) => w.summary.filter((s) => !s.verified).map((s) => `${w.name}/${s.tool}`));
  console.log('');
  for (const t of wan.targets) console.log(`${t.met === null ? 'n/a ' : t.met ? 'MET ' : 'NOT '} ${t.description}: ${t.measured}`);
  console.log(`\nwrote ${wanOut}/${WAN_RESULTS_FILE} and RESULTS.md${!values.out && !quick && !wholeWan ? ' (a partial WAN run: bench/ keeps the published one)' : ''}`);
  if (failedWan.length) {
    console.error(`bench: WAN runs failed or were not byte-exact: ${failedWan.join(', ')}`);
    process.exit(1);
  }
  process.exit(0);
}

const results = await runBench({
  runs: runsWanted,
  quick,
  workloads: list(values.workload),
  tools: list(values.tools),
  outDir,
  workDir: join(root, 'bench/.work'),
  tool,
  singleExecutable: existsSync(singleExecutable) ? singleExecutable : undefined,
  fleetParallel: int(values['fleet-parallel'], 'fleet-parallel') ?? 4,
  ferryFleet: values['ferry-fleet'] === 'cli' ? 'cli' : 'agent',
  agentMaxJobs: int(values['agent-max-jobs'], 'agent-max-jobs') ?? 8,
  timeoutMs: (int(values.timeout, 'timeout') ?? 900) * 1000,
  startupRuns: int(values['startup-runs'], 'startup-runs') ?? (quick ? 2 : 20),
  log: (line) => console.log(line),
});

const failed = results.workloads.flatMap((w) => w.summary.filter((s) => !s.verified).map((s) => `${w.name}/${s.tool}`));
console.log('');
for (const t of results.targets) console.log(`${t.met === null ? 'n/a ' : t.met ? 'MET ' : 'NOT '} ${t.description}: ${t.measured}`);
console.log(`\nwrote ${outDir}/RESULTS.md and results.json${!values.out && !quick && !wholeRun ? ' (a partial run: bench/RESULTS.md keeps the published one)' : ''}`);
if (failed.length) {
  console.error(`bench: runs failed or were not byte-exact: ${failed.join(', ')}`);
  process.exit(1);
}
