// Shared by the fault suite: the real ferry CLI as a child process whose every output line is
// kept (for the secrets check at the end of the suite), byte accounting through the fault
// proxy, and what distribution still holds of upload sessions.
import type { ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FaultProxy } from '../harness/fault-proxy.ts';
import type { PushedManifest } from '../harness/fixtures.ts';
import { logLines, spawnFerry } from '../resume/helpers.ts';

export const MiB = 1024 * 1024;
export const KiB = 1024;

/** Every line any process of the suite printed, with where it came from. */
export interface CapturedOutput {
  label: string;
  stream: 'stdout' | 'stderr';
  text: string;
}

export const captured: CapturedOutput[] = [];

/** Keep a process's output for the secrets check. */
export function capture(label: string, stream: 'stdout' | 'stderr', text: string): void {
  captured.push({ label, stream, text });
}

export interface FerryResult {
  code: number;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** stdout parsed as JSON, when it is. */
  json: any;
  /** ferry's pino JSON lines from stderr. */
  logs: Array<Record<string, any>>;
  ms: number;
}

export interface FerryChild {
  child: ChildProcess;
  done: Promise<FerryResult>;
}

/**
 * Start `ferry <args>` (from the TypeScript sources). `timeoutMs` guards against a hang only:
 * the child is killed then and the result has signal SIGKILL.
 */
export function startFerry(label: string, args: string[], env: NodeJS.ProcessEnv = {}, timeoutMs = 120_000): FerryChild {
  const started = Date.now();
  const { child, done } = spawnFerry(args, env, timeoutMs);
  return {
    child,
    done: done.then((r) => {
      capture(label, 'stdout', r.stdout);
      capture(label, 'stderr', r.stderr);
      return { ...r, logs: logLines(r.stderr), ms: Date.now() - started };
    }),
  };
}

export function runFerry(label: string, args: string[], env: NodeJS.ProcessEnv = {}, timeoutMs?: number): Promise<FerryResult> {
  return startFerry(label, args, env, timeoutMs).done;
}

export { logLines };

/** Log lines whose message starts with `prefix`. */
export function messages(r: FerryResult, prefix: string): Array<Record<string, any>> {
  return r.logs.filter((l) => typeof l.msg === 'string' && l.msg.startsWith(prefix));
}

const tempDirs: string[] = [];

/** A fresh temp dir, removed by removeTempDirs(). */
export function tempDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), `ferry-${prefix}-`));
  tempDirs.push(dir);
  return dir;
}

export function removeTempDirs(): void {
  for (const dir of tempDirs.splice(0)) rmSync(dir, { recursive: true, force: true });
}

/** Bytes a clean copy sends to the destination: every blob once, and the manifest. */
export function imageBytes(img: PushedManifest): number {
  return img.blobs.reduce((n, b) => n + b.size, 0) + img.manifestBytes.byteLength;
}

/** Counts the request-body bytes a destination proxy receives from a point on. */
export function uploadMeter(proxy: FaultProxy): () => number {
  const start = proxy.uploadedBytes();
  return () => proxy.uploadedBytes() - start;
}

/**
 * Upload sessions distribution still holds for a repository. A session is live while its
 * `startedat` or `data` file exists (distribution 2.8 may re-create an empty `hashstates/` when
 * an aborted request's handler finishes after the DELETE).
 */
export function liveUploads(storageDir: string, repo: string): string[] {
  const dir = join(storageDir, 'docker/registry/v2/repositories', repo, '_uploads');
  if (!existsSync(dir)) return [];
  return readdirSync(dir).filter((u) => {
    let files: string[];
    try {
      files = readdirSync(join(dir, u), { recursive: true }).map(String);
    } catch (e) {
      // A session that finished (the registry removed it) between the two reads.
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw e;
    }
    return files.includes('startedat') || files.includes('data');
  });
}

export const mib = (n: number): string => (n / MiB).toFixed(1);

/** "1.5 MiB" / "0 B" for the report. */
export function human(n: number): string {
  if (n === 0) return '0 B';
  if (Math.abs(n) < KiB) return `${n} B`;
  if (Math.abs(n) < MiB) return `${(n / KiB).toFixed(1)} KiB`;
  return `${(n / MiB).toFixed(1)} MiB`;
}
