// The deployment files are checked against the agent itself: the systemd unit with
// `systemd-analyze verify`, the Kubernetes manifests parsed and compared with the agent's
// real flags, environment variables, health port and probe paths.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { AGENT_OPTIONS } from '../src/agent/config.ts';

const root = new URL('../', import.meta.url).pathname;
const flags = new Set(AGENT_OPTIONS.map((o) => o.flag));
const envVars = new Set([...AGENT_OPTIONS.map((o) => o.env), 'FERRY_RUNNER_TOKEN']);

/** `--flag value` / `--flag=value` pairs of a command line. */
function flagsOf(args: string[]): string[] {
  return args.filter((a) => a.startsWith('--')).map((a) => a.slice(2).split('=')[0]!);
}

test('systemd unit: systemd-analyze verify passes and ExecStart uses real agent flags', () => {
  const analyze = spawnSync('sh', ['-c', 'command -v systemd-analyze'], { encoding: 'utf8' });
  assert.equal(analyze.status, 0, 'systemd-analyze not found: install Debian\'s systemd package (bash scripts/install-system-deps.sh)');
  const unit = readFileSync(join(root, 'deploy/systemd/ferry-agent.service'), 'utf8');
  // verify checks that ExecStart's binary exists: point it at a stand-in executable.
  const dir = mkdtempSync(join(tmpdir(), 'ferry-unit-'));
  const bin = join(dir, 'ferry');
  writeFileSync(bin, '#!/bin/sh\nexit 0\n');
  chmodSync(bin, 0o755);
  const unitPath = join(dir, 'ferry-agent.service');
  writeFileSync(unitPath, unit.replaceAll('/usr/local/bin/ferry', bin));
  const r = spawnSync('systemd-analyze', ['verify', '--man=no', unitPath], { encoding: 'utf8' });
  const complaints = `${r.stdout}${r.stderr}`.split('\n').filter((l) => l.includes('ferry-agent.service'));
  assert.equal(r.status, 0, `${r.stdout}${r.stderr}`);
  assert.deepEqual(complaints, []);

  const execStart = /^ExecStart=(.+)$/m.exec(unit)![1]!.split(/\s+/);
  assert.equal(execStart[1], 'agent');
  for (const f of flagsOf(execStart)) assert.ok(flags.has(f), `ExecStart uses unknown flag --${f}`);
  assert.match(unit, /^StateDirectory=ferry$/m);
  assert.match(unit, /^Restart=on-failure$/m);
  assert.match(unit, /^LoadCredential=runner-token:/m);
  assert.ok(!/FERRY_RUNNER_TOKEN=/.test(unit), 'the token must not be in the unit');
});

test('Kubernetes manifests: flags, env, probes and port match the agent; non-root, read-only root', () => {
  const docs = parseAllDocuments(readFileSync(join(root, 'deploy/kubernetes/ferry-agent.yaml'), 'utf8')).map((d) => d.toJS());
  const kinds = docs.map((d) => d.kind).sort();
  assert.deepEqual(kinds, ['Deployment', 'PodDisruptionBudget', 'ServiceAccount']);
  const sa = docs.find((d) => d.kind === 'ServiceAccount');
  assert.ok(sa.metadata.annotations['eks.amazonaws.com/role-arn'], 'IRSA annotation missing');
  assert.ok(sa.metadata.annotations['iam.gke.io/gcp-service-account'], 'Workload Identity annotation missing');
  const dep = docs.find((d) => d.kind === 'Deployment');
  const pod = dep.spec.template.spec;
  assert.equal(pod.serviceAccountName, sa.metadata.name);
  assert.equal(pod.securityContext.runAsNonRoot, true);
  const c = pod.containers[0];
  assert.equal(c.args[0], 'agent');
  for (const f of flagsOf(c.args)) assert.ok(flags.has(f), `container uses unknown flag --${f}`);
  for (const e of c.env) assert.ok(envVars.has(e.name), `unknown environment variable ${e.name}`);
  assert.equal(c.securityContext.readOnlyRootFilesystem, true);
  assert.equal(c.securityContext.allowPrivilegeEscalation, false);
  const healthArg = c.args.find((a: string) => a.startsWith('--health-addr='));
  const port = Number(healthArg.split(':').pop());
  const named = c.ports.find((p: { name: string }) => p.name === 'health');
  assert.equal(named.containerPort, port);
  assert.equal(c.livenessProbe.httpGet.path, '/healthz');
  assert.equal(c.readinessProbe.httpGet.path, '/readyz');
  assert.equal(c.livenessProbe.httpGet.port, 'health');
  // The state dir and the token are mounted where the flags say.
  const mounts = new Map(c.volumeMounts.map((m: { mountPath: string; name: string }) => [m.mountPath, m.name]));
  assert.ok(mounts.has('/var/lib/ferry'));
  assert.ok(c.args.includes('--state-dir=/var/lib/ferry'));
  const tokenArg = c.args.find((a: string) => a.startsWith('--token-file='));
  assert.ok([...mounts.keys()].some((p) => tokenArg.includes(p as string)));
  // Grace period outlasts the agent's --shutdown-grace.
  const grace = Number(c.args.find((a: string) => a.startsWith('--shutdown-grace=')).split('=')[1]);
  assert.ok(pod.terminationGracePeriodSeconds > grace);
  const pdb = docs.find((d) => d.kind === 'PodDisruptionBudget');
  assert.deepEqual(pdb.spec.selector.matchLabels, dep.spec.selector.matchLabels);
});
