// The WAN mode's workloads: many, multiarch and big are the loopback benchmark's own
// images (bench/workloads.ts, the same digests); big runs on a link capped at 200 Mbit/s. fleet is
// the issue's: 5 images copied by 4 installs into one destination registry (20 copies), ferry
// through one agent, the peers four CLIs at a time. Its 5 images are the loopback fleet's first
// five (app-00 … app-04: the same seeds, so the same digests), each on its own base.
import type { OciClient } from '../../test/harness/oci-client.ts';
import { FULL_SIZES, QUICK_SIZES, seedFleet, selectWorkloads, workloads, type SourceImage, type Workload } from '../workloads.ts';

export interface WanWorkload {
  name: string;
  kind: 'single' | 'fleet';
  description: string;
  /** Installs copying every image into the one destination registry (fleet: 4; else 1). */
  installs: number;
  /** The link's cap for this workload, Mbit/s per direction (big: 200); undefined: the run's setting. */
  bandwidthMbps?: number;
  roundsPerRun: number;
  seed(src: OciClient, quick: boolean): Promise<SourceImage[]>;
}

export const WAN_WORKLOADS = ['many', 'multiarch', 'fleet', 'big'];
export const BIG_MBPS = 200;
export const FLEET_IMAGES = 5;
export const FLEET_INSTALLS = 4;

export function wanWorkloads(quick: boolean): WanWorkload[] {
  const loopback = (name: string): Workload => selectWorkloads(workloads(quick), [name])[0]!;
  const single = (name: string, extra: Partial<WanWorkload> = {}): WanWorkload => {
    const w = loopback(name);
    return { name, kind: 'single', description: w.description, installs: 1, roundsPerRun: w.roundsPerRun ?? 1, seed: (src, q) => w.seed(src, q), ...extra };
  };
  const images = quick ? 2 : FLEET_IMAGES;
  const installs = quick ? 2 : FLEET_INSTALLS;
  return [
    single('many'),
    single('multiarch'),
    {
      name: 'fleet',
      kind: 'fleet',
      description: `${images} images (the loopback fleet's first ${images}: a base of ${(quick ? QUICK_SIZES : FULL_SIZES).fleetBaseLayers.length} layers each + 2 own layers) × ${installs} installs: ${images * installs} copies into one destination registry, cold`,
      installs,
      roundsPerRun: 1,
      seed: (src, q) => seedFleet(src, q, images),
    },
    single('big', { bandwidthMbps: BIG_MBPS, description: `${loopback('big').description}, on a link of ${BIG_MBPS} Mbit/s each way` }),
  ];
}

export function selectWanWorkloads(all: WanWorkload[], wanted: string[] | undefined): WanWorkload[] {
  if (!wanted?.length) return all;
  const unknown = wanted.filter((n) => !all.some((w) => w.name === n));
  if (unknown.length) throw new Error(`unknown WAN workload(s): ${unknown.join(', ')} (have: ${all.map((w) => w.name).join(', ')})`);
  return all.filter((w) => wanted.includes(w.name));
}
