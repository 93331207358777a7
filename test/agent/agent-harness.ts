// Running the real `ferry agent` as a child process against the reference control plane, a
// vendor registry with token auth (the one-time token buys a scoped pull token) and a local
// registry. Every log line the agent writes is captured.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startControlPlane, DEFAULT_RUNNER_TOKEN, type ControlPlane } from '../harness/control-plane.ts';
import { startDistribution, type DistributionRegistry } from '../harness/distribution.ts';
import { clientFor, type OciClient } from '../harness/oci-client.ts';
import { freePort } from '../harness/ports.ts';
import { after, before } from 'node:test';

const MAIN = new URL('../../src/main.ts', import.meta.url).pathname;
/** The V8 flags the executable starts with (pkg.config.json execArgv; `node src/main.ts` ignores the shebang's): agents run under the heap cap they ship with. */
const EXEC_ARGV = (JSON.parse(readFileSync(new URL('../../pkg.config.json', import.meta.url), 'utf8')) as { execArgv: string[] }).execArgv;

export interface AgentWorld {
  vendor: DistributionRegistry;
  local: DistributionRegistry;
  cp: ControlPlane;
  tokenFile: string;
  /** Every registry bearer token the control plane handed out. */
  issuedTokens: string[];
  /** What the control plane was started with: a test can start another from saved state with the same. */
  cpOptions: ControlPlaneOptions;
  stop(): Promise<void>;
}

type ControlPlaneOptions = Parameters<typeof startControlPlane>[0];

export const VENDOR_USER = { name: 'vendor-admin', password: 'vendor-admin-pass-123' };

export async function startWorld(opts: { leaseS?: number; tokenTtlS?: number } = {}): Promise<AgentWorld> {
  const [vendor, local] = await Promise.all([
    startDistribution({
      auth: 'token',
      token: { users: { [VENDOR_USER.name]: { password: VENDOR_USER.password, repos: { '*': ['pull', 'push'] } } }, expiresIn: 600 } as never,
    }),
    startDistribution(),
  ]);
  const issuedTokens: string[] = [];
  const ts = vendor.tokenServer!;
  const cpOptions: ControlPlaneOptions = {
    // A leased port: goDown()/comeUp() and a restart from saved state listen on it again.
    port: await freePort(),
    leaseS: opts.leaseS ?? 30,
    settings: { heartbeat_interval_s: 1, poll_interval_s: 1, lease_s: opts.leaseS ?? 30 },
    // The one-time token buys a pull-only registry token for exactly the job's repository.
    issueCredentials: (_job, plan) => {
      const ref = String((plan.source as { reference: string }).reference);
      const host = ref.slice(0, ref.indexOf('/'));
      const repo = ref.slice(ref.indexOf('/') + 1).split(/[:@]/)[0]!;
      const token = ts.issue(`job-${_job.id}`, ts.service, [{ type: 'repository', name: repo, actions: ['pull'] }]);
      issuedTokens.push(token);
      return { registry: host, token, expires_at: new Date(Date.now() + (opts.tokenTtlS ?? 300) * 1000).toISOString() };
    },
  };
  const cp = await startControlPlane(cpOptions);
  const dir = mkdtempSync(join(tmpdir(), 'ferry-agent-'));
  const tokenFile = join(dir, 'runner-token');
  writeFileSync(tokenFile, cp.token, { mode: 0o600 });
  return {
    vendor,
    local,
    cp,
    tokenFile,
    issuedTokens,
    cpOptions,
    async stop() {
      await cp.stop();
      await Promise.all([vendor.stop(), local.stop()]);
    },
  };
}

/** A plan copying vendor srcRepo:tag to local dstRepo:tag; `via` reads the source through another host (a fault proxy). */
export function plan(world: AgentWorld, srcRepo: string, tag: string, dstRepo: string, extra: Record<string, unknown> = {}, via?: string): object {
  return {
    type: 'oci-sync',
    source: { reference: `${via ?? world.vendor.host}/${srcRepo}:${tag}`, auth: { kind: 'one-time-token' } },
    destination: { reference: `${world.local.host}/${dstRepo}:${tag}`, auth: { kind: 'local' } },
    platforms: 'all',
    referrers: true,
    ...extra,
  };
}

export interface RunningAgent {
  proc: ChildProcess;
  /** Everything written to stderr so far (the JSON logs). */
  logs(): string;
  exited: Promise<number | null>;
  waitForLog(pattern: RegExp, timeoutMs?: number): Promise<string>;
}

export function startAgent(world: AgentWorld, stateDir: string, args: string[] = [], env: NodeJS.ProcessEnv = {}): RunningAgent {
  const proc = spawn(
    process.execPath,
    [
      ...EXEC_ARGV,
      MAIN,
      'agent',
      '--control-plane-url',
      world.cp.url,
      '--runner-id',
      world.cp.runnerId,
      '--token-file',
      world.tokenFile,
      '--state-dir',
      stateDir,
      // The world's plain local registry unless the test names another.
      ...(args.includes('--local-registry') ? [] : ['--local-registry', world.local.host]),
      ...(args.includes('--log-level') ? [] : ['--log-level', 'debug']),
      ...args,
    ],
    { env: { ...process.env, DOCKER_CONFIG: join(tmpdir(), 'ferry-no-docker-config'), ...env }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let logs = '';
  const waiters: Array<{ pattern: RegExp; resolve: (line: string) => void }> = [];
  const check = () => {
    for (const w of [...waiters]) {
      const m = logs.split('\n').find((l) => w.pattern.test(l));
      if (m !== undefined) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(m);
      }
    }
  };
  proc.stderr!.on('data', (d) => {
    logs += d;
    check();
  });
  proc.stdout!.on('data', (d) => (logs += d));
  const exited = new Promise<number | null>((resolve) => proc.on('close', (code) => resolve(code)));
  live.add(proc);
  void exited.then(() => live.delete(proc));
  return {
    proc,
    logs: () => logs,
    exited,
    waitForLog(pattern, timeoutMs = 60_000) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`timed out waiting for ${pattern} in agent logs:\n${logDigest(logs)}`)), timeoutMs);
        waiters.push({
          pattern,
          resolve: (l) => {
            clearTimeout(timer);
            resolve(l);
          },
        });
        check();
      });
    },
  };
}

const live = new Set<ChildProcess>();

/** Kill every agent a test left running (a failed assertion must not leave processes behind). */
export function killAgents(): void {
  for (const p of live) p.kill('SIGKILL');
}

export function tempState(): string {
  return mkdtempSync(join(tmpdir(), 'ferry-agent-state-'));
}

export { DEFAULT_RUNNER_TOKEN };
export { waitFor } from '../harness/wait.ts';

export interface SuiteWorld {
  world: AgentWorld;
  /** The vendor registry, as its admin. */
  vendor: OciClient;
  /** The local registry. */
  local: OciClient;
}

/** A world started before the suite's tests and stopped (agents killed) after them. */
export function worldForSuite(): SuiteWorld {
  const ctx = {} as SuiteWorld;
  before(async () => {
    ctx.world = await startWorld();
    ctx.vendor = clientFor(ctx.world.vendor, { username: VENDOR_USER.name, password: VENDOR_USER.password });
    ctx.local = clientFor(ctx.world.local);
  });
  after(async () => {
    killAgents();
    await ctx.world?.stop();
  });
  return ctx;
}

/** For a failure message: the agent's lines at info and above (debug lines bury them), then its last lines. */
export function logDigest(logs: string): string {
  const lines = logs.split('\n');
  const notable = lines.filter((l) => !/^\{"level":(10|20),/.test(l)).slice(-40);
  return `${notable.join('\n').slice(-8000)}\n--- the last lines ---\n${lines.slice(-8).join('\n').slice(-3000)}`;
}
