// The benchmark itself: start the registries, seed, run every tool in alternation, verify
// every run, summarize. scripts/bench.ts maps flags onto BenchOptions.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, freemem, release, totalmem } from 'node:os';
import { join } from 'node:path';
import { OciClient } from '../test/harness/oci-client.ts';
import { startThrottleProxy, type ThrottleProxy } from '../test/harness/throttle-proxy.ts';
import { copyOne, ferryFleetModeLabel, ferryFleetSync, syncWithParallelCli, type FerryFleetMode, type FleetJob, type FleetMeasure, type FleetSync } from './fleet.ts';
import { CLK_TCK, GNU_TIME, loadAverage, median, min, runMeasured, systemCpuTicks } from './measure.ts';
import { addCounts, BenchRegistry } from './registries.ts';
import { evaluateTargets, summarize, toMarkdown, type BenchResults, type RunResult, type WorkloadResult } from './report.ts';
import { makeTools, registryVersion, type RunContext, type Tool, type ToolSettings } from './tools.ts';
import { selectWorkloads, workloads, type SourceImage, type Workload } from './workloads.ts';
import { withWanSection } from './wan/report.ts';

export interface BenchOptions {
  runs: number;
  quick: boolean;
  workloads?: string[] | undefined;
  tools?: string[] | undefined;
  outDir: string;
  /** Where registries' temp dirs and run state go is the system temp dir; this holds scratch. */
  workDir: string;
  tool: ToolSettings;
  /** dist/ferry, when it exists: its start-up is measured too. */
  singleExecutable?: string | undefined;
  fleetParallel: number;
  /** How ferry syncs fleet and warm: one agent (default) or parallel CLI processes. */
  ferryFleet: FerryFleetMode;
  agentMaxJobs: number;
  timeoutMs: number;
  startupRuns: number;
  log: (line: string) => void;
}

export async function runBench(o: BenchOptions): Promise<BenchResults> {
  if (!existsSync(GNU_TIME)) throw new Error(`${GNU_TIME} not found: install the Debian package "time" (sudo bash scripts/install-system-deps.sh)`);
  const all = makeTools(o.tool);
  const tools = o.tools?.length ? all.filter((t) => o.tools!.includes(t.name)) : all;
  const missing = (o.tools ?? []).filter((n) => !all.some((t) => t.name === n));
  if (missing.length) throw new Error(`unknown tool(s): ${missing.join(', ')} (have: ${all.map((t) => t.name).join(', ')})`);
  const selected = selectWorkloads(workloads(o.quick), o.workloads);
  mkdirSync(o.workDir, { recursive: true });
  const scratch = mkdtempSync(join(o.workDir, 'run-'));
  const dockerConfig = join(scratch, 'docker-config');
  mkdirSync(dockerConfig);

  const started = new Date();
  const load0 = loadAverage();
  const commit = gitDescribe();
  const results: BenchResults = {
    schema: 1,
    started_at: started.toISOString(),
    finished_at: '',
    quick: o.quick,
    config: {
      runs: o.runs,
      workloads: selected.map((w) => w.name),
      tools: tools.map((t) => t.name),
      fleet_parallel: o.fleetParallel,
      ferry_fleet: o.ferryFleet,
      agent_max_jobs: o.agentMaxJobs,
      ferry: o.tool.ferryLabel,
    },
    machine: {},
    versions: {},
    invocations: Object.fromEntries(tools.map((t) => [t.name, t.invocation])),
    workloads: [],
    targets: [],
  };
  results.versions = {
    node: process.version,
    ...Object.fromEntries(tools.map((t) => [t.name, t.version()])),
    registry: registryVersion(),
  };
  results.versions.ferry = `${results.versions.ferry ?? ''} — run as ${o.tool.ferryLabel}`;
  o.log(`versions: ${Object.entries(results.versions).map(([k, v]) => `${k} ${v}`).join('; ')}`);

  o.log('starting the source and destination registries…');
  const [src, dst] = await Promise.all([BenchRegistry.start('source'), BenchRegistry.start('destination')]);
  try {
    const srcC = new OciClient({ host: src.host, timeoutMs: 600_000 });
    const dstC = new OciClient({ host: dst.host, timeoutMs: 600_000 });
    const seeded = new Map<string, SourceImage[]>();
    for (const w of selected) {
      let images = seeded.get(w.seedKey);
      if (!images) {
        o.log(`[${w.name}] seeding the source registry…`);
        const t = performance.now();
        images = await w.seed(srcC, o.quick);
        seeded.set(w.seedKey, images);
        o.log(`[${w.name}] seeded ${images.length} image(s) in ${((performance.now() - t) / 1000).toFixed(1)} s`);
      }
      results.workloads.push(await runWorkload(w, images, tools, { src, dst, dstC, scratch, dockerConfig, o }));
    }
    if (tools.some((t) => t.name === 'ferry') && o.startupRuns > 0) {
      // The ferry the copies ran with, and the single executable when one is built.
      const candidates: Array<{ label: string; argv: string[] }> = [{ label: `${o.tool.ferryLabel} version`, argv: [...o.tool.ferryCommand, 'version'] }];
      if (o.singleExecutable && o.singleExecutable !== o.tool.ferryCommand[0]) {
        candidates.push({ label: 'dist/ferry version (single executable)', argv: [o.singleExecutable, 'version'] });
      }
      // The runtime ferry embeds, doing nothing, measured interleaved with it: the floor the
      // target sits on (the single executable answers `version` before any of ferry's code loads).
      const reference = { label: `node -e 0 (the Node ${process.version} ferry runs on, doing nothing)`, argv: [process.execPath, '-e', '0'] };
      // What measuring costs by itself: this harness spawning GNU time, which runs a program that
      // does nothing, and the wait for both to exit. Subtracted round by round, it leaves each
      // command's own start-up (as hyperfine subtracts its shell's spawn time).
      const harness = { label: '/bin/true (the harness: spawn, GNU time, exit, close)', argv: ['/bin/true'] };
      const all = [...candidates, reference, harness];
      const ms = all.map(() => [] as number[]);
      const rss = all.map(() => [] as number[]);
      for (let i = 0; i < o.startupRuns; i++) {
        for (const [k, c] of all.entries()) {
          const m = await runMeasured({ cmd: c.argv[0]!, args: c.argv.slice(1), env: { ...process.env, DOCKER_CONFIG: dockerConfig } }, 30_000);
          ms[k]!.push(m.wall_s * 1000);
          rss[k]!.push(m.rss_mib);
        }
      }
      const overhead = ms[all.length - 1]!;
      const entries = all.map((c, k) => ({
        command: c.label,
        runs: o.startupRuns,
        wall_median_ms: median(ms[k]!),
        wall_min_ms: min(ms[k]!),
        net_median_ms: median(ms[k]!.map((v, i) => v - overhead[i]!)),
        rss_median_mib: median(rss[k]!),
      }));
      results.startup = entries.slice(0, candidates.length);
      results.startup_reference = entries[candidates.length];
      results.startup_harness = entries[candidates.length + 1];
      for (const entry of entries.slice(0, -1)) o.log(`start-up: ${entry.command}: median ${entry.wall_median_ms.toFixed(0)} ms as measured, ${entry.net_median_ms.toFixed(0)} ms net of the harness`);
      o.log(`start-up: the harness alone (/bin/true): median ${median(overhead).toFixed(0)} ms`);
    }
  } finally {
    await Promise.all([src.stop(), dst.stop()]);
    rmSync(scratch, { recursive: true, force: true });
  }

  results.sha256_cost = measureSha256Cost(o.quick ? 1 : 5, o.quick ? 64 : 1024);
  o.log(`SHA-256 alone: ${results.sha256_cost.cpu_s_per_gib_median.toFixed(2)} CPU-s/GiB (median of ${results.sha256_cost.runs})`);

  const load1 = loadAverage();
  const foreign = results.workloads.flatMap((w) => Object.values(w.runs).flat()).map((r) => r.foreign_cpu_pct);
  results.machine = {
    cpu: `${cpus().length} × ${cpus()[0]?.model ?? 'unknown'}`,
    memory: `${(totalmem() / 1024 ** 3).toFixed(1)} GiB (${(freemem() / 1024 ** 3).toFixed(1)} GiB free at the end)`,
    kernel: `Linux ${release()}`,
    os: osRelease(),
    storage: 'registries on the system temp dir\'s filesystem: ' + dfLine(),
    'load average (1/5/15 min) at start': load0.map((x) => x.toFixed(2)).join(' / '),
    'load average at end': load1.map((x) => x.toFixed(2)).join(' / '),
    'foreign CPU during runs (median / max, % of all cores)': foreign.length
      ? `${median(foreign).toFixed(0)}% / ${Math.max(...foreign).toFixed(0)}%`
      : 'n/a',
    'git commit (at the start)': commit,
  };
  results.finished_at = new Date().toISOString();
  results.targets = evaluateTargets(results);
  mkdirSync(o.outDir, { recursive: true });
  writeFileSync(join(o.outDir, 'results.json'), `${JSON.stringify(results, null, 2)}\n`);
  writeFileSync(join(o.outDir, 'RESULTS.md'), withWanSection(toMarkdown(results), o.outDir));
  return results;
}

/**
 * What SHA-256 alone costs here (bench/sha256-cost.mjs, run by the Node ferry embeds), after the
 * registries are stopped: the floor under the CPU of a copier that verifies every byte, which the
 * CPU targets are read against (report.ts).
 */
function measureSha256Cost(runs: number, mib: number): NonNullable<BenchResults['sha256_cost']> {
  const script = new URL('./sha256-cost.mjs', import.meta.url).pathname;
  const perGib: number[] = [];
  for (let i = 0; i < runs; i++) {
    const r = spawnSync(process.execPath, [script, String(mib)], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`bench/sha256-cost.mjs failed (${r.status}): ${r.stderr}`);
    perGib.push((JSON.parse(r.stdout) as { cpu_s_per_gib: number }).cpu_s_per_gib);
  }
  return { runs, mib_per_run: mib, cpu_s_per_gib_median: median(perGib), cpu_s_per_gib_min: min(perGib), node: process.version };
}

interface Env {
  src: BenchRegistry;
  dst: BenchRegistry;
  dstC: OciClient;
  scratch: string;
  dockerConfig: string;
  o: BenchOptions;
}

async function runWorkload(w: Workload, images: SourceImage[], allTools: Tool[], env: Env): Promise<WorkloadResult> {
  const { o } = env;
  const tools = allTools.filter((t) => (!t.workloads || t.workloads.includes(w.name)) && !(w.referrers && t.cannotCopyReferrers));
  const leftOut = w.referrers ? allTools.filter((t) => t.cannotCopyReferrers && (!t.workloads || t.workloads.includes(w.name))) : [];
  const peers = tools.filter((t) => t.peer).map((t) => t.name);
  const result: WorkloadResult = {
    name: w.name,
    kind: w.kind,
    description: w.description,
    images: images.length,
    bytes: images.reduce((n, i) => n + i.bytes, 0),
    blobs: new Set(images.flatMap((i) => i.blobs)).size,
    runs: Object.fromEntries(tools.map((t) => [t.name, [] as RunResult[]])),
    peers,
    summary: [],
  };
  if (w.kind !== 'single' && tools.some((t) => t.name === 'ferry')) result.ferry_mode = ferryFleetModeLabel(o.ferryFleet, o.agentMaxJobs);
  if (leftOut.length) result.left_out = Object.fromEntries(leftOut.map((t) => [t.name, t.cannotCopyReferrers!]));
  const referrers = w.referrers === true;

  const jobsInto = (prefix: string, dstHost = env.dst.host): FleetJob[] =>
    images.map((i) => ({ source: `${env.src.host}/${i.repo}:${i.tag}`, destination: `${dstHost}/${prefix}/${i.repo}:${i.tag}` }));
  const agent = { ferryCommand: o.tool.ferryCommand, maxJobs: o.agentMaxJobs, concurrency: o.tool.ferryConcurrency };
  const baselineAgent = { ...agent, ferryCommand: o.tool.baselineCommand ?? [] };
  const syncFor = (t: Tool): FleetSync =>
    t.name === 'ferry'
      ? ferryFleetSync(t, o.ferryFleet, agent)
      : t.name === 'ferry-baseline'
        ? ferryFleetSync(t, o.ferryFleet, baselineAgent)
        : (jobs, ctx) => syncWithParallelCli(t, jobs, ctx);

  // warm: every tool first syncs its own destination (untimed, verified); the timed runs re-sync it.
  const warmState = new Map<string, string>();
  if (w.kind === 'warm') {
    for (const t of tools) {
      const stateDir = mkdtempSync(join(env.scratch, `warm-${t.name}-`));
      warmState.set(t.name, stateDir);
      const jobs = jobsInto(`warm/${t.name}`);
      o.log(`[warm] ${t.name}: preparing the destination (untimed)…`);
      const m = await syncFor(t)(jobs, { stateDir, dockerConfig: env.dockerConfig, referrers, parallel: o.fleetParallel, timeoutMs: o.timeoutMs });
      if (m.failures.length) throw new Error(`warm: ${t.name} could not prepare the destination: ${m.failures[0]}`);
      await verifyAll(env.dstC, images, `warm/${t.name}`);
    }
  }

  const rounds = o.quick ? o.runs : o.runs * (w.roundsPerRun ?? 1);
  for (let round = 1; round <= rounds; round++) {
    for (const t of tools) {
      const prefix = w.kind === 'warm' ? `warm/${t.name}` : `${w.name}/${t.name}-r${round}`;
      const stateDir = w.kind === 'warm' ? warmState.get(t.name)! : mkdtempSync(join(env.scratch, `state-${t.name}-`));
      const ctx: RunContext = { stateDir, dockerConfig: env.dockerConfig, referrers };
      // A throttled workload writes through a fresh throttling proxy (its bucket full, as after a quiet second).
      const throttle: ThrottleProxy | undefined = w.throttle ? await startThrottleProxy(env.dst.host, w.throttle) : undefined;
      const jobs = jobsInto(prefix, throttle?.host);

      t.beforeRun?.();
      if (!o.quick) spawnSync('sync'); // nobody pays for the previous run's writeback
      const [s0, d0] = [await env.src.settle(), await env.dst.settle()];
      const sys0 = systemCpuTicks();
      const reg0 = env.src.cpuSeconds() + env.dst.cpuSeconds();
      const self0 = process.cpuUsage();

      let m: FleetMeasure;
      if (w.kind === 'single') {
        m = await copyOne(t, jobs[0]!, ctx, o.timeoutMs);
      } else {
        m = await syncFor(t)(jobs, { ...ctx, parallel: o.fleetParallel, timeoutMs: o.timeoutMs });
      }

      const sys1 = systemCpuTicks();
      const reg1 = env.src.cpuSeconds() + env.dst.cpuSeconds();
      const self1 = process.cpuUsage(self0);
      const [s1, d1] = [await env.src.settle(), await env.dst.settle()];
      const source = env.src.countBetween(s0, s1);
      const destination = env.dst.countBetween(d0, d1);
      const busy = (sys1.busy - sys0.busy) / CLK_TCK;
      const cpu = m.user_s + m.sys_s;
      const registryCpu = reg1 - reg0;
      const foreign = Math.max(0, busy - cpu - registryCpu - (self1.user + self1.system) / 1e6);

      const run: RunResult = {
        round,
        wall_s: m.wall_s,
        user_s: m.user_s,
        sys_s: m.sys_s,
        cpu_s: cpu,
        rss_mib: m.rss_mib,
        ...(w.kind !== 'single' ? { rss_sum_mib: m.rss_sum_mib } : {}),
        processes: m.processes,
        requests: { source, destination, total: addCounts(source, destination).total },
        registry_cpu_s: registryCpu,
        foreign_cpu_pct: (100 * foreign) / (m.wall_s * cpus().length),
        ok: m.failures.length === 0,
        verified: false,
      };
      if (throttle && w.throttle) {
        const refused = throttle.throttled();
        run.throttle = { requests: throttle.requests.length, refused, share: throttle.refusedShare(), floor_s: (throttle.requests.length - refused) / w.throttle.perSecond };
        await throttle.stop();
      }
      if (m.failures.length) run.error = m.failures.slice(0, 3).join('\n');
      else {
        try {
          await verifyAll(env.dstC, images, prefix);
          run.verified = true;
        } catch (e) {
          run.ok = false;
          run.error = `verification failed: ${(e as Error).message}`;
        }
      }
      if (stateDir !== warmState.get(t.name)) rmSync(stateDir, { recursive: true, force: true });
      result.runs[t.name]!.push(run);
      o.log(
        `[${w.name}] round ${round}/${rounds} ${t.name.padEnd(6)} ${run.wall_s.toFixed(2)} s wall, ${cpu.toFixed(2)} s CPU, ` +
          `${run.rss_mib.toFixed(0)} MiB RSS, ${source.total}+${destination.total} requests, foreign CPU ${run.foreign_cpu_pct.toFixed(0)}%` +
          (run.throttle ? `, ${run.throttle.refused} of ${run.throttle.requests} refused (${(run.throttle.share * 100).toFixed(1)} %), ${(run.wall_s / run.throttle.floor_s).toFixed(2)}× the floor` : '') +
          (run.ok ? ', verified' : `, FAILED: ${run.error}`),
      );
    }
  }
  summarize(result, peers);
  return result;
}

/**
 * Every image at `prefix/<repo>:<tag>` in the destination is the source image, byte for byte; its
 * referrers, where the workload has some, are there too and listed in the fallback index (the
 * bench's destination, distribution 2.8, has no referrers API).
 */
async function verifyAll(dstC: OciClient, images: SourceImage[], prefix: string): Promise<void> {
  for (const i of images) {
    const got = await dstC.verifyImage(`${prefix}/${i.repo}`, i.tag);
    if (got.digest !== i.digest) throw new Error(`${prefix}/${i.repo}:${i.tag} is ${got.digest}, the source is ${i.digest}`);
    const blobs = got.blobs.map((b) => b.digest).sort();
    if (blobs.join() !== i.blobs.join()) throw new Error(`${prefix}/${i.repo}:${i.tag} has blobs ${blobs.length}, the source ${i.blobs.length}`);
    if (!i.referrers?.length) continue;
    const index = JSON.parse((await dstC.getManifest(`${prefix}/${i.repo}`, i.digest.replace(':', '-'))).bytes.toString('utf8')) as { manifests?: Array<{ digest: string }> };
    const listed = new Set((index.manifests ?? []).map((d) => d.digest));
    for (const r of i.referrers) {
      if (!listed.has(r)) throw new Error(`${prefix}/${i.repo}: referrer ${r} is not listed in the fallback index`);
      await dstC.verifyImage(`${prefix}/${i.repo}`, r);
    }
  }
}

function osRelease(): string {
  try {
    const text = execFileSync('cat', ['/etc/os-release'], { encoding: 'utf8' });
    return /PRETTY_NAME="([^"]+)"/.exec(text)?.[1] ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

function dfLine(): string {
  try {
    const out = execFileSync('df', ['-h', '--output=source,fstype,size,avail', process.env.TMPDIR ?? '/tmp'], { encoding: 'utf8' }).trim().split('\n')[1];
    return out?.trim().replace(/\s+/g, ' ') ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

function gitDescribe(): string {
  try {
    const head = execFileSync('git', ['rev-parse', '--short=12', 'HEAD'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--untracked-files=no', 'src'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    return dirty ? `${head} + uncommitted changes in src/` : head;
  } catch {
    return 'unknown';
  }
}
