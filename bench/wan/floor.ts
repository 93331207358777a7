// The round-trip floor of a copy across the WAN lab: the least time the work needs at the lab's
// RTT, whoever does it, computed from the image's shape and the link (docs/performance.md, "The
// WAN lab", has the model and why). An ideal copier, starting knowing nothing:
//
//   2   TCP handshake, then TLS 1.3 (one round trip; the first request goes with the client's
//       Finished), to both registries at once;
//   L   manifest GETs, one per level (an image: 1; an index: the index, then its children);
//   1   the blob GETs, and at once the upload POSTs (the digests are known from the manifests);
//   1   the upload PUTs, their bodies streamed from the GETs as the bytes arrive, answered when
//       the last byte is in;
//   L   manifest PUTs, one per level (children before the index that names them).
//
// Every blob on its own connection, opened at the start (handshakes cost time once). Anonymous
// registries: no /v2/ ping and no token round trip (a registry with Bearer tokens adds one).
// On top of these, the bytes: with the lab's TCP window model a blob of s bytes needs
// windowRounds(s) round trips of data (10 segments, doubling, up to the window cap), the first of
// which is the GET's own; the upload's window opens in step with the download that feeds it, so
// the largest blob adds windowRounds − 1 round trips once. With a bandwidth cap, every distinct
// byte must cross the link once each way: bytes × 8 / rate. The two overlap, so the floor takes
// the larger of them.
import type { OciClient } from '../../test/harness/oci-client.ts';
import { DEFAULT_MAX_WINDOW, INITIAL_WINDOW } from './latency-proxy.ts';
import type { LinkSettings } from './lab.ts';

const INDEX_TYPES = ['application/vnd.oci.image.index.v1+json', 'application/vnd.docker.distribution.manifest.list.v2+json'];

/** What the floor needs to know about the work. */
export interface WorkShape {
  /** 1 for images, 2 when a root is an index of images. */
  levels: number;
  /** The largest blob, bytes. */
  largestBlob: number;
  /** Every distinct blob's bytes, once: what must cross the link. */
  bytes: number;
}

export interface Floor {
  seconds: number;
  /** Protocol round trips plus the largest blob's window rounds. */
  round_trips: number;
  protocol_round_trips: number;
  window_round_trips: number;
  /** bytes × 8 / rate, when the link has a cap. */
  transfer_s: number;
  /** The floor in words, for the report. */
  explain: string;
}

/** Round trips of data a fresh TCP connection needs to carry `bytes` (initial window 10 segments, doubling, capped). */
export function windowRounds(bytes: number, maxWindow = DEFAULT_MAX_WINDOW): number {
  let rounds = 0;
  let sent = 0;
  let cwnd = INITIAL_WINDOW;
  while (sent < bytes) {
    sent += cwnd;
    cwnd = Math.min(maxWindow, cwnd * 2);
    rounds++;
  }
  return Math.max(1, rounds);
}

const fmtBytes = (n: number) => (n >= 1024 * 1024 ? `${(n / 1024 / 1024).toFixed(1)} MiB` : `${(n / 1024).toFixed(0)} KiB`);

export function roundTripFloor(shape: WorkShape, link: LinkSettings): Floor {
  const protocol = 2 + shape.levels + 1 + 1 + shape.levels;
  const windowExtra = (link.window ?? 'tcp') === 'tcp' ? windowRounds(shape.largestBlob, link.maxWindowBytes) - 1 : 0;
  const transfer = link.bandwidthMbps ? (shape.bytes * 8) / (link.bandwidthMbps * 1e6) : 0;
  const rtt = link.rttMs / 1000;
  const seconds = protocol * rtt + Math.max(windowExtra * rtt, transfer);
  const parts = [
    `2 handshakes (TCP, TLS 1.3)`,
    `${shape.levels} manifest GET${shape.levels > 1 ? 's (index, children)' : ''}`,
    'blob GETs ‖ upload POSTs',
    'upload PUTs (bodies streamed from the GETs)',
    `${shape.levels} manifest PUT${shape.levels > 1 ? 's (children, index)' : ''}`,
  ];
  const window = windowExtra ? `${windowExtra} for the largest blob's TCP window to open (${fmtBytes(shape.largestBlob)} from 10 segments)` : '';
  const transferText = transfer ? `${transfer.toFixed(2)} s for ${fmtBytes(shape.bytes)} at ${link.bandwidthMbps} Mbit/s` : '';
  const extra = transfer > windowExtra * rtt ? transferText + (window ? ` (it covers the ${window})` : '') : window + (transferText ? ` (it covers the ${transferText})` : '');
  return {
    seconds,
    round_trips: protocol + windowExtra,
    protocol_round_trips: protocol,
    window_round_trips: windowExtra,
    transfer_s: transfer,
    explain: `${protocol} RTT: ${parts.join(', ')}${extra ? `; + ${extra}` : ''}`,
  };
}

/** The shape of images in a registry, from their manifests (no blob is downloaded). */
export async function workShape(client: OciClient, images: Array<{ repo: string; tag: string }>): Promise<WorkShape> {
  const blobs = new Map<string, number>();
  let levels = 1;
  for (const { repo, tag } of images) {
    const walk = async (ref: string, depth: number): Promise<void> => {
      const m = await client.getManifest(repo, ref);
      const doc = JSON.parse(m.bytes.toString('utf8')) as { mediaType?: string; manifests?: Array<{ digest: string }>; config?: { digest: string; size: number }; layers?: Array<{ digest: string; size: number }> };
      if (INDEX_TYPES.includes(doc.mediaType ?? m.mediaType)) {
        levels = Math.max(levels, depth + 1);
        for (const child of doc.manifests ?? []) await walk(child.digest, depth + 1);
        return;
      }
      for (const d of [...(doc.config ? [doc.config] : []), ...(doc.layers ?? [])]) blobs.set(d.digest, d.size);
    };
    await walk(tag, 1);
  }
  const sizes = [...blobs.values()];
  return { levels, largestBlob: Math.max(0, ...sizes), bytes: sizes.reduce((a, b) => a + b, 0) };
}
