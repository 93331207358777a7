// A long-running agent under a steady stream of small jobs: one `ferry agent` (the bundle, run
// with the executable's V8 flags, as the single executable or `npm i -g` would start it) works
// through thousands of jobs from the reference control plane, copying small images from one
// distribution registry into another. Its RSS is sampled from /proc while it works, and tied to
// how many jobs it had finished, so the memory of each stretch of the run (quarters by default)
// can be compared:
//   - the floor (the lowest RSS of a stretch, what is left after its collections);
//   - the peak (VmHWM, the kernel's high-water mark);
//   - the job rate and the agent's CPU time per job of each stretch.
// Used by test/agent/soak.test.ts (a size that fits the test suite) and scripts/soak.ts (as long
// as one likes).
import { spawn } from 'node:child_process';
import { mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startControlPlane } from '../harness/control-plane.ts';
import { startDistribution } from '../harness/distribution.ts';
import { pushImage } from '../harness/fixtures.ts';
import { clientFor } from '../harness/oci-client.ts';

const root = new URL('../../', import.meta.url).pathname;

export interface SoakOptions {
  jobs: number;
  /** Distinct source images the jobs cycle through (each job writes its own destination tag). */
  images?: number;
  /** Extra agent flags (e.g. --max-jobs, --concurrency). */
  agentArgs?: string[];
  /** V8 flags for the agent's Node instead of the executable's (pkg.config.json execArgv). */
  execArgv?: string[];
  /** Environment for the agent on top of this process's (e.g. NODE_OPTIONS). */
  env?: NodeJS.ProcessEnv;
  /** How often RSS is read (ms). */
  sampleMs?: number;
  /** Into how many stretches of jobs the run is cut for its floors and rates (default 4: quarters). */
  parts?: number;
  timeoutMs?: number;
  /** Progress lines on stderr. */
  verbose?: boolean;
  /** Where the agent's stdout goes (e.g. V8's --trace-gc lines); discarded by default. */
  stdoutFile?: string;
}

export interface SoakPart {
  /** Jobs finished when the stretch began and ended. */
  from: number;
  to: number;
  /** Lowest and highest RSS sampled while the agent finished this stretch's jobs (MiB). */
  floorMiB: number;
  highMiB: number;
  /** The floors of anonymous and file-backed RSS (MiB). */
  anonFloorMiB: number;
  fileFloorMiB: number;
  /** Jobs per second over the stretch. */
  rate: number;
  /** The agent's CPU time per job over the stretch (ms): its own cost, whatever the machine's load. */
  cpuMsPerJob: number;
}

export interface SoakResult {
  jobs: number;
  failed: number;
  seconds: number;
  /** The kernel's high-water mark of the agent's RSS (VmHWM, MiB). */
  peakMiB: number;
  parts: SoakPart[];
  /** V8's heap limit inside the agent (MiB), from its own report at start. */
  heapLimitMiB: number | undefined;
  execArgv: string[];
  samples: number;
  exitCode: number | null;
}

interface Sample {
  at: number;
  done: number;
  rssKiB: number;
  /** Anonymous memory (heap, buffers, malloc) and file-backed pages (the executable's code, mostly shared). */
  anonKiB: number;
  fileKiB: number;
  /** CPU time the agent has used so far (user + system, ms). */
  cpuMs: number;
}

/** utime + stime of a process, in ms (clock ticks of 10 ms on Linux). */
function cpuMs(pid: number): number {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /s, '').split(' ');
    return (Number(fields[11]) + Number(fields[12])) * 10;
  } catch {
    return NaN;
  }
}

/** Fields of /proc/<pid>/status in KiB (VmRSS, VmHWM, RssAnon, RssFile); undefined once the process is gone. */
function status(pid: number): Record<string, number> | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return undefined;
  }
  const out: Record<string, number> = {};
  for (const m of text.matchAll(/^(VmRSS|VmHWM|RssAnon|RssFile):\s+(\d+) kB$/gm)) out[m[1]!] = Number(m[2]);
  return out.VmRSS === undefined ? undefined : out;
}

/** Bundles ferry as `npm run build` does, into a temp dir: what an installed ferry runs. */
export async function buildBundle(): Promise<{ bundle: string; remove(): void }> {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-soak-build-'));
  const code = await new Promise<number | null>((resolve, reject) => {
    const p = spawn(process.execPath, [join(root, 'scripts/build.mjs'), '--out-dir', dir], { stdio: ['ignore', 'ignore', 'inherit'] });
    p.on('error', reject);
    p.on('close', resolve);
  });
  if (code !== 0) throw new Error(`scripts/build.mjs exited ${code}`);
  return { bundle: join(dir, 'ferry.mjs'), remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/** The V8 flags the single executable starts with (pkg.config.json execArgv). */
export function executableFlags(): string[] {
  return (JSON.parse(readFileSync(join(root, 'pkg.config.json'), 'utf8')) as { execArgv: string[] }).execArgv;
}

export async function runSoak(bundle: string, opts: SoakOptions): Promise<SoakResult> {
  const images = opts.images ?? 20;
  const sampleMs = opts.sampleMs ?? 50;
  const execArgv = opts.execArgv ?? executableFlags();
  const [vendor, local] = await Promise.all([startDistribution(), startDistribution()]);
  const cp = await startControlPlane({ settings: { heartbeat_interval_s: 5, poll_interval_s: 1, lease_s: 120 } });
  const dir = mkdtempSync(join(tmpdir(), 'ferry-soak-'));
  try {
    const vendorC = clientFor(vendor);
    for (let i = 0; i < images; i++) await pushImage(vendorC, `soak/app${i}`, 'v1', { layerSizes: [1500 + i, 2500 + i] });
    for (let i = 0; i < opts.jobs; i++) {
      cp.enqueueJob({
        type: 'oci-sync',
        source: { reference: `${vendor.host}/soak/app${i % images}:v1`, auth: { kind: 'anonymous' } },
        destination: { reference: `${local.host}/soak/app${i % images}:v${i}`, auth: { kind: 'local' } },
        platforms: 'all',
        referrers: false,
      });
    }
    const tokenFile = join(dir, 'runner-token');
    writeFileSync(tokenFile, cp.token, { mode: 0o600 });
    const args = [
      ...execArgv,
      bundle,
      'agent',
      '--control-plane-url',
      cp.url,
      '--runner-id',
      cp.runnerId,
      '--token-file',
      tokenFile,
      '--state-dir',
      join(dir, 'state'),
      '--local-registry',
      local.host,
      '--exit-when-idle',
      '--log-level',
      'info',
      ...(opts.agentArgs ?? []),
    ];
    const started = Date.now();
    const agent = spawn(process.execPath, args, {
      env: { ...process.env, DOCKER_CONFIG: join(tmpdir(), 'ferry-no-docker-config'), NODE_OPTIONS: '', ...opts.env },
      stdio: ['ignore', opts.stdoutFile ? openSync(opts.stdoutFile, 'w') : 'ignore', 'pipe'],
    });
    const pid = agent.pid!;
    let done = 0;
    let failed = 0;
    let partial = '';
    let tail: string[] = [];
    let heapLine: string | undefined;
    agent.stderr!.setEncoding('utf8');
    agent.stderr!.on('data', (d: string) => {
      const lines = (partial + d).split('\n');
      partial = lines.pop()!;
      for (const line of lines) {
        if (line.includes('"msg":"job finished"')) done++;
        else if (heapLine === undefined && line.includes('"heap_limit_mib"')) heapLine = line;
        else if (line.includes('"msg":"job failed"')) failed++;
        tail.push(line);
        if (tail.length > 40) tail = tail.slice(-20);
      }
    });
    const samples: Sample[] = [];
    let peakKiB = 0;
    let lastReport = 0;
    const timer = setInterval(() => {
      const st = status(pid);
      const rssKiB = st?.VmRSS;
      if (st && rssKiB !== undefined) {
        samples.push({ at: Date.now(), done, rssKiB, anonKiB: st.RssAnon ?? NaN, fileKiB: st.RssFile ?? NaN, cpuMs: cpuMs(pid) });
        peakKiB = Math.max(peakKiB, st.VmHWM ?? 0);
      }
      if (opts.verbose && Date.now() - lastReport > 5000) {
        lastReport = Date.now();
        process.stderr.write(`soak: ${done}/${opts.jobs} jobs, RSS ${((rssKiB ?? 0) / 1024).toFixed(1)} MiB\n`);
      }
    }, sampleMs);
    const kill = setTimeout(() => agent.kill('SIGKILL'), opts.timeoutMs ?? 600_000);
    const exitCode = await new Promise<number | null>((resolve) => agent.on('exit', (code) => resolve(code)));
    clearTimeout(kill);
    clearInterval(timer);
    const seconds = (Date.now() - started) / 1000;
    if (exitCode !== 0) throw new Error(`the agent exited ${exitCode} after ${done} jobs:\n${tail.join('\n')}`);

    const maxSampled = Math.max(...samples.map((s) => s.rssKiB));
    const count = opts.parts ?? 4;
    const parts: SoakPart[] = [];
    for (let q = 0; q < count; q++) {
      const from = Math.round((q * opts.jobs) / count);
      const to = Math.round(((q + 1) * opts.jobs) / count);
      const inQ = samples.filter((s) => s.done >= from && s.done < to);
      const first = inQ[0];
      const last = inQ.at(-1);
      parts.push({
        from,
        to,
        floorMiB: inQ.length ? Math.min(...inQ.map((s) => s.rssKiB)) / 1024 : NaN,
        highMiB: inQ.length ? Math.max(...inQ.map((s) => s.rssKiB)) / 1024 : NaN,
        anonFloorMiB: inQ.length ? Math.min(...inQ.map((s) => s.anonKiB)) / 1024 : NaN,
        fileFloorMiB: inQ.length ? Math.min(...inQ.map((s) => s.fileKiB)) / 1024 : NaN,
        rate: first && last && last.at > first.at ? (last.done - first.done) / ((last.at - first.at) / 1000) : NaN,
        cpuMsPerJob: first && last && last.done > first.done ? (last.cpuMs - first.cpuMs) / (last.done - first.done) : NaN,
      });
    }
    const heapLimitMiB = heapLine ? (JSON.parse(heapLine) as { heap_limit_mib?: number }).heap_limit_mib : undefined;
    return {
      jobs: done,
      failed,
      seconds,
      peakMiB: Math.max(peakKiB, maxSampled) / 1024,
      parts,
      heapLimitMiB,
      execArgv,
      samples: samples.length,
      exitCode,
    };
  } finally {
    await cp.stop();
    await Promise.all([vendor.stop(), local.stop()]);
    rmSync(dir, { recursive: true, force: true });
  }
}

export function describeSoak(r: SoakResult): string {
  const q = r.parts
    .map((x, i) => `${i + 1}/${r.parts.length} floor ${x.floorMiB.toFixed(1)} (anon ${x.anonFloorMiB.toFixed(1)}, file ${x.fileFloorMiB.toFixed(1)}) high ${x.highMiB.toFixed(1)} MiB, ${x.rate.toFixed(1)} jobs/s, ${x.cpuMsPerJob.toFixed(1)} CPU-ms/job`)
    .join('; ');
  return `${r.jobs} jobs (${r.failed} failed) in ${r.seconds.toFixed(1)} s, flags ${r.execArgv.join(' ') || '(none)'}: peak RSS ${r.peakMiB.toFixed(1)} MiB; ${q}`;
}

