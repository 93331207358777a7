// The health server on --health-addr:
//   /healthz  200 while the process serves requests (liveness)
//   /readyz   200 when every readiness check passes, else 503 listing the failures
//   /metrics  Prometheus text exposition
// Readiness is a list of named checks; the agent adds "config valid" and "control plane
// reached within the last N seconds" (controlPlaneCheck), the loop may add more (draining).
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from '../log/logger.ts';
import type { HealthAddr } from './config.ts';
import type { ContactState } from './control-plane-client.ts';
import { PROMETHEUS_CONTENT_TYPE, type MetricsRegistry } from './metrics.ts';

/** A readiness check: undefined when fine, else the reason it is not ready. */
export type ReadinessCheck = () => string | undefined;

export class Readiness {
  private readonly checks = new Map<string, ReadinessCheck>();
  add(name: string, check: ReadinessCheck): this {
    this.checks.set(name, check);
    return this;
  }
  remove(name: string): void {
    this.checks.delete(name);
  }
  evaluate(): { ready: boolean; failures: string[] } {
    const failures: string[] = [];
    for (const [name, check] of this.checks) {
      let reason: string | undefined;
      try {
        reason = check();
      } catch (e) {
        reason = `check failed: ${(e as Error).message}`;
      }
      if (reason !== undefined) failures.push(`${name}: ${reason}`);
    }
    return { ready: failures.length === 0, failures };
  }
}

/**
 * Ready when the control plane accepted a request within the last maxAgeS seconds and has not
 * rejected the runner token since.
 */
export function controlPlaneCheck(contact: ContactState, maxAgeS: number, now: () => number = Date.now): ReadinessCheck {
  return () => {
    const t = now();
    if (contact.lastUnauthorizedAt !== undefined && (contact.lastSuccessAt === undefined || contact.lastUnauthorizedAt > contact.lastSuccessAt)) {
      return 'the control plane rejected the runner token';
    }
    if (contact.lastSuccessAt === undefined) return `not reached yet${contact.lastFailure ? ` (last error: ${contact.lastFailure})` : ''}`;
    const age = (t - contact.lastSuccessAt) / 1000;
    if (age > maxAgeS) return `not reached for ${Math.round(age)} s${contact.lastFailure ? ` (last error: ${contact.lastFailure})` : ''}`;
    return undefined;
  };
}

export interface HealthServerOptions {
  addr: HealthAddr;
  readiness: Readiness;
  metrics: MetricsRegistry;
  logger: Logger;
}

export interface HealthServer {
  /** Base URL, e.g. http://127.0.0.1:9464 */
  url: string;
  port: number;
  close(): Promise<void>;
}

export async function startHealthServer(opts: HealthServerOptions): Promise<HealthServer> {
  // Loaded here, not at the top: every command's start evaluates this module, and only the agent serves.
  const { createServer } = process.getBuiltinModule('node:http');
  const server: Server = createServer((req, res) => handle(req, res, opts));
  server.keepAliveTimeout = 5000;
  server.headersTimeout = 10_000;
  server.requestTimeout = 10_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.addr.port, opts.addr.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  server.on('error', (e) => opts.logger.error({ err: e }, 'health server error'));
  const port = (server.address() as AddressInfo).port;
  const host = opts.addr.host === '0.0.0.0' ? '127.0.0.1' : opts.addr.host === '::' ? '::1' : opts.addr.host;
  const url = `http://${host.includes(':') ? `[${host}]` : host}:${port}`;
  opts.logger.info({ addr: `${opts.addr.host}:${port}` }, 'health server listening');
  return {
    url,
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

function send(res: ServerResponse, status: number, contentType: string, body: string, head: boolean): void {
  res.writeHead(status, { 'content-type': contentType, 'cache-control': 'no-store', 'content-length': Buffer.byteLength(body) });
  res.end(head ? undefined : body);
}

function handle(req: IncomingMessage, res: ServerResponse, opts: HealthServerOptions): void {
  const path = (req.url ?? '/').split('?')[0];
  const head = req.method === 'HEAD';
  if (req.method !== 'GET' && !head) {
    res.setHeader('allow', 'GET, HEAD');
    send(res, 405, 'text/plain; charset=utf-8', 'method not allowed\n', false);
    return;
  }
  try {
    switch (path) {
      case '/healthz':
        send(res, 200, 'text/plain; charset=utf-8', 'ok\n', head);
        return;
      case '/readyz': {
        const { ready, failures } = opts.readiness.evaluate();
        send(res, ready ? 200 : 503, 'text/plain; charset=utf-8', ready ? 'ready\n' : `not ready\n${failures.map((f) => `- ${f}\n`).join('')}`, head);
        return;
      }
      case '/metrics':
        send(res, 200, PROMETHEUS_CONTENT_TYPE, opts.metrics.render(), head);
        return;
      default:
        send(res, 404, 'text/plain; charset=utf-8', 'not found\n', head);
    }
  } catch (e) {
    opts.logger.error({ err: e, path }, 'health endpoint failed');
    if (!res.headersSent) send(res, 500, 'text/plain; charset=utf-8', 'internal error\n', head);
    else res.destroy();
  }
}
