// An interruption is not a bug: whatever stopped an operation (Ctrl-C, SIGTERM, a cancelled job,
// the agent shutting down) makes it INTERRUPTED, never INTERNAL, on every path a cancel takes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { AbortedError, FerryError, UsageError, contractCode, exitCodeFor, toFerryError } from '../../src/errors.ts';
import { HttpTransport } from '../../src/transport/http.ts';

test('AbortedError, and an AbortError from a library, are INTERRUPTED: exit 130, not INTERNAL', () => {
  const own = new AbortedError();
  assert.equal(own.code, 'INTERRUPTED');
  assert.equal(exitCodeFor(own), 130);
  const foreign = toFerryError(Object.assign(new Error('This operation was aborted'), { name: 'AbortError' }));
  assert.equal(foreign.code, 'INTERRUPTED');
  // Codes the contract knows are reported as they are; the CLI-only ones are mapped.
  assert.equal(contractCode(new UsageError('bad plan')), 'INVALID_PLAN');
  assert.equal(contractCode(new FerryError('SOURCE_AUTH', 'x')), 'SOURCE_AUTH');
});

test('a request cancelled while undici streams its body is INTERRUPTED, not INTERNAL "cancelled"', async () => {
  let arrived!: () => void;
  const started = new Promise<void>((r) => (arrived = r));
  // Reads the body and never answers.
  const server = createServer((req: IncomingMessage) => {
    req.on('data', () => arrived());
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as AddressInfo).port;
  const t = new HttpTransport({ plainHttp: [`127.0.0.1:${port}`] });
  const cancel = new AbortController();
  try {
    async function* body() {
      yield Buffer.from('first piece');
      await new Promise(() => undefined); // the rest never comes
    }
    const sent = t.request({ method: 'PUT', url: new URL(`http://127.0.0.1:${port}/v2/a/blobs/uploads/1`), body: body(), signal: cancel.signal });
    await started;
    cancel.abort();
    await assert.rejects(sent, (e: unknown) => {
      assert.ok(e instanceof FerryError);
      assert.equal(e.code, 'INTERRUPTED', e.message);
      return true;
    });
  } finally {
    await t.close().catch(() => undefined);
    server.closeAllConnections();
    server.close();
  }
});
