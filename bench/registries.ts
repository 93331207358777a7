// The benchmark's two registries: real distribution (Debian's docker-registry 2.8) on loopback,
// fresh filesystem storage under the system temp dir, started through the test harness. Requests
// are counted from each registry's access log (zero overhead on the data path, unlike a proxy
// that would copy every byte once more on a 2-core machine), bracketed by marker requests.
import { readdirSync, readFileSync } from 'node:fs';
import { startDistribution, type DistributionRegistry } from '../test/harness/distribution.ts';
import { processCpuSeconds } from './measure.ts';

export interface RequestCounts {
  total: number;
  /** GET/HEAD on /manifests/. */
  manifest: number;
  /** GET/HEAD on /blobs/<digest> (not uploads). */
  blob: number;
  /** Anything under /blobs/uploads/ (POST, PATCH, PUT, GET status, DELETE). */
  upload: number;
  /** PUT/DELETE of manifests. */
  manifestWrite: number;
  /** /v2/ pings, tags, referrers, catalog. */
  other: number;
  byMethod: Record<string, number>;
}

export function emptyCounts(): RequestCounts {
  return { total: 0, manifest: 0, blob: 0, upload: 0, manifestWrite: 0, other: 0, byMethod: {} };
}

export function addCounts(a: RequestCounts, b: RequestCounts): RequestCounts {
  const byMethod = { ...a.byMethod };
  for (const [m, n] of Object.entries(b.byMethod)) byMethod[m] = (byMethod[m] ?? 0) + n;
  return {
    total: a.total + b.total,
    manifest: a.manifest + b.manifest,
    blob: a.blob + b.blob,
    upload: a.upload + b.upload,
    manifestWrite: a.manifestWrite + b.manifestWrite,
    other: a.other + b.other,
    byMethod,
  };
}

const MARKER = 'ferry-bench-marker';
// Apache combined log format, as distribution's access log writes it.
const ACCESS = /"(GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS) (\S+) HTTP\/[\d.]+" (\d{3})/;

/** Count the access-log lines in `text` (marker requests excluded). */
export function countAccessLog(text: string): RequestCounts {
  const c = emptyCounts();
  for (const line of text.split('\n')) {
    const m = ACCESS.exec(line);
    if (!m) continue;
    const method = m[1]!;
    const path = m[2]!;
    if (path.includes(MARKER)) continue;
    c.total++;
    c.byMethod[method] = (c.byMethod[method] ?? 0) + 1;
    if (path.includes('/blobs/uploads/')) c.upload++;
    else if (path.includes('/blobs/')) c.blob++;
    else if (path.includes('/manifests/')) {
      if (method === 'GET' || method === 'HEAD') c.manifest++;
      else c.manifestWrite++;
    } else c.other++;
  }
  return c;
}

export class BenchRegistry {
  readonly role: 'source' | 'destination';
  readonly handle: DistributionRegistry;
  readonly pid: number;
  private markers = 0;

  private constructor(role: 'source' | 'destination', handle: DistributionRegistry, pid: number) {
    this.role = role;
    this.handle = handle;
    this.pid = pid;
  }

  /** `start` makes the registry (default: plain HTTP on loopback; the WAN lab's serve TLS). */
  static async start(role: 'source' | 'destination', start: () => Promise<DistributionRegistry> = () => startDistribution()): Promise<BenchRegistry> {
    const handle = await start();
    return new BenchRegistry(role, handle, findPidByArg(handle.configPath));
  }

  get host(): string {
    return this.handle.host;
  }

  /** CPU seconds the registry process has used so far. */
  cpuSeconds(): number {
    return processCpuSeconds(this.pid);
  }

  /**
   * The log position after every request made so far: send a marker request, wait until it is
   * logged (distribution logs a request before the client has its full response, so once the
   * marker — sent after the tool exited — is in the log, the tool's requests are too), then a
   * short grace for lines written out of order by concurrent handlers.
   */
  async settle(): Promise<number> {
    const tag = `${MARKER}=${++this.markers}`;
    const res = await fetch(`${this.handle.url}/v2/?${tag}`);
    await res.arrayBuffer();
    const deadline = Date.now() + 5000;
    while (!this.handle.logs().includes(tag)) {
      if (Date.now() > deadline) throw new Error(`${this.role} registry did not log the marker request`);
      await new Promise((r) => setTimeout(r, 10));
    }
    await new Promise((r) => setTimeout(r, 50));
    return this.handle.logs().length;
  }

  /** Requests logged between two settle() positions. */
  countBetween(from: number, to: number): RequestCounts {
    return countAccessLog(this.handle.logs().slice(from, to));
  }

  async stop(): Promise<void> {
    await this.handle.stop();
  }
}

/** The pid of the process whose command line contains `arg` (the registry, via its config path). */
function findPidByArg(arg: string): number {
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const cmdline = readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0');
      if (cmdline.includes(arg) && cmdline.some((a) => a.endsWith('docker-registry'))) return Number(name);
    } catch {
      // gone
    }
  }
  return -1;
}
