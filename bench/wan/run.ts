// The benchmark's WAN mode: the lab (lab.ts), its workloads (workloads.ts), every tool
// in alternation through the same lab, every run verified, each workload against the best peer
// and its round-trip floor (floor.ts). scripts/bench.ts --wan maps flags onto WanBenchOptions.
import { spawnSync, execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import type { OciClient } from '../../test/harness/oci-client.ts';
import { copyOne, syncWithAgent, syncWithParallelCli, ferryFleetModeLabel, type FleetJob, type FleetMeasure } from '../fleet.ts';
import { CLK_TCK, GNU_TIME, loadAverage, median, systemCpuTicks } from '../measure.ts';
import { addCounts } from '../registries.ts';
import { summarize, toMarkdown, type BenchResults } from '../report.ts';
import { registryVersion, type RunContext, type Tool, type ToolSettings } from '../tools.ts';
import type { SourceImage } from '../workloads.ts';
import { roundTripFloor, workShape } from './floor.ts';
import { LAB_NAMES, probeLab, startWanLab, type LinkSettings, type WanLab } from './lab.ts';
import { evaluateWanTargets, summarizeWan, WAN_RESULTS_FILE, wanMarkdown, withWanSection, type WanResults, type WanRunResult, type WanWorkloadResult } from './report.ts';
import { wanTools } from './tools.ts';
import { selectWanWorkloads, wanWorkloads, type WanWorkload } from './workloads.ts';

export interface WanBenchOptions {
  runs: number;
  quick: boolean;
  workloads?: string[] | undefined;
  tools?: string[] | undefined;
  outDir: string;
  workDir: string;
  tool: ToolSettings;
  /** The link for every workload (big: its own cap unless this one sets one). */
  link: LinkSettings;
  fleetParallel: number;
  agentMaxJobs: number;
  timeoutMs: number;
  log: (line: string) => void;
}

export async function runWanBench(o: WanBenchOptions): Promise<WanResults> {
  if (!existsSync(GNU_TIME)) throw new Error(`${GNU_TIME} not found: install the Debian package "time" (sudo bash scripts/install-system-deps.sh)`);
  const selected = selectWanWorkloads(wanWorkloads(o.quick), o.workloads);
  const started = new Date();
  const load0 = loadAverage();
  const commit = gitHead();

  const lab = await startWanLab({ log: o.log });
  mkdirSync(o.workDir, { recursive: true });
  const scratch = mkdtempSync(join(o.workDir, 'wan-'));
  const dockerConfig = join(scratch, 'docker-config');
  mkdirSync(dockerConfig);
  const all = wanTools(o.tool, lab.wrap);
  const tools = o.tools?.length ? all.filter((t) => o.tools!.includes(t.name)) : all;
  const missing = (o.tools ?? []).filter((n) => !all.some((t) => t.name === n));
  const results: WanResults = {
    schema: 1,
    mode: 'wan',
    started_at: started.toISOString(),
    finished_at: '',
    quick: o.quick,
    config: {
      runs: o.runs,
      rtt_ms: o.link.rttMs,
      link: o.link,
      workloads: selected.map((w) => w.name),
      tools: tools.map((t) => t.name),
      fleet_parallel: o.fleetParallel,
      agent_max_jobs: o.agentMaxJobs,
      ferry: o.tool.ferryLabel,
    },
    machine: {},
    versions: {},
    invocations: Object.fromEntries(tools.map((t) => [t.name, t.invocation])),
    lab: {
      names: { ...LAB_NAMES },
      addresses: lab.addresses,
      tls: 'distribution 2.8 with http.tls, a certificate from a test CA made with the openssl CLI; TLS 1.3, HTTP/2 offered by ALPN',
      resolution:
        'Every tool runs under `lab-exec`: a private mount namespace (unshare) in which the lab\'s hosts file is bind-mounted over /etc/hosts ' +
        `(the names resolve to ${Object.values(lab.addresses).join(' and ')}, port 443, the proxy; the machine's /etc/hosts is not touched), ` +
        'SSL_CERT_FILE (crane, oras, skopeo) and NODE_EXTRA_CA_CERTS (ferry) naming the test CA.',
    },
    workloads: [],
    targets: [],
  };
  try {
    if (missing.length) throw new Error(`unknown tool(s) in WAN mode: ${missing.join(', ')} (have: ${all.map((t) => t.name).join(', ')})`);
    results.versions = { node: process.version, ...Object.fromEntries(tools.map((t) => [t.name, t.version()])), registry: registryVersion() };
    results.versions.ferry = `${results.versions.ferry ?? ''} — run as ${o.tool.ferryLabel}`;
    for (const w of selected) {
      o.log(`[wan ${w.name}] seeding the source registry…`);
      const t0 = performance.now();
      const images = await w.seed(lab.srcClient, o.quick);
      o.log(`[wan ${w.name}] seeded ${images.length} image(s) in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
      results.workloads.push(await runWanWorkload(w, images, tools, lab, { scratch, dockerConfig, o }));
    }
  } finally {
    await lab.stop();
    rmSync(scratch, { recursive: true, force: true });
  }

  const foreign = results.workloads.flatMap((w) => Object.values(w.runs).flat()).map((r) => r.foreign_cpu_pct);
  const load1 = loadAverage();
  results.machine = {
    cpu: `${cpus().length} × ${cpus()[0]?.model ?? 'unknown'}`,
    'load average (1/5/15 min) at start': load0.map((x) => x.toFixed(2)).join(' / '),
    'load average at end': load1.map((x) => x.toFixed(2)).join(' / '),
    'foreign CPU during runs (median / max, % of all cores)': foreign.length ? `${median(foreign).toFixed(0)}% / ${Math.max(...foreign).toFixed(0)}%` : 'n/a',
    'git commit (at the start)': commit,
  };
  results.finished_at = new Date().toISOString();
  results.targets = evaluateWanTargets(results);
  writeWanResults(results, o.outDir);
  return results;
}

/** results-wan.json, and RESULTS.md: the loopback results there (if any) followed by this WAN section. */
export function writeWanResults(results: WanResults, outDir: string): void {
  mkdirSync(outDir, { recursive: true });
  writeFileSync(join(outDir, WAN_RESULTS_FILE), `${JSON.stringify(results, null, 2)}\n`);
  const loopback = join(outDir, 'results.json');
  const md = existsSync(loopback)
    ? withWanSection(toMarkdown(JSON.parse(readFileSync(loopback, 'utf8')) as BenchResults), outDir)
    : `# ferry benchmark results\n\n${wanMarkdown(results)}`;
  writeFileSync(join(outDir, 'RESULTS.md'), md);
}

interface Env {
  scratch: string;
  dockerConfig: string;
  o: WanBenchOptions;
}

async function runWanWorkload(w: WanWorkload, images: SourceImage[], allTools: Tool[], lab: WanLab, env: Env): Promise<WanWorkloadResult> {
  const { o } = env;
  const tools = allTools;
  const peers = tools.filter((t) => t.peer).map((t) => t.name);
  const link: LinkSettings = { ...o.link, bandwidthMbps: o.link.bandwidthMbps ?? w.bandwidthMbps };
  const shape = await workShape(lab.srcClient, images);
  const result: WanWorkloadResult = {
    name: w.name,
    kind: w.kind,
    description: w.description,
    images: images.length,
    bytes: images.reduce((n, i) => n + i.bytes, 0),
    blobs: new Set(images.flatMap((i) => i.blobs)).size,
    runs: Object.fromEntries(tools.map((t) => [t.name, [] as WanRunResult[]])),
    peers,
    summary: [],
    installs: w.installs,
    link,
    floor: roundTripFloor(shape, link),
    probes: [],
    wan_summary: [],
  };
  if (w.kind === 'fleet' && tools.some((t) => t.name === 'ferry')) result.ferry_mode = ferryFleetModeLabel('agent', o.agentMaxJobs);
  o.log(`[wan ${w.name}] round-trip floor ${result.floor.seconds.toFixed(2)} s: ${result.floor.explain}`);

  const proxy = await lab.startLink(link);
  try {
    for (const side of ['source', 'destination'] as const) {
      const p = await probeLab(side, lab.addresses[side], lab.pki.caPath);
      result.probes.push(p);
      o.log(`[wan ${w.name}] probe ${side}: TLS connect ${p.connect_ms.toFixed(0)} ms, GET /v2/ ${p.request_ms.map((x) => x.toFixed(0)).join(' ')} ms (RTT ${link.rttMs}), ALPN ${String(p.alpn)}`);
    }
    const jobsInto = (prefix: string): FleetJob[] =>
      Array.from({ length: w.installs }, (_, k) => k).flatMap((k) =>
        images.map((i) => ({
          source: `${lab.names.source}/${i.repo}:${i.tag}`,
          destination: `${lab.names.destination}/${prefix}${w.installs > 1 ? `/install-${k + 1}` : ''}/${i.repo}:${i.tag}`,
        })),
      );
    const agent = { ferryCommand: [lab.execPath, ...o.tool.ferryCommand], maxJobs: o.agentMaxJobs, concurrency: o.tool.ferryConcurrency };
    const baselineAgent = { ...agent, ferryCommand: [lab.execPath, ...(o.tool.baselineCommand ?? [])] };

    const rounds = o.quick ? o.runs : o.runs * w.roundsPerRun;
    for (let round = 1; round <= rounds; round++) {
      for (const t of tools) {
        const prefix = `wan-${w.name}/${t.name}-r${round}`;
        const stateDir = mkdtempSync(join(env.scratch, `state-${t.name}-`));
        const ctx: RunContext = { stateDir, dockerConfig: env.dockerConfig };
        const jobs = jobsInto(prefix);

        t.beforeRun?.();
        if (!o.quick) spawnSync('sync');
        const [s0, d0] = [await lab.src.settle(), await lab.dst.settle()];
        const c0 = await proxy.counters();
        const sys0 = systemCpuTicks();
        const reg0 = lab.src.cpuSeconds() + lab.dst.cpuSeconds();
        const lab0 = proxy.cpuSeconds();
        const self0 = process.cpuUsage();

        let m: FleetMeasure;
        if (w.kind === 'single') {
          m = await copyOne(t, jobs[0]!, ctx, o.timeoutMs);
        } else if (t.name === 'ferry' || t.name === 'ferry-baseline') {
          m = await syncWithAgent(t.name === 'ferry' ? agent : baselineAgent, jobs, { ...ctx, parallel: o.fleetParallel, timeoutMs: o.timeoutMs });
        } else {
          m = await syncWithParallelCli(t, jobs, { ...ctx, parallel: o.fleetParallel, timeoutMs: o.timeoutMs });
        }

        const sys1 = systemCpuTicks();
        const reg1 = lab.src.cpuSeconds() + lab.dst.cpuSeconds();
        const lab1 = proxy.cpuSeconds();
        const self1 = process.cpuUsage(self0);
        const c1 = await proxy.counters();
        const [s1, d1] = [await lab.src.settle(), await lab.dst.settle()];
        const source = lab.src.countBetween(s0, s1);
        const destination = lab.dst.countBetween(d0, d1);
        const cpu = m.user_s + m.sys_s;
        const registryCpu = reg1 - reg0;
        const labCpu = lab1 - lab0;
        const busy = (sys1.busy - sys0.busy) / CLK_TCK;
        const foreign = Math.max(0, busy - cpu - registryCpu - labCpu - (self1.user + self1.system) / 1e6);
        const run: WanRunResult = {
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
          lab_cpu_s: labCpu,
          connections: { source: c1.source.connections - c0.source.connections, destination: c1.destination.connections - c0.destination.connections },
          foreign_cpu_pct: (100 * foreign) / (m.wall_s * cpus().length),
          ok: m.failures.length === 0,
          verified: false,
        };
        if (m.failures.length) run.error = m.failures.slice(0, 3).join('\n');
        else {
          try {
            await verifyJobs(lab.dstClient, images, jobs, lab.names.destination);
            run.verified = true;
          } catch (e) {
            run.ok = false;
            run.error = `verification failed: ${(e as Error).message}`;
          }
        }
        rmSync(stateDir, { recursive: true, force: true });
        result.runs[t.name]!.push(run);
        o.log(
          `[wan ${w.name}] round ${round}/${rounds} ${t.name.padEnd(6)} ${run.wall_s.toFixed(2)} s wall, ${cpu.toFixed(2)} s CPU, ` +
            `${run.connections.source}+${run.connections.destination} connections, ${source.total}+${destination.total} requests, lab CPU ${labCpu.toFixed(2)} s, foreign CPU ${run.foreign_cpu_pct.toFixed(0)}%` +
            (run.ok ? ', verified' : `, FAILED: ${run.error}`),
        );
      }
    }
  } finally {
    await proxy.stop();
  }
  summarize(result, peers);
  summarizeWan(result);
  return result;
}

/** Every job's destination image is its source image, byte for byte. */
async function verifyJobs(dstC: OciClient, images: SourceImage[], jobs: FleetJob[], destinationName: string): Promise<void> {
  for (const [k, job] of jobs.entries()) {
    const image = images[k % images.length]!;
    const ref = job.destination.slice(destinationName.length + 1);
    const at = ref.lastIndexOf(':');
    const got = await dstC.verifyImage(ref.slice(0, at), ref.slice(at + 1));
    if (got.digest !== image.digest) throw new Error(`${job.destination} is ${got.digest}, the source is ${image.digest}`);
    const blobs = got.blobs.map((b) => b.digest).sort();
    if (blobs.join() !== image.blobs.join()) throw new Error(`${job.destination} has ${blobs.length} blobs, the source ${image.blobs.length}`);
  }
}

function gitHead(): string {
  try {
    const head = execFileSync('git', ['rev-parse', '--short=12', 'HEAD'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--untracked-files=no', 'src'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    return dirty ? `${head} + uncommitted changes in src/` : head;
  } catch {
    return 'unknown';
  }
}
