// The copiers under test: ferry and the peers (skopeo, crane, oras), as command lines.
import { execFileSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Command } from './measure.ts';

export interface RunContext {
  /** A state directory for this run (ferry's cache); fresh per cold run. */
  stateDir: string;
  /** An empty docker config dir: no tool picks up credentials or settings from the machine. */
  dockerConfig: string;
  /** Copy the images' referrers too (warm-signed): ferry --referrers, oras cp -r. */
  referrers?: boolean;
}

export interface Tool {
  name: string;
  /** Peers are what ferry is compared with. */
  peer: boolean;
  /** How it is run, for the report. */
  invocation: string;
  version(): string;
  copy(source: string, destination: string, ctx: RunContext): Command;
  /** Called before every timed run (and every fleet group). */
  beforeRun?(): void;
  /** The workloads it runs (default: all). */
  workloads?: string[];
  /** Why it sits out the workloads that copy referrers (it cannot copy them). */
  cannotCopyReferrers?: string;
}

export interface ToolSettings {
  /** How ferry starts: `[node, ...flags, entry]` (the bundle or src/main.ts), or `[dist/ferry]` (the single executable). */
  ferryCommand: string[];
  /** How that reads in the report. */
  ferryLabel: string;
  /** Another ferry to compare with (e.g. a bundle built before a change): tool `ferry-baseline`. */
  baselineCommand?: string[] | undefined;
  /** crane --jobs, oras --concurrency; undefined: the tool's default. */
  craneJobs?: number | undefined;
  orasConcurrency?: number | undefined;
  ferryConcurrency?: number | undefined;
}

function firstLine(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim().split('\n')[0] ?? '';
  } catch (e) {
    return `unknown (${(e as Error).message.split('\n')[0]})`;
  }
}

function dpkgVersion(pkg: string): string {
  try {
    return execFileSync('dpkg-query', ['-W', '-f', '${Version}', pkg], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return 'unknown';
  }
}

const env = (ctx: RunContext, extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv => ({
  ...process.env,
  DOCKER_CONFIG: ctx.dockerConfig,
  ...extra,
});

/** skopeo's blob-info cache: as root under /var/lib/containers/cache, else under the home directory. */
export const SKOPEO_CACHES = [
  '/var/lib/containers/cache/blob-info-cache-v1.boltdb',
  join(homedir(), '.local/share/containers/cache/blob-info-cache-v1.boltdb'),
];

/** bench/request-floor.mjs: about the least a Node copier can do, run beside the tools as a reference. */
export const NODE_FLOOR = 'node-floor';
const FLOOR_SCRIPT = fileURLToPath(new URL('./request-floor.mjs', import.meta.url));

export function makeTools(s: ToolSettings): Tool[] {
  const ferryArgs = s.ferryConcurrency ? ['--concurrency', String(s.ferryConcurrency)] : [];
  const craneArgs = s.craneJobs ? ['--jobs', String(s.craneJobs)] : [];
  const orasArgs = s.orasConcurrency ? ['--concurrency', String(s.orasConcurrency)] : [];
  const ferries: Array<{ name: string; command: string[]; label: string }> = [{ name: 'ferry', command: s.ferryCommand, label: s.ferryLabel }];
  if (s.baselineCommand) ferries.push({ name: 'ferry-baseline', command: s.baselineCommand, label: s.baselineCommand.join(' ').replace(/^\S*\/node /, 'node ') });
  return [
    ...ferries.map((f): Tool => ({
      name: f.name,
      peer: false,
      invocation: `${f.label} copy --json ${ferryArgs.join(' ')} SRC DST (fresh state dir per run)`.replace(/\s+/g, ' '),
      version: () => firstLine(f.command[0]!, [...f.command.slice(1), 'version']).replace(/^ferry /, ''),
      copy: (src, dst, ctx) => ({
        cmd: f.command[0]!,
        args: [...f.command.slice(1), 'copy', '--json', ...ferryArgs, ...(ctx.referrers ? ['--referrers'] : []), src, dst],
        env: env(ctx, { XDG_STATE_HOME: ctx.stateDir }),
      }),
    })),
    {
      name: 'skopeo',
      peer: true,
      invocation: 'skopeo copy --all --preserve-digests --src-tls-verify=false --dest-tls-verify=false docker://SRC docker://DST (blob-info cache removed before each run)',
      version: () => `${firstLine('skopeo', ['--version']).replace(/^skopeo version /, '')} (Debian ${dpkgVersion('skopeo')})`,
      copy: (src, dst, ctx) => ({
        cmd: 'skopeo',
        args: ['copy', '--quiet', '--all', '--preserve-digests', '--src-tls-verify=false', '--dest-tls-verify=false', `docker://${src}`, `docker://${dst}`],
        env: env(ctx),
      }),
      beforeRun() {
        // So it cannot mount or skip thanks to an earlier run (it has no flag to turn the cache off).
        for (const f of SKOPEO_CACHES) rmSync(f, { force: true });
      },
      cannotCopyReferrers: 'skopeo copy has no way to copy referrers (OCI 1.1 subject/referrers are not supported)',
    },
    {
      name: 'crane',
      peer: true,
      invocation: `crane copy --insecure ${craneArgs.join(' ')} SRC DST`.replace(/\s+/g, ' '),
      version: () => `${dpkgVersion('crane').replace(/\+.*/, '')} (Debian ${dpkgVersion('crane')})`,
      copy: (src, dst, ctx) => ({ cmd: 'crane', args: ['copy', '--insecure', ...craneArgs, src, dst], env: env(ctx) }),
      cannotCopyReferrers: 'crane copy copies the image only (no option for referrers)',
    },
    {
      name: 'oras',
      peer: true,
      invocation: `oras cp --from-plain-http --to-plain-http ${orasArgs.join(' ')} SRC DST`.replace(/\s+/g, ' '),
      version: () => `${firstLine('oras', ['version']).replace(/^Version:\s*/, '')} (Debian ${dpkgVersion('oras')})`,
      copy: (src, dst, ctx) => ({ cmd: 'oras', args: ['cp', '--from-plain-http', '--to-plain-http', ...orasArgs, ...(ctx.referrers ? ['-r'] : []), src, dst], env: env(ctx) }),
    },
    {
      name: NODE_FLOOR,
      peer: false,
      invocation: 'node bench/request-floor.mjs SRC DST (a reference, not a peer: HTTP/1.1 by hand on keep-alive sockets, no CLI, retries, resume or auth; image manifests only)',
      version: () => `node ${process.versions.node}`,
      copy: (src, dst, ctx) => ({ cmd: process.execPath, args: [FLOOR_SCRIPT, src, dst], env: env(ctx) }),
      workloads: ['big', 'many'],
    },
  ];
}

export function registryVersion(): string {
  return `${firstLine('docker-registry', ['--version']).replace(/^docker-registry github.com\/docker\/distribution /, 'distribution ')} (Debian docker-registry ${dpkgVersion('docker-registry')})`;
}
