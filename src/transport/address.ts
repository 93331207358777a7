// Address policy for untrusted URLs (redirects, token realms, upload Locations): no link-local
// or cloud metadata addresses, no downgrade from HTTPS to plain HTTP. No I/O: every check here
// runs before any connection or DNS lookup.
//
// One address has many spellings: `169.254.169.254`, `2852039166`, `0xa9.0xfe.0xa9.0xfe`,
// `0251.0376.0251.0376`, `[::ffff:169.254.169.254]`, `[64:ff9b::a9fe:a9fe]`,
// `METADATA.google.internal.`, `[fe80::1%eth0]`. `canonicalHost` brings each to one form (the
// WHATWG URL host parser does the numeric IPv4 forms, percent-decoding and IDNA, as it does for
// every URL ferry follows) and `classifyHost` judges that form, so no spelling slips past.
import { isIP } from 'node:net';
import { FerryError } from '../errors.ts';

/** `host` without its port: `[::1]:5000` → `::1`, `a.b:443` → `a.b`. */
export function hostOf(hostPort: string): string {
  if (hostPort.startsWith('[')) return hostPort.slice(1, hostPort.indexOf(']'));
  const colon = hostPort.lastIndexOf(':');
  return colon >= 0 && hostPort.indexOf(':') === colon ? hostPort.slice(0, colon) : hostPort;
}

/** What a host is, as far as the address policy cares. */
export type HostClass = 'loopback' | 'metadata' | 'link-local' | 'other';

/** A host in one form: an IPv4 as its 4 bytes, an IPv6 as its 16, a name lower-case without trailing dots. */
export type CanonicalHost = { kind: 'ipv4'; bytes: number[] } | { kind: 'ipv6'; bytes: number[] } | { kind: 'name'; name: string };

/**
 * `host` (a URL's hostname or a bare host, with or without brackets, without a port) in one
 * form. An IPv6 zone (`%eth0`, `%25eth0`) is dropped: it picks an interface, not an address.
 */
export function canonicalHost(host: string): CanonicalHost {
  let h = host.trim().toLowerCase();
  if (h.startsWith('[') && h.endsWith(']')) h = h.slice(1, -1);
  const zone = h.indexOf('%');
  if (zone >= 0 && h.includes(':')) h = h.slice(0, zone);
  if (isIP(h) === 6) return { kind: 'ipv6', bytes: ipv6Bytes(new URL(`http://[${h}]/`).hostname.slice(1, -1)) };
  h = h.replace(/\.+$/, '');
  // Not a bare host (userinfo, a port, a path): not for the URL parser, which would read a part of it.
  if (/[/?#@:\\\s]/.test(h)) return { kind: 'name', name: h };
  let parsed: string;
  try {
    // The URL parser reads every IPv4 form (decimal, hex, octal, 1 to 4 parts) and decodes names.
    parsed = new URL(`http://${h}/`).hostname;
  } catch {
    return { kind: 'name', name: h };
  }
  if (isIP(parsed) === 4) return { kind: 'ipv4', bytes: parsed.split('.').map(Number) };
  return { kind: 'name', name: parsed.replace(/\.+$/, '') };
}

/** The 16 bytes of an IPv6 address in the URL parser's form (hex groups, `::` at most once, no dotted tail). */
function ipv6Bytes(h: string): number[] {
  const [head, tail] = h.includes('::') ? h.split('::') : [h, undefined];
  const groups = (s: string | undefined) => (s ? s.split(':').map((g) => Number.parseInt(g, 16)) : []);
  const front = groups(head);
  const back = groups(tail);
  const all = tail === undefined ? front : [...front, ...new Array<number>(8 - front.length - back.length).fill(0), ...back];
  return all.flatMap((g) => [g >> 8, g & 0xff]);
}

/**
 * The IPv4 address an IPv6 address stands for, when it embeds one that a host on the way may
 * reach instead: IPv4-mapped (`::ffff:a.b.c.d`), IPv4-translated (`::ffff:0:a.b.c.d`),
 * IPv4-compatible (`::a.b.c.d`) and NAT64's well-known prefix (`64:ff9b::a.b.c.d`).
 */
function embeddedIpv4(b: number[]): number[] | undefined {
  const zero = (from: number, to: number) => b.slice(from, to).every((x) => x === 0);
  const tail = b.slice(12);
  if (zero(0, 10) && b[10] === 0xff && b[11] === 0xff) return tail;
  if (zero(0, 8) && b[8] === 0xff && b[9] === 0xff && zero(10, 12)) return tail;
  if (zero(0, 12) && !zero(12, 15)) return tail; // not :: or ::1
  if (b[0] === 0 && b[1] === 0x64 && b[2] === 0xff && b[3] === 0x9b && zero(4, 12)) return tail;
  return undefined;
}

/** AWS's instance metadata service over IPv6, as bytes. */
const AWS_METADATA_V6 = ipv6Bytes('fd00:ec2::254').join(',');

/** Names that reach a cloud's instance metadata service. */
const METADATA_NAMES = new Set(['metadata', 'metadata.google.internal', 'instance-data', 'instance-data.ec2.internal']);

function classifyIpv4(b: number[]): HostClass {
  if (b[0] === 127) return 'loopback';
  if (b[0] === 169 && b[1] === 254) return b[2] === 169 && b[3] === 254 ? 'metadata' : 'link-local';
  // Alibaba Cloud's metadata service.
  if (b[0] === 100 && b[1] === 100 && b[2] === 100 && b[3] === 200) return 'metadata';
  return 'other';
}

export function classifyHost(host: string): HostClass {
  const c = canonicalHost(host);
  if (c.kind === 'name') {
    if (c.name === 'localhost' || c.name.endsWith('.localhost')) return 'loopback';
    return METADATA_NAMES.has(c.name) ? 'metadata' : 'other';
  }
  if (c.kind === 'ipv4') return classifyIpv4(c.bytes);
  const b = c.bytes;
  if (b.slice(0, 15).every((x) => x === 0) && b[15] === 1) return 'loopback';
  if (b.join(',') === AWS_METADATA_V6) return 'metadata';
  if (b[0] === 0xfe && (b[1]! & 0xc0) === 0x80) return 'link-local';
  const v4 = embeddedIpv4(b);
  return v4 ? classifyIpv4(v4) : 'other';
}

export function isLoopbackHost(host: string): boolean {
  return classifyHost(host) === 'loopback';
}

/** Link-local and cloud metadata addresses (169.254.0.0/16, fe80::/10, fd00:ec2::254, the metadata names), however spelled. */
export function isMetadataOrLinkLocal(host: string): boolean {
  const c = classifyHost(host);
  return c === 'metadata' || c === 'link-local';
}

/**
 * `value` (a Location, a Link, a realm) as a URL, relative to `base`; a SOURCE_INVALID error
 * naming `what` when it is not one (the registry client blames the destination when it sent it).
 */
export function parseUrlFrom(value: string, base: URL | undefined, what: string): URL {
  try {
    return new URL(value, base);
  } catch {
    throw new FerryError('SOURCE_INVALID', `${what} from ${base?.host ?? 'the registry'} is not a URL: ${JSON.stringify(value.slice(0, 200))}`);
  }
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
