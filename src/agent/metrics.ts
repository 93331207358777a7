// A tiny metrics registry rendering the Prometheus text exposition format (0.0.4): counters,
// gauges and histograms with labels. No dependency; enough for ferry's /metrics.
import type { ContractCode } from '../errors.ts';
import type { TransferStats } from '../copy/types.ts';
import type { RequestEvent } from './control-plane-client.ts';
import { COMMIT } from '../version.ts';
import type { RegistryFlowStats } from '../transport/flow.ts';

export type Labels = Record<string, string>;

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

export const PROMETHEUS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

function escapeHelp(s: string): string {
  return s.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');
}

function escapeLabelValue(s: string): string {
  return s.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
}

export function formatValue(v: number): string {
  if (Number.isNaN(v)) return 'NaN';
  if (v === Infinity) return '+Inf';
  if (v === -Infinity) return '-Inf';
  return String(v);
}

function formatLabels(names: readonly string[], values: readonly string[], extra?: [string, string]): string {
  const parts = names.map((n, i) => `${n}="${escapeLabelValue(values[i]!)}"`);
  if (extra) parts.push(`${extra[0]}="${escapeLabelValue(extra[1])}"`);
  return parts.length ? `{${parts.join(',')}}` : '';
}

interface MetricOptions {
  name: string;
  help: string;
  labelNames?: readonly string[];
}

abstract class Metric<S> {
  readonly name: string;
  readonly help: string;
  readonly labelNames: readonly string[];
  abstract readonly type: 'counter' | 'gauge' | 'histogram';
  protected readonly series = new Map<string, { values: string[]; state: S }>();

  constructor(opts: MetricOptions) {
    if (!METRIC_NAME.test(opts.name)) throw new Error(`invalid metric name "${opts.name}"`);
    for (const l of opts.labelNames ?? []) {
      if (!LABEL_NAME.test(l) || l.startsWith('__') || l === 'le') throw new Error(`invalid label name "${l}" for ${opts.name}`);
    }
    this.name = opts.name;
    this.help = opts.help;
    this.labelNames = opts.labelNames ?? [];
  }

  protected abstract initial(): S;

  protected get(labels: Labels): S {
    const keys = Object.keys(labels);
    if (keys.length !== this.labelNames.length || !this.labelNames.every((n) => Object.hasOwn(labels, n))) {
      throw new Error(`${this.name}: labels must be exactly {${this.labelNames.join(', ')}}, got {${keys.join(', ')}}`);
    }
    const values = this.labelNames.map((n) => String(labels[n]));
    const key = JSON.stringify(values);
    let s = this.series.get(key);
    if (!s) {
      s = { values, state: this.initial() };
      this.series.set(key, s);
    }
    return s.state;
  }

  /** Create a series with its initial value, so it is exported (as 0) before it first changes. */
  init(labels: Labels = {}): void {
    this.get(labels);
  }

  protected abstract samples(values: string[], state: S): string[];

  render(): string {
    const lines = [`# HELP ${this.name} ${escapeHelp(this.help)}`, `# TYPE ${this.name} ${this.type}`];
    if (this.series.size === 0 && this.labelNames.length === 0) this.get({});
    for (const { values, state } of this.series.values()) lines.push(...this.samples(values, state));
    return lines.join('\n');
  }
}

export class Counter extends Metric<{ v: number }> {
  readonly type = 'counter' as const;
  protected initial() {
    return { v: 0 };
  }
  inc(labels: Labels = {}, by = 1): void {
    if (!(by >= 0)) throw new Error(`${this.name}: a counter only goes up (got ${by})`);
    this.get(labels).v += by;
  }
  value(labels: Labels = {}): number {
    return this.get(labels).v;
  }
  protected samples(values: string[], s: { v: number }): string[] {
    return [`${this.name}${formatLabels(this.labelNames, values)} ${formatValue(s.v)}`];
  }
}

export class Gauge extends Metric<{ v: number }> {
  readonly type = 'gauge' as const;
  protected initial() {
    return { v: 0 };
  }
  set(value: number, labels: Labels = {}): void {
    this.get(labels).v = value;
  }
  inc(labels: Labels = {}, by = 1): void {
    this.get(labels).v += by;
  }
  dec(labels: Labels = {}, by = 1): void {
    this.get(labels).v -= by;
  }
  value(labels: Labels = {}): number {
    return this.get(labels).v;
  }
  protected samples(values: string[], s: { v: number }): string[] {
    return [`${this.name}${formatLabels(this.labelNames, values)} ${formatValue(s.v)}`];
  }
}

interface HistogramState {
  counts: number[];
  sum: number;
  count: number;
}

export class Histogram extends Metric<HistogramState> {
  readonly type = 'histogram' as const;
  readonly buckets: readonly number[];
  constructor(opts: MetricOptions & { buckets: readonly number[] }) {
    super(opts);
    const b = [...opts.buckets].filter((x) => x !== Infinity);
    if (b.length === 0 || b.some((x, i) => !Number.isFinite(x) || (i > 0 && x <= b[i - 1]!))) throw new Error(`${opts.name}: buckets must be increasing finite numbers`);
    this.buckets = b;
  }
  protected initial(): HistogramState {
    return { counts: this.buckets.map(() => 0), sum: 0, count: 0 };
  }
  observe(value: number, labels: Labels = {}): void {
    if (Number.isNaN(value)) return;
    const s = this.get(labels);
    for (let i = 0; i < this.buckets.length; i++) if (value <= this.buckets[i]!) s.counts[i]!++;
    s.sum += value;
    s.count++;
  }
  protected samples(values: string[], s: HistogramState): string[] {
    const out = this.buckets.map((b, i) => `${this.name}_bucket${formatLabels(this.labelNames, values, ['le', formatValue(b)])} ${s.counts[i]}`);
    out.push(`${this.name}_bucket${formatLabels(this.labelNames, values, ['le', '+Inf'])} ${s.count}`);
    out.push(`${this.name}_sum${formatLabels(this.labelNames, values)} ${formatValue(s.sum)}`);
    out.push(`${this.name}_count${formatLabels(this.labelNames, values)} ${s.count}`);
    return out;
  }
}

export class MetricsRegistry {
  private readonly metrics = new Map<string, { name: string; render(): string }>();
  private readonly collectors: Array<() => void> = [];

  private add<M extends { name: string; render(): string }>(m: M): M {
    if (this.metrics.has(m.name)) throw new Error(`metric ${m.name} is registered twice`);
    this.metrics.set(m.name, m);
    return m;
  }
  counter(opts: MetricOptions): Counter {
    return this.add(new Counter(opts));
  }
  gauge(opts: MetricOptions): Gauge {
    return this.add(new Gauge(opts));
  }
  histogram(opts: MetricOptions & { buckets: readonly number[] }): Histogram {
    return this.add(new Histogram(opts));
  }
  /** Run before each render: for gauges computed from current state. */
  onCollect(fn: () => void): void {
    this.collectors.push(fn);
  }
  render(): string {
    for (const c of this.collectors) c();
    return `${[...this.metrics.values()].map((m) => m.render()).join('\n')}\n`;
  }
}

// ---- ferry's agent metrics ----

export const JOB_OUTCOMES = ['succeeded', 'failed', 'cancelled', 'timed-out', 'abandoned', 'not-held'] as const;
export type JobOutcome = (typeof JOB_OUTCOMES)[number];
/** copied, skipped and mounted partition the blobs; restarted and resumed are copied ones whose upload started over, or went on after an interruption. */
export const BLOB_ACTIONS = ['copied', 'skipped', 'mounted', 'restarted', 'resumed'] as const;

/** What the process metrics read; tests give fixed numbers. */
export interface ProcessStats {
  /** User plus system CPU time, in seconds, since the process started. */
  cpuSeconds(): number;
  residentBytes(): number;
  heapUsedBytes(): number;
  /** Unix time, seconds. */
  startTime: number;
}

export const NODE_PROCESS_STATS: ProcessStats = {
  cpuSeconds: () => {
    const u = process.cpuUsage();
    return (u.user + u.system) / 1e6;
  },
  residentBytes: () => process.memoryUsage.rss(),
  heapUsedBytes: () => process.memoryUsage().heapUsed,
  startTime: Math.round(performance.timeOrigin / 1000),
};

export interface AgentMetricsOptions {
  registry?: MetricsRegistry;
  /** The git commit ferry was built from (build_info); default the build's own. */
  commit?: string;
  process?: ProcessStats;
}

export interface AgentMetrics {
  registry: MetricsRegistry;
  jobs: Counter;
  jobErrors: Counter;
  jobsRunning: Gauge;
  bytesTransferred: Counter;
  bytesResent: Counter;
  imageBytes: Counter;
  pendingResults: Gauge;
  blobs: Counter;
  transferDuration: Histogram;
  registryErrors: Counter;
  controlPlaneRequests: Counter;
  controlPlaneLastSuccess: Gauge;
  buildInfo: Gauge;
  /** Count a finished job, its error code and its transfer. */
  recordJob(outcome: JobOutcome, opts?: { errorCode?: ContractCode; transfer?: TransferStats }): void;
  recordTransfer(stats: TransferStats): void;
  /** Count a registry error by side and code (e.g. {side: "source", code: "SOURCE_AUTH"}). */
  recordRegistryError(side: 'source' | 'destination', code: string): void;
  /** Pass as the control-plane client's observer. */
  observeControlPlane(e: RequestEvent): void;
  /** Where ferry_pending_results reads its value at each scrape (the agent's pending-result store). */
  watchPendingResults(count: () => number): void;
  /** Throttled answers per registry host (429, 503, ECR's ThrottlingException). */
  registryThrottled: Counter;
  /** Each registry host's current concurrency limit (AIMD, src/transport/flow.ts). */
  registryConcurrency: Gauge;
  /** Time each registry host was paused for every job (Retry-After). */
  registryPaused: Counter;
  /** The request rate each throttling registry host is paced at (requests/s). */
  registryPace: Gauge;
  /** Read the flow controller's per-registry state at every scrape. */
  observeFlow(stats: () => RegistryFlowStats[]): void;
}

/** Seconds: a fast warm sync to a slow multi-gigabyte copy. */
export const TRANSFER_BUCKETS = [0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600];

export function createAgentMetrics(version: string, opts: AgentMetricsOptions = {}): AgentMetrics {
  const registry = opts.registry ?? new MetricsRegistry();
  const proc = opts.process ?? NODE_PROCESS_STATS;
  const jobs = registry.counter({ name: 'ferry_jobs_total', help: 'Jobs finished by this process, by outcome.', labelNames: ['outcome'] });
  for (const o of JOB_OUTCOMES) jobs.init({ outcome: o });
  const jobErrors = registry.counter({ name: 'ferry_job_errors_total', help: 'Failed jobs by reported error code.', labelNames: ['code'] });
  const jobsRunning = registry.gauge({ name: 'ferry_jobs_running', help: 'Jobs running now.' });
  const bytesTransferred = registry.counter({ name: 'ferry_bytes_transferred_total', help: 'Blob bytes streamed from sources to the local registry.' });
  const bytesResent = registry.counter({
    name: 'ferry_bytes_resent_total',
    help: 'Bytes sent again that the local registry had already acknowledged (after an interruption): the cost of resuming.',
  });
  const imageBytes = registry.counter({ name: 'ferry_image_bytes_total', help: 'Bytes of the images synced (transferred, skipped or mounted).' });
  const blobs = registry.counter({ name: 'ferry_blobs_total', help: 'Blobs by what the copy did with them.', labelNames: ['action'] });
  for (const a of BLOB_ACTIONS) blobs.init({ action: a });
  const transferDuration = registry.histogram({ name: 'ferry_transfer_duration_seconds', help: 'Time to copy one job\'s image.', buckets: TRANSFER_BUCKETS });
  const registryErrors = registry.counter({ name: 'ferry_registry_errors_total', help: 'Registry errors by side and error code.', labelNames: ['side', 'code'] });
  const controlPlaneRequests = registry.counter({ name: 'ferry_control_plane_requests_total', help: 'Control-plane requests by endpoint and outcome.', labelNames: ['endpoint', 'outcome'] });
  const controlPlaneLastSuccess = registry.gauge({ name: 'ferry_control_plane_last_success_timestamp_seconds', help: 'When the control plane last answered successfully (Unix time).' });
  const pendingResults = registry.gauge({
    name: 'ferry_pending_results',
    help: 'Job results kept in the state directory that the control plane has not accepted yet.',
  });
  let pendingCount: (() => number) | undefined;
  const buildInfo = registry.gauge({ name: 'ferry_build_info', help: 'ferry\'s version, the git commit it was built from, and the Node.js it runs on.', labelNames: ['version', 'commit', 'node'] });
  buildInfo.set(1, { version, commit: opts.commit ?? COMMIT, node: process.version });

  // The process itself, under the names Prometheus client libraries use.
  const cpu = registry.counter({ name: 'process_cpu_seconds_total', help: 'User and system CPU time spent, in seconds.' });
  const resident = registry.gauge({ name: 'process_resident_memory_bytes', help: 'Resident memory size, in bytes.' });
  const heap = registry.gauge({ name: 'nodejs_heap_size_used_bytes', help: 'JavaScript heap in use, in bytes.' });
  const started = registry.gauge({ name: 'process_start_time_seconds', help: 'When the process started (Unix time, seconds).' });
  started.set(proc.startTime);
  registry.onCollect(() => {
    cpu.inc({}, Math.max(0, proc.cpuSeconds() - cpu.value()));
    resident.set(proc.residentBytes());
    heap.set(proc.heapUsedBytes());
    if (pendingCount) pendingResults.set(pendingCount());
  });

  const recordTransfer = (t: TransferStats) => {
    bytesTransferred.inc({}, t.bytes_transferred);
    bytesResent.inc({}, t.bytes_resent);
    imageBytes.inc({}, t.bytes_total);
    blobs.inc({ action: 'copied' }, t.blobs_copied);
    blobs.inc({ action: 'skipped' }, t.blobs_skipped);
    blobs.inc({ action: 'mounted' }, t.blobs_mounted);
    blobs.inc({ action: 'restarted' }, t.blobs_restarted);
    blobs.inc({ action: 'resumed' }, t.blobs_resumed);
    transferDuration.observe(t.duration_ms / 1000);
  };
  const registryThrottled = registry.counter({ name: 'ferry_registry_throttled_total', help: 'Answers refusing a request for load (429, 503, ECR ThrottlingException), by registry host.', labelNames: ['registry'] });
  const registryConcurrency = registry.gauge({ name: 'ferry_registry_concurrency', help: 'Blob transfers allowed at once towards a registry host now (halved while it throttles).', labelNames: ['registry'] });
  const registryPaused = registry.counter({ name: 'ferry_registry_paused_seconds_total', help: 'Time a registry host was paused for every job (Retry-After).', labelNames: ['registry'] });
  const registryPace = registry.gauge({ name: 'ferry_registry_pace_requests_per_second', help: 'The request rate a throttling registry host is paced at.', labelNames: ['registry'] });
  const observeFlow = (stats: () => RegistryFlowStats[]) => {
    registry.onCollect(() => {
      for (const s of stats()) {
        const labels = { registry: s.registry };
        // Counters from the flow controller's running totals.
        registryThrottled.inc(labels, Math.max(0, s.throttled - registryThrottled.value(labels)));
        registryPaused.inc(labels, Math.max(0, s.pausedMs / 1000 - registryPaused.value(labels)));
        registryConcurrency.set(s.concurrency, labels);
        registryPace.set(s.pace ?? 0, labels);
      }
    });
  };
  return {
    registry,
    jobs,
    jobErrors,
    jobsRunning,
    bytesTransferred,
    bytesResent,
    imageBytes,
    pendingResults,
    blobs,
    transferDuration,
    registryErrors,
    controlPlaneRequests,
    controlPlaneLastSuccess,
    buildInfo,
    recordTransfer,
    recordJob(outcome, opts = {}) {
      jobs.inc({ outcome });
      if (opts.errorCode) jobErrors.inc({ code: opts.errorCode });
      if (opts.transfer) recordTransfer(opts.transfer);
    },
    recordRegistryError(side, code) {
      registryErrors.inc({ side, code });
    },
    observeControlPlane(e) {
      controlPlaneRequests.inc({ endpoint: e.endpoint, outcome: e.outcome });
      if (e.outcome === 'ok') controlPlaneLastSuccess.set(Date.now() / 1000);
    },
    watchPendingResults(count) {
      pendingCount = count;
    },
    registryThrottled,
    registryConcurrency,
    registryPaused,
    registryPace,
    observeFlow,
  };
}
