// The deployment files are checked against the agent itself: the systemd unit with
// `systemd-analyze verify`, the Kubernetes manifests parsed and compared with the agent's
// real flags, environment variables, health port and probe paths.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { AGENT_OPTIONS } from '../src/agent/config.ts';
import { exitCodeFor, UsageError } from '../src/errors.ts';

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

test('systemd unit: a configuration error does not restart forever (RestartPreventExitStatus= is ferry agent\'s exit status for it)', () => {
  const unit = readFileSync(join(root, 'deploy/systemd/ferry-agent.service'), 'utf8');
  const prevent = /^RestartPreventExitStatus=(.+)$/m.exec(unit);
  assert.ok(prevent, 'no RestartPreventExitStatus=');
  const statuses = prevent[1]!.trim().split(/\s+/);
  assert.ok(statuses.includes(String(exitCodeFor(new UsageError('x')))));
  // The real agent, misconfigured: the status the unit names.
  const r = spawnSync(process.execPath, [join(root, 'src/main.ts'), 'agent', '--runner-id', 'r-1'], { encoding: 'utf8', env: { ...process.env, FERRY_CONTROL_PLANE_URL: '' } });
  assert.ok(statuses.includes(String(r.status)), `ferry agent without its settings exits ${r.status}: ${r.stderr}`);
  assert.match(r.stderr, /USAGE/);
});

test('systemd unit: Documentation= names files the install puts in place, from this repository', () => {
  const unit = readFileSync(join(root, 'deploy/systemd/ferry-agent.service'), 'utf8');
  const docs = /^Documentation=(.+)$/m.exec(unit)![1]!.trim().split(/\s+/);
  assert.ok(docs.length >= 1);
  for (const uri of docs) {
    assert.match(uri, /^(file:\/|https:\/\/|man:|info:)/, `${uri}: not a URI systemd accepts`);
    assert.doesNotMatch(uri, /example\.(invalid|com)/, `${uri}: a placeholder`);
    const m = /^file:(\/usr\/local\/share\/doc\/ferry\/)(.+)$/.exec(uri);
    assert.ok(m, `${uri}: expected one of the docs the install copies to /usr/local/share/doc/ferry/`);
    const name = m[2]!;
    const source = ['', 'docs/'].map((d) => `${d}${name}`).find((p) => existsSync(join(root, p)));
    assert.ok(source, `${name} is not in the repository`);
    // The install instructions at the top of the unit copy it there.
    assert.match(unit, new RegExp(`^#\\s+install -m 0644 .*\\b${source.replace('.', '\\.')}\\b.* /usr/local/share/doc/ferry/`, 'm'), `the unit's install steps do not copy ${source}`);
  }
});

test('systemd unit: LoadCredential= says it needs systemd 247, and the drop-in for older hosts verifies with it', () => {
  const unit = readFileSync(join(root, 'deploy/systemd/ferry-agent.service'), 'utf8');
  assert.match(unit, /systemd 247/);
  assert.match(unit, /ferry-agent-before-247\.conf/);
  const dropIn = readFileSync(join(root, 'deploy/systemd/ferry-agent-before-247.conf'), 'utf8');
  const execStarts = dropIn.split('\n').filter((l) => l.startsWith('ExecStart='));
  assert.deepEqual(execStarts[0], 'ExecStart=', 'the drop-in resets ExecStart before setting its own');
  const args = execStarts[1]!.slice('ExecStart='.length).split(/\s+/);
  for (const f of flagsOf(args)) assert.ok(flags.has(f), `the drop-in uses unknown flag --${f}`);
  assert.ok(!args.some((a) => a.includes('$')), 'no variables that systemd before 240 lacks');
  assert.match(dropIn, /^User=ferry$/m);
  assert.match(dropIn, /^DynamicUser=no$/m);
  assert.match(dropIn, /useradd --system .* ferry/);
  // The unit with the drop-in installed next to it passes systemd-analyze verify.
  const dir = mkdtempSync(join(tmpdir(), 'ferry-unit-'));
  try {
    const bin = join(dir, 'ferry');
    writeFileSync(bin, '#!/bin/sh\nexit 0\n');
    chmodSync(bin, 0o755);
    writeFileSync(join(dir, 'ferry-agent.service'), unit.replaceAll('/usr/local/bin/ferry', bin));
    mkdirSync(join(dir, 'ferry-agent.service.d'));
    writeFileSync(join(dir, 'ferry-agent.service.d', 'before-247.conf'), dropIn.replaceAll('/usr/local/bin/ferry', bin));
    const r = spawnSync('systemd-analyze', ['verify', '--man=no', join(dir, 'ferry-agent.service')], { encoding: 'utf8' });
    assert.equal(r.status, 0, `${r.stdout}${r.stderr}`);
    assert.deepEqual(`${r.stdout}${r.stderr}`.split('\n').filter((l) => l.includes('ferry-agent')), []);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('Kubernetes manifests: flags, env, probes and port match the agent; non-root, read-only root', () => {
  const docs = parseAllDocuments(readFileSync(join(root, 'deploy/kubernetes/ferry-agent.yaml'), 'utf8')).map((d) => d.toJS());
  const kinds = docs.map((d) => d.kind).sort();
  assert.deepEqual(kinds, ['Deployment', 'Namespace', 'PodDisruptionBudget', 'Service', 'ServiceAccount']);
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

test('Kubernetes manifests: namespace, runner-token Secret, no API token, evictable when unready, spread, scraped, pinned image', () => {
  const text = readFileSync(join(root, 'deploy/kubernetes/ferry-agent.yaml'), 'utf8');
  const docs = parseAllDocuments(text).map((d) => d.toJS());
  const byKind = (k: string) => docs.find((d) => d.kind === k);
  const dep = byKind('Deployment');
  const pod = dep.spec.template.spec;
  const c = pod.containers[0];
  const labels = dep.spec.selector.matchLabels;

  // Every namespaced object is in the namespace the file creates.
  const ns = byKind('Namespace').metadata.name;
  for (const d of docs) if (d.kind !== 'Namespace') assert.equal(d.metadata.namespace, ns, `${d.kind} is not in namespace ${ns}`);

  // The Secret the pod mounts: its name and key are what the documented command creates, and the key is the token file's name.
  const vol = pod.volumes.find((v: { name: string }) => v.name === 'runner-token');
  const key = vol.secret.items[0].key;
  const mount = c.volumeMounts.find((m: { name: string }) => m.name === 'runner-token');
  const tokenFile = c.args.find((a: string) => a.startsWith('--token-file=')).split('=')[1];
  assert.equal(tokenFile, `${mount.mountPath}/${vol.secret.items[0].path}`);
  const create = new RegExp(`kubectl -n ${ns} create secret generic ${vol.secret.secretName} --from-file=${key}=`);
  assert.match(text, create, 'the file documents the command that creates the Secret');

  assert.equal(pod.automountServiceAccountToken, false);
  assert.equal(byKind('ServiceAccount').automountServiceAccountToken, false);
  assert.equal(byKind('PodDisruptionBudget').spec.unhealthyPodEvictionPolicy, 'AlwaysAllow');

  assert.ok(dep.spec.replicas >= 2);
  const spread = pod.topologySpreadConstraints as Array<{ topologyKey: string; whenUnsatisfiable: string; labelSelector: { matchLabels: unknown } }>;
  assert.deepEqual(spread.map((s) => s.topologyKey).sort(), ['kubernetes.io/hostname', 'topology.kubernetes.io/zone']);
  for (const s of spread) {
    assert.deepEqual(s.labelSelector.matchLabels, labels);
    assert.equal(s.whenUnsatisfiable, 'ScheduleAnyway', 'a one-node or one-zone cluster must still run every replica');
  }

  // Metrics: a Service selecting the pods on the health port, and the scrape annotations on the port the agent listens on.
  const svc = byKind('Service');
  assert.deepEqual(svc.spec.selector, labels);
  assert.equal(svc.spec.ports[0].targetPort, 'health');
  const healthPort = c.ports.find((p: { name: string }) => p.name === 'health').containerPort;
  const ann = dep.spec.template.metadata.annotations;
  assert.equal(ann['prometheus.io/scrape'], 'true');
  assert.equal(Number(ann['prometheus.io/port']), healthPort);
  assert.equal(ann['prometheus.io/path'], '/metrics');

  assert.match(c.image, /^[a-z0-9.-]+\/[a-z0-9/_.-]+(:[\w.-]+)?@sha256:[0-9a-f]{64}$/, `the example image is pinned by digest: ${c.image}`);
});
