// Opening a local end (`oci:`, `oci-archive:`, `docker-archive:`) from its parsed reference.
//
// What the engine must do with them:
// - read the root from `source.target` (the tag given, the layout's only image, or for a
//   docker-archive the root manifest's digest), and call `source.close()` when done;
// - put the root under `destination.target` when it is set, by digest otherwise (a layout lists a
//   root put by digest in index.json without a name; a docker-archive stores its one image either way);
// - respect `maxConcurrentBlobs` (archives take one blob at a time; calls are also serialized
//   inside, so a second concurrent writeBlob just waits);
// - call `commit()` after the last manifest (nothing is visible before: an archive is renamed into
//   place, a layout's index.json replaced) or `abort()` when the copy fails or is cancelled
//   (an archive's temporary file is deleted; a layout's index.json is left untouched);
// - for a destination with `acceptsIndex === false` (docker-archive), select one platform before
//   writing blobs: putManifest of an index fails with USAGE only after the blobs were written.
import type { Logger } from '../log/logger.ts';
import type { ArchiveReference } from './archive-ref.ts';
import type { ImageDestination, ImageSource } from './types.ts';
import { openOciLayoutSource, OciLayoutDestination } from './oci-layout.ts';
import { openOciArchiveSource, OciArchiveDestination } from './oci-archive.ts';
import { DockerArchiveDestination, DockerArchiveSource } from './docker-archive.ts';

export interface LocalImageSource extends ImageSource {
  /** The tag or digest of the root to copy. */
  readonly target: string;
  close(): Promise<void>;
}

export interface LocalImageDestination extends ImageDestination {
  /** The tag to put the root under; undefined: put it by digest. */
  readonly target: string | undefined;
  /** False for docker-archive: one platform, one image. */
  readonly acceptsIndex: boolean;
  commit(): Promise<void>;
  abort(): Promise<void>;
}

export async function openArchiveSource(ref: ArchiveReference, logger: Logger): Promise<LocalImageSource> {
  switch (ref.transport) {
    case 'oci':
      return openOciLayoutSource(ref.path, ref.tag, logger);
    case 'oci-archive':
      return openOciArchiveSource(ref.path, ref.tag, logger);
    case 'docker-archive':
      return DockerArchiveSource.open(ref.path, ref.dockerReference, logger);
  }
}

export async function openArchiveDestination(ref: ArchiveReference, logger: Logger): Promise<LocalImageDestination> {
  switch (ref.transport) {
    case 'oci':
      return OciLayoutDestination.open(ref.path, ref.tag, logger);
    case 'oci-archive':
      return OciArchiveDestination.open(ref.path, ref.tag, logger);
    case 'docker-archive':
      return DockerArchiveDestination.open(ref.path, ref.dockerReference, logger);
  }
}
