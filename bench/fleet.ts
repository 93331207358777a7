// Syncing a fleet of images (the `fleet` and `warm` workloads): every tool with its own best
// parallelism. Peers: their CLI, one process per image, several at once. ferry: one agent fed
// by the reference control plane (`ferryFleetSync`), or CLI processes like the peers.
import { appendFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startControlPlane } from '../test/harness/control-plane.ts';
import { runGroup, runMeasured, type ProcessMeasure } from './measure.ts';
import type { RunContext, Tool } from './tools.ts';

export interface FleetJob {
  /** `host:port/repo:tag` */
  source: string;
  destination: string;
}

export interface FleetContext extends RunContext {
  /** Processes at once for CLI-based syncs. */
  parallel: number;
  timeoutMs: number;
}

export interface FleetMeasure {
  wall_s: number;
  /** Summed over every process of the sync. */
  user_s: number;
  sys_s: number;
  /** The largest peak RSS of any one process. */
  rss_mib: number;
  /** Sum of every process's peak RSS (an upper bound on the memory the sync held at once). */
  rss_sum_mib: number;
  processes: number;
  /** One line per failed job. */
  failures: string[];
}

export type FleetSync = (jobs: FleetJob[], ctx: FleetContext) => Promise<FleetMeasure>;

export function summarizeGroup(wall_s: number, runs: ProcessMeasure[], jobs: FleetJob[]): FleetMeasure {
  const failures: string[] = [];
  runs.forEach((r, i) => {
    if (r.exitCode !== 0) failures.push(`${jobs[i]?.destination}: exit ${r.exitCode}${r.timedOut ? ' (timed out)' : ''}: ${(r.stderr || r.stdout).trim().split('\n').slice(-3).join(' | ')}`);
  });
  return {
    wall_s,
    user_s: runs.reduce((n, r) => n + r.user_s, 0),
    sys_s: runs.reduce((n, r) => n + r.sys_s, 0),
    rss_mib: Math.max(...runs.map((r) => r.rss_mib)),
    rss_sum_mib: runs.reduce((n, r) => n + r.rss_mib, 0),
    processes: runs.length,
    failures,
  };
}

/** One copy of one image by one CLI process, measured as a fleet of one. */
export async function copyOne(tool: Tool, job: FleetJob, ctx: RunContext, timeoutMs: number): Promise<FleetMeasure> {
  const r = await runMeasured(tool.copy(job.source, job.destination, ctx), timeoutMs);
  return {
    wall_s: r.wall_s,
    user_s: r.user_s,
    sys_s: r.sys_s,
    rss_mib: r.rss_mib,
    rss_sum_mib: r.rss_mib,
    processes: 1,
    failures: r.exitCode === 0 ? [] : [`exit ${r.exitCode}${r.timedOut ? ' (timed out)' : ''}: ${(r.stderr || r.stdout).trim().split('\n').slice(-5).join(' | ')}`],
  };
}

/** One CLI process per image, `ctx.parallel` at once: how a peer syncs a fleet. */
export async function syncWithParallelCli(tool: Tool, jobs: FleetJob[], ctx: FleetContext): Promise<FleetMeasure> {
  tool.beforeRun?.();
  const { wall_s, runs } = await runGroup(
    jobs.map((j) => tool.copy(j.source, j.destination, ctx)),
    ctx.parallel,
    ctx.timeoutMs,
  );
  return summarizeGroup(wall_s, runs, jobs);
}

/** How ferry syncs a fleet: one agent fed by the reference control plane, or (interim) CLI processes. */
export type FerryFleetMode = 'agent' | 'cli';

export function ferryFleetModeLabel(mode: FerryFleetMode, maxJobs: number): string {
  return mode === 'agent'
    ? `one \`ferry agent --exit-when-idle --max-jobs ${maxJobs}\` process, jobs from the reference control plane (test/harness/control-plane.ts); its start-up and the control plane round trips are in the time`
    : 'INTERIM: parallel `ferry copy` processes (--ferry-fleet cli), not the agent path the issue asks for';
}

/**
 * ferry's fleet sync: `agent` (the issue's path) or `cli` (parallel `ferry copy` processes, as
 * the peers do; kept for comparison and for machines where the agent cannot run).
 */
export const ferryFleetSync = (ferry: Tool, mode: FerryFleetMode, agent: AgentSettings): FleetSync =>
  mode === 'agent' ? (jobs, ctx) => syncWithAgent(agent, jobs, ctx) : (jobs, ctx) => syncWithParallelCli(ferry, jobs, ctx);

export interface AgentSettings {
  /** How ferry starts (`[node, dist/ferry.mjs]`, `[dist/ferry]`…); `agent …` is appended. */
  ferryCommand: string[];
  maxJobs: number;
  /** Blob transfers at once, shared by the agent's jobs (undefined: the agent's default). */
  concurrency?: number | undefined;
}

/**
 * One `ferry agent` process syncs every image: the reference control plane (in this process)
 * serves one job per image; the agent claims them (--max-jobs at once), copies, reports, and
 * exits when none is left (--exit-when-idle). ctx.stateDir is the agent's state directory, so a
 * warm re-sync finds what the first sync left there, as a long-running agent would.
 */
export async function syncWithAgent(agent: AgentSettings, jobs: FleetJob[], ctx: FleetContext): Promise<FleetMeasure> {
  const cp = await startControlPlane({ settings: { heartbeat_interval_s: 5, poll_interval_s: 1, lease_s: 120 } });
  try {
    const ids = jobs.map((j) =>
      cp.enqueueJob({
        type: 'oci-sync',
        source: { reference: j.source, auth: { kind: 'anonymous' } },
        destination: { reference: j.destination, auth: { kind: 'local' } },
        platforms: 'all',
        // Like the peers: no referrers, except in the workloads where every tool copies them (warm-signed).
        referrers: ctx.referrers === true,
      }),
    );
    const tokenFile = join(ctx.stateDir, 'runner-token');
    writeFileSync(tokenFile, cp.token, { mode: 0o600 });
    const args = [
      ...agent.ferryCommand.slice(1),
      'agent',
      '--control-plane-url',
      cp.url,
      '--runner-id',
      cp.runnerId,
      '--token-file',
      tokenFile,
      '--state-dir',
      join(ctx.stateDir, 'agent'),
      '--local-registry',
      commonPrefix(jobs.map((j) => j.destination)),
      '--max-jobs',
      String(agent.maxJobs),
      ...(agent.concurrency ? ['--concurrency', String(agent.concurrency)] : []),
      '--exit-when-idle',
      '--log-level',
      process.env.FERRY_BENCH_AGENT_LOG ? 'debug' : 'warn',
    ];
    const r = await runMeasured({ cmd: agent.ferryCommand[0]!, args, env: { ...process.env, DOCKER_CONFIG: ctx.dockerConfig } }, ctx.timeoutMs);
    if (process.env.FERRY_BENCH_DEBUG) process.stderr.write(`--- ferry agent stderr (tail) ---\n${r.stderr.slice(-4000)}\n`);
    // A trace of one sync (every job's and request's timing, at debug level): appended to the file named.
    if (process.env.FERRY_BENCH_AGENT_LOG) appendFileSync(process.env.FERRY_BENCH_AGENT_LOG, r.stderr);
    const failures: string[] = [];
    if (r.exitCode !== 0) failures.push(`ferry agent exited ${r.exitCode}${r.timedOut ? ' (timed out)' : ''}: ${r.stderr.trim().split('\n').slice(-3).join(' | ')}`);
    ids.forEach((id, i) => {
      const job = cp.job(id);
      if (job.status !== 'finished' || !job.result?.success) {
        failures.push(`${jobs[i]!.destination}: job ${job.status}${job.result ? ` ${JSON.stringify(job.result).slice(0, 300)}` : ''}`);
      }
    });
    return { wall_s: r.wall_s, user_s: r.user_s, sys_s: r.sys_s, rss_mib: r.rss_mib, rss_sum_mib: r.rss_mib, processes: 1, failures };
  } finally {
    await cp.stop();
  }
}

/** `host/a/b/x:1`, `host/a/b/y:1` → `host/a/b` (whole path components). */
function commonPrefix(refs: string[]): string {
  const split = refs.map((r) => r.split(/[:@](?=[^/]*$)/)[0]!.split('/'));
  const first = split[0] ?? [];
  let n = 0;
  while (n < first.length - 1 && split.every((p) => p[n] === first[n] && p.length > n + 1)) n++;
  return first.slice(0, n).join('/');
}
