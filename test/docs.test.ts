// The README's generated parts match the code, and its two commands exist as written.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { renderReadme } from '../scripts/gen-docs.ts';
import { AGENT_OPTIONS } from '../src/agent/config.ts';
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
