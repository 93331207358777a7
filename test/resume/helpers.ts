// Shared by the resume tests: a ferry child process that can be SIGKILLed at a chosen moment,
// its JSON log lines, and the journal files in a state directory.
import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FerryRun } from '../e2e/ferry-cli.ts';

const MAIN = new URL('../../src/main.ts', import.meta.url).pathname;

export interface FerryChild {
  child: ChildProcess;
  done: Promise<FerryRun & { signal: NodeJS.Signals | null }>;
}

export function spawnFerry(args: string[], env: NodeJS.ProcessEnv, timeoutMs = 170_000): FerryChild {
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

/** ferry's pino JSON log lines from stderr. */
export function logLines(stderr: string): Array<Record<string, any>> {
  const out: Array<Record<string, any>> = [];
  for (const line of stderr.split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      out.push(JSON.parse(line));
    } catch {
      // a line cut by SIGKILL
    }
  }
  return out;
}

/** Journal files (name → parsed content) in `<stateDir>/journal`. */
export function journalFiles(stateDir: string): Map<string, any> {
  const dir = join(stateDir, 'journal');
  const out = new Map<string, any>();
  let names: string[] = [];
  try {
    names = readdirSync(dir);
  } catch {
    return out;
  }
  for (const n of names.filter((x) => x.endsWith('.json'))) {
    try {
      out.set(n, JSON.parse(readFileSync(join(dir, n), 'utf8')));
    } catch {
      out.set(n, undefined);
    }
  }
  return out;
}

export const MiB = 1024 * 1024;
export const mib = (n: number): string => (n / MiB).toFixed(1);
