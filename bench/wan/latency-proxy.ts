// The WAN lab's network: a TCP proxy that makes a loopback connection behave like one across a
// network of a given round-trip time. This machine's kernel has no netem (nor fq), so the delay
// is applied here, in user space, to every byte in each direction:
//
//   - each direction is delayed by RTT/2 (propagation);
//   - the TCP handshake's round trip is included: a client's first bytes leave no earlier than one
//     RTT after it connected (what SYN, SYN-ACK took), so TCP + TLS 1.3 cost two RTTs before the
//     first request, as on a real network (TLS's own round trip is in the bytes themselves);
//   - TCP's congestion window (window 'tcp', the default): a direction starts with an initial
//     window of 10 segments, doubles it every round trip as acknowledgements come back (slow
//     start), up to a receive-window cap, and falls back to the initial window after an idle
//     period (Linux's tcp_slow_start_after_idle). Acknowledgements are clocked by delivery to the
//     receiving socket, so a receiver that does not read closes the window as TCP's would;
//   - optionally a bandwidth cap: a FIFO link that serializes each direction's bytes at a rate,
//     either one link shared by every connection (an install's uplink and downlink) or one per
//     connection.
// What it does not model: loss, reordering, congestion avoidance past the window cap, DNS time.
import { createServer, connect, type AddressInfo, type Server, type Socket } from 'node:net';

export interface LinkModel {
  /** Round-trip time in ms; each direction is delayed by half of it. */
  rttMs: number;
  /** Bits per second in each direction; undefined: no cap. */
  bandwidthBps?: number | undefined;
  /** 'link' (default): one FIFO link per direction shared by every connection; 'connection': each connection its own. */
  bandwidthScope?: 'link' | 'connection' | undefined;
  /** 'tcp' (default): initial window, slow start, window cap, restart after idle; 'none': bytes are only delayed. */
  window?: 'tcp' | 'none' | undefined;
  /** The window's cap in bytes (default 4 MiB: about what Linux's autotuned receive buffers allow). */
  maxWindowBytes?: number | undefined;
}

export interface Route {
  /** Where the proxy listens (e.g. 127.77.3.1:443). */
  listenHost: string;
  listenPort: number;
  /** Where it forwards to (the registry). */
  targetHost: string;
  targetPort: number;
  /** A name for the counters. */
  name: string;
}

export interface RouteCounters {
  /** Connections accepted since the start. */
  connections: number;
  /** Bytes delivered client → server and server → client. */
  bytesUp: number;
  bytesDown: number;
}

export interface LatencyProxy {
  routes: Array<Route & { port: number }>;
  counters(): Record<string, RouteCounters>;
  stop(): Promise<void>;
}

/** Linux: 10 segments of 1448 bytes (1500 MTU, less IP, TCP and timestamp headers). */
export const MSS = 1448;
export const INITIAL_WINDOW = 10 * MSS;
export const DEFAULT_MAX_WINDOW = 4 * 1024 * 1024;
/** Linux's TCP_RTO_MIN: an idle period longer than the RTO (≥ RTT + 200 ms) restarts slow start. */
const RTO_MIN_MS = 200;
/** Bytes read from a sender and not yet let onto the link, before reading from it pauses. */
const PENDING_HIGH = 256 * 1024;

const realNow = () => performance.now();

/** A FIFO link in one direction: each chunk takes its serialization time at the rate. */
export class SerialLink {
  private freeAt = 0;
  private readonly bps: number | undefined;
  constructor(bps: number | undefined) {
    this.bps = bps;
  }
  /** When a chunk of `bytes` put on the link at `t` has left it (its last bit sent). */
  reserve(t: number, bytes: number): number {
    if (!this.bps) return t;
    const start = Math.max(t, this.freeAt);
    this.freeAt = start + (bytes * 8 * 1000) / this.bps;
    return this.freeAt;
  }
}

type InTransit = { due: number; buf: Buffer | null };

/** One direction of one connection: from `from`'s reads to `to`'s writes. */
class Direction {
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private transit: InTransit[] = [];
  private acks: Array<{ at: number; n: number }> = [];
  private unacked = 0;
  private cwnd: number;
  private lastRelease = -Infinity;
  private fromEnded = false;
  private finQueued = false;
  private dead = false;
  private timer: NodeJS.Timeout | undefined;
  private timerAt = Infinity;
  private readonly oneWay: number;
  private readonly rto: number;
  private readonly tcp: boolean;
  private readonly maxWindow: number;
  private readonly from: Socket;
  private readonly to: Socket;
  private readonly link: SerialLink;
  /** Nothing is released before this time (the handshake's round trip). */
  private readonly gate: number;
  private readonly delivered: (n: number) => void;
  private readonly now: () => number;

  constructor(from: Socket, to: Socket, model: LinkModel, link: SerialLink, gate: number, delivered: (n: number) => void, now: () => number) {
    this.now = now;
    this.from = from;
    this.to = to;
    this.link = link;
    this.gate = gate;
    this.delivered = delivered;
    this.oneWay = model.rttMs / 2;
    this.tcp = (model.window ?? 'tcp') === 'tcp';
    this.maxWindow = model.maxWindowBytes ?? DEFAULT_MAX_WINDOW;
    this.cwnd = this.tcp ? INITIAL_WINDOW : Infinity;
    this.rto = model.rttMs + RTO_MIN_MS;
    from.on('data', (chunk: Buffer) => {
      this.pending.push(chunk);
      this.pendingBytes += chunk.length;
      if (this.pendingBytes > PENDING_HIGH) from.pause();
      this.pump();
    });
    from.on('end', () => {
      this.fromEnded = true;
      this.pump();
    });
  }

  /** The sender vanished without a FIN (reset): the receiver learns it one way later. */
  abort(): void {
    if (this.dead) return;
    this.dead = true;
    this.clearTimer();
    setTimeout(() => this.to.destroy(), this.oneWay);
  }

  private clearTimer(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.timerAt = Infinity;
  }

  private pump(): void {
    if (this.dead) return;
    const t = this.now();
    // Deliveries due: write to the receiver; its acknowledgement starts back once the bytes are
    // in the receiving socket (a receiver that does not read delays it, as a closed window would).
    while (this.transit.length && this.transit[0]!.due <= t) {
      const item = this.transit.shift()!;
      if (item.buf === null) {
        this.to.end();
        continue;
      }
      const n = item.buf.length;
      this.to.write(item.buf, () => {
        this.delivered(n);
        this.acks.push({ at: this.now() + this.oneWay, n });
        this.schedule();
      });
    }
    // Acknowledgements back at the sender: the window opens (slow start: by what was acknowledged).
    while (this.acks.length && this.acks[0]!.at <= t) {
      const a = this.acks.shift()!;
      this.unacked -= a.n;
      if (this.tcp) this.cwnd = Math.min(this.maxWindow, this.cwnd + a.n);
    }
    // Release what the window allows onto the link.
    if (t >= this.gate) {
      if (this.tcp && this.unacked === 0 && this.pending.length && t - this.lastRelease > this.rto) {
        this.cwnd = Math.min(this.cwnd, INITIAL_WINDOW); // restart after idle
      }
      while (this.pending.length) {
        const room = this.cwnd - this.unacked;
        if (room <= 0) break;
        let buf = this.pending[0]!;
        if (buf.length > room) {
          this.pending[0] = buf.subarray(room);
          buf = buf.subarray(0, room);
        } else this.pending.shift();
        this.pendingBytes -= buf.length;
        this.unacked += buf.length;
        this.lastRelease = t;
        const sent = this.link.reserve(t, buf.length);
        this.transit.push({ due: sent + this.oneWay, buf });
      }
      if (this.pendingBytes <= PENDING_HIGH / 2 && this.from.isPaused()) this.from.resume();
      if (this.fromEnded && !this.pending.length && !this.finQueued) {
        this.finQueued = true;
        const last = this.transit.length ? this.transit[this.transit.length - 1]!.due : 0;
        this.transit.push({ due: Math.max(t + this.oneWay, last), buf: null });
      }
    }
    this.schedule(t);
  }

  /**
   * Arm the timer for the next thing due. `t` is the time pump() judged the gate by: a timer
   * that fired a hair early left bytes before the gate, so the gate must be waited for again
   * even if the clock has passed it since (judging by a second reading once stranded a
   * ClientHello: skopeo's "TLS handshake timeout", about one connection in a thousand).
   */
  private schedule(t = this.now()): void {
    if (this.dead) return;
    let next = Infinity;
    if (this.transit.length) next = Math.min(next, this.transit[0]!.due);
    if (this.acks.length) next = Math.min(next, this.acks[0]!.at);
    if (this.pending.length || (this.fromEnded && !this.finQueued)) {
      // Before the gate: wait for it. Past it with room in the window: nothing may be left
      // waiting for a timer that is not there, so pump at once (after a pump, this is never so).
      if (t < this.gate) next = Math.min(next, this.gate);
      else if (!this.pending.length || this.cwnd - this.unacked > 0) next = Math.min(next, t);
    }
    if (next === Infinity) return this.clearTimer();
    if (this.timer && this.timerAt <= next) return;
    this.clearTimer();
    this.timerAt = next;
    // setTimeout may fire a little early by performance.now(): pump() re-arms until it is due.
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.timerAt = Infinity;
      this.pump();
    }, Math.max(0, Math.ceil(next - this.now())));
  }
}

/** Start the proxy: one listener per route. */
/** `now`: the clock (default performance.now; tests give a jittery one). */
export async function startLatencyProxy(routes: Route[], model: LinkModel, opts: { now?: () => number } = {}): Promise<LatencyProxy> {
  const now = opts.now ?? realNow;
  if (!(model.rttMs >= 0)) throw new Error(`latency proxy: RTT must be ≥ 0 ms, not ${model.rttMs}`);
  const shared = { up: new SerialLink(model.bandwidthBps), down: new SerialLink(model.bandwidthBps) };
  const perConnection = model.bandwidthScope === 'connection';
  const counters: Record<string, RouteCounters> = {};
  const sockets = new Set<Socket>();
  const servers: Server[] = [];
  const started: Array<Route & { port: number }> = [];
  for (const route of routes) {
    const c = (counters[route.name] = { connections: 0, bytesUp: 0, bytesDown: 0 });
    const server = createServer({ allowHalfOpen: true, pauseOnConnect: false }, (client) => {
      const accepted = now();
      c.connections++;
      const upstream = connect({ host: route.targetHost, port: route.targetPort, allowHalfOpen: true });
      for (const s of [client, upstream]) {
        sockets.add(s);
        s.setNoDelay(true);
        s.on('close', () => sockets.delete(s));
        s.on('error', () => undefined);
      }
      const links = perConnection ? { up: new SerialLink(model.bandwidthBps), down: new SerialLink(model.bandwidthBps) } : shared;
      // Client → server: held until the handshake's round trip is over. Server → client: a server
      // speaks only after it has heard the client, so no gate is needed there.
      const up = new Direction(client, upstream, model, links.up, accepted + model.rttMs, (n) => (c.bytesUp += n), now);
      const down = new Direction(upstream, client, model, links.down, accepted, (n) => (c.bytesDown += n), now);
      client.on('close', (hadError) => {
        if (hadError || !client.readableEnded) up.abort();
      });
      upstream.on('close', (hadError) => {
        if (hadError || !upstream.readableEnded) down.abort();
      });
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(route.listenPort, route.listenHost, () => resolve());
    });
    servers.push(server);
    started.push({ ...route, port: (server.address() as AddressInfo).port });
  }
  return {
    routes: started,
    counters: () => structuredClone(counters),
    async stop() {
      for (const s of sockets) s.destroy();
      await Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
    },
  };
}
