// Archives are streamed, not buffered: writing and reading a 320 MiB layer through an archive
// raises the process's peak RSS by far less than the layer's size (a buffering end would add at
// least 320 MiB). Each run happens in a child process of its own (memory-child.ts), after a
// 64 MiB warm-up round trip, so the baseline already includes the streams' steady state.
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { makeTempDir } from '../harness/process.ts';

const tmp = makeTempDir('ends-memory');
after(() => tmp.remove());
const child = fileURLToPath(new URL('./memory-child.ts', import.meta.url));
const LAYER_MIB = 320;
const MAX_GROWTH_MIB = 64;

interface Report {
  beforeKiB: number;
  afterKiB: number;
  size: number;
  digest: string;
  read: string;
}

function run(transport: string): Promise<Report> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [child, tmp.path, transport, String(LAYER_MIB)], { maxBuffer: 1024 * 1024 }, (err, stdout, stderr) => {
      if (err) return reject(new Error(`${transport}: ${err.message}\n${stderr}`));
      try {
        resolve(JSON.parse(stdout.trim().split('\n').pop()!) as Report);
      } catch (e) {
        reject(new Error(`${transport}: unreadable report ${JSON.stringify(stdout)}: ${(e as Error).message}`));
      }
    });
  });
}

describe('archives stream', () => {
  it(`a ${LAYER_MIB} MiB layer through oci-archive and docker-archive: peak RSS grows < ${MAX_GROWTH_MIB} MiB`, async () => {
    const reports = await Promise.all([run('oci-archive'), run('docker-archive')]);
    for (const [i, r] of reports.entries()) {
      const name = i === 0 ? 'oci-archive' : 'docker-archive';
      assert.equal(r.size, LAYER_MIB * 1024 * 1024);
      assert.equal(r.read, r.digest, `${name}: the layer read back is the layer written`);
      const growthMiB = (r.afterKiB - r.beforeKiB) / 1024;
      assert.ok(growthMiB < MAX_GROWTH_MIB, `${name}: peak RSS grew ${growthMiB.toFixed(1)} MiB (from ${(r.beforeKiB / 1024).toFixed(0)} MiB) for a ${LAYER_MIB} MiB layer`);
    }
  });
});
