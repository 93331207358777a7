// The copy engine's public shapes: what a caller (CLI, agent) passes in and gets back.
import type { Platform } from '../reference/platform.ts';

/** The control-plane contract's Image output. */
export interface ImageOutput {
  repository: string;
  tag?: string;
  digest: string;
  media_type: string;
  /** Bytes of every manifest, config and layer of the image, each counted once. */
  size: number;
  platforms: Array<{ os: string; architecture: string; variant?: string; digest: string }>;
  referrers: Array<{ digest: string; artifact_type: string }>;
}

export interface TransferStats {
  blobs_copied: number;
  blobs_skipped: number;
  blobs_mounted: number;
  /** Uploads that had to start over because the registry dropped the session. */
  blobs_restarted: number;
  /** Uploads that continued from the registry's acknowledged offset (after a failed chunk, or from the journal after a crash). */
  blobs_resumed: number;
  bytes_transferred: number;
  /** Bytes sent that the registry had already acknowledged before (this run or a journaled one): the cost of interruptions. */
  bytes_resent: number;
  /** Source bytes read again only to rebuild the hash state of journaled uploads (nothing sent). */
  bytes_reread_for_hash: number;
  bytes_total: number;
  /** Manifests PUT at the destination (children, referrers, tags); 0 with no blob copied or mounted: it was up to date. */
  manifests_written: number;
  duration_ms: number;
}

export interface CopyReport {
  source: string;
  destination: string;
  image: ImageOutput;
  /** True when `--platform` made ferry write a new index (or single manifest) with a new digest. */
  digest_changed: boolean;
  /** Referrers of the original index that a platform filter left behind. */
  referrers_left_behind: string[];
  /** The tag's previous digest at the destination, when it pointed elsewhere and was overwritten. */
  previous_digest?: string;
  transfer: TransferStats;
  dry_run?: DryRunPlan;
}

export interface DryRunPlan {
  blobs: Array<{ digest: string; size: number; action: 'copy' | 'skip' | 'mount' }>;
  manifests: Array<{ digest: string; media_type: string; action: 'copy' | 'skip' }>;
  bytes_to_copy: number;
}

/** Progress events, for the TTY display and the agent's progress reports. */
export interface CopyProgress {
  bytes_done: number;
  bytes_total: number;
  blobs_done: number;
  blobs_total: number;
  /** Per-blob detail for displays that want it. */
  active: Array<{ digest: string; done: number; size: number }>;
}

export type PlatformSelection = 'all' | Platform[];
