// The WAN mode's results: each workload against the best peer and against its round-trip floor,
// the WAN targets, and the Markdown section RESULTS.md carries after the loopback results.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { median } from '../measure.ts';
import { HASHING_PEER, type RunResult, type Target, type ToolSummary, type WorkloadResult } from '../report.ts';
import type { Floor } from './floor.ts';
import type { LinkSettings, ProbeResult } from './lab.ts';

export interface WanRunResult extends RunResult {
  /** CPU seconds the latency proxy used during the run. */
  lab_cpu_s: number;
  /** Connections the tool opened to each registry (counted by the proxy): each one a TCP and a TLS handshake. */
  connections: { source: number; destination: number };
}

export interface WanToolSummary {
  tool: string;
  /** Median wall / the floor. */
  ratio_to_floor: number;
  connections_source_median: number;
  connections_destination_median: number;
  lab_cpu_median_s: number;
  /** With a bandwidth cap: the link's time for the bytes / the median wall. */
  link_share?: number;
}

export interface WanWorkloadResult extends WorkloadResult {
  installs: number;
  link: LinkSettings;
  floor: Floor;
  /** The lab measured before the runs, through the proxy: handshakes and request round trips. */
  probes: ProbeResult[];
  wan_summary: WanToolSummary[];
}

export interface WanResults {
  schema: 1;
  mode: 'wan';
  started_at: string;
  finished_at: string;
  quick: boolean;
  config: Record<string, unknown> & { rtt_ms: number };
  machine: Record<string, unknown>;
  versions: Record<string, string>;
  invocations: Record<string, string>;
  lab: { names: Record<string, string>; addresses: Record<string, string>; tls: string; resolution: string };
  workloads: WanWorkloadResult[];
  targets: Target[];
}

/** The file beside results.json that holds the WAN mode's last run. */
export const WAN_RESULTS_FILE = 'results-wan.json';

export function summarizeWan(w: WanWorkloadResult): void {
  w.wan_summary = Object.entries(w.runs).map(([tool, runs]) => {
    const good = (runs as WanRunResult[]).filter((r) => r.ok);
    const wall = median(good.map((r) => r.wall_s));
    const linkTime = w.link.bandwidthMbps ? (w.bytes * w.installs * 8) / (w.link.bandwidthMbps * 1e6) : undefined;
    return {
      tool,
      ratio_to_floor: wall / w.floor.seconds,
      connections_source_median: median(good.map((r) => r.connections.source)),
      connections_destination_median: median(good.map((r) => r.connections.destination)),
      lab_cpu_median_s: median(good.map((r) => r.lab_cpu_s)),
      ...(linkTime !== undefined ? { link_share: linkTime / wall } : {}),
    };
  });
}

const f2 = (x: number) => (Number.isFinite(x) ? x.toFixed(2) : '–');
const f1 = (x: number) => (Number.isFinite(x) ? x.toFixed(1) : '–');
const f0 = (x: number) => (Number.isFinite(x) ? x.toFixed(0) : '–');
const pct = (x: number) => (Number.isFinite(x) ? `${(100 * x).toFixed(0)} %` : '–');

/** Issue 21's targets for the WAN mode; they are set for RTT 50 ms (other RTTs: shown, not judged). */
export function evaluateWanTargets(r: WanResults): Target[] {
  const targets: Target[] = [];
  const judged = r.config.rtt_ms === 50 && !r.quick;
  const why = judged ? undefined : r.quick ? 'quick mode: not a measurement' : `the targets are set for RTT 50 ms, this run's is ${r.config.rtt_ms} ms`;
  const wl = (name: string) => r.workloads.find((w) => w.name === name);
  const sum = (w: WanWorkloadResult | undefined, tool: string): ToolSummary | undefined => w?.summary.find((s) => s.tool === tool);
  const push = (t: Omit<Target, 'met'> & { met: boolean | null }) => targets.push(judged ? t : { ...t, met: null, note: [t.note, why].filter(Boolean).join('; ') });
  const againstBest = (name: string, id: string, limit: number, note?: string) => {
    const w = wl(name);
    const f = sum(w, 'ferry');
    const b = w?.best_peer ? sum(w, w.best_peer) : undefined;
    if (!w || !f) return;
    push({
      id,
      description: `${name} (WAN): ferry's median wall time ≤ ${limit} × the best peer's`,
      target: `≤ ${limit.toFixed(2)}×`,
      measured: b ? `${f2(f.wall_median_s)} s vs ${b.tool} ${f2(b.wall_median_s)} s = ${f2(f.ratio_to_best_peer)}×` : 'no peer measured',
      met: b && f.verified ? f.ratio_to_best_peer <= limit : null,
      ...(note ? { note } : {}),
    });
  };
  againstBest('many', 'wan-many-wall', 0.3);
  {
    const w = wl('many');
    const f = sum(w, 'ferry');
    if (w && f) {
      push({
        id: 'wan-many-floor',
        description: "many (WAN): ferry's median wall time within 1.5 × its round-trip floor",
        target: '≤ 1.50× the floor',
        measured: `${f2(f.wall_median_s)} s vs the floor ${f2(w.floor.seconds)} s (${w.floor.round_trips} RTT) = ${f2(f.wall_median_s / w.floor.seconds)}×`,
        met: f.verified ? f.wall_median_s <= 1.5 * w.floor.seconds : null,
      });
    }
  }
  againstBest('multiarch', 'wan-multiarch-wall', 0.6);
  {
    const w = wl('fleet');
    againstBest('fleet', 'wan-fleet-wall', 0.2, w?.ferry_mode ? `ferry ran as ${w.ferry_mode}; the peers as their CLIs, ${String(r.config.fleet_parallel)} at a time` : undefined);
  }
  for (const name of ['many', 'multiarch']) {
    const w = wl(name);
    const f = sum(w, 'ferry');
    const c = sum(w, HASHING_PEER);
    if (!w || !f) continue;
    push({
      id: `wan-${name}-cpu`,
      description: `CPU over TLS (${name}): ferry's CPU seconds per copy ≤ 1.5 × ${HASHING_PEER}'s`,
      target: '≤ 1.50×',
      measured: c ? `${f2(f.cpu_median_s)} CPU-s vs ${HASHING_PEER} ${f2(c.cpu_median_s)} = ${f2(f.cpu_median_s / c.cpu_median_s)}×` : `${HASHING_PEER} not measured`,
      met: c?.verified && f.verified ? f.cpu_median_s <= 1.5 * c.cpu_median_s : null,
    });
  }
  {
    const w = wl('big');
    const f = w?.wan_summary.find((s) => s.tool === 'ferry');
    const fs = sum(w, 'ferry');
    if (w && f && fs && w.link.bandwidthMbps) {
      push({
        id: 'wan-big-link',
        description: `big at ${w.link.bandwidthMbps} Mbit/s (WAN): ferry uses ≥ 90 % of the link`,
        target: '≥ 90 %',
        measured: `${pct(f.link_share ?? NaN)}: ${f2(fs.wall_median_s)} s for ${f1(w.bytes / 1024 / 1024)} MiB that take ${f2((w.bytes * 8) / (w.link.bandwidthMbps * 1e6))} s at ${w.link.bandwidthMbps} Mbit/s`,
        met: fs.verified ? (f.link_share ?? 0) >= 0.9 : null,
      });
    }
  }
  return targets;
}

const mib = (bytes: number) => (bytes >= 1024 ** 3 ? `${(bytes / 1024 ** 3).toFixed(2)} GiB` : `${(bytes / 1024 / 1024).toFixed(1)} MiB`);

function linkText(l: LinkSettings): string {
  return (
    `RTT ${l.rttMs} ms (${l.rttMs / 2} ms each way), ` +
    (l.bandwidthMbps ? `${l.bandwidthMbps} Mbit/s each way (${l.bandwidthScope === 'connection' ? 'per connection' : 'one link shared by every connection'}), ` : 'no bandwidth cap, ') +
    ((l.window ?? 'tcp') === 'tcp' ? `TCP window modelled (10 segments, slow start, cap ${f1((l.maxWindowBytes ?? 4 * 1024 * 1024) / 1024 / 1024)} MiB)` : 'no TCP window model (bytes only delayed)')
  );
}

export function wanMarkdown(r: WanResults): string {
  const L: string[] = [];
  L.push('## WAN mode');
  L.push('');
  L.push(
    `Generated by \`npm run bench -- --wan\`${r.quick ? ' in **quick mode** (tiny workloads: a smoke test, not a measurement)' : ''}. ` +
      `Started ${r.started_at}, finished ${r.finished_at}; git commit ${String(r.machine['git commit (at the start)'] ?? 'unknown')}; ` +
      `foreign CPU during runs (median / max): ${String(r.machine['foreign CPU during runs (median / max, % of all cores)'] ?? 'n/a')}. Machine-readable: \`${WAN_RESULTS_FILE}\` beside this file.`,
  );
  L.push('');
  L.push(`Versions: ${Object.entries(r.versions).map(([k, v]) => `${k} ${v}`).join('; ')}.`);
  L.push('');
  L.push('### The lab');
  L.push('');
  L.push(
    `Two distribution registries serving TLS themselves (${r.lab.tls}), reached by name: ${Object.entries(r.lab.names).map(([k, v]) => `${k} \`${v}\``).join(', ')}, ` +
      `through a latency proxy in user space (bench/wan/latency-proxy.ts, its own process; this kernel has no netem): every byte delayed by RTT/2 in each direction, ` +
      'the TCP handshake\'s round trip included (TLS\'s is in the bytes), and TCP\'s window modelled unless said otherwise. ' +
      `${r.lab.resolution} The harness seeds and verifies directly, not through the proxy. The round-trip floor and the lab's model: docs/performance.md, "The WAN lab".`,
  );
  L.push('');
  L.push('### How it was run');
  L.push('');
  L.push(
    `Tools alternate in rounds (${Object.keys(r.invocations).join(', ')}, then again), ${String(r.config.runs)} run(s) each per workload` +
      `${r.workloads.some((w) => (w.summary[0]?.runs ?? 0) > Number(r.config.runs)) ? ` (${r.workloads.filter((w) => (w.summary[0]?.runs ?? 0) > Number(r.config.runs)).map((w) => `${w.name}: ${w.summary[0]!.runs}`).join(', ')})` : ''}; ` +
      'every run copies into a fresh destination repository and is verified byte-exact afterwards (every manifest and blob downloaded and hashed). ' +
      'Wall time around the process; CPU (user + sys) and peak RSS from GNU time. "connections" are the TCP connections the tool opened to each registry, counted by the proxy: each costs a TCP and a TLS handshake. ' +
      '"× floor" is the median wall time over the workload\'s round-trip floor. "lab CPU" is the proxy\'s.',
  );
  L.push('');
  for (const [tool, inv] of Object.entries(r.invocations)) L.push(`- **${tool}**: \`${inv}\``);
  L.push('');
  if (r.workloads.some((w) => w.kind === 'fleet')) {
    L.push(
      `fleet: each peer runs one CLI process per copy, ${String(r.config.fleet_parallel)} at once; ferry runs one \`ferry agent --exit-when-idle --max-jobs ${String(r.config.agent_max_jobs)}\` with one job per copy from the reference control plane (on loopback, not through the lab). Peak RSS is the largest single process.`,
    );
    L.push('');
  }
  for (const w of r.workloads) {
    L.push(`### ${w.name} (WAN): ${w.description}`);
    L.push('');
    L.push(
      `${w.images} image(s)${w.installs > 1 ? ` × ${w.installs} installs` : ''}, ${w.blobs} blobs, ${mib(w.bytes)} per install. Link: ${linkText(w.link)}.` +
        `${w.best_peer ? ` Best peer: **${w.best_peer}**.` : ''}`,
    );
    L.push('');
    L.push(`Round-trip floor: **${f2(w.floor.seconds)} s** = ${w.floor.explain}.`);
    const probes = w.probes.map((p) => `${p.side}: TLS connect ${f0(p.connect_ms)} ms, GET /v2/ median ${f0(median(p.request_ms))} ms`).join('; ');
    if (probes) {
      L.push('');
      L.push(
        `The lab measured before the runs (bench/wan/lab.ts probeLab, through the proxy): ${probes} — against ${2 * w.link.rttMs} ms (TCP + TLS handshakes) and ${w.link.rttMs} ms (one round trip) expected; ` +
          `ALPN offered: ${[...new Set(w.probes.map((p) => String(p.alpn)))].join(', ')}; certificate ${w.probes.every((p) => p.authorized) ? 'verified against the test CA' : '**not verified**'}.`,
      );
    }
    if (w.ferry_mode) L.push(`\n**ferry here: ${w.ferry_mode}.**`);
    L.push('');
    const capped = w.wan_summary.some((s) => s.link_share !== undefined);
    L.push(`| tool | wall median (s) | min | max | × best peer | × floor | CPU (s): total (user + sys) | peak RSS (MiB) | connections src + dst | requests src + dst |${capped ? ' link used |' : ''} registries' CPU (s) | lab CPU (s) | verified | foreign CPU |`);
    L.push(`|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|${capped ? '---:|' : ''}---:|---:|:---:|---:|`);
    for (const s of w.summary) {
      const x = w.wan_summary.find((y) => y.tool === s.tool);
      const rss = w.kind === 'single' ? f1(s.rss_max_mib) : `${f1(s.rss_max_mib)} (largest process)`;
      L.push(
        `| ${s.tool} | ${f2(s.wall_median_s)} | ${f2(s.wall_min_s)} | ${f2(s.wall_max_s)} | ${f2(s.ratio_to_best_peer)} | ${f2(x?.ratio_to_floor ?? NaN)} | ` +
          `${f2(s.cpu_median_s)} (${f2(s.user_median_s ?? NaN)} + ${f2(s.sys_median_s ?? NaN)}) | ${rss} | ` +
          `${f0(x?.connections_source_median ?? NaN)} + ${f0(x?.connections_destination_median ?? NaN)} | ${f0(s.requests_source_median)} + ${f0(s.requests_destination_median)} |` +
          `${capped ? ` ${pct(x?.link_share ?? NaN)} |` : ''} ${f2(s.registry_cpu_median_s)} | ${f2(x?.lab_cpu_median_s ?? NaN)} | ${s.verified ? 'yes' : `**NO** (${s.failures} failed)`} | ${f0(s.foreign_cpu_pct_mean)}% |`,
      );
    }
    L.push('');
  }
  L.push(`### Targets (WAN mode, RTT 50 ms)`);
  L.push('');
  L.push('| target | required | measured | met |');
  L.push('|---|---|---|:---:|');
  for (const t of r.targets) L.push(`| ${t.description} | ${t.target} | ${t.measured}${t.note ? ` (${t.note})` : ''} | ${t.met === null ? 'n/a' : t.met ? 'yes' : '**no**'} |`);
  L.push('');
  return L.join('\n');
}

/** `markdown` (the loopback results) followed by the WAN section when `dir` holds a WAN run. */
export function withWanSection(markdown: string, dir: string): string {
  const file = join(dir, WAN_RESULTS_FILE);
  if (!existsSync(file)) return markdown;
  const wan = JSON.parse(readFileSync(file, 'utf8')) as WanResults;
  return `${markdown.replace(/\n*$/, '\n')}\n${wanMarkdown(wan)}`;
}
