// Copy endpoints for registry references: the end, what to read or write, and the names the
// report uses.
import { formatReference, referenceTarget, repositoryName, type Reference } from '../../reference/reference.ts';
import type { RegistryClient } from '../../registry/client.ts';
import type { CopyDestination, CopySource } from '../types.ts';
import { RegistryDestination, type RegistryDestinationOptions } from './destination.ts';
import { RegistrySource } from './source.ts';

export function registryCopySource(ref: Reference, client: RegistryClient): CopySource {
  const s: CopySource = { end: new RegistrySource(client, ref.repository), target: ref.digest ?? referenceTarget(ref), name: formatReference(ref) };
  if (ref.digest) s.digest = ref.digest;
  return s;
}

export function registryCopyDestination(ref: Reference, client: RegistryClient, options?: RegistryDestinationOptions): CopyDestination {
  const d: CopyDestination = { end: new RegistryDestination(client, ref.repository, options), name: formatReference(ref), repository: repositoryName(ref) };
  if (ref.tag !== undefined) d.tag = ref.tag;
  if (ref.digest !== undefined) d.digest = ref.digest;
  return d;
}
