// TLS for ferry's own connections (HTTP/1.1 in raw-http.ts, HTTP/2 in h2.ts): one secure context
// for the transport's life, and each origin's latest session ticket, so that a connection after
// the first resumes (TLS 1.3 PSK) instead of verifying the registry's chain again.
//
// Why: a context made per connection (what tls.connect does when given none) costs ~3 ms of CPU
// with the default roots, and ~11 ms when extra CAs are passed as `ca` (every root certificate is
// parsed again); a resumed handshake skips the certificate chain's verification. A copy across a
// WAN opens a dozen connections or more; the agent, hundreds a day (docs/performance.md, "Over a WAN").
// A session is only ever offered to the origin (scheme, host and port) it came from, and under
// the same server name, so it cannot vouch for another host.
import net from 'node:net';
import type { ConnectionOptions, SecureContext, TLSSocket } from 'node:tls';

export class TlsSessions {
  private readonly ca: string[] | undefined;
  private context: SecureContext | undefined;
  private readonly tickets = new Map<string, Buffer>();

  /** `ca`: extra CA certificates (PEM) on top of the process defaults; undefined: the defaults. */
  constructor(ca: string[] | undefined) {
    this.ca = ca && ca.length > 0 ? ca : undefined;
  }

  /**
   * Open a TLS connection to `url`'s origin offering `alpn`, resuming the origin's last session
   * when there is one. The context is made on first use (after the transport has set the process's
   * default CAs).
   */
  connect(url: URL, alpn: string[]): TLSSocket {
    const tls = process.getBuiltinModule('node:tls');
    this.context ??= tls.createSecureContext(this.ca ? { ca: [...tls.rootCertificates, ...this.ca] } : {});
    const host = url.hostname.replace(/^\[|\]$/g, '');
    const port = Number(url.port) || 443;
    const options: ConnectionOptions & { noDelay: boolean } = { host, port, noDelay: true, ALPNProtocols: alpn, secureContext: this.context };
    if (net.isIP(host) === 0) options.servername = host;
    const ticket = this.tickets.get(url.origin);
    if (ticket) options.session = ticket;
    const socket = tls.connect(options);
    socket.on('session', (session: Buffer) => this.tickets.set(url.origin, session));
    return socket;
  }

  /** Sessions remembered (for tests). */
  remembered(origin: string): boolean {
    return this.tickets.has(origin);
  }
}
