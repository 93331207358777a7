// The README's generated parts match the code, and its two commands exist as written.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { renderReadme } from '../scripts/gen-docs.ts';
import { AGENT_OPTIONS } from '../src/agent/config.ts';
import { createAgentMetrics } from '../src/agent/metrics.ts';
import { CONTRACT_CODES } from '../src/errors.ts';
import { copyOptions } from '../src/cli/copy.ts';
import { globalOptions } from '../src/cli/options.ts';

const root = new URL('../', import.meta.url).pathname;
const readme = readFileSync(`${root}README.md`, 'utf8');

test('the agent configuration reference in README.md is generated from the real options', () => {
  assert.equal(readme, renderReadme(readme), 'README.md is out of date: run npm run docs');
  for (const o of AGENT_OPTIONS) assert.ok(readme.includes(`\`--${o.flag}\``) && readme.includes(`\`${o.env}\``), `--${o.flag} missing from README`);
});

test('every agent option in README.md is accepted by `ferry agent --help`', () => {
  const help = spawnSync(process.execPath, [`${root}src/main.ts`, 'agent', '--help'], { encoding: 'utf8' });
  assert.equal(help.status, 0);
  for (const o of AGENT_OPTIONS) assert.ok(help.stdout.includes(`--${o.flag}`), `--${o.flag} not in --help`);
});

test('the README names the two commands, and package.json defines them', () => {
  const pkg = JSON.parse(readFileSync(`${root}package.json`, 'utf8')) as { scripts: Record<string, string> };
  assert.match(readme, /`npm run demo`/);
  assert.match(readme, /`npm test`/);
  assert.ok(pkg.scripts.demo && pkg.scripts.test);
});

test('npm run demo: the agent syncs a job end to end and the image is verified', () => {
  const r = spawnSync(process.execPath, [`${root}scripts/demo.ts`], { encoding: 'utf8', timeout: 180_000 });
  assert.equal(r.status, 0, `${r.stdout}\n${r.stderr}`);
  assert.match(r.stdout, /job job-\d+: finished/);
  assert.match(r.stdout, /verified: the local registry holds/);
});

test('docs/troubleshooting.md explains every error code ferry can report', () => {
  const doc = readFileSync(`${root}docs/troubleshooting.md`, 'utf8');
  for (const code of [...CONTRACT_CODES, 'USAGE', 'INTERRUPTED']) assert.match(doc, new RegExp(`^\\| \`${code}\` \\| .+ \\| .+ \\|$`, 'm'), `${code} has no row with a meaning and a remedy`);
});

test('every ferry copy flag is in the README\'s option table', () => {
  const section = readme.slice(readme.indexOf('### Options of `ferry copy`'), readme.indexOf('### Error codes'));
  for (const flag of [...Object.keys(copyOptions), ...Object.keys(globalOptions)]) {
    const name = flag === 'create-repository' ? 'no-create-repository' : flag;
    assert.ok(section.includes(`\`--${name}`), `--${name} is missing from the README's ferry copy options`);
  }
});

test('the docs speak of the project: no "issue N" of the team\'s tracker', () => {
  const files = ['README.md', ...readdirSync(`${root}docs`).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`)];
  for (const f of files) {
    const text = readFileSync(`${root}${f}`, 'utf8');
    const m = /\b[Ii]ssues?[ -]#?\d+\b|\(issue\b|\bthe issue\b/.exec(text);
    assert.equal(m, null, `${f} mentions "${m?.[0]}": say what the project does, not which ticket asked for it`);
  }
});

test('docs/troubleshooting.md: raising the log level, reproducing a job with sync --plan, metrics to alert on', () => {
  const doc = readFileSync(`${root}docs/troubleshooting.md`, 'utf8');
  const section = (title: RegExp) => {
    const start = doc.search(title);
    assert.ok(start >= 0, `no section ${title}`);
    const next = doc.indexOf('\n## ', start + 1);
    return doc.slice(start, next < 0 ? undefined : next);
  };
  const logs = section(/^## .*log/m);
  const logOption = AGENT_OPTIONS.find((o) => o.flag === 'log-level')!;
  assert.ok(logs.includes('--log-level debug') && logs.includes(`${logOption.env}=debug`), 'the flag and the variable that raise the level');
  assert.match(logs, /agent\.env/);
  assert.match(logs, /kubectl -n ferry set env deployment\/ferry-agent/);

  const plan = section(/^## .*sync --plan/m);
  assert.match(plan, /ferry sync --plan \S+ --dry-run/);
  // Where to get the plan: the very endpoint the agent reads it from.
  const client = readFileSync(`${root}src/agent/control-plane-client.ts`, 'utf8');
  assert.ok(client.includes('path: `/v1/runner-jobs/${seg(jobId)}/plan`'), 'the agent reads the plan elsewhere now: update the doc and this test');
  assert.match(plan, /GET \/v1\/runner-jobs\/\{job\}\/plan/);
  assert.match(plan, /curl .*\/v1\/runner-jobs\/[\w-]+\/plan/s);

  // Every metric an alert names is one the agent exports.
  const alerts = section(/^## Metrics to alert on/m);
  const exported = new Set(
    createAgentMetrics('0.0.0')
      .registry.render()
      .split('\n')
      .filter((l) => l.startsWith('# TYPE '))
      .map((l) => l.split(' ')[2]!),
  );
  const named = new Set([...alerts.matchAll(/`[^`]*`/g)].flatMap((m) => [...m[0].matchAll(/\b((?:ferry|process|nodejs)_[a-z_]+)/g)].map((x) => x[1]!)));
  assert.ok(named.size >= 8, `few metrics named: ${[...named].join(', ')}`);
  for (const n of named) {
    const family = n.replace(/_(bucket|sum|count)$/, '');
    assert.ok(exported.has(n) || exported.has(family), `${n} is not a metric the agent exports`);
  }
  for (const must of ['ferry_control_plane_last_success_timestamp_seconds', 'ferry_pending_results', 'ferry_job_errors_total', 'process_resident_memory_bytes']) {
    assert.ok(named.has(must), `no alert on ${must}`);
  }
});
