// A reverse proxy in front of a real registry that injects network and server faults on
// matching requests: error statuses, connections cut mid-download or mid-upload, a flipped byte,
// a stalled or dripping body, interim answers (100 Continue, 103 Early Hints) before the registry's own.
// Bodies stream through both ways, so it works for multi-hundred-MiB blobs. It can also throttle like a
// cloud registry (N requests/s, 429 + Retry-After beyond) and count pulls like Docker Hub
// (ratelimit-limit / ratelimit-remaining).
import { Agent, createServer, request as httpRequest, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

interface RuleMatch {
  /** HTTP method to match (any if omitted). */
  method?: string;
  /** Matched against the request's path and query, e.g. /\/blobs\/sha256:/. */
  path: RegExp;
  /** Apply to this many matching requests, then stop matching. Default: every one. */
  times?: number;
  /** Let this many matching requests through untouched before the rule starts to apply. */
  skip?: number;
}

export type FaultRule = RuleMatch &
  (
    | {
        /** Answer with this status and a registry-style JSON error, without forwarding. */
        action: 'status';
        status: number;
        /** Adds `Retry-After: <seconds>`. */
        retryAfter?: number;
        /** The registry error code in the JSON body (default by status, e.g. UNAVAILABLE for 503). */
        code?: string;
        /** The error message in the JSON body (default "injected <status> by the fault proxy"). */
        message?: string;
      }
    | {
        /**
         * Cut the connection after `bytes` bytes of the response body (a broken download), or of
         * the request body with `on: 'request'` (a broken upload: the registry gets a truncated body).
         */
        action: 'reset-after-bytes';
        bytes: number;
        on?: 'response' | 'request';
      }
    | {
        /** Flip (xor 0xff) the byte at `offset` of the response body. */
        action: 'corrupt-byte';
        offset: number;
      }
    | {
        /** Forward the request at once, but hold the registry's answer `ms` before passing it on (a slow round trip). */
        action: 'delay';
        ms: number;
      }
    | {
        /** Send 100 Continue and 103 Early Hints (RFC 9110 §15.2) as soon as the request arrives, then the registry's answer. */
        action: 'interim';
      }
    | {
        /**
         * Forward the request at once, then run `whileHeld` before passing the registry's answer on:
         * another client acting between a request reaching the registry and its answer reaching the client.
         */
        action: 'hook';
        whileHeld: () => Promise<void>;
      }
    | {
        /**
         * Forward the request at once, but hold the registry's answer until `until()` is true
         * (looked at every few ms), or `maxMs` passed (default 10 s): to show what a client sends
         * before an answer comes back, by a condition instead of a guess at how long to wait.
         * The request's log entry says which released it (`held`).
         */
        action: 'hold';
        /** `request`: the held request's log entry. */
        until: (request: ProxiedRequest) => boolean;
        maxMs?: number;
      }
    | {
        /** Send the response headers (and the first `afterBytes` of the body), then nothing for `ms`; then cut the connection (default) or carry on. */
        action: 'stall';
        ms: number;
        then?: 'reset' | 'continue';
        /** Let this many body bytes through before the stall (default 0: stall right after the headers). */
        afterBytes?: number;
      }
    | {
        /** Let `afterBytes` of the body through (default 0), then send the rest at `bytesPerSecond`, a tenth every 100 ms: a source that drips. */
        action: 'drip';
        bytesPerSecond: number;
        afterBytes?: number;
      }
  );

export interface ProxiedRequest {
  method: string;
  /** Path and query as the client sent them. */
  path: string;
  /** Status sent to the client; 0 if the connection was cut before any response. */
  status: number;
  /** The fault applied to this request, if any (`throttle`, `pull-limit`: refused by those options). */
  fault?: FaultRule['action'] | 'throttle' | 'pull-limit';
  /** When the request arrived (Date.now()). */
  at: number;
  /** The request's Range header, if any. */
  range?: string;
  /** When the response was finished or the connection closed (Date.now()); undefined while in flight. */
  doneAt?: number;
  /** For a held answer: released by its condition, or by maxMs running out. */
  held?: 'condition' | 'timeout';
}

export interface ActiveRule {
  readonly rule: FaultRule;
  /** How many requests this rule has been applied to. */
  hits(): number;
  /** Stop applying this rule. */
  remove(): void;
}

export interface FaultProxyOptions {
  /**
   * Hold each request body until it is complete, then forward it (nginx's default
   * `proxy_request_buffering on`): a client that dies mid-upload leaves the registry untouched.
   */
  bufferRequestBodies?: boolean;
  /**
   * Grant `perSecond` requests a second (a token bucket holding `burst`, default one second's
   * worth) and answer the rest 429 TOOMANYREQUESTS with `Retry-After: retryAfter` (default 1):
   * a throttling cloud registry. Checked before the rules.
   */
  throttle?: { perSecond: number; burst?: number; retryAfter?: number };
  /**
   * Count manifest GETs as pulls, as Docker Hub does: every manifest answer carries
   * `ratelimit-limit: <limit>;w=<windowS>` and `ratelimit-remaining`; a GET with none left is
   * answered 429 TOOMANYREQUESTS "You have reached your pull rate limit".
   */
  pullLimit?: { limit: number; remaining: number; windowS: number };
  /**
   * A slow uplink: request bodies (uploads) cross at this many bytes a second in all, shared by
   * every request at once, as on one link. The client's writes back up behind it.
   */
  uploadBytesPerSecond?: number;
}

export interface FaultProxy {
  /** Bytes of request bodies (uploads) received from clients over the proxy's lifetime, forwarded or not. */
  uploadedBytes(): number;
  /** `127.0.0.1:PORT`: point clients here instead of at the registry. */
  host: string;
  url: string;
  /** The registry behind the proxy. */
  target: string;
  /** Every request so far, in arrival order. */
  requests: ProxiedRequest[];
  /** Number of logged requests matching the filter (all if none). */
  count(filter?: { method?: string; path?: RegExp }): number;
  resetLog(): void;
  /** Requests answered 429 by the throttle (`throttle` option). */
  throttled(): number;
  /** Pulls left (`pullLimit` option). */
  pullsLeft(): number | undefined;
  /** Rules are tried in the order added; the first live match applies. */
  addRule(rule: FaultRule): ActiveRule;
  clearRules(): void;
  stop(): Promise<void>;
}

// Per-connection headers that must not be forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP = ['connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'proxy-authorization', 'te', 'trailer', 'transfer-encoding', 'upgrade'];

function forwardable(headers: IncomingHttpHeaders): IncomingHttpHeaders {
  const out = { ...headers };
  for (const h of HOP_BY_HOP) delete out[h];
  return out;
}

const ERROR_CODES: Record<number, string> = { 429: 'TOOMANYREQUESTS', 500: 'UNKNOWN', 502: 'UNAVAILABLE', 503: 'UNAVAILABLE', 504: 'UNAVAILABLE' };

interface RuleState {
  rule: FaultRule;
  remaining: number;
  skipped: number;
  hits: number;
}

export async function startFaultProxy(targetHost: string, opts: FaultProxyOptions = {}): Promise<FaultProxy> {
  const target = new URL(`http://${targetHost}`);
  const agent = new Agent({ keepAlive: true });
  const requests: ProxiedRequest[] = [];
  let rules: RuleState[] = [];
  const timers = new Set<NodeJS.Timeout>();
  let proxyHost = '';
  let uploaded = 0;
  /** With uploadBytesPerSecond: when the uplink is free for the next piece of any request body. */
  let uplinkFreeAt = 0;
  let throttled = 0;
  const bucket = opts.throttle ? { tokens: opts.throttle.burst ?? opts.throttle.perSecond, at: Date.now() } : undefined;
  let pullsLeft = opts.pullLimit?.remaining;
  /** The throttle: true when the request may go on. */
  const grant = (): boolean => {
    if (!bucket || !opts.throttle) return true;
    const now = Date.now();
    bucket.tokens = Math.min(opts.throttle.burst ?? opts.throttle.perSecond, bucket.tokens + ((now - bucket.at) * opts.throttle.perSecond) / 1000);
    bucket.at = now;
    if (bucket.tokens < 1) return false;
    bucket.tokens -= 1;
    return true;
  };

  const take = (req: IncomingMessage): FaultRule | undefined => {
    for (const state of rules) {
      if (state.remaining <= 0) continue;
      if (state.rule.method && state.rule.method.toUpperCase() !== req.method) continue;
      if (!state.rule.path.test(req.url ?? '')) continue;
      if (state.skipped < (state.rule.skip ?? 0)) {
        state.skipped += 1;
        continue;
      }
      state.remaining -= 1;
      state.hits += 1;
      return state.rule;
    }
    return undefined;
  };

  /** Flush what was written so far, then close the client connection. */
  const cutAfterFlush = (socket: Socket | null): void => {
    if (!socket || socket.destroyed) return;
    // Writes on a socket complete in order: when this empty write is done, everything before it
    // has reached the kernel, and destroy() will not discard it.
    socket.write(Buffer.alloc(0), () => socket.destroy());
  };

  const handle = (req: IncomingMessage, res: ServerResponse): void => {
    const entry: ProxiedRequest = { method: req.method ?? 'GET', path: req.url ?? '/', status: 0, at: Date.now() };
    if (typeof req.headers.range === 'string') entry.range = req.headers.range;
    requests.push(entry);
    res.on('close', () => (entry.doneAt = Date.now()));
    const refuse = (headers: Record<string, string>, message: string): void => {
      req.resume();
      const body = JSON.stringify({ errors: [{ code: 'TOOMANYREQUESTS', message }] });
      entry.status = 429;
      res.writeHead(429, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...headers });
      res.end(body);
    };
    if (!grant()) {
      throttled += 1;
      entry.fault = 'throttle';
      refuse({ 'retry-after': String(opts.throttle!.retryAfter ?? 1) }, 'too many requests');
      return;
    }
    const isManifestRead = /\/manifests\/[^/]+$/.test((req.url ?? '').split('?')[0]!) && (req.method === 'GET' || req.method === 'HEAD');
    const pullHeaders = (): Record<string, string> =>
      opts.pullLimit ? { 'ratelimit-limit': `${opts.pullLimit.limit};w=${opts.pullLimit.windowS}`, 'ratelimit-remaining': `${pullsLeft};w=${opts.pullLimit.windowS}` } : {};
    if (opts.pullLimit && isManifestRead && req.method === 'GET') {
      if (pullsLeft! <= 0) {
        entry.fault = 'pull-limit';
        refuse(pullHeaders(), 'You have reached your pull rate limit. You may increase the limit by authenticating and upgrading');
        return;
      }
      pullsLeft! -= 1;
    }
    const rule = take(req);
    if (rule) entry.fault = rule.action;
    req.on('data', (chunk: Buffer) => (uploaded += chunk.byteLength));

    if (rule?.action === 'status') {
      req.resume(); // drain any upload so the connection stays usable
      const body = JSON.stringify({ errors: [{ code: rule.code ?? ERROR_CODES[rule.status] ?? 'UNKNOWN', message: rule.message ?? `injected ${rule.status} by the fault proxy` }] });
      const headers: Record<string, string | number> = { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) };
      if (rule.retryAfter !== undefined) headers['retry-after'] = String(rule.retryAfter);
      entry.status = rule.status;
      res.writeHead(rule.status, headers);
      res.end(body);
      return;
    }

    // The registry sees the proxy's own host, so the absolute Locations it builds point back here.
    if (rule?.action === 'interim') {
      res.writeContinue();
      res.writeEarlyHints({ link: '</v2/>; rel=preconnect' });
    }
    const upstream = httpRequest({
      host: target.hostname,
      port: target.port,
      method: req.method,
      path: req.url,
      headers: { ...forwardable(req.headers), host: proxyHost },
      agent,
    });
    const abort = (): void => {
      upstream.destroy();
      req.socket.destroy();
    };
    res.on('close', () => {
      if (!res.writableFinished) upstream.destroy(); // the client went away
    });
    upstream.on('error', (e: Error) => {
      if (!res.headersSent && !req.socket.destroyed) {
        entry.status = 502;
        res.writeHead(502, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ errors: [{ code: 'UNAVAILABLE', message: `fault proxy: upstream connection failed (${e.message})` }] }));
      } else {
        req.socket.destroy();
      }
    });

    // Request body: straight through, or cut after N bytes.
    if (rule?.action === 'reset-after-bytes' && rule.on === 'request') {
      let sent = 0;
      let cut = rule.bytes <= 0;
      if (cut) abort();
      req.on('data', (chunk: Buffer) => {
        if (cut) return;
        const room = rule.bytes - sent;
        if (chunk.byteLength < room) {
          sent += chunk.byteLength;
          if (!upstream.write(chunk)) {
            req.pause();
            upstream.once('drain', () => req.resume());
          }
          return;
        }
        // Let the registry receive exactly the first N bytes, then kill both connections.
        cut = true;
        req.pause();
        sent += room;
        upstream.write(chunk.subarray(0, room), () => abort());
      });
      req.on('end', () => {
        if (!cut) upstream.end(); // the body was shorter than the cut point
      });
    } else if (opts.bufferRequestBodies) {
      const parts: Buffer[] = [];
      let complete = false;
      req.on('data', (chunk: Buffer) => parts.push(chunk));
      req.on('end', () => {
        complete = true;
        const body = Buffer.concat(parts);
        parts.length = 0;
        upstream.end(body);
      });
      req.on('close', () => {
        if (!complete) upstream.destroy(); // the client died mid-body: the registry never hears of it
      });
    } else if (opts.uploadBytesPerSecond) {
      // Each piece leaves when the link is free for it; the client is not read meanwhile.
      const rate = opts.uploadBytesPerSecond;
      // 'end' can come while the last piece still waits for the link: the body ends after it.
      let waiting = 0;
      let ended = false;
      req.on('data', (chunk: Buffer) => {
        req.pause();
        waiting++;
        const start = Math.max(Date.now(), uplinkFreeAt);
        uplinkFreeAt = start + (chunk.byteLength / rate) * 1000;
        const timer = setTimeout(() => {
          timers.delete(timer);
          waiting--;
          if (upstream.destroyed) return;
          upstream.write(chunk);
          if (ended && waiting === 0) upstream.end();
          req.resume();
        }, uplinkFreeAt - Date.now());
        timers.add(timer);
      });
      req.on('end', () => {
        ended = true;
        if (waiting === 0) upstream.end();
      });
      req.on('close', () => {
        if (!req.complete) upstream.destroy();
      });
    } else {
      req.pipe(upstream);
    }

    const answer = (upRes: IncomingMessage): void => {
      entry.status = upRes.statusCode ?? 0;
      res.writeHead(upRes.statusCode ?? 502, upRes.statusMessage, { ...forwardable(upRes.headers), ...(isManifestRead ? pullHeaders() : {}) });

      if (rule?.action === 'reset-after-bytes' && rule.on !== 'request') {
        res.flushHeaders();
        let sent = 0;
        if (rule.bytes <= 0) {
          upRes.destroy();
          cutAfterFlush(res.socket);
          return;
        }
        upRes.on('data', (chunk: Buffer) => {
          if (sent >= rule.bytes) return;
          const room = rule.bytes - sent;
          sent += Math.min(room, chunk.byteLength);
          if (chunk.byteLength < room) {
            if (!res.write(chunk)) {
              upRes.pause();
              res.once('drain', () => upRes.resume());
            }
            return;
          }
          upRes.destroy();
          // The write callback runs once the first N bytes have reached the kernel.
          res.write(chunk.subarray(0, room), () => res.socket?.destroy());
        });
        upRes.on('end', () => {
          if (sent < rule.bytes) res.end(); // shorter than the cut point: nothing to cut
        });
        return;
      }

      if (rule?.action === 'corrupt-byte') {
        let position = 0;
        upRes.on('data', (chunk: Buffer) => {
          const at = rule.offset - position;
          position += chunk.byteLength;
          if (at >= 0 && at < chunk.byteLength) {
            chunk = Buffer.from(chunk); // don't modify a buffer we don't own
            chunk[at] = (chunk[at] ?? 0) ^ 0xff;
          }
          if (!res.write(chunk)) {
            upRes.pause();
            res.once('drain', () => upRes.resume());
          }
        });
        upRes.on('end', () => res.end());
        return;
      }

      if (rule?.action === 'drip') {
        res.flushHeaders();
        const queue: Buffer[] = [];
        let passed = 0;
        let ended = false;
        const slice = Math.max(1, Math.round(rule.bytesPerSecond / 10));
        const timer = setInterval(() => {
          let budget = slice;
          while (budget > 0 && queue.length > 0) {
            const head = queue[0]!;
            const n = Math.min(budget, head.byteLength);
            res.write(head.subarray(0, n));
            if (n === head.byteLength) queue.shift();
            else queue[0] = head.subarray(n);
            budget -= n;
          }
          if (queue.length > 0) return;
          if (ended) {
            clearInterval(timer);
            timers.delete(timer);
            res.end();
          } else upRes.resume();
        }, 100);
        timers.add(timer);
        upRes.on('data', (chunk: Buffer) => {
          const room = (rule.afterBytes ?? 0) - passed;
          if (room > 0) {
            const now = chunk.subarray(0, room);
            passed += now.byteLength;
            res.write(now);
            chunk = chunk.subarray(now.byteLength);
          }
          if (chunk.byteLength === 0) return;
          queue.push(chunk);
          upRes.pause();
        });
        upRes.on('end', () => (ended = true));
        res.on('close', () => {
          clearInterval(timer);
          timers.delete(timer);
          upRes.destroy();
        });
        return;
      }

      if (rule?.action === 'stall') {
        res.flushHeaders();
        const afterBytes = rule.afterBytes ?? 0;
        let timer: NodeJS.Timeout | undefined;
        let held: Buffer | undefined;
        const stall = (): void => {
          timer = setTimeout(() => {
            timers.delete(timer!);
            if (rule.then === 'continue') {
              if (held) res.write(held);
              upRes.pipe(res);
            } else {
              upRes.destroy();
              cutAfterFlush(res.socket);
            }
          }, rule.ms);
          timers.add(timer);
        };
        if (afterBytes <= 0) {
          stall();
        } else {
          // The first `afterBytes` go through; then the body stands still.
          let passed = 0;
          const onData = (chunk: Buffer): void => {
            const room = afterBytes - passed;
            if (chunk.byteLength < room) {
              passed += chunk.byteLength;
              if (!res.write(chunk)) {
                upRes.pause();
                res.once('drain', () => {
                  if (!timer) upRes.resume();
                });
              }
              return;
            }
            passed = afterBytes;
            upRes.off('data', onData);
            upRes.pause();
            res.write(chunk.subarray(0, room));
            if (chunk.byteLength > room) held = chunk.subarray(room);
            stall();
          };
          upRes.on('data', onData);
          upRes.on('end', () => {
            if (!timer) res.end(); // shorter than afterBytes: nothing to stall
          });
        }
        res.on('close', () => {
          if (timer) {
            clearTimeout(timer);
            timers.delete(timer);
          }
          upRes.destroy();
        });
        return;
      }

      upRes.pipe(res);
    };
    upstream.on('response', (upRes) => {
      if (rule?.action === 'hook') {
        upRes.pause();
        void rule.whileHeld().then(
          () => answer(upRes),
          () => answer(upRes),
        );
        return;
      }
      if (rule?.action === 'hold') {
        const deadline = Date.now() + (rule.maxMs ?? 10_000);
        const look = (): void => {
          const met = rule.until(entry);
          if (met || Date.now() >= deadline) {
            entry.held = met ? 'condition' : 'timeout';
            answer(upRes);
            return;
          }
          const timer = setTimeout(() => {
            timers.delete(timer);
            look();
          }, 5);
          timers.add(timer);
        };
        look();
        return;
      }
      if (rule?.action !== 'delay') return answer(upRes);
      const timer = setTimeout(() => {
        timers.delete(timer);
        answer(upRes);
      }, rule.ms);
      timers.add(timer);
    });
  };

  // No server-side timeouts: the proxy must not add faults of its own to slow or stalled transfers.
  const server = createServer({ requestTimeout: 0, headersTimeout: 0 }, handle);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  proxyHost = `127.0.0.1:${(server.address() as AddressInfo).port}`;

  return {
    uploadedBytes: () => uploaded,
    throttled: () => throttled,
    pullsLeft: () => pullsLeft,
    host: proxyHost,
    url: `http://${proxyHost}`,
    target: targetHost,
    requests,
    count(filter = {}) {
      return requests.filter((r) => (!filter.method || r.method === filter.method.toUpperCase()) && (!filter.path || filter.path.test(r.path))).length;
    },
    resetLog: () => void requests.splice(0),
    addRule(rule) {
      const state: RuleState = { rule, remaining: rule.times ?? Infinity, skipped: 0, hits: 0 };
      rules.push(state);
      return {
        rule,
        hits: () => state.hits,
        remove: () => {
          rules = rules.filter((r) => r !== state);
        },
      };
    },
    clearRules: () => {
      rules = [];
    },
    async stop() {
      for (const t of timers) clearTimeout(t);
      timers.clear();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      agent.destroy();
    },
  };
}
