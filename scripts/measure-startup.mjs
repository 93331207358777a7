// Measures how long ferry takes to start: runs each command N times, interleaved (so a busy
// moment of the machine hits every command alike), and prints the median and the 10th and 90th
// percentiles of the wall-clock time, from spawn to exit. Where `perf` is installed, it also
// measures the CPU time of each run (perf stat's task-clock, every thread of the process), which
// a busy machine disturbs much less than the wall clock.
//
//   node scripts/measure-startup.mjs [--runs N] [--warmup N] [--json] [--no-cpu] [-- LABEL=COMMAND ...]
//
// Without commands it measures the packaged binary against the bundle and a bare Node:
//   dist/ferry version, dist/ferry --help, node dist/ferry.mjs version, node dist/ferry.cjs version,
//   node -e 0 (the floor: what Node itself costs to start on this machine).
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const argv = process.argv.slice(2);
const flag = (name, dflt) => {
  const i = argv.indexOf(name);
  return i >= 0 ? Number(argv[i + 1]) : dflt;
};
const runs = flag('--runs', 30);
const warmup = flag('--warmup', 3);
const json = argv.includes('--json');
const node = join(root, 'node_modules/node/bin/node');
const dist = join(root, 'dist');

let commands;
const dashdash = argv.indexOf('--');
if (dashdash >= 0) {
  commands = argv.slice(dashdash + 1).map((spec) => {
    const eq = spec.indexOf('=');
    return { label: spec.slice(0, eq), argv: spec.slice(eq + 1).split(' ').filter(Boolean) };
  });
} else {
  commands = [
    { label: 'dist/ferry version', argv: [join(dist, 'ferry'), 'version'] },
    { label: 'dist/ferry --help', argv: [join(dist, 'ferry'), '--help'] },
    { label: 'node dist/ferry.mjs version', argv: [node, join(dist, 'ferry.mjs'), 'version'] },
    { label: 'node dist/ferry.cjs version', argv: [node, join(dist, 'ferry.cjs'), 'version'] },
    { label: 'node -e 0 (bare Node 24)', argv: [node, '-e', '0'] },
  ];
  for (const c of commands) {
    if (!existsSync(c.argv[0]) || (c.argv[1]?.startsWith(dist) && !existsSync(c.argv[1]))) {
      console.error(`missing ${c.argv[1]?.startsWith(dist) ? c.argv[1] : c.argv[0]}: run "npm run package" first`);
      process.exit(1);
    }
  }
}

function once(c) {
  const start = process.hrtime.bigint();
  const r = spawnSync(c.argv[0], c.argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NODE_OPTIONS: '' } });
  const ms = Number(process.hrtime.bigint() - start) / 1e6;
  if (r.status !== 0) throw new Error(`${c.label} exited ${r.status}: ${r.stderr}`);
  return ms;
}

const perf = spawnSync('perf', ['--version'], { stdio: 'ignore' }).status === 0 && !argv.includes('--no-cpu');
const work = mkdtempSync(join(tmpdir(), 'ferry-startup-'));
/** CPU milliseconds of one run, from perf stat's task-clock. */
function cpu(c) {
  const out = join(work, 'perf.csv');
  const r = spawnSync('perf', ['stat', '-x,', '-e', 'task-clock', '-o', out, '--', ...c.argv], { stdio: 'ignore', env: { ...process.env, NODE_OPTIONS: '' } });
  if (r.status !== 0) throw new Error(`perf stat ${c.label} exited ${r.status}`);
  const line = readFileSync(out, 'utf8').split('\n').find((l) => l.includes('task-clock'));
  return Number(line.split(',')[0]);
}

const times = new Map(commands.map((c) => [c.label, []]));
const cpus = new Map(commands.map((c) => [c.label, []]));
for (let i = 0; i < warmup; i++) for (const c of commands) once(c);
for (let i = 0; i < runs; i++) {
  for (const c of commands) {
    times.get(c.label).push(once(c));
    if (perf) cpus.get(c.label).push(cpu(c));
  }
}
rmSync(work, { recursive: true, force: true });

const pct = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor((sorted.length - 1) * p + 0.5))];
const rows = commands.map((c) => {
  const t = times.get(c.label).sort((a, b) => a - b);
  const u = cpus.get(c.label).sort((a, b) => a - b);
  const row = { command: c.label, median_ms: +pct(t, 0.5).toFixed(1), p10_ms: +pct(t, 0.1).toFixed(1), p90_ms: +pct(t, 0.9).toFixed(1), runs: t.length };
  return perf ? { ...row, cpu_median_ms: +pct(u, 0.5).toFixed(1) } : row;
});
if (json) console.log(JSON.stringify(rows, null, 2));
else {
  const w = Math.max(...rows.map((r) => r.command.length));
  console.log(`${'command'.padEnd(w)}  median    p10    p90${perf ? '    cpu' : ''}   (ms, ${runs} runs each, interleaved, after ${warmup} warm-up rounds)`);
  for (const r of rows) {
    console.log(`${r.command.padEnd(w)}  ${String(r.median_ms).padStart(6)} ${String(r.p10_ms).padStart(6)} ${String(r.p90_ms).padStart(6)}${perf ? ` ${String(r.cpu_median_ms).padStart(6)}` : ''}`);
  }
  if (perf) console.log('median, p10, p90: wall clock; cpu: median CPU time (perf stat task-clock)');
}
