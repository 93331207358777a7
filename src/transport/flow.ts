// Flow control per registry host, shared by every request of the process (every job of an
// agent): HttpTransport admits each request here before it is sent, on undici or on ferry's own
// connections, and reports its answer.
//
// - A 429 or 503 with Retry-After pauses the host for everyone, not only for the request that
//   got it.
// - AIMD concurrency: the host's limit (blob transfers and existence checks at once,
//   src/copy/limits.ts) starts at the ceiling (`--concurrency`), halves on 429/503/timeouts (at
//   most once a window, and only for requests sent after the last cut), and grows by one per
//   window of good answers. Floor 1. Without a `--concurrency`, a host's ceiling fits how it is
//   reached: 8 over HTTP/1.1, where a transfer holds a connection (and a handshake), 64 over
//   HTTP/2, where it is a stream on a few shared connections, so that a far registry's round
//   trips are waited for at once rather than eight at a time (docs/performance.md, "Over a WAN").
// - A request rate: concurrency alone does not bound the rate when answers take milliseconds,
//   so the first throttled answer also sets a pace — the answers the host let through since the
//   pace was last set, over that time (the first time including the pause it asked for, which is
//   what the burst cost), less 5 % — and requests then go out evenly spaced. While it holds
//   requests back and nothing is throttled, the pace grows by a tenth a window up to the granted
//   rate, and by 5 % a window past it.
// - Docker Hub's `ratelimit-limit` / `ratelimit-remaining`: once no pull is left, a manifest GET
//   fails at once with REGISTRY_UNAVAILABLE naming the limit and when it frees up, instead of
//   being sent and retried.
// - ECR hosts: each request also takes a token of the ECR API action it counts as
//   (src/transport/ecr-quotas.ts), from the buckets the SDK's calls use too.
import { RegistryError } from '../errors.ts';
import type { Logger } from '../log/logger.ts';
import { systemClock, type Clock } from './clock.ts';
import { ecrActionOf, sharedEcrQuotas, type EcrQuotas } from './ecr-quotas.ts';
import { DEFAULT_RETRY, parseRetryAfter } from './retry.ts';
import { ThrottleState } from './throttle-state.ts';

export interface FlowOptions {
  /** The most blob transfers (and checks) at once towards one registry: `--concurrency` (default 8). */
  ceiling?: number;
  /** The same for a registry reached over HTTP/2 (default: `ceiling`; the transport's auto setting: 32). */
  multiplexedCeiling?: number;
  logger?: Logger | undefined;
  clock?: Clock;
  /** The least time between two cuts of a host's limits, and between two growths. */
  windowMs?: number;
  /** After this long without a throttled answer, a host counts as recovered (one info line). */
  recoverAfterMs?: number;
  /** The longest Retry-After that pauses a host for everyone (longer ones fail their request). */
  maxPauseMs?: number;
  /** The ECR API buckets (default: the process's, shared with the SDK's calls). */
  ecr?: EcrQuotas;
}

/** What became of an admitted request: its answer's status and headers, a timeout, or another failure. */
export type FlowOutcome = { status: number; headers: Record<string, string | string[] | undefined> } | 'timeout' | 'failed';

/** An admitted request, to be settled with its outcome. */
export interface FlowTicket {
  readonly host: string;
  /** When it was admitted (the flow's clock). */
  readonly at: number;
  /** The ECR API action it counts as, on an ECR host. */
  readonly action: string | undefined;
}

export interface RegistryFlowStats {
  registry: string;
  /** Throttled answers (429, 503, ECR's ThrottlingException) so far. */
  throttled: number;
  /** The host's current concurrency limit. */
  concurrency: number;
  /** Time the host was paused for everyone, in all. */
  pausedMs: number;
  /** The learned request rate (requests/s), if throttling set one. */
  pace: number | undefined;
}

/** The pace is set this far under the rate the host granted: spaced requests arrive a little bunched. */
const GRANTED_SHARE = 0.95;
/** The pace never goes below one request a second. */
const MIN_RATE = 1;
/** A host with nothing in flight for this long starts measuring its granted rate afresh. */
const IDLE_MS = 2000;
/** Without Retry-After, an exhausted pull limit is taken at its word for this long before a manifest GET may try again. */
const PULL_LIMIT_RECHECK_MS = 60_000;
const MANIFEST_PATH = /^\/v2\/.+\/manifests\/[^/]+$/;

interface PullLimit {
  limit: number;
  remaining: number;
  windowS: number | undefined;
  seenAt: number;
  /** Wall-clock time (Date.now) the answer came, for the message. */
  seenAtWall: number;
  retryAfterMs: number | undefined;
  /** Until then, manifest GETs fail without being sent. */
  blockedUntil: number;
  warned: boolean;
}

class HostFlow {
  readonly host: string;
  /** The most at once: the process's ceiling for how this host is reached. */
  ceiling: number;
  limit: number;
  /** Requests per second; Infinity until throttling sets a pace. */
  rate = Number.POSITIVE_INFINITY;
  /** When the next request may go out, at the pace. */
  nextAt = 0;
  pausedUntil = 0;
  lastCut = Number.NEGATIVE_INFINITY;
  lastGrowth = 0;
  /** The pace held a request back since it last grew. */
  paced = false;
  /** Measuring the granted rate: since when, how many good answers, and whether a cut happened since. */
  epochStart: number | undefined;
  epochOk = 0;
  epochCut = false;
  /**
   * The epoch the last cut closed: its good answers (those still in flight at the cut are
   * counted as they come in), its length, and the pace before the cut.
   */
  measured: { ok: number; spanMs: number; before: number } | undefined;
  /** The rate the host granted, as last measured: the pace grows quickly up to it, slowly past it. */
  granted: number | undefined;
  inFlight = 0;
  lastActive = 0;
  pull: PullLimit | undefined;
  readonly state = new ThrottleState();

  constructor(host: string, ceiling: number) {
    this.host = host;
    this.ceiling = ceiling;
    this.limit = ceiling;
  }
}

export class FlowControl {
  readonly ceiling: number;
  readonly multiplexedCeiling: number;
  private readonly log: Logger | undefined;
  private readonly clock: Clock;
  private readonly windowMs: number;
  private readonly recoverAfterMs: number;
  private readonly maxPauseMs: number;
  private readonly ecr: EcrQuotas;
  private readonly hosts = new Map<string, HostFlow>();

  constructor(opts: FlowOptions = {}) {
    this.ceiling = Math.max(1, Math.floor(opts.ceiling ?? 8));
    this.multiplexedCeiling = Math.max(1, Math.floor(opts.multiplexedCeiling ?? this.ceiling));
    this.log = opts.logger;
    this.clock = opts.clock ?? systemClock;
    this.windowMs = opts.windowMs ?? 1000;
    this.recoverAfterMs = opts.recoverAfterMs ?? 30_000;
    this.maxPauseMs = opts.maxPauseMs ?? DEFAULT_RETRY.maxRetryAfterMs;
    this.ecr = opts.ecr ?? sharedEcrQuotas();
  }

  private flowOf(host: string): HostFlow {
    const key = host.toLowerCase();
    let h = this.hosts.get(key);
    if (!h) {
      h = new HostFlow(key, this.ceiling);
      this.hosts.set(key, h);
    }
    return h;
  }

  /** The most transfers at once towards any one host: what a process-wide limit needs to allow. */
  get globalCeiling(): number {
    return Math.max(this.ceiling, this.multiplexedCeiling);
  }

  /**
   * `host` is reached over HTTP/2 (the transport learned it from the first connection): its
   * ceiling is the multiplexed one. A limit that throttling has cut stays where it is.
   */
  multiplexed(host: string): void {
    const h = this.flowOf(host);
    if (h.ceiling === this.multiplexedCeiling) return;
    if (h.limit >= h.ceiling) h.limit = this.multiplexedCeiling;
    h.ceiling = this.multiplexedCeiling;
  }

  /** The concurrency limit for `host` now (the ceiling for a host not heard from). */
  concurrency(host: string): number {
    const h = this.hosts.get(host.toLowerCase());
    return h ? Math.max(1, Math.min(h.ceiling, Math.floor(h.limit))) : this.ceiling;
  }

  /** The pace for `host` in requests a second, if throttling set one. */
  pace(host: string): number | undefined {
    const rate = this.hosts.get(host.toLowerCase())?.rate;
    return rate !== undefined && Number.isFinite(rate) ? rate : undefined;
  }

  /**
   * Wait until a request to `url` may go: past the host's pause, at its pace, with its ECR token.
   * Rejects at once for a manifest GET while the host's pull limit is used up.
   */
  async admit(url: URL, method: string, signal?: AbortSignal): Promise<FlowTicket> {
    const h = this.flowOf(url.host);
    const start = this.clock.now();
    // The granted rate is measured over busy time: after idling (not a pause the host asked for), afresh.
    if (h.epochStart === undefined || (h.inFlight === 0 && start - h.lastActive > IDLE_MS && start >= h.pausedUntil)) {
      h.epochStart = start;
      h.epochOk = 0;
      h.epochCut = false;
    }
    if (method === 'GET' && MANIFEST_PATH.test(url.pathname)) this.checkPullLimit(h, start);
    for (;;) {
      const now = this.clock.now();
      if (now < h.pausedUntil) {
        await this.clock.sleep(h.pausedUntil - now, signal);
        continue;
      }
      if (Number.isFinite(h.rate)) {
        const slot = Math.max(now, h.nextAt);
        h.nextAt = slot + 1000 / h.rate;
        if (slot > now) {
          h.paced = true;
          await this.clock.sleep(slot - now, signal);
          // A pause that began while this request waited for its turn holds it too.
          if (this.clock.now() < h.pausedUntil) continue;
        }
      }
      break;
    }
    const action = ecrActionOf(method, url.pathname);
    if (action) await this.ecr.take(h.host, action, signal);
    const at = this.clock.now();
    h.inFlight += 1;
    h.lastActive = at;
    return { host: h.host, at, action };
  }

  /** What became of an admitted request. */
  settle(ticket: FlowTicket, outcome: FlowOutcome): void {
    const h = this.flowOf(ticket.host);
    const now = this.clock.now();
    h.inFlight = Math.max(0, h.inFlight - 1);
    h.lastActive = now;
    if (outcome === 'failed') return;
    if (outcome === 'timeout') {
      this.cut(h, now, ticket.at, undefined);
      return;
    }
    const { status, headers } = outcome;
    this.notePullLimit(h, headers, now);
    const retryAfter = status === 429 || status === 503 ? parseRetryAfter(headers['retry-after']) : undefined;
    if (status === 429 || (status === 503 && retryAfter !== undefined)) {
      this.throttled(h, now, ticket.at, status, retryAfter);
      if (ticket.action) this.ecr.throttled(h.host, ticket.action, this.log);
    } else if (status === 503) {
      // Overloaded or failing, without saying for how long: fewer at once, no pace.
      this.cut(h, now, ticket.at, undefined);
    } else if (status < 500) {
      this.answered(h, now, ticket.at);
      if (ticket.action) this.ecr.succeeded(h.host, ticket.action, this.log);
    }
  }

  /** A response body from `host` stalled or dripped after its head had come: a timeout, for the limits. */
  timedOut(host: string): void {
    const h = this.flowOf(host);
    this.cut(h, this.clock.now(), Number.POSITIVE_INFINITY, undefined);
  }

  /** Per-registry counters and limits, for the metrics (hosts this process has been throttled by or limited). */
  stats(): RegistryFlowStats[] {
    const out = new Map<string, RegistryFlowStats>();
    for (const h of this.hosts.values()) {
      if (h.state.events === 0 && h.limit >= h.ceiling && !Number.isFinite(h.rate)) continue;
      out.set(h.host, { registry: h.host, throttled: h.state.events, concurrency: this.concurrency(h.host), pausedMs: h.state.pausedMs, pace: this.pace(h.host) });
    }
    for (const e of this.ecr.stats()) {
      const s = out.get(e.registry) ?? { registry: e.registry, throttled: 0, concurrency: this.concurrency(e.registry), pausedMs: 0, pace: this.pace(e.registry) };
      out.set(e.registry, { ...s, throttled: s.throttled + e.throttled, pausedMs: s.pausedMs + e.pausedMs });
    }
    return [...out.values()];
  }

  private throttled(h: HostFlow, now: number, admittedAt: number, status: number, retryAfter: number | undefined): void {
    if (retryAfter !== undefined && retryAfter <= this.maxPauseMs) this.pause(h, now, retryAfter);
    this.cut(h, now, admittedAt, { retryAfter });
    h.state.throttled(
      now,
      this.log,
      { registry: h.host, status, ...(retryAfter !== undefined ? { retry_after_s: retryAfter / 1000 } : {}), concurrency: this.concurrency(h.host), pace_per_s: roundRate(h.rate) },
      'registry is throttling: pausing and pacing requests to it for every job of this process',
    );
  }

  /**
   * Halve the concurrency and set the pace from the granted rate: at most once a window, and not
   * again for requests sent before the last cut (they saw the old limits).
   */
  private cut(h: HostFlow, now: number, admittedAt: number, throttle: { retryAfter: number | undefined } | undefined): void {
    if (admittedAt <= h.lastCut || now - h.lastCut < this.windowMs) return;
    h.limit = Math.max(1, Math.floor(Math.min(h.limit, h.ceiling) / 2));
    h.lastCut = now;
    h.lastGrowth = now;
    // A timeout says nothing about the rate; a throttled answer does.
    if (!throttle) return;
    const start = h.epochStart ?? now;
    const elapsed = Math.max(1, now - start + (h.epochCut ? 0 : (throttle.retryAfter ?? this.windowMs)));
    h.measured = { ok: h.epochOk, spanMs: elapsed, before: h.rate };
    h.granted = (h.epochOk * 1000) / elapsed;
    h.rate = Math.max(MIN_RATE, Math.min(h.rate, h.granted * GRANTED_SHARE));
    h.epochStart = now;
    h.epochOk = 0;
    h.epochCut = true;
  }

  private pause(h: HostFlow, now: number, ms: number): void {
    const until = now + ms;
    if (until <= h.pausedUntil) return;
    h.state.paused(until - Math.max(h.pausedUntil, now));
    h.pausedUntil = until;
    // Turns taken before the pause are void: the pace starts again when it ends.
    h.nextAt = until;
  }

  private answered(h: HostFlow, now: number, admittedAt: number): void {
    const m = h.measured;
    if (m && admittedAt <= h.lastCut) {
      // Sent before the last cut and let through: part of what the host granted then.
      m.ok += 1;
      h.granted = (m.ok * 1000) / m.spanMs;
      h.rate = Math.max(h.rate, Math.min(m.before, h.granted * GRANTED_SHARE));
    } else h.epochOk += 1;
    h.state.answered(now, this.recoverAfterMs, this.log, { registry: h.host, concurrency: this.concurrency(h.host), pace_per_s: roundRate(h.rate) }, 'registry no longer throttling');
    if (now - h.lastCut < this.windowMs || now - h.lastGrowth < this.windowMs) return;
    h.lastGrowth = now;
    if (h.limit < h.ceiling) h.limit += 1;
    if (Number.isFinite(h.rate) && h.paced) {
      // Quickly back to the rate last granted, then gently past it (the registry may grant more now).
      const below = h.granted !== undefined && h.rate < h.granted;
      h.rate = below ? Math.min(h.granted!, h.rate + Math.max(1, h.rate * 0.1)) : h.rate + Math.max(0.5, h.rate * 0.05);
      h.paced = false;
    }
  }

  private notePullLimit(h: HostFlow, headers: Record<string, string | string[] | undefined>, now: number): void {
    const remaining = leadingInt(headers['ratelimit-remaining']);
    if (remaining === undefined) return;
    const limitHeader = first(headers['ratelimit-limit']);
    const limit = leadingInt(limitHeader) ?? h.pull?.limit ?? remaining;
    const windowS = windowOf(limitHeader) ?? windowOf(first(headers['ratelimit-remaining']));
    const retryAfterMs = parseRetryAfter(headers['retry-after']);
    const warned = h.pull?.warned ?? false;
    h.pull = {
      limit,
      remaining,
      windowS,
      seenAt: now,
      seenAtWall: Date.now(),
      retryAfterMs,
      blockedUntil: remaining <= 0 ? now + (retryAfterMs ?? PULL_LIMIT_RECHECK_MS) : 0,
      warned: warned && remaining <= limit / 10,
    };
    if (remaining > 0 && remaining <= limit / 10 && !warned) {
      h.pull.warned = true;
      this.log?.warn({ registry: h.host, pulls_left: remaining, pull_limit: limit, window_s: windowS }, 'registry pull limit nearly used up');
    }
  }

  private checkPullLimit(h: HostFlow, now: number): void {
    const p = h.pull;
    if (!p || p.remaining > 0 || now >= p.blockedUntil) return;
    throw pullLimitError(h.host, p.limit, p.windowS, p.seenAtWall, p.retryAfterMs);
  }
}

/**
 * A 429 that says the pull limit is used up (`ratelimit-remaining: 0`, or Docker Hub's "pull
 * rate limit" message): the error to fail with at once, since retrying cannot help for hours.
 */
export function pullLimitExhausted(host: string, status: number, headers: Record<string, string | string[] | undefined>, message: string): RegistryError | undefined {
  if (status !== 429) return undefined;
  const remaining = leadingInt(headers['ratelimit-remaining']);
  if (remaining !== 0 && !/pull rate limit/i.test(message)) return undefined;
  const limitHeader = first(headers['ratelimit-limit']);
  return pullLimitError(host, leadingInt(limitHeader), windowOf(limitHeader) ?? windowOf(first(headers['ratelimit-remaining'])), Date.now(), parseRetryAfter(headers['retry-after']));
}

function pullLimitError(host: string, limit: number | undefined, windowS: number | undefined, seenAt: number, retryAfterMs: number | undefined): RegistryError {
  const per = windowS !== undefined ? ` per ${formatSpan(windowS)}` : '';
  const what = limit !== undefined ? `${limit} pulls${per}` : 'its pull limit';
  let when: string;
  if (retryAfterMs !== undefined) when = `it said to try again after ${new Date(seenAt + retryAfterMs).toISOString()}`;
  else if (windowS !== undefined) when = `pulls free up as earlier ones leave the rolling ${formatSpan(windowS)} window, all of them by ${new Date(seenAt + windowS * 1000).toISOString()} at the latest`;
  else when = 'it did not say when the limit resets';
  return new RegistryError(
    'REGISTRY_UNAVAILABLE',
    `${host}: the pull limit is used up (${what}, none left): ${when}. Pull with an account that has a higher limit (registry credentials), or through a mirror`,
    { status: 429, retryable: false, registryCodes: ['TOOMANYREQUESTS'] },
  );
}

function first(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v;
}

/** `100;w=21600` → 100. */
function leadingInt(v: string | string[] | undefined): number | undefined {
  const m = /^\s*(\d{1,12})/.exec(first(v) ?? '');
  return m ? Number(m[1]) : undefined;
}

/** `100;w=21600` → 21600 (seconds). */
function windowOf(v: string | undefined): number | undefined {
  const m = /;\s*w=(\d{1,12})/.exec(v ?? '');
  return m ? Number(m[1]) : undefined;
}

function formatSpan(seconds: number): string {
  if (seconds % 3600 === 0) return `${seconds / 3600} h`;
  if (seconds % 60 === 0) return `${seconds / 60} min`;
  return `${seconds} s`;
}

function roundRate(rate: number): number | null {
  return Number.isFinite(rate) ? Math.round(rate * 10) / 10 : null;
}
