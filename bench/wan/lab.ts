// The WAN lab: two distribution 2.8 registries serving TLS themselves (HTTP/2 offered
// by ALPN), certificates from a test CA made with the openssl CLI (test/harness/cloud-registry.ts's
// makeTestPki), reached by host names that are not loopback names, through the latency proxy
// (latency-proxy.ts, a process of its own) that makes every connection cost what it would across
// a network of the configured RTT.
//
// How the tools reach the lab by name, without touching the machine's configuration: every tool
// runs under `lab-exec` (written here, in the lab's temp dir), which gives the command a private
// mount namespace (unshare --mount, propagation private) in which the lab's hosts file is
// bind-mounted over /etc/hosts; the mount dies with the command and the machine's /etc/hosts is
// never written. Node (getaddrinfo) and the Go peers (their own resolver) both read /etc/hosts.
// The same script trusts the lab's CA: SSL_CERT_FILE for the Go peers (crane, oras, skopeo use
// Go's system pool, which honours it), NODE_EXTRA_CA_CERTS for ferry. This needs root (unshare
// and mount, and port 443 on the proxy's addresses).
//
// The names resolve to 127.77.N.1 and 127.77.N.2 (N from the harness's pid, so two labs can run
// at once), port 443 as a real registry. Those are addresses on the loopback device; no tool
// decides anything by the address: ferry's plain-HTTP rule is by name (src/transport/address.ts),
// crane, oras and skopeo speak TLS unless told otherwise. The harness itself (seeding, markers,
// verification) talks to the registries directly, https://localhost:PORT, never through the proxy.
import { execFileSync, fork, type ChildProcess } from 'node:child_process';
import { chmodSync, readFileSync, writeFileSync } from 'node:fs';
import { connect as tlsConnect, getCACertificates, setDefaultCACertificates, type TLSSocket } from 'node:tls';
import { setPriority } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { makeTestPki, type TestPki } from '../../test/harness/cloud-registry.ts';
import { startDistribution } from '../../test/harness/distribution.ts';
import { OciClient } from '../../test/harness/oci-client.ts';
import { makeTempDir } from '../../test/harness/process.ts';
import { processCpuSeconds, type Command } from '../measure.ts';
import { BenchRegistry } from '../registries.ts';
import type { LinkModel, Route, RouteCounters } from './latency-proxy.ts';

/** The lab's host names (RFC 6761 `.test`: never a real host). */
export const LAB_NAMES = { source: 'source.wan.ferry.test', destination: 'destination.wan.ferry.test' } as const;
export type Side = keyof typeof LAB_NAMES;
const SIDES: Side[] = ['source', 'destination'];

const PROXY_SCRIPT = fileURLToPath(new URL('./proxy-process.ts', import.meta.url));

export interface LinkSettings {
  rttMs: number;
  /** Mbit/s in each direction; undefined: no cap. */
  bandwidthMbps?: number | undefined;
  bandwidthScope?: 'link' | 'connection' | undefined;
  window?: 'tcp' | 'none' | undefined;
  maxWindowBytes?: number | undefined;
}

export function linkModel(s: LinkSettings): LinkModel {
  return {
    rttMs: s.rttMs,
    bandwidthBps: s.bandwidthMbps ? s.bandwidthMbps * 1e6 : undefined,
    bandwidthScope: s.bandwidthScope ?? 'link',
    window: s.window ?? 'tcp',
    maxWindowBytes: s.maxWindowBytes,
  };
}

/** One running latency proxy (a child process) between the tools and both registries. */
export interface WanLink {
  settings: LinkSettings;
  pid: number;
  /** Connections and bytes per side since the proxy started. */
  counters(): Promise<Record<Side, RouteCounters>>;
  /** CPU seconds the proxy process has used. */
  cpuSeconds(): number;
  stop(): Promise<void>;
}

export interface WanLab {
  names: typeof LAB_NAMES;
  /** Where each name resolves (the proxy listens there, port 443). */
  addresses: Record<Side, string>;
  pki: TestPki;
  /** The lab-exec script: `lab-exec CMD ARGS…` runs CMD with the lab's names and CA. */
  execPath: string;
  hostsPath: string;
  src: BenchRegistry;
  dst: BenchRegistry;
  /** The harness's clients of each registry (direct, not through the proxy). */
  srcClient: OciClient;
  dstClient: OciClient;
  /** `command` as run in the lab: through lab-exec. */
  wrap(command: Command): Command;
  /** Start a latency proxy with these settings (stop the previous one first: they share the addresses). */
  startLink(settings: LinkSettings): Promise<WanLink>;
  stop(): Promise<void>;
}

/** What the lab needs from the machine, checked before anything starts: a clear message if missing. */
export function checkLabPrerequisites(): void {
  if (process.getuid?.() !== 0) {
    throw new Error('the WAN lab needs root: it gives each tool a private mount namespace (unshare, mount) for the lab\'s /etc/hosts and listens on port 443');
  }
  for (const tool of ['unshare', 'mount', 'openssl', 'getent']) {
    try {
      execFileSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' });
    } catch {
      throw new Error(`the WAN lab needs ${tool} (util-linux / openssl / libc-bin)`);
    }
  }
}

/** The harness process trusts the lab's CA too (for seeding, markers and verification over TLS). */
function trustInThisProcess(caPath: string): void {
  const ca = readFileSync(caPath, 'utf8');
  const current = getCACertificates('default');
  if (!current.includes(ca)) setDefaultCACertificates([...current, ca]);
}

const shellQuote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

export async function startWanLab(opts: { log?: (line: string) => void } = {}): Promise<WanLab> {
  checkLabPrerequisites();
  const log = opts.log ?? (() => undefined);
  const dir = makeTempDir('wan-lab');
  const pki = makeTestPki([LAB_NAMES.source, LAB_NAMES.destination, 'localhost']);
  trustInThisProcess(pki.caPath);
  const net = `127.77.${1 + (process.pid % 250)}`;
  const addresses: Record<Side, string> = { source: `${net}.1`, destination: `${net}.2` };

  // The machine's hosts file as it is, plus the lab's names: nothing else changes for the tools.
  const hostsPath = join(dir.path, 'hosts');
  let machineHosts = '';
  try {
    machineHosts = readFileSync('/etc/hosts', 'utf8');
  } catch {
    machineHosts = '127.0.0.1 localhost\n';
  }
  writeFileSync(hostsPath, `${machineHosts.replace(/\n?$/, '\n')}# ferry WAN lab (bench/wan/lab.ts)\n${SIDES.map((s) => `${addresses[s]} ${LAB_NAMES[s]}`).join('\n')}\n`);
  const execPath = join(dir.path, 'lab-exec');
  writeFileSync(
    execPath,
    [
      '#!/bin/sh',
      '# ferry WAN lab (bench/wan/lab.ts): run "$@" with the lab\'s host names and test CA.',
      '# A private mount namespace in which the lab\'s hosts file is bind-mounted over /etc/hosts:',
      '# the machine\'s own /etc/hosts is not touched, and the mount ends with the command.',
      `exec unshare --mount --propagation private -- /bin/sh -c 'mount --bind "$0" /etc/hosts && exec "$@"' ${shellQuote(hostsPath)} \\`,
      `  env SSL_CERT_FILE=${shellQuote(pki.caPath)} NODE_EXTRA_CA_CERTS=${shellQuote(pki.caPath)} "$@"`,
      '',
    ].join('\n'),
  );
  chmodSync(execPath, 0o755);
  // The names resolve in the lab, and only there.
  for (const s of SIDES) {
    const got = execFileSync(execPath, ['getent', 'hosts', LAB_NAMES[s]], { encoding: 'utf8' }).trim().split(/\s+/)[0];
    if (got !== addresses[s]) throw new Error(`WAN lab: ${LAB_NAMES[s]} resolves to ${got ?? 'nothing'} under lab-exec, not ${addresses[s]}`);
  }

  const tls = { certPath: pki.certPath, keyPath: pki.keyPath, host: 'localhost' };
  let src: BenchRegistry | undefined;
  let dst: BenchRegistry | undefined;
  try {
    [src, dst] = await Promise.all([
      BenchRegistry.start('source', () => startDistribution({ tls })),
      BenchRegistry.start('destination', () => startDistribution({ tls })),
    ]);
  } catch (e) {
    await Promise.all([src?.stop(), dst?.stop()]);
    dir.remove();
    throw e;
  }
  log(`WAN lab: ${LAB_NAMES.source} → ${addresses.source}:443 → ${src.host}; ${LAB_NAMES.destination} → ${addresses.destination}:443 → ${dst.host} (TLS, test CA ${pki.caPath})`);
  const registries = { source: src, destination: dst };
  let current: WanLink | undefined;

  return {
    names: LAB_NAMES,
    addresses,
    pki,
    execPath,
    hostsPath,
    src,
    dst,
    srcClient: new OciClient({ host: src.host, scheme: 'https', timeoutMs: 600_000 }),
    dstClient: new OciClient({ host: dst.host, scheme: 'https', timeoutMs: 600_000 }),
    wrap: (c) => ({ ...c, cmd: execPath, args: [c.cmd, ...c.args] }),
    async startLink(settings) {
      if (current) await current.stop();
      const routes: Route[] = SIDES.map((s) => {
        const port = Number(registries[s].host.split(':').pop());
        return { name: s, listenHost: addresses[s], listenPort: 443, targetHost: '127.0.0.1', targetPort: port };
      });
      current = await forkProxy(routes, settings);
      log(`WAN lab: link RTT ${settings.rttMs} ms${settings.bandwidthMbps ? `, ${settings.bandwidthMbps} Mbit/s per direction (${settings.bandwidthScope ?? 'link'})` : ''}, window ${settings.window ?? 'tcp'} (proxy pid ${current.pid})`);
      return current;
    },
    async stop() {
      await current?.stop();
      await Promise.all([src.stop(), dst.stop()]);
      dir.remove();
    },
  };
}

async function forkProxy(routes: Route[], settings: LinkSettings): Promise<WanLink> {
  const child: ChildProcess = fork(PROXY_SCRIPT, [JSON.stringify({ routes, model: linkModel(settings) })], {
    execArgv: [],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const pid = child.pid!;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  await new Promise<void>((resolve, reject) => {
    const onMessage = (m: { ready?: boolean; error?: string }) => {
      if (m.ready) resolve();
      else if (m.error) reject(new Error(`latency proxy: ${m.error}`));
    };
    child.on('message', onMessage);
    child.once('exit', (code) => reject(new Error(`latency proxy exited (${code}) before it was ready`)));
  });
  // The network is not on the tools' CPU: the proxy's timers must not wait behind a busy tool.
  try {
    setPriority(pid, -10);
  } catch {
    // not allowed: it runs at the default priority
  }
  let seq = 0;
  return {
    settings,
    pid,
    counters: () =>
      new Promise((resolve, reject) => {
        const id = ++seq;
        const timer = setTimeout(() => reject(new Error('latency proxy did not answer')), 5000);
        const on = (m: { id?: number; counters?: Record<Side, RouteCounters> }) => {
          if (m.id !== id || !m.counters) return;
          clearTimeout(timer);
          child.off('message', on);
          resolve(m.counters);
        };
        child.on('message', on);
        child.send({ cmd: 'counters', id });
      }),
    cpuSeconds: () => processCpuSeconds(pid),
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.disconnect();
      const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
      await exited;
      clearTimeout(timer);
    },
  };
}

export interface ProbeResult {
  side: Side;
  /** TCP + TLS handshakes, to the TLS session being up: two round trips on the lab's link. */
  connect_ms: number;
  /** `GET /v2/` round trips on that connection, in order. */
  request_ms: number[];
  /** What the registry offers by ALPN when asked for h2 and http/1.1. */
  alpn: string | false;
  /** The certificate chain verified against the lab's CA for the lab's name. */
  authorized: boolean;
}

/**
 * A ping through the lab: a TLS connection to `name` at `address`:443 (the latency proxy) and a
 * few requests on it, each timed. On a link of RTT r: connect ≈ 2r (TCP, TLS 1.3), request ≈ r.
 */
export async function probeLab(side: Side, address: string, caPath: string, requests = 5): Promise<ProbeResult> {
  const ca = readFileSync(caPath, 'utf8');
  const name = LAB_NAMES[side];
  const alpn = await new Promise<string | false>((resolve, reject) => {
    const s = tlsConnect({ host: address, port: 443, servername: name, ca: [ca], ALPNProtocols: ['h2', 'http/1.1'] }, () => {
      resolve(s.alpnProtocol ?? false);
      s.destroy();
    });
    s.on('error', reject);
  });
  const t0 = performance.now();
  const socket = await new Promise<TLSSocket>((resolve, reject) => {
    const s = tlsConnect({ host: address, port: 443, servername: name, ca: [ca], ALPNProtocols: ['http/1.1'] }, () => resolve(s));
    s.on('error', reject);
  });
  const connect_ms = performance.now() - t0;
  const authorized = socket.authorized;
  const request_ms: number[] = [];
  try {
    for (let i = 0; i < requests; i++) {
      const t = performance.now();
      await roundTrip(socket, name);
      request_ms.push(performance.now() - t);
    }
  } finally {
    socket.destroy();
  }
  return { side, connect_ms, request_ms, alpn, authorized };
}

/** One `GET /v2/` on a kept-alive HTTP/1.1 connection; resolves when the whole answer is read. */
function roundTrip(socket: TLSSocket, name: string): Promise<void> {
  return new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0);
    const onData = (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      const head = buf.subarray(0, end).toString('latin1');
      const length = Number(/\r\ncontent-length:\s*(\d+)/i.exec(head)?.[1] ?? NaN);
      if (!/^HTTP\/1\.1 200 /.test(head) || !Number.isFinite(length)) return fail(new Error(`probe: unexpected answer ${head.split('\r\n')[0]}`));
      if (buf.length - end - 4 < length) return;
      socket.off('data', onData);
      socket.off('error', fail);
      resolve();
    };
    const fail = (e: Error) => {
      socket.off('data', onData);
      socket.off('error', fail);
      reject(e);
    };
    socket.on('data', onData);
    socket.on('error', fail);
    socket.write(`GET /v2/ HTTP/1.1\r\nHost: ${name}\r\nUser-Agent: ferry-wan-probe\r\n\r\n`);
  });
}
