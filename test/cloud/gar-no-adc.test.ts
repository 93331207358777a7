// No Google credentials anywhere. A file of its own: gcp-metadata remembers, per process,
// whether a metadata server answered, and gar.test.ts has one.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GarCredentials } from '../../src/auth/cloud/gar.ts';
import { FerryError } from '../../src/errors.ts';
import { silentLogger } from '../../src/log/logger.ts';
import { withEnv } from '../harness/aws-standin.ts';

/** A loopback port with nothing listening on it. */
async function closedPort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as { port: number }).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

test('no ADC: no credentials file, no gcloud file, no metadata server → a clear auth error', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-gar-noadc-'));
  const port = await closedPort();
  await withEnv({ GCE_METADATA_HOST: `127.0.0.1:${port}`, HOME: dir, CLOUDSDK_CONFIG: join(dir, 'gcloud') }, async () => {
    const p = new GarCredentials({ side: 'destination', logger: silentLogger() });
    await assert.rejects(p.resolve({ registry: 'us-central1-docker.pkg.dev' }), (e: unknown) => {
      assert.ok(e instanceof FerryError);
      assert.equal(e.code, 'DESTINATION_AUTH');
      assert.match(e.message, /no Google credentials found/);
      assert.match(e.message, /GOOGLE_APPLICATION_CREDENTIALS/);
      return true;
    });
  });
});

test('GOOGLE_APPLICATION_CREDENTIALS naming a missing file → an auth error naming the file', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-gar-noadc-'));
  const missing = join(dir, 'nope.json');
  await withEnv({ GOOGLE_APPLICATION_CREDENTIALS: missing, HOME: dir, CLOUDSDK_CONFIG: join(dir, 'gcloud') }, async () => {
    const p = new GarCredentials({ side: 'source', logger: silentLogger() });
    await assert.rejects(p.resolve({ registry: 'gcr.io' }), (e: unknown) => {
      assert.ok(e instanceof FerryError);
      assert.equal(e.code, 'SOURCE_AUTH');
      assert.ok(e.message.includes(missing), e.message);
      return true;
    });
  });
});
