// The agent's memory bound: the heap cap in the executable's flags fits the default --max-jobs
// and --concurrency, the agent says at start when its configuration needs more (and how to give
// it), and the deploy files allow what the cap lets the agent use.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { parseAllDocuments } from 'yaml';
import { AGENT_OPTIONS } from '../../src/agent/config.ts';
import { heapCapWarning, heapNeedMiB, nonHeapMiB } from '../../src/agent/memory.ts';
import { killAgents, startAgent, startWorld, tempState, type AgentWorld } from './agent-harness.ts';

const root = new URL('../../', import.meta.url).pathname;
const execArgv = (JSON.parse(readFileSync(`${root}pkg.config.json`, 'utf8')) as { execArgv: string[] }).execArgv;
const defaultOf = (flag: string) => Number(AGENT_OPTIONS.find((o) => o.flag === flag)!.default);
const DEFAULT_JOBS = defaultOf('max-jobs');
const DEFAULT_CONCURRENCY = defaultOf('concurrency');

/** The heap cap (MiB) of a command line: its own --max-old-space-size, else the executable's. */
function capOf(args: string[]): number {
  const flags = [...execArgv, ...args.flatMap((a) => (a.startsWith('--node-options=') ? a.slice('--node-options='.length).replace(/^"|"$/g, '').split(/\s+/) : []))];
  const last = flags.filter((f) => f.startsWith('--max-old-space-size=')).at(-1);
  assert.ok(last, 'no --max-old-space-size: the heap is not capped');
  return Number(last.split('=')[1]);
}

/** `512Mi`, `384M`, `1G` → MiB. */
function mib(quantity: string): number {
  const m = /^(\d+)(Mi|M|Gi|G)$/.exec(quantity.trim());
  assert.ok(m, `not a memory quantity: ${quantity}`);
  return Number(m[1]) * (m[2]!.startsWith('G') ? 1024 : 1);
}

test('the heap cap in the executable\'s flags fits the default --max-jobs and --concurrency; a larger configuration is told what it needs', () => {
  const cap = capOf([]);
  assert.ok(cap >= heapNeedMiB(DEFAULT_JOBS, DEFAULT_CONCURRENCY), `cap ${cap} MiB < ${heapNeedMiB(DEFAULT_JOBS, DEFAULT_CONCURRENCY)} MiB needed at the defaults`);
  // Under 256 MiB V8 grows the heap by ~1.3× the live set instead of up to 4× (its small-heap mode).
  assert.ok(cap < 256, `cap ${cap} MiB leaves V8's small-heap mode`);
  assert.equal(heapCapWarning(DEFAULT_JOBS, DEFAULT_CONCURRENCY, cap + 3), undefined);
  const need = heapNeedMiB(64, 256);
  const warning = heapCapWarning(64, 256, cap + 3);
  assert.ok(warning);
  assert.match(warning, new RegExp(`--node-options=--max-old-space-size=${need}\\b`));
  assert.match(warning, new RegExp(`${need + nonHeapMiB(256)} MiB`));
  assert.ok(heapNeedMiB(8, 8) > heapNeedMiB(2, 8) && heapNeedMiB(2, 64) > heapNeedMiB(2, 8), 'the need grows with jobs and with transfers');
});

test('systemd unit: MemoryMax allows what the heap cap lets the agent use at the unit\'s settings', () => {
  const unit = readFileSync(`${root}deploy/systemd/ferry-agent.service`, 'utf8');
  const execStart = /^ExecStart=(.+)$/m.exec(unit)![1]!.split(/\s+/);
  const cap = capOf(execStart);
  // FERRY_MAX_JOBS / FERRY_CONCURRENCY come from /etc/ferry/agent.env: the defaults unless set there.
  const jobs = DEFAULT_JOBS;
  const concurrency = DEFAULT_CONCURRENCY;
  assert.ok(cap >= heapNeedMiB(jobs, concurrency));
  const max = /^MemoryMax=(\S+)$/m.exec(unit);
  assert.ok(max, 'no MemoryMax: a unit without one never stops an agent that outgrows its cap');
  assert.ok(mib(max[1]!) >= cap + nonHeapMiB(concurrency), `MemoryMax=${max[1]} < ${cap + nonHeapMiB(concurrency)} MiB (heap cap ${cap} + the rest)`);
});

test('Kubernetes: resources.limits.memory allows what the heap cap lets the agent use at the manifest\'s settings', () => {
  const docs = parseAllDocuments(readFileSync(`${root}deploy/kubernetes/ferry-agent.yaml`, 'utf8')).map((d) => d.toJS());
  const container = docs.find((d) => d.kind === 'Deployment').spec.template.spec.containers[0];
  const env = new Map<string, string>(container.env.map((e: { name: string; value: string }) => [e.name, e.value]));
  const argValue = (flag: string) => (container.args as string[]).find((a) => a.startsWith(`--${flag}=`))?.split('=')[1];
  const jobs = Number(argValue('max-jobs') ?? env.get('FERRY_MAX_JOBS') ?? DEFAULT_JOBS);
  const concurrency = Number(argValue('concurrency') ?? env.get('FERRY_CONCURRENCY') ?? DEFAULT_CONCURRENCY);
  const cap = capOf(container.args);
  assert.ok(cap >= heapNeedMiB(jobs, concurrency), `heap cap ${cap} MiB < ${heapNeedMiB(jobs, concurrency)} MiB for ${jobs} jobs and ${concurrency} transfers`);
  const limit = mib(container.resources.limits.memory);
  assert.ok(limit >= cap + nonHeapMiB(concurrency), `limits.memory ${container.resources.limits.memory} < ${cap + nonHeapMiB(concurrency)} MiB`);
});

describe('the agent at start', () => {
  let world: AgentWorld;
  before(async () => {
    world = await startWorld();
  });
  after(async () => {
    killAgents();
    await world?.stop();
  });

  test('it runs under the executable\'s cap, logs it, and warns when --max-jobs and --concurrency need more', async () => {
    const fits = startAgent(world, tempState(), ['--exit-when-idle', '--log-level', 'info']);
    assert.equal(await fits.exited, 0, fits.logs().slice(-2000));
    const start = JSON.parse(fits.logs().split('\n').find((l) => l.includes('"msg":"ferry agent starting"'))!) as { heap_limit_mib: number };
    const cap = capOf([]);
    assert.ok(start.heap_limit_mib >= cap && start.heap_limit_mib <= cap + 8, `heap limit ${start.heap_limit_mib} MiB under a ${cap} MiB cap`);
    assert.ok(!fits.logs().includes('may need a V8 heap'), 'warned at the default settings');

    const big = startAgent(world, tempState(), ['--exit-when-idle', '--log-level', 'info', '--max-jobs', '64', '--concurrency', '256']);
    assert.equal(await big.exited, 0, big.logs().slice(-2000));
    const warning = big.logs().split('\n').find((l) => l.includes('may need a V8 heap'));
    assert.ok(warning, big.logs().slice(-2000));
    assert.equal((JSON.parse(warning) as { level: number }).level, 40);
    assert.match(warning, new RegExp(`--node-options=--max-old-space-size=${heapNeedMiB(64, 256)}`));
  });
});
