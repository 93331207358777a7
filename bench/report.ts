// Summaries, the targets, and the Markdown / JSON outputs.
import type { RequestCounts } from './registries.ts';
import { max, median, min } from './measure.ts';
import { NODE_FLOOR } from './tools.ts';

export interface RunResult {
  round: number;
  wall_s: number;
  user_s: number;
  sys_s: number;
  cpu_s: number;
  rss_mib: number;
  /** Fleet syncs: sum of every process's peak RSS. */
  rss_sum_mib?: number;
  processes: number;
  requests: { source: RequestCounts; destination: RequestCounts; total: number };
  /** CPU seconds the two registries used during the run. */
  registry_cpu_s: number;
  /** CPU used on the machine by anything else (other engineers' tests…), as % of all cores over the run. */
  foreign_cpu_pct: number;
  ok: boolean;
  verified: boolean;
  error?: string;
  /** Throttled workloads: what the throttling proxy in front of the destination saw. */
  throttle?: {
    /** Requests that reached the proxy, refused ones included. */
    requests: number;
    refused: number;
    /** refused / requests. */
    share: number;
    /** The least time the granted requests could take at the granted rate: (requests - refused) / rate. */
    floor_s: number;
  };
}

export interface ToolSummary {
  tool: string;
  runs: number;
  failures: number;
  verified: boolean;
  wall_median_s: number;
  wall_min_s: number;
  wall_max_s: number;
  cpu_median_s: number;
  /** Absent in results from before it was recorded. */
  user_median_s?: number;
  sys_median_s?: number;
  rss_max_mib: number;
  rss_median_mib: number;
  requests_median: number;
  requests_source_median: number;
  requests_destination_median: number;
  /** Breakdown of the median run (by total requests). */
  requests_detail: { source: RequestCounts; destination: RequestCounts } | undefined;
  /** This tool's median wall / the best peer's median wall. */
  ratio_to_best_peer: number;
  cpu_ratio_to_best_peer: number;
  cpu_s_per_gib: number;
  registry_cpu_median_s: number;
  foreign_cpu_pct_mean: number;
  /** Throttled workloads: the median share of requests refused (all runs, failed ones too) and of wall ÷ the rate's floor. */
  refused_share_median?: number;
  wall_over_floor_median?: number;
}

export interface WorkloadResult {
  name: string;
  kind: string;
  description: string;
  images: number;
  bytes: number;
  blobs: number;
  /** How ferry ran this workload (fleet/warm: the interim CLI mode). */
  ferry_mode?: string;
  /** Tools that sat this workload out, and why (they cannot copy referrers). */
  left_out?: Record<string, string>;
  runs: Record<string, RunResult[]>;
  /** The tools ferry is compared with (not ferry-baseline or node-floor); absent in results from before it: all but those. */
  peers?: string[];
  summary: ToolSummary[];
  best_peer?: string;
}

export interface Target {
  id: string;
  description: string;
  target: string;
  measured: string;
  met: boolean | null;
  note?: string;
}

export interface StartupEntry {
  command: string;
  runs: number;
  /** Wall time as the harness sees it: spawn of GNU time and the command, to the close of both. */
  wall_median_ms: number;
  wall_min_ms: number;
  /** The median, round by round, of the wall time less /bin/true's measured in the same round: the command's own start-up. */
  net_median_ms?: number;
  rss_median_mib: number;
}

export interface BenchResults {
  schema: 1;
  started_at: string;
  finished_at: string;
  quick: boolean;
  config: Record<string, unknown>;
  machine: Record<string, unknown>;
  versions: Record<string, string>;
  invocations: Record<string, string>;
  workloads: WorkloadResult[];
  startup?: StartupEntry[];
  /** The bare runtime's start, measured interleaved with ferry's: the floor under the start-up target. */
  startup_reference?: StartupEntry | undefined;
  /** /bin/true measured the same way, interleaved: what the measuring itself takes (spawn, GNU time, wait). */
  startup_harness?: StartupEntry | undefined;
  /** SHA-256 alone, from the cache, in this run (bench/sha256-cost.mjs): the CPU floor of a copier that verifies every byte. */
  sha256_cost?: { runs: number; mib_per_run: number; cpu_s_per_gib_median: number; cpu_s_per_gib_min: number; node: string } | undefined;
  targets: Target[];
}

const GiB = 1024 ** 3;

/**
 * The peer that, like ferry, hashes what it copies (its user CPU exceeds SHA-256 of every byte):
 * the `big` and CPU targets are read against it (decided: verification stays).
 */
export const HASHING_PEER = 'crane';

export function summarize(w: WorkloadResult, peers: string[]): void {
  const summaries: ToolSummary[] = [];
  for (const [tool, runs] of Object.entries(w.runs)) {
    const good = runs.filter((r) => r.ok);
    const byTotal = [...good].sort((a, b) => a.requests.total - b.requests.total);
    const mid = byTotal[Math.floor((byTotal.length - 1) / 2)];
    summaries.push({
      tool,
      runs: runs.length,
      failures: runs.length - good.length,
      verified: runs.length > 0 && runs.every((r) => r.verified),
      wall_median_s: median(good.map((r) => r.wall_s)),
      wall_min_s: min(good.map((r) => r.wall_s)),
      wall_max_s: max(good.map((r) => r.wall_s)),
      cpu_median_s: median(good.map((r) => r.cpu_s)),
      user_median_s: median(good.map((r) => r.user_s)),
      sys_median_s: median(good.map((r) => r.sys_s)),
      rss_max_mib: max(good.map((r) => r.rss_mib)),
      rss_median_mib: median(good.map((r) => r.rss_mib)),
      requests_median: median(good.map((r) => r.requests.total)),
      requests_source_median: median(good.map((r) => r.requests.source.total)),
      requests_destination_median: median(good.map((r) => r.requests.destination.total)),
      requests_detail: mid ? { source: mid.requests.source, destination: mid.requests.destination } : undefined,
      ratio_to_best_peer: NaN,
      cpu_ratio_to_best_peer: NaN,
      cpu_s_per_gib: median(good.map((r) => r.cpu_s)) / (w.bytes / GiB),
      registry_cpu_median_s: median(good.map((r) => r.registry_cpu_s)),
      foreign_cpu_pct_mean: good.length ? good.reduce((n, r) => n + r.foreign_cpu_pct, 0) / good.length : NaN,
      ...(runs.some((r) => r.throttle)
        ? {
            refused_share_median: median(runs.filter((r) => r.throttle).map((r) => r.throttle!.share)),
            wall_over_floor_median: median(good.filter((r) => r.throttle).map((r) => r.wall_s / r.throttle!.floor_s)),
          }
        : {}),
    });
  }
  const peerSums = summaries.filter((s) => peers.includes(s.tool) && Number.isFinite(s.wall_median_s) && s.verified);
  const best = peerSums.sort((a, b) => a.wall_median_s - b.wall_median_s)[0];
  const bestCpu = Math.min(...peerSums.map((s) => s.cpu_median_s));
  for (const s of summaries) {
    s.ratio_to_best_peer = best ? s.wall_median_s / best.wall_median_s : NaN;
    s.cpu_ratio_to_best_peer = Number.isFinite(bestCpu) ? s.cpu_median_s / bestCpu : NaN;
  }
  w.summary = summaries;
  if (best) w.best_peer = best.tool;
}

const f2 = (x: number) => (Number.isFinite(x) ? x.toFixed(2) : '–');
const f1 = (x: number) => (Number.isFinite(x) ? x.toFixed(1) : '–');
const f0 = (x: number) => (Number.isFinite(x) ? x.toFixed(0) : '–');

/**
 * The CPU targets read against what verification costs: SHA-256 of every byte (measured in the same
 * run, from the cache: its cheapest) is a floor under any copier that verifies, and a peer whose user
 * CPU is below it cannot have hashed what it copied.
 */
function verificationFloor(w: WorkloadResult, f: ToolSummary, best: ToolSummary, peers: ToolSummary[], sha256PerGib: number): string {
  const perGib = (s: ToolSummary) => (s.user_median_s ?? NaN) / (w.bytes / GiB);
  const parts = [`SHA-256 alone, measured in this run: ${f2(sha256PerGib)} s/GiB`];
  if (perGib(best) < sha256PerGib) parts.push(`${best.tool}'s user CPU is ${f2(perGib(best))} s/GiB, less than SHA-256 alone: it does not hash what it copies`);
  parts.push(`a copier that verifies and otherwise spends exactly what ${best.tool} spends would be at least ${f2((best.cpu_s_per_gib + sha256PerGib) / best.cpu_s_per_gib)}×`);
  parts.push(`ferry less SHA-256: ${f2((f.cpu_s_per_gib - sha256PerGib) / best.cpu_s_per_gib)}×`);
  const hashing = peers.filter((s) => perGib(s) >= sha256PerGib).sort((a, b) => a.cpu_s_per_gib - b.cpu_s_per_gib)[0];
  if (hashing && hashing !== best) parts.push(`the best peer whose user CPU can include SHA-256: ${hashing.tool} ${f2(hashing.cpu_s_per_gib)} s/GiB, ferry = ${f2(f.cpu_s_per_gib / hashing.cpu_s_per_gib)}×`);
  return parts.join(', ');
}

export function evaluateTargets(r: BenchResults): Target[] {
  const targets: Target[] = [];
  const wl = (name: string) => r.workloads.find((w) => w.name === name);
  const sum = (w: WorkloadResult | undefined, tool: string) => w?.summary.find((s) => s.tool === tool);
  const bestPeer = (w: WorkloadResult | undefined) => (w?.best_peer ? sum(w, w.best_peer) : undefined);
  const hashingPeer = (w: WorkloadResult | undefined) => {
    const s = sum(w, HASHING_PEER);
    return s?.verified && Number.isFinite(s.wall_median_s) ? s : undefined;
  };
  const isPeer = (w: WorkloadResult, tool: string) => (w.peers ? w.peers.includes(tool) : !['ferry', 'ferry-baseline', NODE_FLOOR].includes(tool));
  const peersOf = (w: WorkloadResult) => w.summary.filter((s) => isPeer(w, s.tool));
  // The reference Node copier (bench/request-floor.mjs), where it ran: what the runtime alone costs.
  const floorNote = (w: WorkloadResult, f: ToolSummary, what: 'wall' | 'cpu') => {
    const n = sum(w, NODE_FLOOR);
    if (!n || !n.verified) return {};
    return what === 'wall'
      ? { note: `node-floor (a minimal Node copier, bench/request-floor.mjs): ${f2(n.wall_median_s)} s = ${f2(n.ratio_to_best_peer)}× the best peer; ferry = ${f2(f.wall_median_s / n.wall_median_s)}× node-floor` }
      : { note: `node-floor: ${f2(n.cpu_s_per_gib)} s/GiB; ferry = ${f2(f.cpu_s_per_gib / n.cpu_s_per_gib)}× node-floor` };
  };

  for (const name of ['big', 'many']) {
    const w = wl(name);
    const f = sum(w, 'ferry');
    // big is read against the peer that also hashes (decided: verification stays); many against the best peer.
    const hashing = name === 'big';
    const b = hashing ? hashingPeer(w) : bestPeer(w);
    if (!w || !f) continue;
    const best = bestPeer(w);
    const bestToo = hashing && best && best !== b ? `; the best peer, ${best.tool}: ${f2(best.wall_median_s)} s, ferry = ${f2(f.ratio_to_best_peer)}×` : '';
    targets.push({
      id: `${name}-wall`,
      description: hashing
        ? `${name}: ferry's median wall time ≤ 1.05 × ${HASHING_PEER}'s (the peer that also hashes what it copies)`
        : `${name}: ferry's median wall time ≤ 1.05 × the best peer's`,
      target: '≤ 1.05×',
      measured: b ? `${f2(f.wall_median_s)} s vs ${b.tool} ${f2(b.wall_median_s)} s = ${f2(f.wall_median_s / b.wall_median_s)}×${bestToo}` : hashing ? `${HASHING_PEER} not measured` : 'no peer measured',
      met: b && f.verified ? f.wall_median_s <= 1.05 * b.wall_median_s : null,
      ...floorNote(w, f, 'wall'),
    });
  }
  {
    const w = wl('fleet');
    const f = sum(w, 'ferry');
    const b = bestPeer(w);
    if (w && f) {
      targets.push({
        id: 'fleet-wall',
        description: 'fleet (cold): ferry ≤ 0.8 × the best peer',
        target: '≤ 0.80×',
        measured: b ? `${f2(f.wall_median_s)} s vs ${b.tool} ${f2(b.wall_median_s)} s = ${f2(f.ratio_to_best_peer)}×` : 'no peer measured',
        met: b && f.verified ? f.ratio_to_best_peer <= 0.8 : null,
        ...(w.ferry_mode ? { note: `ferry ran as ${w.ferry_mode}` } : {}),
      });
    }
  }
  {
    const w = wl('warm');
    const f = sum(w, 'ferry');
    if (w && f?.requests_detail) {
      const { source, destination } = f.requests_detail;
      const tags = w.images;
      const reqOk = source.manifest === tags && destination.manifest === tags && source.blob + destination.blob + source.upload + destination.upload === 0;
      targets.push({
        id: 'warm-requests',
        description: 'warm: one manifest request per registry per tag and no blob request',
        target: `${tags} + ${tags} manifest requests, 0 blob requests`,
        measured:
          `source ${source.manifest} manifest, ${source.blob} blob, ${source.other} other; ` +
          `destination ${destination.manifest} manifest, ${destination.blob + destination.upload} blob, ${destination.manifestWrite} manifest writes, ${destination.other} other`,
        met: f.verified ? reqOk : null,
        ...(source.other + destination.other > 0 ? { note: `"other" are /v2/ pings (auth probes) made by each process` } : {}),
      });
      const peers = peersOf(w).filter((s) => s.verified);
      const fastest = peers.sort((a, b) => a.wall_median_s - b.wall_median_s)[0];
      targets.push({
        id: 'warm-wall',
        description: 'warm: ferry faster than every peer',
        target: '< every peer',
        measured: fastest ? `${f2(f.wall_median_s)} s vs fastest peer ${fastest.tool} ${f2(fastest.wall_median_s)} s` : 'no peer measured',
        met: fastest && f.verified ? f.wall_median_s < fastest.wall_median_s : null,
        ...(w.ferry_mode ? { note: `ferry ran as ${w.ferry_mode}` } : {}),
      });
    }
  }
  {
    // Issue 19's budget (docs/performance.md, "Re-syncs that cost nothing"): per signed image, at the
    // destination the tag and one request per referrer at most (here the fallback index: 2 of 3),
    // nothing written; at the source the root, the tag list, one listing per subject at most.
    const w = wl('warm-signed');
    const f = sum(w, 'ferry');
    if (w && f?.requests_detail) {
      const { source, destination } = f.requests_detail;
      const images = w.images;
      const referrersPerImage = 2;
      const writes = destination.manifestWrite + destination.upload;
      const dstBudget = images * (1 + referrersPerImage);
      const srcBudget = images * (2 + 1 + referrersPerImage) + 1;
      targets.push({
        id: 'warm-signed-requests',
        description: 'warm-signed: nothing written; destination ≤ 1 + referrers requests per image; source ≤ root + tag list + one listing per subject',
        target: `0 writes, ≤ ${dstBudget} destination, ≤ ${srcBudget} source requests`,
        measured: `${writes} writes, ${destination.total} destination (${destination.manifest} manifest, ${destination.blob} blob, ${destination.other} other), ${source.total} source (${source.manifest} manifest, ${source.blob} blob, ${source.other} other)`,
        met: f.verified ? writes === 0 && destination.blob === 0 && destination.total <= dstBudget && source.total <= srcBudget : null,
        note: 'the agent asks the source once whether it serves the referrers API, then remembers; "other" are tag lists and referrers API requests',
      });
    }
  }
  {
    const big = sum(wl('huge-2g'), 'ferry');
    const small = sum(wl('huge-512m'), 'ferry');
    if (big) {
      targets.push({
        id: 'huge-rss',
        description: 'huge: ferry peak RSS ≤ 90 MB copying one 2 GiB layer',
        target: '≤ 90 MB (85.8 MiB)',
        measured: `${f1(big.rss_max_mib * 1.048576)} MB (${f1(big.rss_max_mib)} MiB), the largest of ${big.runs} runs`,
        met: big.verified ? big.rss_max_mib * 1.048576 <= 90 : null,
      });
    }
    if (big && small) {
      const growth = big.rss_median_mib - small.rss_median_mib;
      targets.push({
        id: 'huge-flat',
        description: 'huge: memory flat as the layer grows (512 MiB → 2 GiB)',
        target: 'median peak RSS grows < 10%',
        measured: `${f1(small.rss_median_mib)} MiB → ${f1(big.rss_median_mib)} MiB (${growth >= 0 ? '+' : ''}${f1(growth)} MiB)`,
        met: big.verified && small.verified ? big.rss_median_mib <= small.rss_median_mib * 1.1 : null,
      });
    }
  }
  // Issue 21's decision: verification stays, so the CPU targets are read against the peer that
  // also hashes (crane) and, net of SHA-256 of every byte measured in the same run, against the
  // best peer (which need not hash). Both must hold; without the SHA-256 measurement (results
  // from before it), the first alone.
  for (const name of ['big', 'huge-2g']) {
    const w = wl(name);
    const f = sum(w, 'ferry');
    if (!w || !f) continue;
    const peers = peersOf(w).filter((s) => s.verified && Number.isFinite(s.cpu_s_per_gib));
    const best = peers.sort((a, b) => a.cpu_s_per_gib - b.cpu_s_per_gib)[0];
    const hasher = peers.find((s) => s.tool === HASHING_PEER);
    const sha = r.sha256_cost?.cpu_s_per_gib_median;
    const lessSha = sha === undefined ? undefined : f.cpu_s_per_gib - sha;
    const parts: string[] = [];
    if (hasher) parts.push(`${f2(f.cpu_s_per_gib)} s/GiB vs ${hasher.tool} ${f2(hasher.cpu_s_per_gib)} s/GiB = ${f2(f.cpu_s_per_gib / hasher.cpu_s_per_gib)}×`);
    else parts.push(`${HASHING_PEER} not measured`);
    if (best && lessSha !== undefined) parts.push(`less SHA-256 (${f2(sha!)} s/GiB, this run): ${f2(lessSha)} s/GiB vs ${best.tool} ${f2(best.cpu_s_per_gib)} s/GiB = ${f2(lessSha / best.cpu_s_per_gib)}×`);
    const hashes = hasher && sha !== undefined ? (hasher.user_median_s ?? NaN) / (w.bytes / GiB) >= sha : true;
    const notes = [
      floorNote(w, f, 'cpu').note,
      best && sha !== undefined ? verificationFloor(w, f, best, peers, sha) : undefined,
      hashes ? undefined : `${HASHING_PEER}'s user CPU is below SHA-256 alone in this run: read with care`,
    ].filter(Boolean);
    targets.push({
      id: `${name}-cpu`,
      description: `CPU (${name}): ferry's CPU seconds per GiB ≤ 1.5 × ${HASHING_PEER}'s (the peer that also hashes), and, less SHA-256 of every byte measured in this run, ≤ 1.5 × the best peer's`,
      target: '≤ 1.5× and ≤ 1.5×',
      measured: parts.join('; '),
      met: hasher && f.verified ? f.cpu_s_per_gib <= 1.5 * hasher.cpu_s_per_gib && (best && lessSha !== undefined ? lessSha <= 1.5 * best.cpu_s_per_gib : true) : null,
      ...(notes.length ? { note: notes.join('; ') } : {}),
    });
  }
  {
    // Issue 20: a throttled destination (20 requests/s, 429 + Retry-After: 1 beyond).
    const pct = (x: number | undefined) => (x !== undefined && Number.isFinite(x) ? `${(x * 100).toFixed(1)} %` : '–');
    const others = (w: WorkloadResult) =>
      w.summary
        .filter((s) => s.tool !== 'ferry' && s.refused_share_median !== undefined)
        .map((s) => `${s.tool}: ${pct(s.refused_share_median)} refused${Number.isFinite(s.wall_median_s) ? `, ${f2(s.wall_median_s)} s (${f2(s.wall_over_floor_median ?? NaN)}× its floor)` : ''}${s.failures ? `, ${s.failures} of ${s.runs} runs failed` : ''}`)
        .join('; ');
    const w = wl('throttled');
    const f = sum(w, 'ferry');
    if (w && f) {
      targets.push({
        id: 'throttled-refused',
        description: "throttled (many into 20 requests/s): at most 10 % of ferry's requests refused",
        target: '≤ 10 %',
        measured: `${pct(f.refused_share_median)} (median of ${f.runs} runs)`,
        met: f.verified && f.refused_share_median !== undefined ? f.refused_share_median <= 0.1 : null,
        ...(others(w) ? { note: others(w) } : {}),
      });
      targets.push({
        id: 'throttled-wall',
        description: "throttled: ferry's wall time ≤ 1.5 × its requests ÷ 20/s",
        target: '≤ 1.5×',
        measured: `${f2(f.wall_median_s)} s = ${f2(f.wall_over_floor_median ?? NaN)}× the floor (median ratio; ${f0(f.requests_destination_median)} requests granted at the destination)`,
        met: f.verified && f.wall_over_floor_median !== undefined ? f.wall_over_floor_median <= 1.5 : null,
      });
    }
    const fw = wl('throttled-fleet');
    const ff = sum(fw, 'ferry');
    if (fw && ff) {
      targets.push({
        id: 'throttled-fleet',
        description: `throttled-fleet (${fw.images} images through one agent into 20 requests/s): no job fails, 429 share under 10 %`,
        target: '0 failed, < 10 %',
        measured: `${ff.failures} of ${ff.runs} runs failed; ${pct(ff.refused_share_median)} refused (median); ${f2(ff.wall_median_s)} s = ${f2(ff.wall_over_floor_median ?? NaN)}× the floor`,
        met: ff.runs > 0 ? ff.failures === 0 && ff.verified && (ff.refused_share_median ?? 1) < 0.1 : null,
        ...(others(fw) ? { note: others(fw) } : {}),
      });
    }
  }
  if (r.startup?.length) {
    // The single executable is "the binary" when there is one; else the ferry that was run.
    // Judged on the command's own start-up, net of the harness, when /bin/true was measured beside it.
    const s = r.startup[r.startup.length - 1]!;
    const own = (x: StartupEntry) => x.net_median_ms ?? x.wall_median_ms;
    const describe = (x: StartupEntry) => (x.net_median_ms === undefined ? `${f0(x.wall_median_ms)} ms median` : `${f0(x.net_median_ms)} ms median net of the harness (${f0(x.wall_median_ms)} ms as measured)`);
    targets.push({
      id: 'startup',
      description: 'start-up: `ferry version` under 100 ms',
      target: '< 100 ms',
      measured: r.startup.map((x) => `${describe(x)} (${x.command})`).join('; '),
      met: own(s) < 100,
      note:
        `judged on: ${s.command}` +
        (r.startup_harness ? `; the harness alone, ${r.startup_harness.command}: ${f0(r.startup_harness.wall_median_ms)} ms median` : '') +
        (r.startup_reference ? `; the runtime alone, ${r.startup_reference.command}, interleaved: ${describe(r.startup_reference)}` : ''),
    });
  }
  return targets;
}

const mib = (bytes: number) => (bytes >= GiB ? `${(bytes / GiB).toFixed(2)} GiB` : `${(bytes / 1024 / 1024).toFixed(1)} MiB`);

/** The workloads run for more rounds than --runs (the sub-second ones), as words. */
function moreRounds(r: BenchResults): string {
  const more = r.workloads.map((w) => ({ name: w.name, runs: Math.max(...w.summary.map((s) => s.runs)) })).filter((w) => w.runs > Number(r.config.runs));
  return more.length ? ` (${more.map((w) => `${w.name}: ${w.runs}`).join(', ')}, being sub-second: more rounds keep their medians steady)` : '';
}

export function toMarkdown(r: BenchResults): string {
  const L: string[] = [];
  L.push('# ferry benchmark results');
  L.push('');
  L.push(
    `Generated by \`npm run bench\` (scripts/bench.ts)${r.quick ? ' in **quick mode** (tiny workloads: a smoke test, not a measurement)' : ''}. ` +
      `Started ${r.started_at}, finished ${r.finished_at}. Machine-readable: \`results.json\` beside this file.`,
  );
  L.push('');
  L.push('## Machine and versions');
  L.push('');
  L.push('| | |');
  L.push('|---|---|');
  for (const [k, v] of Object.entries(r.machine)) L.push(`| ${k} | ${String(v)} |`);
  for (const [k, v] of Object.entries(r.versions)) L.push(`| ${k} | ${v} |`);
  L.push('');
  if (r.versions.skopeo?.startsWith('1.9.')) {
    L.push(
      "skopeo is Debian bookworm's 1.9.3. Debian sid has 1.22, but it needs libc6 ≥ 2.38 and libgpgme45, which bookworm does not have, " +
        'so unlike crane and oras it cannot come from the private sid list (scripts/install-system-deps.sh).',
    );
    L.push('');
  }
  L.push('Where the time goes, what was changed and what is left: docs/performance.md.');
  L.push('');
  L.push('## How it was run');
  L.push('');
  L.push(
    `Two distribution registries on loopback (source and destination), fresh filesystem storage under the system temp dir. ` +
      `Tools alternate in rounds (${Object.keys(r.invocations).join(', ')}, then again), ${String(r.config.runs)} run(s) each per workload${moreRounds(r)}; ` +
      'every run copies into a fresh destination repository and is verified byte-exact afterwards with the harness\'s independent client ' +
      '(root digest, every manifest and every blob downloaded and hashed). `sync` is called before each run so no run pays for the previous one\'s writeback. ' +
      'Wall time is measured around the process; CPU (user + sys) and peak RSS come from GNU time (wait4 rusage of the tool\'s process). ' +
      "Requests are counted from the registries' access logs (source + destination), bracketed by marker requests. " +
      '"foreign CPU" is the CPU the rest of the machine used during the runs (other engineers\' tests etc.), as a share of both cores: it says how noisy the numbers are.',
  );
  L.push('');
  for (const [tool, inv] of Object.entries(r.invocations)) L.push(`- **${tool}**: \`${inv}\``);
  L.push('');
  if (r.workloads.some((w) => w.kind !== 'single')) {
    L.push(
      `fleet and warm: each peer runs one CLI process per image, ${String(r.config.fleet_parallel)} at once; ` +
        (r.config.ferry_fleet === 'agent'
          ? `ferry runs one \`ferry agent --exit-when-idle --max-jobs ${String(r.config.agent_max_jobs)}\` with one job per image from the reference control plane (no referrers, like the peers). `
          : `ferry runs one \`ferry copy\` process per image like the peers (interim mode, not the agent). `) +
        'warm: each tool first syncs its own destination (untimed, verified), then every timed run re-syncs it. ' +
        'Peak RSS for these is the largest single process.',
    );
    L.push('');
  }
  L.push('## Results');
  L.push('');
  for (const w of r.workloads) {
    L.push(`### ${w.name}: ${w.description}`);
    L.push('');
    L.push(`${w.images} image(s), ${w.blobs} blobs, ${mib(w.bytes)} per copy.${w.best_peer ? ` Best peer: **${w.best_peer}**.` : ''}`);
    if (w.ferry_mode) L.push(`\n**ferry here: ${w.ferry_mode}.**`);
    for (const [tool, why] of Object.entries(w.left_out ?? {})) L.push(`\nNot measured: ${tool} (${why}).`);
    L.push('');
    L.push('| tool | wall median (s) | min | max | × best peer | CPU (s): total (user + sys) | CPU s/GiB | peak RSS (MiB) | requests src + dst | registries\' CPU (s) | verified | foreign CPU |');
    L.push('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|---:|');
    for (const s of w.summary) {
      const rss = w.kind === 'single' ? f1(s.rss_max_mib) : `${f1(s.rss_max_mib)} (largest process)`;
      L.push(
        `| ${s.tool} | ${f2(s.wall_median_s)} | ${f2(s.wall_min_s)} | ${f2(s.wall_max_s)} | ${f2(s.ratio_to_best_peer)} | ${f2(s.cpu_median_s)}${s.user_median_s === undefined ? '' : ` (${f2(s.user_median_s)} + ${f2(s.sys_median_s ?? NaN)})`} | ${f2(s.cpu_s_per_gib)} | ${rss} | ` +
          `${f0(s.requests_source_median)} + ${f0(s.requests_destination_median)} | ${f2(s.registry_cpu_median_s)} | ${s.verified ? 'yes' : `**NO** (${s.failures} failed)`} | ${f0(s.foreign_cpu_pct_mean)}% |`,
      );
    }
    L.push('');
    if (w.summary.some((s) => s.refused_share_median !== undefined)) {
      L.push('Through the throttle (20 requests/s granted, 429 + `Retry-After: 1` beyond; a fresh proxy each run). The floor is the granted requests ÷ 20/s.');
      L.push('');
      L.push('| tool | refused (median) | wall ÷ floor (median) | runs refused share |');
      L.push('|---|---:|---:|---|');
      for (const s of w.summary) {
        const shares = (w.runs[s.tool] ?? []).map((x) => (x.throttle ? `${(x.throttle.share * 100).toFixed(1)} %${x.ok ? '' : ' (failed)'}` : '–'));
        L.push(`| ${s.tool} | ${s.refused_share_median !== undefined ? `${(s.refused_share_median * 100).toFixed(1)} %` : '–'} | ${f2(s.wall_over_floor_median ?? NaN)} | ${shares.join(', ')} |`);
      }
      L.push('');
    }
    const detail = w.summary
      .filter((s) => s.requests_detail)
      .map((s) => {
        const d = s.requests_detail!;
        const fmt = (c: RequestCounts) => `${c.manifest} manifest, ${c.blob} blob, ${c.upload} upload, ${c.manifestWrite} manifest write, ${c.other} other`;
        return `- ${s.tool}: source ${fmt(d.source)}; destination ${fmt(d.destination)}`;
      });
    if (detail.length) {
      L.push('<details><summary>requests by kind (median run)</summary>');
      L.push('');
      L.push(...detail);
      L.push('');
      L.push('</details>');
      L.push('');
    }
  }
  if (r.startup?.length) {
    L.push('### start-up');
    L.push('');
    for (const s of [...r.startup, ...(r.startup_reference ? [r.startup_reference] : []), ...(r.startup_harness ? [r.startup_harness] : [])]) {
      const net = s.net_median_ms !== undefined && s !== r.startup_harness ? `, ${f0(s.net_median_ms)} ms net of the harness` : '';
      L.push(`- \`${s.command}\`: median ${f0(s.wall_median_ms)} ms as measured${net}, min ${f0(s.wall_min_ms)} ms over ${s.runs} runs, peak RSS ${f1(s.rss_median_mib)} MiB.`);
    }
    if (r.startup_reference) {
      L.push(
        '',
        'The commands ran interleaved (one of each, then again), each under GNU time, spawned by this harness (a Node process). `/bin/true` measured the same way is what the measuring itself costs; ' +
          'each command\'s figure net of it (median of the round-by-round differences) is its own start-up, and is what the target is judged on. ' +
          '`ferry version` is answered by the single executable before any of ferry\'s code loads: the difference to the bare runtime is what ferry adds.',
      );
    }
    L.push('');
  }
  if (r.sha256_cost) {
    const c = r.sha256_cost;
    L.push('### SHA-256 alone');
    L.push('');
    L.push(
      `Hashing ${c.mib_per_run} MiB from the cache in 256 KiB pieces (bench/sha256-cost.mjs, Node ${c.node}, the OpenSSL ferry embeds), after the registries stopped: ` +
        `median **${f2(c.cpu_s_per_gib_median)} CPU-s/GiB**, min ${f2(c.cpu_s_per_gib_min)}, ${c.runs} run(s). ` +
        'A copier that verifies every byte spends at least this per GiB on top of moving the bytes; the CPU targets below are read against it.',
    );
    L.push('');
  }
  L.push('## Targets');
  L.push('');
  L.push(
    `Verification stays (decided): \`big\` and the CPU targets are read against ${HASHING_PEER}, the peer that also hashes what it copies, ` +
      'and the CPU targets also net of SHA-256 of every byte (measured in the same run) against the best peer, which need not hash.',
  );
  L.push('');
  L.push('| target | required | measured | met |');
  L.push('|---|---|---|:---:|');
  for (const t of r.targets) {
    L.push(`| ${t.description} | ${t.target} | ${t.measured}${t.note ? ` (${t.note})` : ''} | ${t.met === null ? 'n/a' : t.met ? 'yes' : '**no**'} |`);
  }
  L.push('');
  return L.join('\n');
}
