// Flow control per registry host (src/transport/flow.ts) on an injected clock: AIMD concurrency,
// the learned pace, shared pauses, Docker Hub's pull limit, ECR's action buckets, the log lines.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { FlowControl, pullLimitExhausted, type FlowTicket } from '../../src/transport/flow.ts';
import { BURST_SECONDS, EcrQuotas, ecrActionOf, ECR_API_RATES, QUOTA_HEADROOM } from '../../src/transport/ecr-quotas.ts';
import { createLogger } from '../../src/log/logger.ts';
import { FerryError } from '../../src/errors.ts';
import { FakeClock } from '../harness/fake-clock.ts';
import { TransferLimits } from '../../src/copy/limits.ts';
import { HTTP1_CONCURRENCY, HttpTransport } from '../../src/transport/http.ts';
import { AGENT_CONCURRENCY } from '../../src/agent/config.ts';
import { createRng, SUITE_SEED } from '../harness/seed.ts';

const HOST = 'registry.example:5000';
const url = (path = '/v2/app/blobs/sha256:aa') => new URL(`http://${HOST}${path}`);
const ok = { status: 200, headers: {} };
const tooMany = (retryAfter?: number) => ({ status: 429, headers: retryAfter !== undefined ? { 'retry-after': String(retryAfter) } : {} });

function capture(): { logger: ReturnType<typeof createLogger>; lines: () => Array<Record<string, unknown>> } {
  const out: string[] = [];
  const destination = new Writable({
    write(chunk, _enc, cb) {
      out.push(String(chunk));
      cb();
    },
  });
  const logger = createLogger({ level: 'debug', destination: destination as never });
  return { logger, lines: () => out.join('').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>) };
}

/** Await `p`, moving the clock on while it waits (a paced admission sleeps). */
async function drive<T>(clock: FakeClock, p: Promise<T>): Promise<T> {
  let done = false;
  p.then(
    () => (done = true),
    () => (done = true),
  );
  for (let i = 0; i < 100_000 && !done; i++) await clock.advance(10);
  return p;
}

/** A registry that grants `rate` requests a second (a token bucket holding one second's worth) and answers 429 + Retry-After beyond. */
class Registry {
  private tokens: number;
  private at: number;
  accepted = 0;
  refused = 0;
  private readonly rate: number;
  private readonly retryAfterS: number;
  constructor(rate: number, retryAfterS: number, now: number) {
    this.rate = rate;
    this.retryAfterS = retryAfterS;
    this.tokens = rate;
    this.at = now;
  }
  answer(now: number) {
    this.tokens = Math.min(this.rate, this.tokens + ((now - this.at) * this.rate) / 1000);
    this.at = now;
    if (this.tokens >= 1) {
      this.tokens -= 1;
      this.accepted++;
      return ok;
    }
    this.refused++;
    return tooMany(this.retryAfterS);
  }
}

describe('flow control: AIMD and the pace', () => {
  test('against a registry granting 20 requests/s, 16 workers converge: under 5 % refused after the first seconds, the granted rate used', async () => {
    const seed = SUITE_SEED;
    const rng = createRng(`flow-aimd-${seed}`);
    const clock = new FakeClock();
    const flow = new FlowControl({ ceiling: 8, clock, ecr: new EcrQuotas({ clock }) });
    const registry = new Registry(20, 1, clock.now());
    const start = clock.now();
    const late = { accepted: 0, refused: 0 };
    let stop = false;
    const worker = async () => {
      while (!stop) {
        const t = await flow.admit(url(), 'HEAD');
        // 2-8 ms answers: fast enough that concurrency alone would not bound the rate.
        await clock.sleep(2 + rng.int(6));
        const a = registry.answer(t.at);
        if (clock.now() - start > 5000) a.status === 200 ? late.accepted++ : late.refused++;
        flow.settle(t, a);
        if (a.status === 429) await clock.sleep(200 + rng.int(200)); // the caller's own back-off
      }
    };
    const workers = Array.from({ length: 16 }, worker);
    await clock.runUntil(start + 60_000);
    stop = true;
    await clock.runUntil(start + 70_000);
    await Promise.all(workers);
    const share = late.refused / (late.accepted + late.refused);
    const rate = late.accepted / 55;
    assert.ok(share < 0.05, `refused ${(share * 100).toFixed(1)} % after 5 s (seed ${seed}): ${late.refused} of ${late.accepted + late.refused}`);
    assert.ok(rate >= 16 && rate <= 20.5, `granted ${rate.toFixed(1)}/s of 20 after 5 s (seed ${seed})`);
    const pace = flow.pace(HOST);
    assert.ok(pace !== undefined && pace >= 10 && pace < 30, `pace ${pace}`);
    assert.ok(flow.concurrency(HOST) >= 1 && flow.concurrency(HOST) <= 8);
  });

  test('the concurrency halves at most once a window, only for requests sent after the last cut, never below 1; it grows back by one a window', async () => {
    const clock = new FakeClock();
    const flow = new FlowControl({ ceiling: 8, clock, windowMs: 1000, ecr: new EcrQuotas({ clock }) });
    const admit = () => flow.admit(url(), 'HEAD');
    // 503s without Retry-After: the concurrency alone (a 429 would set a pace too).
    const busy = { status: 503, headers: {} };
    assert.equal(flow.concurrency(HOST), 8);
    const early: FlowTicket[] = await Promise.all(Array.from({ length: 4 }, admit));
    flow.settle(early[0]!, busy);
    assert.equal(flow.concurrency(HOST), 4);
    // The other three were in flight before the cut: their answers are the same congestion.
    await clock.advance(1500);
    for (const t of early.slice(1)) flow.settle(t, busy);
    assert.equal(flow.concurrency(HOST), 4);
    // A request sent after the cut, refused within the window: no second cut yet.
    const t1 = await admit();
    flow.settle(t1, busy);
    assert.equal(flow.concurrency(HOST), 2);
    const t2 = await admit();
    await clock.advance(200);
    flow.settle(t2, busy);
    assert.equal(flow.concurrency(HOST), 2, 'a second cut within the window');
    for (let i = 0; i < 3; i++) {
      await clock.advance(1000);
      const t = await admit();
      flow.settle(t, busy);
    }
    assert.equal(flow.concurrency(HOST), 1, 'floor 1');
    // Good answers: one more a window, up to the ceiling and no further.
    const seen: number[] = [];
    for (let i = 0; i < 12; i++) {
      await clock.advance(1000);
      const t = await admit();
      flow.settle(t, ok);
      seen.push(flow.concurrency(HOST));
    }
    assert.deepEqual(seen, [2, 3, 4, 5, 6, 7, 8, 8, 8, 8, 8, 8]);
  });

  test('timeouts halve the concurrency but set no pace; a 503 without Retry-After likewise', async () => {
    const clock = new FakeClock();
    const flow = new FlowControl({ ceiling: 8, clock, ecr: new EcrQuotas({ clock }) });
    flow.settle(await flow.admit(url(), 'GET'), 'timeout');
    assert.equal(flow.concurrency(HOST), 4);
    await clock.advance(1000);
    flow.settle(await flow.admit(url(), 'GET'), { status: 503, headers: {} });
    assert.equal(flow.concurrency(HOST), 2);
    assert.equal(flow.pace(HOST), undefined);
    await clock.advance(1000);
    flow.timedOut(HOST);
    assert.equal(flow.concurrency(HOST), 1);
  });

  test('a 429 with Retry-After pauses the host for every request, and the pace spaces them after it', async () => {
    const clock = new FakeClock();
    const flow = new FlowControl({ ceiling: 8, clock, ecr: new EcrQuotas({ clock }) });
    const t0 = clock.now();
    // 20 good answers in 200 ms, then a 429 asking for 2 s.
    for (let i = 0; i < 20; i++) {
      const t = await flow.admit(url(), 'HEAD');
      await clock.advance(10);
      flow.settle(t, ok);
    }
    const t = await flow.admit(url(), 'HEAD');
    flow.settle(t, tooMany(2));
    const pausedAt = clock.now();
    const admitted: number[] = [];
    const waiting = Array.from({ length: 6 }, () => flow.admit(url('/v2/other/manifests/v1'), 'HEAD').then((x) => admitted.push(x.at)));
    // Another host is not held.
    const other = await flow.admit(new URL('http://elsewhere.example/v2/'), 'GET');
    assert.equal(other.at, pausedAt);
    await clock.runUntil(pausedAt + 1999);
    assert.equal(admitted.length, 0, 'admitted during the pause');
    await clock.runUntil(pausedAt + 10_000);
    await Promise.all(waiting);
    assert.equal(admitted[0], pausedAt + 2000);
    // Granted: 20 answers over 0.21 s + the 2 s pause, less 5 %: about 8.6/s, so 116 ms apart.
    const pace = flow.pace(HOST)!;
    assert.ok(Math.abs(pace - (20 / 2.21) * 0.95) < 0.05, `pace ${pace}`);
    for (let i = 1; i < admitted.length; i++) assert.ok(Math.abs(admitted[i]! - admitted[i - 1]! - 1000 / pace) < 1, `gap ${admitted[i]! - admitted[i - 1]!}`);
    const [s] = flow.stats();
    assert.equal(s?.registry, HOST);
    assert.equal(s?.throttled, 1);
    assert.equal(s?.pausedMs, 2000);
    assert.ok(t0 < pausedAt);
  });

  test('a Retry-After longer than the cap pauses nobody (its request fails instead)', async () => {
    const clock = new FakeClock();
    const flow = new FlowControl({ clock, maxPauseMs: 60_000, ecr: new EcrQuotas({ clock }) });
    flow.settle(await flow.admit(url(), 'GET'), tooMany(3600));
    const t = await flow.admit(url(), 'GET');
    assert.equal(t.at, clock.now());
  });

  test('an aborted wait rejects at once', async () => {
    const clock = new FakeClock();
    const flow = new FlowControl({ clock, ecr: new EcrQuotas({ clock }) });
    flow.settle(await flow.admit(url(), 'GET'), tooMany(5));
    const ac = new AbortController();
    const p = flow.admit(url(), 'GET', ac.signal);
    ac.abort();
    await assert.rejects(p, (e: unknown) => e instanceof FerryError && e.name === 'AbortedError');
  });
});

describe('flow control: a registry reached over HTTP/2', () => {
  test('its ceiling is the multiplexed one, the transfer limits follow it, and a limit cut by throttling stays cut', async () => {
    const clock = new FakeClock();
    const flow = new FlowControl({ ceiling: 8, multiplexedCeiling: 32, clock, windowMs: 1000, ecr: new EcrQuotas({ clock }) });
    const limits = new TransferLimits(flow.globalCeiling, flow);
    const OTHER = 'http1.example:443';
    assert.equal(flow.globalCeiling, 32);
    assert.equal(limits.hostLimit(HOST), 8, 'not yet known to multiplex: the HTTP/1.1 ceiling');
    flow.multiplexed(HOST);
    assert.equal(flow.concurrency(HOST), 32);
    assert.equal(limits.hostLimit(HOST), 32);
    assert.equal(limits.hostLimit(OTHER), 8, 'another registry keeps its own');
    // Throttled: halved from 32, and learning again that it multiplexes does not undo the cut.
    const t = await flow.admit(url(), 'HEAD');
    flow.settle(t, { status: 503, headers: {} });
    assert.equal(flow.concurrency(HOST), 16);
    flow.multiplexed(HOST);
    assert.equal(flow.concurrency(HOST), 16);
    // A process-wide --concurrency caps it all the same.
    assert.equal(new TransferLimits(4, flow).hostLimit(HOST), 4);
  });

  test('the agent without --concurrency: 8 towards an HTTP/1.1 registry, its process-wide 24 towards an HTTP/2 one, and the first cut counts', async () => {
    const transport = new HttpTransport({ processConcurrency: AGENT_CONCURRENCY });
    try {
      const flow = transport.flow;
      const limits = new TransferLimits(AGENT_CONCURRENCY, flow);
      const OTHER = 'http1.example:443';
      assert.equal(limits.hostLimit(OTHER), HTTP1_CONCURRENCY);
      flow.multiplexed(HOST);
      assert.equal(limits.hostLimit(HOST), AGENT_CONCURRENCY);
      assert.equal(flow.concurrency(HOST), AGENT_CONCURRENCY, 'the ceiling is the process-wide limit, not 64');
      const t = await flow.admit(url(), 'HEAD');
      flow.settle(t, { status: 503, headers: {} });
      assert.equal(limits.hostLimit(HOST), AGENT_CONCURRENCY / 2, 'throttled: halved from what was in use');
    } finally {
      await transport.close();
    }
  });
});

describe('flow control: logs', () => {
  test('one info line when a registry starts throttling and one when it recovers, not one per 429', async () => {
    const clock = new FakeClock();
    const { logger, lines } = capture();
    const flow = new FlowControl({ clock, logger, recoverAfterMs: 30_000, ecr: new EcrQuotas({ clock }) });
    for (let i = 0; i < 40; i++) {
      const t = await drive(clock, flow.admit(url(), 'HEAD'));
      flow.settle(t, i % 2 ? ok : tooMany());
      await clock.advance(100);
    }
    const infos = () => lines().filter((l) => l.level === 30);
    assert.equal(infos().length, 1, JSON.stringify(infos()));
    assert.equal(infos()[0]!.registry, HOST);
    assert.match(String(infos()[0]!.msg), /throttling/);
    // Good answers for less than the recovery time: still throttling.
    for (let i = 0; i < 20; i++) {
      await clock.advance(1000);
      flow.settle(await drive(clock, flow.admit(url(), 'HEAD')), ok);
    }
    assert.equal(infos().length, 1);
    for (let i = 0; i < 15; i++) {
      await clock.advance(1000);
      flow.settle(await drive(clock, flow.admit(url(), 'HEAD')), ok);
    }
    assert.equal(infos().length, 2);
    const recovered = infos()[1]!;
    assert.match(String(recovered.msg), /no longer throttling/);
    assert.equal(recovered.throttled_answers, 20);
  });
});

describe('flow control: pull limits (Docker Hub ratelimit headers)', () => {
  const hub = 'registry-1.docker.io';
  const manifest = new URL(`https://${hub}/v2/library/alpine/manifests/3.20`);
  const limits = (remaining: number) => ({ 'ratelimit-limit': '100;w=21600', 'ratelimit-remaining': `${remaining};w=21600` });

  test('no pull left: a manifest GET fails at once with REGISTRY_UNAVAILABLE naming the limit and when it frees up; HEADs still go', async () => {
    const clock = new FakeClock();
    const flow = new FlowControl({ clock, ecr: new EcrQuotas({ clock }) });
    flow.settle(await flow.admit(manifest, 'GET'), { status: 200, headers: limits(1) });
    flow.settle(await flow.admit(manifest, 'GET'), { status: 200, headers: limits(0) });
    await assert.rejects(flow.admit(manifest, 'GET'), (e: unknown) => {
      assert.ok(e instanceof FerryError);
      assert.equal(e.code, 'REGISTRY_UNAVAILABLE');
      assert.equal(e.retryable, false);
      assert.match(e.message, /registry-1\.docker\.io: the pull limit is used up \(100 pulls per 6 h, none left\)/);
      assert.match(e.message, /rolling 6 h window, all of them by \d{4}-\d\d-\d\dT/);
      return true;
    });
    await flow.admit(manifest, 'HEAD');
    await flow.admit(new URL(`https://${hub}/v2/library/alpine/blobs/sha256:aa`), 'GET');
    // A minute on, one GET may ask again.
    await clock.advance(60_000);
    await flow.admit(manifest, 'GET');
  });

  test('a 429 saying the pull limit is used up is recognised (header or Docker Hub message)', () => {
    const byHeader = pullLimitExhausted(hub, 429, limits(0), '');
    assert.equal(byHeader?.code, 'REGISTRY_UNAVAILABLE');
    const byMessage = pullLimitExhausted(hub, 429, {}, 'You have reached your pull rate limit. You may increase the limit by authenticating and upgrading');
    assert.match(byMessage!.message, /pull limit is used up \(its pull limit, none left\)/);
    assert.equal(pullLimitExhausted(hub, 429, { 'retry-after': '1' }, 'too many requests'), undefined);
    assert.equal(pullLimitExhausted(hub, 200, limits(0), ''), undefined);
  });

  test('the last pulls: one warning, not one per answer', async () => {
    const clock = new FakeClock();
    const { logger, lines } = capture();
    const flow = new FlowControl({ clock, logger, ecr: new EcrQuotas({ clock }) });
    for (let left = 20; left > 0; left--) flow.settle(await flow.admit(manifest, 'GET'), { status: 200, headers: limits(left) });
    const warns = lines().filter((l) => l.level === 40);
    assert.equal(warns.length, 1);
    assert.equal(warns[0]!.pulls_left, 10);
  });
});

describe('flow control: ECR hosts', () => {
  const ecrHost = '111122223333.dkr.ecr.us-west-2.amazonaws.com';

  test('Docker API requests map to the ECR actions AWS counts them as', () => {
    assert.equal(ecrActionOf('PUT', '/v2/app/manifests/v1'), 'PutImage');
    assert.equal(ecrActionOf('GET', '/v2/a/b/manifests/sha256:aa'), 'BatchGetImage');
    assert.equal(ecrActionOf('HEAD', '/v2/app/blobs/sha256:aa'), 'BatchCheckLayerAvailability');
    assert.equal(ecrActionOf('GET', '/v2/app/blobs/sha256:aa'), 'GetDownloadUrlForLayer');
    assert.equal(ecrActionOf('POST', '/v2/app/blobs/uploads/'), 'InitiateLayerUpload');
    assert.equal(ecrActionOf('PATCH', '/v2/app/blobs/uploads/abc'), 'UploadLayerPart');
    assert.equal(ecrActionOf('PUT', '/v2/app/blobs/uploads/abc'), 'CompleteLayerUpload');
    assert.equal(ecrActionOf('GET', '/v2/'), undefined);
  });

  test('manifest PUTs to an ECR host go at PutImage\'s 10/s (less the headroom) after a half-second burst, across every caller', async () => {
    const clock = new FakeClock();
    const ecr = new EcrQuotas({ clock });
    // Two transports of one process (two jobs) share the account's buckets.
    const flows = [new FlowControl({ clock, ecr }), new FlowControl({ clock, ecr })];
    const times: number[] = [];
    const start = clock.now();
    const puts = Array.from({ length: 30 }, (_, i) => flows[i % 2]!.admit(new URL(`https://${ecrHost}/v2/app${i}/manifests/v1`), 'PUT').then((t) => times.push(t.at - start)));
    await clock.runUntil(start + 10_000);
    await Promise.all(puts);
    times.sort((a, b) => a - b);
    assert.equal(ECR_API_RATES.PutImage, 10);
    const rate = 10 * QUOTA_HEADROOM;
    const burst = Math.floor(rate * BURST_SECONDS);
    // Over any window of w ms, at most what was saved up + w at the rate.
    for (let i = 0; i < times.length; i++) {
      for (let j = i; j < times.length; j++) assert.ok(j - i + 1 <= burst + Math.floor(((times[j]! - times[i]!) * rate) / 1000) + 1, `${j - i + 1} PUTs in ${times[j]! - times[i]!} ms`);
    }
    assert.equal(times[burst - 1], 0);
    assert.ok(times[burst]! > 0);
    const expected = ((30 - rate * BURST_SECONDS) * 1000) / rate;
    assert.ok(Math.abs(times[29]! - expected) < 50, `the 30th PUT at ${times[29]} ms, expected ${expected.toFixed(0)}`);
    // Other hosts take no ECR tokens.
    assert.equal((await flows[0]!.admit(url('/v2/app/manifests/v1'), 'PUT')).at, clock.now());
  });

  test('a 429 from the ECR host halves that action\'s pace and pauses it for everyone', async () => {
    const clock = new FakeClock();
    const ecr = new EcrQuotas({ clock });
    const flow = new FlowControl({ clock, ecr });
    const put = new URL(`https://${ecrHost}/v2/app/manifests/v1`);
    flow.settle(await flow.admit(put, 'PUT'), tooMany());
    assert.equal(ecr.bucket(ecrHost, 'PutImage')!.rate, 5 * QUOTA_HEADROOM);
    const before = clock.now();
    const p = flow.admit(put, 'PUT');
    await clock.runUntil(before + 5000);
    assert.ok((await p).at >= before + 1000);
    const [s] = ecr.stats();
    assert.equal(s?.registry, ecrHost);
    assert.equal(s?.throttled, 1);
  });
});
