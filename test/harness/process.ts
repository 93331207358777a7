// Child processes for the registries the harness runs: started with their output in a log file,
// killed by the test that started them, and never left behind when the test process dies.
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, closeSync, constants, mkdtempSync, openSync, readdirSync, readFileSync, readlinkSync, rmSync } from 'node:fs';
import { get as httpsGet } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const live = new Set<ChildProcess>();
const tempDirs = new Set<string>();
let exitHookInstalled = false;

// Last resort for a test that forgot stop() or threw before cleanup: 'exit' handlers must be
// synchronous, so SIGKILL every child still running and remove temp dirs synchronously.
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const child of live) {
      try {
        child.kill('SIGKILL');
      } catch {
        // already gone
      }
    }
    for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
  });
}

/** A fresh temp dir (`ferry-<prefix>-XXXXXX`) that is removed at process exit if not before. */
export function makeTempDir(prefix: string): { path: string; remove(): void } {
  installExitHook();
  const path = mkdtempSync(join(tmpdir(), `ferry-${prefix}-`));
  tempDirs.add(path);
  return {
    path,
    remove() {
      tempDirs.delete(path);
      rmSync(path, { recursive: true, force: true });
    },
  };
}

/** What every registry the harness starts looks like to a test. */
export interface RegistryHandle {
  kind: 'distribution' | 'crane';
  /** `127.0.0.1:PORT`, as used in image references. */
  host: string;
  /** `http://127.0.0.1:PORT`. */
  url: string;
  /** Where the registry keeps its blobs and manifests (kept across restart()). */
  storageDir: string;
  /** Kill the registry and remove its temporary files. Safe to call twice. */
  stop(): Promise<void>;
  /** Stop the process and start it again on the same port and storage; `downMs` keeps it down a while. */
  restart(opts?: { downMs?: number }): Promise<void>;
  /** Everything the registry has logged so far. */
  logs(): string;
}

/** The first of `candidates` that exists and is executable, else undefined. */
export function findExecutable(candidates: string[]): string | undefined {
  for (const p of candidates) {
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      // try the next one
    }
  }
  return undefined;
}

// `setpriv --pdeathsig KILL` makes the kernel kill the registry if this Node process dies without
// running its exit handlers (SIGKILL from a test-runner timeout, a crash).
const SETPRIV = findExecutable(['/usr/bin/setpriv', '/bin/setpriv']);

export interface ManagedProcess {
  readonly pid: number;
  /** Resolves with the exit code (or signal name) once the process has exited. */
  readonly exited: Promise<number | string>;
  /** True until the process exits. */
  running(): boolean;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves once the process is gone. */
  stop(graceMs?: number): Promise<void>;
}

/** Start `command args` with stdout and stderr appended to `logFile`. */
export function startProcess(command: string, args: string[], opts: { logFile: string; cwd?: string; env?: NodeJS.ProcessEnv }): ManagedProcess {
  installExitHook();
  const fd = openSync(opts.logFile, 'a');
  const [cmd, argv] = SETPRIV ? [SETPRIV, ['--pdeathsig', 'KILL', '--', command, ...args]] : [command, args];
  let child: ChildProcess;
  try {
    child = spawn(cmd, argv, { cwd: opts.cwd, env: opts.env ?? process.env, stdio: ['ignore', fd, fd] });
  } finally {
    closeSync(fd); // the child has its own copy
  }
  if (child.pid === undefined) throw new Error(`could not start ${command}`);
  live.add(child);
  let isRunning = true;
  const exited = new Promise<number | string>((resolve) => {
    child.on('exit', (code, signal) => {
      isRunning = false;
      live.delete(child);
      resolve(code ?? signal ?? 'unknown');
    });
    child.on('error', () => {
      isRunning = false;
      live.delete(child);
      resolve('spawn-error');
    });
  });
  const pid = child.pid;
  return {
    pid,
    exited,
    running: () => isRunning,
    async stop(graceMs = 3000) {
      if (!isRunning) return;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
      await exited;
      clearTimeout(timer);
    },
  };
}

/** The tail of a log file, for error messages. */
export function readLog(logFile: string, maxChars = Infinity): string {
  let text: string;
  try {
    text = readFileSync(logFile, 'utf8');
  } catch {
    return '';
  }
  return text.length > maxChars ? text.slice(-maxChars) : text;
}

/** Inodes of the TCP sockets listening on `port` (IPv4 and IPv6), from the kernel's socket tables. */
function listeningInodes(port: number): Set<string> {
  const inodes = new Set<string>();
  const hexPort = port.toString(16).toUpperCase().padStart(4, '0');
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text: string;
    try {
      text = readFileSync(table, 'utf8');
    } catch {
      continue; // no IPv6
    }
    for (const line of text.split('\n').slice(1)) {
      // sl local_address rem_address st ... inode: the state 0A is LISTEN.
      const f = line.trim().split(/\s+/);
      if (f.length > 9 && f[3] === '0A' && f[1]!.endsWith(`:${hexPort}`)) inodes.add(f[9]!);
    }
  }
  return inodes;
}

/** Inodes of the sockets among the open files of process `pid`. */
function socketInodes(pid: number): Set<string> {
  const inodes = new Set<string>();
  let fds: string[];
  try {
    fds = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return inodes; // gone
  }
  for (const fd of fds) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (m) inodes.add(m[1]!);
    } catch {
      // closed meanwhile
    }
  }
  return inodes;
}

/**
 * Who listens on TCP `port`: the process `pid`, another one, or nobody. A listening socket
 * cannot change hands while its process lives, so once `pid` is the listener, every answer on
 * that port is its answer.
 */
export function portListener(port: number, pid: number): 'self' | 'other' | 'none' {
  const listening = listeningInodes(port);
  if (listening.size === 0) return 'none';
  const own = socketInodes(pid);
  return [...listening].some((i) => own.has(i)) ? 'self' : 'other';
}

/**
 * Poll `GET <url>/v2/` until the registry answers (200, or 401 when auth is on), then make
 * sure the answer was the started process's: a registry that could not bind its port (another
 * server holds it) must not pass for ready because that server answered. Fails early if the
 * process exits, with the end of its log in the message.
 */
export async function waitForRegistry(url: string, proc: ManagedProcess, logFile: string, timeoutMs = 15_000, caPath?: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const port = Number(new URL(url).port);
  let lastError = '';
  while (Date.now() < deadline) {
    if (!proc.running()) {
      throw new Error(`registry process exited (${await proc.exited}) before it was ready:\n${readLog(logFile, 4000)}`);
    }
    let status: number | undefined;
    try {
      // Over TLS with a test CA: node:https, which takes the CA (fetch does not).
      status = caPath ? await httpsStatus(`${url}/v2/`, caPath) : await fetch(`${url}/v2/`, { signal: AbortSignal.timeout(1000) }).then(async (res) => (await res.arrayBuffer(), res.status));
      lastError = `GET /v2/ answered ${status}`;
    } catch (e) {
      lastError = (e as Error).message;
    }
    if (status === 200 || status === 401) {
      const listener = portListener(port, proc.pid);
      if (listener === 'self') return;
      await proc.stop();
      throw new Error(
        `${url} answered, but not from the registry started (pid ${proc.pid}): ${listener === 'other' ? 'another process listens on the port' : 'nothing listens on it now'}:\n${readLog(logFile, 4000)}`,
      );
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  await proc.stop();
  throw new Error(`registry at ${url} not ready after ${timeoutMs} ms (${lastError}):\n${readLog(logFile, 4000)}`);
}

/** The status of a GET over HTTPS, trusting the CA in `caPath`. */
function httpsStatus(url: string, caPath: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = httpsGet(url, { ca: readFileSync(caPath), timeout: 1000 }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', reject);
  });
}

/** `name` looked up on PATH (then in /usr/bin and /usr/local/bin). */
export function findOnPath(name: string): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(':').filter(Boolean), '/usr/bin', '/usr/local/bin'];
  return findExecutable(dirs.map((d) => `${d}/${name}`));
}

/**
 * The start / restart / stop lifecycle every harness registry shares: `launch` starts the
 * process (and waits until it answers), `cleanup` removes what the registry owns. Launches
 * once now; a failed first launch cleans up and rethrows.
 */
export async function manageRegistry(
  launch: () => Promise<ManagedProcess>,
  cleanup: () => Promise<void> | void,
): Promise<Pick<RegistryHandle, 'restart' | 'stop'>> {
  let proc: ManagedProcess | undefined;
  let stopped = false;
  try {
    proc = await launch();
  } catch (e) {
    await cleanup();
    throw e;
  }
  return {
    async restart({ downMs = 0 } = {}) {
      if (stopped) throw new Error('restart() after stop()');
      await proc?.stop();
      if (downMs > 0) await new Promise((r) => setTimeout(r, downMs));
      proc = await launch();
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      await proc?.stop();
      await cleanup();
    },
  };
}
