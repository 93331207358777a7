// Address policy for untrusted URLs (redirects, token realms): no link-local or cloud
// metadata addresses, no downgrade from HTTPS to plain HTTP. No I/O.
import { isIP } from 'node:net';
import { FerryError } from '../errors.ts';

/** `host` without its port: `[::1]:5000` → `::1`, `a.b:443` → `a.b`. */
export function hostOf(hostPort: string): string {
  if (hostPort.startsWith('[')) return hostPort.slice(1, hostPort.indexOf(']'));
  const colon = hostPort.lastIndexOf(':');
  return colon >= 0 && hostPort.indexOf(':') === colon ? hostPort.slice(0, colon) : hostPort;
}

export function isLoopbackHost(host: string): boolean {
  const h = host.toLowerCase().replace(/^\[|\]$/g, '');
  if (h === 'localhost' || h.endsWith('.localhost')) return true;
  if (isIP(h) === 4) return h.startsWith('127.');
  if (isIP(h) === 6) return h === '::1' || h === '0:0:0:0:0:0:0:1';
  return false;
}

/** Link-local and cloud metadata addresses: 169.254.0.0/16, fe80::/10, fd00:ec2::254. */
export function isMetadataOrLinkLocal(host: string): boolean {
  const h = host.toLowerCase().replace(/^\[|\]$/g, '');
  if (isIP(h) === 4) return h.startsWith('169.254.');
  if (isIP(h) === 6) return /^fe[89ab][0-9a-f]:/.test(h) || /^fd00:ec2:(0:){0,4}:?254$/.test(h) || h === 'fd00:ec2::254';
  return h === 'metadata.google.internal' || h === 'metadata';
}

/**
 * May a request that went to `from` be sent on to `to`? Throws for metadata / link-local
 * targets and for a downgrade from HTTPS to HTTP.
 */
export function checkRedirectTarget(from: URL, to: URL, what = 'redirect'): void {
  if (to.protocol !== 'https:' && to.protocol !== 'http:') {
    throw new FerryError('SOURCE_INVALID', `${what} from ${from.host} to unsupported scheme ${to.protocol}`);
  }
  if (isMetadataOrLinkLocal(to.hostname)) {
    throw new FerryError('SOURCE_INVALID', `${what} from ${from.host} points at a link-local/metadata address (${to.host}); refusing`);
  }
  if (from.protocol === 'https:' && to.protocol === 'http:') {
    throw new FerryError('SOURCE_INVALID', `${what} from ${from.host} downgrades HTTPS to plain HTTP (${to.host}); refusing`);
  }
}
