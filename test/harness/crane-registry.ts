// go-containerregistry's registry (`crane registry serve`): a second, independent registry
// implementation with different upload quirks (PATCH → 204, no upload status GET). No auth, and
// (as served by crane 0.20) no referrers API: artifacts need the fallback tag here too.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { freePort } from './ports.ts';
import { findOnPath, makeTempDir, manageRegistry, readLog, startProcess, waitForRegistry, type RegistryHandle } from './process.ts';

export interface CraneRegistryOptions {
  port?: number;
  /** Blob directory (default: a temp dir). Manifests live in memory: restart() loses them. */
  storageDir?: string;
}

export interface CraneRegistry extends RegistryHandle {
  kind: 'crane';
}

export const CRANE_NOT_FOUND = 'crane not found: install go-containerregistry\'s crane (or bash .ci/run)';

export async function startCraneRegistry(opts: CraneRegistryOptions = {}): Promise<CraneRegistry> {
  const binary = findOnPath('crane');
  if (!binary) throw new Error(CRANE_NOT_FOUND);

  const temp = makeTempDir('crane');
  const dir = temp.path;
  const storageDir = opts.storageDir ?? join(dir, 'blobs');
  mkdirSync(storageDir, { recursive: true });
  const logFile = join(dir, 'registry.log');
  const port = opts.port ?? (await freePort());
  const host = `127.0.0.1:${port}`;
  const url = `http://${host}`;

  const lifecycle = await manageRegistry(
    async () => {
      // --disk keeps blobs out of memory, which matters for the multi-hundred-MiB layer tests.
      const proc = startProcess(binary, ['registry', 'serve', '--address', host, '--disk', storageDir], { logFile, cwd: dir });
      await waitForRegistry(url, proc, logFile);
      return proc;
    },
    () => temp.remove(),
  );
  return {
    kind: 'crane',
    host,
    url,
    storageDir,
    logs: () => readLog(logFile),
    ...lifecycle,
  };
}
