// go-containerregistry's registry (`crane registry serve`): a second, independent registry
// implementation with different upload quirks (PATCH → 204, no upload status GET). No auth, and
// (as served by crane 0.20) no referrers API: artifacts need the fallback tag here too.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { freePort } from './ports.ts';
import { findOnPath, makeTempDir, readLog, startProcess, waitForRegistry, type ManagedProcess, type RegistryHandle } from './process.ts';

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

  let proc: ManagedProcess | undefined;
  const launch = async (): Promise<void> => {
    // --disk keeps blobs out of memory, which matters for the multi-hundred-MiB layer tests.
    proc = startProcess(binary, ['registry', 'serve', '--address', host, '--disk', storageDir], { logFile, cwd: dir });
    await waitForRegistry(url, proc, logFile);
  };
  try {
    await launch();
  } catch (e) {
    temp.remove();
    throw e;
  }

  let stopped = false;
  return {
    kind: 'crane',
    host,
    url,
    storageDir,
    logs: () => readLog(logFile),
    async restart({ downMs = 0 } = {}) {
      if (stopped) throw new Error('restart() after stop()');
      await proc?.stop();
      if (downMs > 0) await new Promise((r) => setTimeout(r, downMs));
      await launch();
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      await proc?.stop();
      temp.remove();
    },
  };
}
