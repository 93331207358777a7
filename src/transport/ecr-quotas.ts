// Amazon ECR's API quotas as token buckets, one per account, Region and API action, shared by
// every caller of this process (every job of an agent): the AWS SDK's calls (a middleware on
// every ECR client, src/auth/cloud/ecr.ts) and the Docker Registry API requests to an ECR host,
// which ECR serves with the same actions and counts against the same quotas (a manifest PUT is
// a PutImage; src/transport/flow.ts takes those tokens). A ThrottlingException (or a 429 from the
// registry endpoint) halves that action's pace, at most once a window, and pauses it for every
// caller; good answers bring it back towards the documented figure.
import { AbortedError } from '../errors.ts';
import type { Logger } from '../log/logger.ts';
import { parseEcrHost } from '../auth/cloud/hosts.ts';
import { systemClock, type Clock } from './clock.ts';
import { ThrottleState } from './throttle-state.ts';

/**
 * Requests per second per account and Region: Amazon ECR's default service quotas
 * (https://docs.aws.amazon.com/AmazonECR/latest/userguide/service-quotas.html, "Rate of …
 * requests"; docs/faults.md quotes them). DescribeRepositories and CreateRepository have no
 * figure there; ferry starts them at 20/s and learns any lower one from ThrottlingException.
 */
export const ECR_API_RATES: Readonly<Record<string, number>> = {
  BatchCheckLayerAvailability: 1000,
  BatchGetImage: 2000,
  CompleteLayerUpload: 100,
  GetAuthorizationToken: 500,
  GetDownloadUrlForLayer: 3000,
  InitiateLayerUpload: 100,
  PutImage: 10,
  UploadLayerPart: 500,
  DescribeRepositories: 20,
  CreateRepository: 20,
};

/**
 * ferry paces each action at this share of its quota: spacing requests evenly on this side does
 * not make them arrive evenly (connections open, signing takes its time), and arrivals bunched
 * up over the quota would be refused.
 */
export const QUOTA_HEADROOM = 0.9;
/**
 * A bucket saves up half a second's worth of calls. The first calls of a burst open connections
 * and arrive late, bunched up with the calls paced after them; a smaller burst keeps that bunch
 * within what AWS saves up for the account.
 */
export const BURST_SECONDS = 0.5;
/** A pace cut by throttling never goes below this share of the documented figure (nor below 1/s). */
const MIN_SHARE = 1 / 16;
/** How long an action pauses for everyone after a ThrottlingException (AWS sends no Retry-After). */
const THROTTLE_PAUSE_MS = 1000;

/**
 * The ECR API action behind a Docker Registry API request to an ECR host (AWS: "docker push" and
 * "docker pull" translate to these actions and their quotas). Undefined for requests that map
 * to none (the /v2/ ping, tags, referrers).
 */
export function ecrActionOf(method: string, path: string): string | undefined {
  const m = /^\/v2\/.+?\/(manifests|blobs)\/(uploads\/?)?/.exec(path);
  if (!m) return undefined;
  if (m[1] === 'manifests') return method === 'PUT' ? 'PutImage' : method === 'GET' || method === 'HEAD' ? 'BatchGetImage' : undefined;
  if (m[2] !== undefined) {
    if (method === 'POST') return 'InitiateLayerUpload';
    if (method === 'PATCH') return 'UploadLayerPart';
    if (method === 'PUT') return 'CompleteLayerUpload';
    return undefined;
  }
  return method === 'HEAD' ? 'BatchCheckLayerAvailability' : method === 'GET' ? 'GetDownloadUrlForLayer' : undefined;
}

/**
 * A token bucket: `rate` tokens a second, at most BURST_SECONDS' worth saved up. Takers wait in
 * line; one pump hands the tokens out as they come, at the pace of the moment (a cut or a pause
 * holds everyone already waiting, not only those who come later).
 */
export class TokenBucket {
  readonly nominal: number;
  rate: number;
  private tokens: number;
  private at: number;
  pausedUntil = 0;
  private lastCut = Number.NEGATIVE_INFINITY;
  private lastGrowth: number;
  private readonly line: Array<{ go: () => void }> = [];
  private pumping = false;

  constructor(rate: number, now: number) {
    this.nominal = rate;
    this.rate = rate;
    this.tokens = this.capacity;
    this.at = now;
    this.lastGrowth = now;
  }

  private get capacity(): number {
    return Math.max(1, this.rate * BURST_SECONDS);
  }

  private refill(now: number): void {
    this.tokens = Math.min(this.capacity, this.tokens + ((now - this.at) * this.rate) / 1000);
    this.at = now;
  }

  /** Wait for a token (and for a pause to end). */
  take(clock: Clock, signal?: AbortSignal): Promise<void> {
    const now = clock.now();
    if (this.line.length === 0 && now >= this.pausedUntil) {
      this.refill(now);
      if (this.tokens >= 1) {
        this.tokens -= 1;
        return Promise.resolve();
      }
    }
    return new Promise((resolve, reject) => {
      if (signal?.aborted) return reject(new AbortedError());
      const place = {
        go: () => {
          signal?.removeEventListener('abort', onAbort);
          resolve();
        },
      };
      const onAbort = () => {
        const i = this.line.indexOf(place);
        if (i >= 0) this.line.splice(i, 1);
        reject(new AbortedError());
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.line.push(place);
      void this.pump(clock);
    });
  }

  private async pump(clock: Clock): Promise<void> {
    if (this.pumping) return;
    this.pumping = true;
    try {
      while (this.line.length > 0) {
        const now = clock.now();
        if (now < this.pausedUntil) {
          await clock.sleep(this.pausedUntil - now);
          continue;
        }
        this.refill(now);
        if (this.tokens >= 1) {
          this.tokens -= 1;
          this.line.shift()!.go();
          continue;
        }
        await clock.sleep(Math.max(1, ((1 - this.tokens) * 1000) / this.rate));
      }
    } finally {
      this.pumping = false;
    }
  }

  /** Throttled: pause for everyone, and halve the pace (at most once a window). True when the pace was cut. */
  throttled(now: number, windowMs: number, pauseMs: number): boolean {
    this.refill(now);
    if (now + pauseMs > this.pausedUntil) this.pausedUntil = now + pauseMs;
    // What was saved up is gone: the service said so.
    this.tokens = Math.min(this.tokens, 0);
    if (now - this.lastCut < windowMs) return false;
    this.lastCut = now;
    this.lastGrowth = now;
    this.rate = Math.max(1, this.nominal * MIN_SHARE, this.rate / 2);
    return true;
  }

  /** A good answer: after a window without throttling, the pace grows by a tenth of its full figure. */
  succeeded(now: number, windowMs: number): void {
    if (this.rate >= this.nominal || now - this.lastGrowth < windowMs || now - this.lastCut < windowMs) return;
    this.refill(now);
    this.lastGrowth = now;
    this.rate = Math.min(this.nominal, this.rate + this.nominal / 10);
  }
}

export interface EcrQuotaStats {
  /** The registry host the quotas belong to (`<account>.dkr.ecr.<region>.amazonaws.com`). */
  registry: string;
  throttled: number;
  pausedMs: number;
}

export interface EcrQuotasOptions {
  /** Requests per second by action, instead of the documented figures (tests); paced at QUOTA_HEADROOM of them too. */
  rates?: Partial<Record<string, number>>;
  clock?: Clock;
  /** The least time between two cuts of one action's pace, and between two growths. */
  windowMs?: number;
  /** After this long without throttling, a throttled account counts as recovered (one log line). */
  recoverAfterMs?: number;
}

/** An ECR registry: its host (`<account>.dkr.ecr.<region>.amazonaws.com`), or its account and Region (an SDK call). */
export type EcrRegistry = string | { account: string; region: string };

interface AccountQuotas {
  registry: string;
  buckets: Map<string, TokenBucket>;
  state: ThrottleState;
}

/** The buckets of every account and Region this process has called. */
export class EcrQuotas {
  private readonly rates: Record<string, number>;
  private readonly clock: Clock;
  private readonly windowMs: number;
  private readonly recoverAfterMs: number;
  private readonly accounts = new Map<string, AccountQuotas>();

  constructor(opts: EcrQuotasOptions = {}) {
    this.rates = { ...ECR_API_RATES } as Record<string, number>;
    for (const [action, rate] of Object.entries(opts.rates ?? {})) if (rate !== undefined) this.rates[action] = rate;
    this.clock = opts.clock ?? systemClock;
    this.windowMs = opts.windowMs ?? 1000;
    this.recoverAfterMs = opts.recoverAfterMs ?? 30_000;
  }

  /** The bucket for `action` of the account and Region of an ECR registry host; undefined for other hosts and unlisted actions. */
  bucket(registry: EcrRegistry, action: string): TokenBucket | undefined {
    const rate = this.rates[action];
    const account = this.account(registry);
    if (rate === undefined || !account) return undefined;
    let b = account.buckets.get(action);
    if (!b) {
      b = new TokenBucket(rate * QUOTA_HEADROOM, this.clock.now());
      account.buckets.set(action, b);
    }
    return b;
  }

  /** Wait for `action`'s token in the registry's account and Region (at once for other hosts). */
  async take(registry: EcrRegistry, action: string, signal?: AbortSignal): Promise<void> {
    await this.bucket(registry, action)?.take(this.clock, signal);
  }

  /** ECR refused `action` for its rate (ThrottlingException, or 429 on the registry endpoint). */
  throttled(registry: EcrRegistry, action: string, logger: Logger | undefined): void {
    const b = this.bucket(registry, action);
    if (!b) return;
    const now = this.clock.now();
    const account = this.account(registry)!;
    const before = b.pausedUntil;
    b.throttled(now, this.windowMs, THROTTLE_PAUSE_MS);
    account.state.paused(Math.max(0, b.pausedUntil - Math.max(before, now)));
    account.state.throttled(now, logger, { registry: account.registry, action, pace_per_s: round(b.rate) }, 'Amazon ECR is throttling ferry\'s API calls: pacing them for every job of this process');
  }

  /** A good answer to `action`. */
  succeeded(registry: EcrRegistry, action: string, logger: Logger | undefined): void {
    const b = this.bucket(registry, action);
    if (!b) return;
    const now = this.clock.now();
    b.succeeded(now, this.windowMs);
    this.account(registry)!.state.answered(now, this.recoverAfterMs, logger, { registry: this.account(registry)!.registry }, 'Amazon ECR no longer throttles ferry\'s API calls');
  }

  stats(): EcrQuotaStats[] {
    return [...this.accounts.values()].filter((a) => a.state.events > 0).map((a) => ({ registry: a.registry, throttled: a.state.events, pausedMs: a.state.pausedMs }));
  }

  private account(registry: EcrRegistry): AccountQuotas | undefined {
    let id: { account: string; region: string; host: string };
    if (typeof registry === 'string') {
      const host = parseEcrHost(registry);
      if (!host) return undefined;
      id = { account: host.account, region: host.region, host: host.host };
    } else id = { ...registry, host: `${registry.account}.dkr.ecr.${registry.region}.amazonaws.com` };
    const key = `${id.account}|${id.region}`;
    let a = this.accounts.get(key);
    if (!a) {
      a = { registry: id.host, buckets: new Map(), state: new ThrottleState() };
      this.accounts.set(key, a);
    }
    return a;
  }
}

function round(n: number): number {
  return Math.round(n * 10) / 10;
}

let shared: EcrQuotas | undefined;

/** The process's buckets: every ECR client and every transport of this process takes its tokens here. */
export function sharedEcrQuotas(): EcrQuotas {
  return (shared ??= new EcrQuotas());
}
