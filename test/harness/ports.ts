// Loopback ports for the registries and servers a test starts on a port it must know up front
// (a registry's config names its address; a restart must come back on the same one).
//
// Such a port is free when handed out, but the server binds it later, and binds it again after a
// restart. Two things could take it meanwhile, and did:
//   - another test process (or worktree) on the machine asking for a port: listen(0) anywhere,
//     and the old version of this function, hand out ports from the kernel's ephemeral range;
//   - any outgoing connection on the machine: its local port comes from that same range, and a
//     socket connected from port P keeps a server from binding P.
// So ports come from below the ephemeral range (/proc/sys/net/ipv4/ip_local_port_range), where
// the kernel never picks one by itself, and each is leased to this process for its whole life
// by an abstract unix socket named after it: every test process on the machine agrees on who
// holds a port, the kernel releases the name when the holder dies (no stale lock files), and
// binding it is atomic.
import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';

/** Ports the harness hands out: [LOW, ephemeral start). Registries of real services sit lower. */
const LOW = 20_000;

function ephemeralStart(): number {
  try {
    const [start] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number);
    if (start !== undefined && Number.isInteger(start) && start > LOW + 1000) return start;
  } catch {
    // not Linux: fall through
  }
  return 32_768; // Linux's default
}

const leases = new Map<number, Server>();

function listen(server: Server, options: { path: string } | { port: number; host: string }): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const onError = (e: NodeJS.ErrnoException) => {
      server.off('listening', onListening);
      if (e.code === 'EADDRINUSE' || e.code === 'EACCES') resolve(false);
      else reject(e);
    };
    const onListening = () => {
      server.off('error', onError);
      resolve(true);
    };
    server.once('error', onError);
    server.once('listening', onListening);
    server.listen({ ...options, exclusive: true });
  });
}

/** Hold the machine-wide lease on `port` (an abstract unix socket); false if another process holds it. */
async function lease(port: number): Promise<boolean> {
  if (leases.has(port)) return false;
  const lock = createServer();
  // Abstract socket names (a leading NUL) live in the network namespace, not the file system.
  if (!(await listen(lock, { path: `\0ferry-test-port-${port}` }))) return false;
  lock.unref(); // the lease must not keep the test process alive
  leases.set(port, lock);
  return true;
}

/** Is nothing bound to 127.0.0.1:port right now? */
async function bindable(port: number): Promise<boolean> {
  const probe = createServer();
  if (!(await listen(probe, { port, host: '127.0.0.1' }))) return false;
  await new Promise<void>((resolve) => probe.close(() => resolve()));
  return true;
}

/**
 * A TCP port on 127.0.0.1 that is free and stays this process's until it exits: below the
 * ephemeral range, leased machine-wide (see the top of this file), so a server of this process
 * can bind it, stop, and bind it again later.
 */
export async function freePort(): Promise<number> {
  const high = ephemeralStart();
  const span = high - LOW;
  // Start somewhere else in each process, then walk: leases already taken are skipped quickly.
  const first = LOW + ((process.pid * 7919 + leases.size * 104_729 + Date.now()) % span);
  for (let i = 0; i < span; i++) {
    const port = LOW + ((first - LOW + i) % span);
    if (!(await lease(port))) continue;
    if (await bindable(port)) return port;
    releasePort(port); // something outside the harness listens there
  }
  throw new Error(`no free port between ${LOW} and ${high} on 127.0.0.1`);
}

/** Give a leased port back (ports are otherwise held until the process exits). */
export function releasePort(port: number): void {
  leases.get(port)?.close();
  leases.delete(port);
}

/** Ports this process holds (for tests of the harness). */
export function leasedPorts(): number[] {
  return [...leases.keys()];
}
