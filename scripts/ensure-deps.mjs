// Runs before the tests and the demo: makes sure what they need is here, installing it when
// it can and saying exactly what to run when it cannot. Runs on any Node (even the machine's
// old one), before node_modules exists.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';

const root = new URL('..', import.meta.url).pathname;

if (!existsSync(`${root}node_modules/.bin/tsc`) || !existsSync(`${root}node_modules/.bin/node`)) {
  console.log('ferry: installing npm packages (npm ci), including the pinned Node 24 runtime…');
  const r = spawnSync('npm', ['ci', '--no-audit', '--no-fund'], { cwd: root, stdio: 'inherit' });
  if (r.status !== 0) process.exit(r.status ?? 1);
}

const missing = ['docker-registry', 'crane', 'oras', 'skopeo', 'openssl', 'qemu-aarch64'].filter((bin) => {
  try {
    execFileSync('sh', ['-c', `command -v ${bin}`], { stdio: 'ignore' });
    return false;
  } catch {
    return true;
  }
});
// GNU time: the benchmark's CPU and peak-memory figures (`time` alone is the shell keyword).
if (!existsSync('/usr/bin/time')) missing.push('/usr/bin/time');
// The arm64 C/C++ runtime that qemu-aarch64 runs ferry's arm64 single executable with.
for (const lib of ['libc.so.6', 'libgcc_s.so.1', 'libstdc++.so.6']) {
  if (!existsSync(`/usr/aarch64-linux-gnu/lib/${lib}`)) missing.push(`/usr/aarch64-linux-gnu/lib/${lib}`);
}
if (missing.length > 0) {
  console.log(`ferry: missing system programs: ${missing.join(', ')}`);
  const r = spawnSync('bash', [`${root}scripts/install-system-deps.sh`], { stdio: 'inherit' });
  if (r.status !== 0) process.exit(r.status ?? 1);
}
