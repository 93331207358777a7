// /metrics must be valid Prometheus text exposition: checked by a small, strict parser written
// here from the format's description (HELP/TYPE lines, label escaping, histogram invariants).
// Also the health server's endpoints and readiness against the reference control plane.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { request } from 'undici';
import { silentLogger } from '../../src/log/logger.ts';
import { ControlPlaneClient } from '../../src/agent/control-plane-client.ts';
import { controlPlaneCheck, Readiness, startHealthServer, type HealthServer } from '../../src/agent/health.ts';
import { createAgentMetrics, MetricsRegistry, PROMETHEUS_CONTENT_TYPE } from '../../src/agent/metrics.ts';
import { StaticTokenSource } from '../../src/agent/token-source.ts';
import { startControlPlane, type ControlPlane } from '../harness/control-plane.ts';

// ---- a Prometheus text-format parser ----

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}
interface Family {
  name: string;
  help: string | undefined;
  type: 'counter' | 'gauge' | 'histogram' | 'summary' | 'untyped';
  samples: Sample[];
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*/;
const LABEL = /^[a-zA-Z_][a-zA-Z0-9_]*/;

function parseValue(s: string, line: number): number {
  if (s === '+Inf') return Infinity;
  if (s === '-Inf') return -Infinity;
  if (s === 'NaN') return NaN;
  if (!/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(s)) throw new Error(`line ${line}: bad value "${s}"`);
  return Number(s);
}

function parseLabels(s: string, line: number): { labels: Record<string, string>; rest: string } {
  const labels: Record<string, string> = {};
  let i = 1; // after '{'
  for (;;) {
    if (s[i] === '}') return { labels, rest: s.slice(i + 1) };
    const m = LABEL.exec(s.slice(i));
    if (!m) throw new Error(`line ${line}: bad label name at "${s.slice(i, i + 20)}"`);
    const name = m[0];
    i += name.length;
    if (s[i] !== '=' || s[i + 1] !== '"') throw new Error(`line ${line}: expected ="`);
    i += 2;
    let value = '';
    for (;;) {
      const c = s[i];
      if (c === undefined) throw new Error(`line ${line}: unterminated label value`);
      if (c === '"') break;
      if (c === '\\') {
        const e = s[i + 1];
        if (e === '\\') value += '\\';
        else if (e === '"') value += '"';
        else if (e === 'n') value += '\n';
        else throw new Error(`line ${line}: bad escape \\${e}`);
        i += 2;
        continue;
      }
      if (c === '\n') throw new Error(`line ${line}: raw newline in label value`);
      value += c;
      i++;
    }
    i++; // closing quote
    if (Object.hasOwn(labels, name)) throw new Error(`line ${line}: duplicate label ${name}`);
    labels[name] = value;
    if (s[i] === ',') i++;
    else if (s[i] !== '}') throw new Error(`line ${line}: expected , or }`);
  }
}

function familyOf(sample: string, families: Map<string, Family>): Family | undefined {
  if (families.has(sample)) return families.get(sample);
  for (const suffix of ['_bucket', '_sum', '_count']) {
    if (sample.endsWith(suffix)) {
      const f = families.get(sample.slice(0, -suffix.length));
      if (f && (f.type === 'histogram' || f.type === 'summary')) return f;
    }
  }
  return undefined;
}

function parseExposition(text: string): Map<string, Family> {
  if (!text.endsWith('\n')) throw new Error('exposition must end with a newline');
  const families = new Map<string, Family>();
  const seenSeries = new Set<string>();
  const closed = new Set<string>();
  let current: Family | undefined;
  text
    .slice(0, -1)
    .split('\n')
    .forEach((raw, idx) => {
      const line = idx + 1;
      if (raw.trim() === '') return;
      if (raw.startsWith('#')) {
        const m = /^# (HELP|TYPE) ([^ ]+) ?(.*)$/.exec(raw);
        if (!m) return; // a plain comment
        const [, kind, name, rest] = m as unknown as [string, string, string, string];
        if (!NAME.test(name) || NAME.exec(name)![0] !== name) throw new Error(`line ${line}: bad metric name ${name}`);
        if (closed.has(name)) throw new Error(`line ${line}: ${name} appears in two places`);
        let f = families.get(name);
        if (!f) {
          if (current) closed.add(current.name);
          f = { name, help: undefined, type: 'untyped', samples: [] };
          families.set(name, f);
          current = f;
        }
        if (kind === 'HELP') {
          if (f.help !== undefined) throw new Error(`line ${line}: second HELP for ${name}`);
          f.help = rest.replace(/\\(\\|n)/g, (_, c: string) => (c === 'n' ? '\n' : '\\'));
        } else {
          if (f.samples.length > 0) throw new Error(`line ${line}: TYPE for ${name} after its samples`);
          if (!['counter', 'gauge', 'histogram', 'summary', 'untyped'].includes(rest)) throw new Error(`line ${line}: bad type ${rest}`);
          f.type = rest as Family['type'];
        }
        return;
      }
      const nm = NAME.exec(raw);
      if (!nm) throw new Error(`line ${line}: bad sample "${raw}"`);
      const name = nm[0];
      let rest = raw.slice(name.length);
      let labels: Record<string, string> = {};
      if (rest.startsWith('{')) ({ labels, rest } = parseLabels(rest, line));
      const parts = rest.trim().split(/ +/);
      if (!rest.startsWith(' ') || parts.length < 1 || parts.length > 2) throw new Error(`line ${line}: expected " value [timestamp]"`);
      const value = parseValue(parts[0]!, line);
      const f = familyOf(name, families);
      if (!f) throw new Error(`line ${line}: sample ${name} has no HELP/TYPE family`);
      if (f !== current) throw new Error(`line ${line}: sample ${name} is not next to its family`);
      const series = `${name}${JSON.stringify(Object.entries(labels).sort())}`;
      if (seenSeries.has(series)) throw new Error(`line ${line}: duplicate series ${series}`);
      seenSeries.add(series);
      f.samples.push({ name, labels, value });
    });
  for (const f of families.values()) {
    if (f.type === 'counter') for (const s of f.samples) if (!(s.value >= 0)) throw new Error(`counter ${s.name} is ${s.value}`);
    if (f.type === 'histogram') checkHistogram(f);
  }
  return families;
}

function checkHistogram(f: Family): void {
  const groups = new Map<string, { buckets: Array<[number, number]>; sum?: number; count?: number }>();
  for (const s of f.samples) {
    const { le, ...rest } = s.labels;
    const key = JSON.stringify(Object.entries(rest).sort());
    const g = groups.get(key) ?? { buckets: [] };
    groups.set(key, g);
    if (s.name === `${f.name}_bucket`) {
      if (le === undefined) throw new Error(`${s.name} without le`);
      g.buckets.push([parseValue(le, 0), s.value]);
    } else if (s.name === `${f.name}_sum`) g.sum = s.value;
    else if (s.name === `${f.name}_count`) g.count = s.value;
    else throw new Error(`histogram ${f.name} has a stray sample ${s.name}`);
  }
  for (const g of groups.values()) {
    if (g.count === undefined || g.sum === undefined) throw new Error(`histogram ${f.name} lacks _sum or _count`);
    const last = g.buckets.at(-1);
    if (!last || last[0] !== Infinity) throw new Error(`histogram ${f.name} lacks the +Inf bucket last`);
    if (last[1] !== g.count) throw new Error(`histogram ${f.name}: +Inf bucket ${last[1]} != count ${g.count}`);
    for (let i = 1; i < g.buckets.length; i++) {
      if (!(g.buckets[i]![0] > g.buckets[i - 1]![0])) throw new Error(`histogram ${f.name}: le not increasing`);
      if (g.buckets[i]![1] < g.buckets[i - 1]![1]) throw new Error(`histogram ${f.name}: buckets not cumulative`);
    }
  }
}

function sample(families: Map<string, Family>, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const f of families.values()) {
    for (const s of f.samples) {
      if (s.name === name && JSON.stringify(Object.entries(s.labels).sort()) === JSON.stringify(Object.entries(labels).sort())) return s.value;
    }
  }
  return undefined;
}

// ---- tests ----

describe('the Prometheus text parser itself', () => {
  it('rejects what the format forbids', () => {
    assert.throws(() => parseExposition('x 1'), /newline/);
    assert.throws(() => parseExposition('# TYPE x counter\nx{a="1} 1\n'), /unterminated/);
    assert.throws(() => parseExposition('# TYPE x counter\nx{a="\\q"} 1\n'), /bad escape/);
    assert.throws(() => parseExposition('# TYPE x counter\nx 1\nx 2\n'), /duplicate series/);
    assert.throws(() => parseExposition('y 1\n'), /no HELP\/TYPE/);
    assert.throws(() => parseExposition('# TYPE x counter\nx one\n'), /bad value/);
    assert.throws(() => parseExposition('# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n'), /cumulative/);
    assert.throws(() => parseExposition('# TYPE x counter\nx 1\n# TYPE y gauge\ny 1\n# HELP x again\n'), /two places/);
  });
});

describe('metrics registry', () => {
  it('renders counters, gauges and histograms the parser accepts, with labels escaped', () => {
    const r = new MetricsRegistry();
    const c = r.counter({ name: 'demo_events_total', help: 'Events.\nWith a second line and a \\ backslash.', labelNames: ['kind'] });
    const tricky = 'quote " backslash \\ newline \n end';
    c.inc({ kind: tricky }, 2);
    c.inc({ kind: 'plain' });
    const g = r.gauge({ name: 'demo_level', help: 'A level.' });
    g.set(-1.5);
    const h = r.histogram({ name: 'demo_seconds', help: 'Durations.', labelNames: ['op'], buckets: [0.1, 1, 10] });
    for (const v of [0.05, 0.5, 0.5, 5, 50]) h.observe(v, { op: 'copy' });
    const text = r.render();
    const fams = parseExposition(text);
    assert.equal(fams.get('demo_events_total')!.help, 'Events.\nWith a second line and a \\ backslash.');
    assert.equal(sample(fams, 'demo_events_total', { kind: tricky }), 2);
    assert.equal(sample(fams, 'demo_events_total', { kind: 'plain' }), 1);
    assert.equal(sample(fams, 'demo_level'), -1.5);
    assert.equal(fams.get('demo_seconds')!.type, 'histogram');
    assert.equal(sample(fams, 'demo_seconds_bucket', { op: 'copy', le: '0.1' }), 1);
    assert.equal(sample(fams, 'demo_seconds_bucket', { op: 'copy', le: '1' }), 3);
    assert.equal(sample(fams, 'demo_seconds_bucket', { op: 'copy', le: '10' }), 4);
    assert.equal(sample(fams, 'demo_seconds_bucket', { op: 'copy', le: '+Inf' }), 5);
    assert.equal(sample(fams, 'demo_seconds_count', { op: 'copy' }), 5);
    assert.equal(sample(fams, 'demo_seconds_sum', { op: 'copy' }), 56.05);
  });

  it('refuses misuse', () => {
    const r = new MetricsRegistry();
    const c = r.counter({ name: 'x_total', help: 'x', labelNames: ['a'] });
    assert.throws(() => c.inc({}), /labels must be exactly/);
    assert.throws(() => c.inc({ a: '1', b: '2' }), /labels must be exactly/);
    assert.throws(() => c.inc({ a: '1' }, -1), /only goes up/);
    assert.throws(() => r.counter({ name: 'x_total', help: 'again' }), /registered twice/);
    assert.throws(() => r.gauge({ name: 'bad-name', help: '' }), /invalid metric name/);
    assert.throws(() => r.histogram({ name: 'h', help: '', buckets: [2, 1] }), /increasing/);
    assert.throws(() => r.histogram({ name: 'h2', help: '', labelNames: ['le'], buckets: [1] }), /invalid label/);
  });

  it('the agent metrics cover jobs, bytes, blobs, durations, registry errors and the control plane', () => {
    const m = createAgentMetrics('1.2.3', { commit: 'abc123def456' });
    const empty = parseExposition(m.registry.render());
    assert.equal(sample(empty, 'ferry_jobs_total', { outcome: 'succeeded' }), 0, 'known outcomes are exported before they happen');
    assert.equal(sample(empty, 'ferry_build_info', { version: '1.2.3', commit: 'abc123def456', node: process.version }), 1);
    assert.equal(sample(empty, 'ferry_blobs_total', { action: 'resumed' }), 0);
    const transfer = { blobs_copied: 3, blobs_skipped: 2, blobs_mounted: 1, blobs_restarted: 1, blobs_resumed: 2, bytes_transferred: 1000, bytes_resent: 300, bytes_reread_for_hash: 0, bytes_total: 5000, manifests_written: 2, duration_ms: 1500 };
    m.recordJob('succeeded', { transfer });
    m.recordJob('failed', { errorCode: 'SOURCE_AUTH' });
    m.recordJob('failed', { errorCode: 'SOURCE_AUTH' });
    m.recordRegistryError('destination', 'DESTINATION_REJECTED');
    m.jobsRunning.set(2);
    m.observeControlPlane({ endpoint: 'claim', method: 'POST', status: 201, outcome: 'ok', durationMs: 3, requestId: 'r' });
    m.observeControlPlane({ endpoint: 'claim', method: 'POST', status: undefined, outcome: 'network', durationMs: 3, requestId: 'r' });
    const f = parseExposition(m.registry.render());
    assert.equal(sample(f, 'ferry_jobs_total', { outcome: 'succeeded' }), 1);
    assert.equal(sample(f, 'ferry_jobs_total', { outcome: 'failed' }), 2);
    assert.equal(sample(f, 'ferry_job_errors_total', { code: 'SOURCE_AUTH' }), 2);
    assert.equal(sample(f, 'ferry_bytes_transferred_total'), 1000);
    assert.equal(sample(f, 'ferry_image_bytes_total'), 5000);
    assert.equal(sample(f, 'ferry_blobs_total', { action: 'skipped' }), 2);
    assert.equal(sample(f, 'ferry_blobs_total', { action: 'mounted' }), 1);
    assert.equal(sample(f, 'ferry_blobs_total', { action: 'resumed' }), 2);
    assert.equal(sample(f, 'ferry_bytes_resent_total'), 300);
    assert.equal(sample(f, 'ferry_transfer_duration_seconds_count'), 1);
    assert.equal(sample(f, 'ferry_transfer_duration_seconds_bucket', { le: '2.5' }), 1);
    assert.equal(sample(f, 'ferry_transfer_duration_seconds_bucket', { le: '1' }), 0);
    assert.equal(sample(f, 'ferry_registry_errors_total', { side: 'destination', code: 'DESTINATION_REJECTED' }), 1);
    assert.equal(sample(f, 'ferry_jobs_running'), 2);
    assert.equal(sample(f, 'ferry_control_plane_requests_total', { endpoint: 'claim', outcome: 'network' }), 1);
    assert.ok((sample(f, 'ferry_control_plane_last_success_timestamp_seconds') ?? 0) > 1.7e9);
    for (const fam of f.values()) if (fam.type === 'counter') assert.match(fam.name, /_total$/);
  });

  it('process CPU and memory, and pending results, are read at each scrape', () => {
    const stats = { cpu: 1.5, rss: 50_000_000, heap: 20_000_000 };
    const m = createAgentMetrics('1.2.3', {
      process: { cpuSeconds: () => stats.cpu, residentBytes: () => stats.rss, heapUsedBytes: () => stats.heap, startTime: 1_800_000_000 },
    });
    let pending = 0;
    m.watchPendingResults(() => pending);
    let f = parseExposition(m.registry.render());
    assert.equal(sample(f, 'process_cpu_seconds_total'), 1.5);
    assert.equal(sample(f, 'process_resident_memory_bytes'), 50_000_000);
    assert.equal(sample(f, 'nodejs_heap_size_used_bytes'), 20_000_000);
    assert.equal(sample(f, 'process_start_time_seconds'), 1_800_000_000);
    assert.equal(sample(f, 'ferry_pending_results'), 0);
    Object.assign(stats, { cpu: 4.25, rss: 60_000_000 });
    pending = 3;
    f = parseExposition(m.registry.render());
    assert.equal(sample(f, 'process_cpu_seconds_total'), 4.25);
    assert.equal(sample(f, 'process_resident_memory_bytes'), 60_000_000);
    assert.equal(sample(f, 'ferry_pending_results'), 3);
    assert.equal(f.get('process_cpu_seconds_total')!.type, 'counter');
    // The real process: numbers that make sense.
    const real = parseExposition(createAgentMetrics('1.2.3').registry.render());
    assert.ok((sample(real, 'process_cpu_seconds_total') ?? 0) > 0);
    assert.ok((sample(real, 'process_resident_memory_bytes') ?? 0) > 10 * 1024 * 1024);
    const start = sample(real, 'process_start_time_seconds') ?? 0;
    assert.ok(start > Date.now() / 1000 - 3600 && start <= Date.now() / 1000 + 1, `start time ${start}`);
  });
});

describe('health server', () => {
  let cp: ControlPlane;
  let client: ControlPlaneClient;
  let health: HealthServer;
  let configValid = true;
  const metrics = createAgentMetrics('test');

  before(async () => {
    cp = await startControlPlane();
    client = new ControlPlaneClient({
      url: cp.url,
      runnerId: cp.runnerId,
      instanceId: 'instance-h',
      tokens: new StaticTokenSource(cp.token),
      logger: silentLogger(),
      observer: (e) => metrics.observeControlPlane(e),
    });
    const readiness = new Readiness().add('config', () => (configValid ? undefined : 'invalid')).add('control plane', controlPlaneCheck(client.contact, 30));
    health = await startHealthServer({ addr: { host: '127.0.0.1', port: 0 }, readiness, metrics: metrics.registry, logger: silentLogger() });
  });
  after(async () => {
    await health.close();
    await client.close();
    await cp.stop();
  });

  const get = async (path: string, method: 'GET' | 'HEAD' | 'POST' = 'GET') => {
    const res = await request(`${health.url}${path}`, { method });
    return { status: res.statusCode, type: res.headers['content-type'], text: await res.body.text() };
  };

  it('/healthz is 200 while the process serves', async () => {
    assert.deepEqual(await get('/healthz'), { status: 200, type: 'text/plain; charset=utf-8', text: 'ok\n' });
  });

  it('/readyz follows the control plane contact and the token', async () => {
    let r = await get('/readyz');
    assert.equal(r.status, 503);
    assert.match(r.text, /control plane: not reached yet/);
    await client.settings();
    r = await get('/readyz');
    assert.equal(r.status, 200, r.text);

    cp.rotateToken('rotated-token-zzzzzz');
    await assert.rejects(client.settings());
    r = await get('/readyz');
    assert.equal(r.status, 503);
    assert.match(r.text, /rejected the runner token/);

    configValid = false;
    r = await get('/readyz');
    assert.match(r.text, /config: invalid/);
    configValid = true;
  });

  it('/readyz turns 503 when the control plane was not reached recently', () => {
    let now = 1_000_000;
    const contact = { lastSuccessAt: now, lastFailureAt: undefined, lastFailure: undefined, lastUnauthorizedAt: undefined };
    const check = controlPlaneCheck(contact, 30, () => now);
    assert.equal(check(), undefined);
    now += 31_000;
    assert.match(check() ?? '', /not reached for 31 s/);
  });

  it('/metrics serves valid Prometheus text', async () => {
    metrics.recordJob('succeeded');
    const r = await get('/metrics');
    assert.equal(r.status, 200);
    assert.equal(r.type, PROMETHEUS_CONTENT_TYPE);
    const f = parseExposition(r.text);
    assert.equal(sample(f, 'ferry_jobs_total', { outcome: 'succeeded' }), 1);
    assert.ok((sample(f, 'ferry_control_plane_requests_total', { endpoint: 'settings', outcome: 'ok' }) ?? 0) >= 1);
    assert.ok((sample(f, 'ferry_control_plane_requests_total', { endpoint: 'settings', outcome: 'unauthorized' }) ?? 0) >= 1);
  });

  it('other paths are 404, other methods 405, HEAD has no body', async () => {
    assert.equal((await get('/nope')).status, 404);
    assert.equal((await get('/metrics', 'POST')).status, 405);
    const head = await get('/healthz', 'HEAD');
    assert.equal(head.status, 200);
    assert.equal(head.text, '');
  });
});
