// Measuring one child process (wall, CPU, peak RSS) and the machine around it.
// CPU and peak RSS come from GNU time (`/usr/bin/time`, Debian package `time`), which reads
// them from wait4()'s rusage of exactly the program it ran: no polling, no sampling error.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const GNU_TIME = '/usr/bin/time';

export interface ProcessMeasure {
  /** Seconds from spawn to exit, measured here (monotonic clock). */
  wall_s: number;
  user_s: number;
  sys_s: number;
  /** Peak resident set size in MiB. */
  rss_mib: number;
  exitCode: number;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

export interface Command {
  cmd: string;
  args: string[];
  env?: NodeJS.ProcessEnv;
}

// A trace asked for (FERRY_BENCH_AGENT_LOG, bench/fleet.ts) is kept whole.
const MAX_CAPTURE = process.env.FERRY_BENCH_AGENT_LOG ? 64 * 1024 * 1024 : 256 * 1024;

let timeDir: string | undefined;
let seq = 0;

/** Run `command` under GNU time and measure it. Output is captured (bounded), never shown. */
export function runMeasured(command: Command, timeoutMs: number): Promise<ProcessMeasure> {
  timeDir ??= mkdtempSync(join(tmpdir(), 'ferry-bench-time-'));
  const out = join(timeDir, `t${++seq}`);
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const child = spawn(GNU_TIME, ['-q', '-o', out, '-f', '%U %S %M', command.cmd, ...command.args], {
      env: command.env ?? process.env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => {
      if (stdout.length < MAX_CAPTURE) stdout += d.toString('utf8');
    });
    child.stderr.on('data', (d: Buffer) => {
      if (stderr.length < MAX_CAPTURE) stderr += d.toString('utf8');
    });
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code) => {
      const wall = (performance.now() - started) / 1000;
      clearTimeout(timer);
      let user = NaN;
      let sys = NaN;
      let rssKiB = NaN;
      try {
        const lines = readFileSync(out, 'utf8').trim().split('\n');
        const [u, s, m] = (lines[lines.length - 1] ?? '').trim().split(/\s+/).map(Number);
        user = u ?? NaN;
        sys = s ?? NaN;
        rssKiB = m ?? NaN;
        rmSync(out, { force: true });
      } catch {
        // killed before GNU time could write: leave NaN
      }
      resolve({ wall_s: wall, user_s: user, sys_s: sys, rss_mib: rssKiB / 1024, exitCode: code ?? -1, stdout, stderr, timedOut });
    });
  });
}

/** Run many commands, at most `parallel` at once; wall is the whole group's. */
export async function runGroup(commands: Command[], parallel: number, timeoutMs: number): Promise<{ wall_s: number; runs: ProcessMeasure[] }> {
  const started = performance.now();
  const runs: ProcessMeasure[] = new Array(commands.length);
  let next = 0;
  const worker = async () => {
    for (;;) {
      const i = next++;
      if (i >= commands.length) return;
      runs[i] = await runMeasured(commands[i]!, timeoutMs);
    }
  };
  await Promise.all(Array.from({ length: Math.min(parallel, commands.length) }, worker));
  return { wall_s: (performance.now() - started) / 1000, runs };
}

/** Summed CPU ticks of all CPUs: busy (everything but idle and iowait) and total. */
export function systemCpuTicks(): { busy: number; total: number } {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '';
  const f = line.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal guest guest_nice (guest is inside user)
  const total = f.slice(0, 8).reduce((a, b) => a + (b || 0), 0);
  const idle = (f[3] ?? 0) + (f[4] ?? 0);
  return { busy: total - idle, total };
}

/** CPU seconds (user + sys) a process has used so far, from /proc/PID/stat. */
export function processCpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(rest[11]) + Number(rest[12])) / CLK_TCK;
  } catch {
    return NaN;
  }
}

/** USER_HZ: 100 on every Linux that matters. */
export const CLK_TCK = 100;

export function loadAverage(): [number, number, number] {
  const [a, b, c] = readFileSync('/proc/loadavg', 'utf8').split(' ').map(Number);
  return [a ?? NaN, b ?? NaN, c ?? NaN];
}

export function median(xs: number[]): number {
  const v = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return NaN;
  const mid = Math.floor(v.length / 2);
  return v.length % 2 ? v[mid]! : (v[mid - 1]! + v[mid]!) / 2;
}

export function min(xs: number[]): number {
  const v = xs.filter((x) => Number.isFinite(x));
  return v.length ? Math.min(...v) : NaN;
}

export function max(xs: number[]): number {
  const v = xs.filter((x) => Number.isFinite(x));
  return v.length ? Math.max(...v) : NaN;
}
