// Platforms as written on the command line and in plans: `os/arch[/variant]`. No I/O.
import { UsageError } from '../errors.ts';

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

const PART = /^[a-z0-9._-]+$/;

export function parsePlatform(value: string): Platform {
  const parts = value.split('/');
  if (parts.length < 2 || parts.length > 3 || !parts.every((p) => PART.test(p))) {
    throw new UsageError(`invalid platform "${value}": expected os/arch[/variant], e.g. linux/amd64 or linux/arm64/v8`);
  }
  const p: Platform = { os: parts[0]!, architecture: parts[1]! };
  if (parts[2] !== undefined) p.variant = parts[2];
  return p;
}

export function formatPlatform(p: Platform): string {
  return p.variant ? `${p.os}/${p.architecture}/${p.variant}` : `${p.os}/${p.architecture}`;
}

/**
 * Does a manifest's platform satisfy a requested one? A request without variant matches any variant.
 * Variants are compared as containerd normalizes them: arm64 without a variant is arm64/v8 and
 * amd64 without one is amd64/v1, so `linux/arm64/v8` finds an index entry that omits the variant.
 */
export function platformMatches(want: Platform, have: Platform | undefined): boolean {
  if (!have) return false;
  if (want.os !== have.os || want.architecture !== have.architecture) return false;
  if (want.variant === undefined) return true;
  return normalizedVariant(want.architecture, want.variant) === normalizedVariant(have.architecture, have.variant);
}

const DEFAULT_VARIANT: Record<string, string> = { arm64: 'v8', amd64: 'v1' };

function normalizedVariant(architecture: string, variant: string | undefined): string | undefined {
  return variant === undefined || variant === '' ? DEFAULT_VARIANT[architecture] : variant;
}
