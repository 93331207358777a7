// Does a registry on loopback speak TLS? `kubectl port-forward` and SSH tunnels put TLS
// registries on 127.0.0.1, and a registry run for a test or a demo speaks plain HTTP there. Like
// docker and crane, ferry tries HTTPS first and falls back to plain HTTP, but it asks the
// question apart from the requests: one TCP connection that sends a TLS ClientHello and reads the
// first bytes of the answer. A TLS record (a ServerHello, or an alert) says HTTPS: ferry then
// connects with TLS, verified as always, and a certificate it cannot verify is reported as such,
// never answered by falling back. `HTTP/1.x` says plain HTTP. No answer (refused, closed, silent)
// decides nothing: plain HTTP is used for now and the question is asked again next time.
//
// Why not a real TLS handshake: loading node:tls and making its first secure context costs
// 25-45 ms here, on every start of a copy between plain-HTTP registries, which never need TLS.
// The hello costs one connection and one round trip on loopback.
import net from 'node:net';
import { randomBytes } from 'node:crypto';

export type SchemeProbe = { scheme: 'https' | 'http'; decided: boolean; why: string };

/** Ask `host:port` (loopback) whether it speaks TLS; never rejects. */
export function probeScheme(host: string, port: number, timeoutMs: number): Promise<SchemeProbe> {
  return new Promise((resolve) => {
    let settled = false;
    let received = Buffer.alloc(0);
    const socket = net.connect({ host, port, noDelay: true });
    const done = (p: SchemeProbe) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(p);
    };
    const timer = setTimeout(() => done({ scheme: 'http', decided: false, why: `no answer to a TLS hello within ${timeoutMs} ms` }), timeoutMs);
    socket.once('connect', () => socket.write(clientHello(net.isIP(host) === 0 ? host : undefined)));
    socket.on('data', (d: Buffer) => {
      received = Buffer.concat([received, d]);
      if (received.byteLength < 5) return;
      // A TLS record: handshake (22) or alert (21), protocol version 3.x.
      if ((received[0] === 22 || received[0] === 21) && received[1] === 3) return done({ scheme: 'https', decided: true, why: 'it answered a TLS hello' });
      if (received.subarray(0, 5).toString('latin1') === 'HTTP/') return done({ scheme: 'http', decided: true, why: 'it answered a TLS hello in plain HTTP' });
      done({ scheme: 'http', decided: false, why: 'it answered a TLS hello with neither TLS nor HTTP' });
    });
    socket.on('error', (e: Error & { code?: string }) => done({ scheme: 'http', decided: false, why: `${e.code ?? e.message} on a TLS hello` }));
    socket.on('close', () => done({ scheme: 'http', decided: false, why: 'it closed the connection on a TLS hello' }));
  });
}

/**
 * A TLS ClientHello (record version 3.1, hello version 3.3, TLS 1.3 and 1.2 offered) that any
 * TLS server answers with a ServerHello, a HelloRetryRequest or an alert: all TLS records.
 * Exported for tests.
 */
export function clientHello(serverName?: string): Buffer {
  const u16 = (n: number) => [n >> 8, n & 0xff];
  const vec16 = (bytes: number[]) => [...u16(bytes.length), ...bytes];
  const ext = (type: number, body: number[]) => [...u16(type), ...vec16(body)];
  const extensions = [
    ...(serverName ? ext(0x0000, vec16([0, ...vec16([...Buffer.from(serverName, 'ascii')])])) : []),
    // supported_groups: x25519, secp256r1, secp384r1
    ...ext(0x000a, vec16([0x00, 0x1d, 0x00, 0x17, 0x00, 0x18])),
    // ec_point_formats: uncompressed
    ...ext(0x000b, [1, 0]),
    // signature_algorithms: ECDSA P-256/P-384, RSA-PSS and PKCS#1 with SHA-256/384/512
    ...ext(0x000d, vec16([0x04, 0x03, 0x05, 0x03, 0x08, 0x04, 0x08, 0x05, 0x08, 0x06, 0x04, 0x01, 0x05, 0x01, 0x06, 0x01])),
    // supported_versions: TLS 1.3, TLS 1.2
    ...ext(0x002b, [4, 0x03, 0x04, 0x03, 0x03]),
    // key_share: one x25519 share (any 32 bytes will do: nothing is encrypted with it)
    ...ext(0x0033, vec16([0x00, 0x1d, ...vec16([...randomBytes(32)])])),
  ];
  const suites = [0x13, 0x01, 0x13, 0x02, 0x13, 0x03, 0xc0, 0x2b, 0xc0, 0x2f, 0xc0, 0x2c, 0xc0, 0x30, 0xcc, 0xa9, 0xcc, 0xa8];
  const sessionId = [...randomBytes(32)];
  const hello = [0x03, 0x03, ...randomBytes(32), sessionId.length, ...sessionId, ...vec16(suites), 1, 0, ...vec16(extensions)];
  const handshake = [1, hello.length >> 16, (hello.length >> 8) & 0xff, hello.length & 0xff, ...hello];
  return Buffer.from([22, 3, 1, ...u16(handshake.length), ...handshake]);
}
