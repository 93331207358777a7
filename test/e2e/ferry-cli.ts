// Runs the real ferry CLI (from the TypeScript sources) as a child process, the way an
// operator would, and captures what it prints.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const MAIN = new URL('../../src/main.ts', import.meta.url).pathname;

export interface FerryRun {
  code: number;
  stdout: string;
  stderr: string;
  /** stdout parsed as JSON, when it is. */
  json: any;
}

/** A fresh state directory per test file, so caches never leak between tests by accident. */
export function tempStateHome(): string {
  return mkdtempSync(join(tmpdir(), 'ferry-state-'));
}

/** A running ferry CLI: the child (to signal it at a chosen moment) and how it ended. */
export interface FerryChild {
  child: ChildProcess;
  done: Promise<FerryRun & { signal: NodeJS.Signals | null }>;
}

/** Start the CLI; SIGKILLed after `timeoutMs`. No docker config of the machine's is read. */
export function spawnFerry(args: string[], env: NodeJS.ProcessEnv = {}, timeoutMs = 170_000): FerryChild {
  const child = spawn(process.execPath, [MAIN, ...args], {
    env: { ...process.env, DOCKER_CONFIG: join(tmpdir(), 'ferry-no-docker-config'), ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d) => (stdout += d));
  child.stderr!.on('data', (d) => (stderr += d));
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  const done = new Promise<FerryRun & { signal: NodeJS.Signals | null }>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      let json: unknown;
      try {
        json = JSON.parse(stdout);
      } catch {
        json = undefined;
      }
      resolve({ code: code ?? -1, signal, stdout, stderr, json });
    });
  });
  return { child, done };
}

/** Run the CLI to its end. */
export function runFerry(args: string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<FerryRun> {
  return spawnFerry(args, opts.env, opts.timeoutMs ?? 180_000).done;
}
