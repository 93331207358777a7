// Where a blob download's CPU goes in Node, below ferry: one 256 MiB blob from a real
// distribution registry on loopback, read and hashed (sha256) by
//   - undici (what ferry uses: llhttp in WebAssembly, a fresh 64 KiB buffer per socket read),
//     and undici reading without hashing (what the verification costs on top),
//   - node:http (llhttp in C++, a fresh buffer per read),
//   - a bare socket reading into one reused 256 KiB, 1 MiB or 4 MiB buffer (`onread`), HTTP head skipped by hand,
// and hashing the same bytes from memory alone. CPU is this process's user + sys (the registry
// is another process). Used for docs/performance.md ("the data path's floor").
//   node bench/datapath.ts [--mib N] [--runs N]
import { createHash } from 'node:crypto';
import http from 'node:http';
import net from 'node:net';
import { parseArgs } from 'node:util';
import { Agent, request } from 'undici';
import { startDistribution } from '../test/harness/distribution.ts';
import { clientFor } from '../test/harness/oci-client.ts';
import { seededBytes } from '../test/harness/seed.ts';

const { values } = parseArgs({ options: { mib: { type: 'string', default: '256' }, runs: { type: 'string', default: '5' } } });
const SIZE = Number(values.mib) * 1024 * 1024;
const RUNS = Number(values.runs);

const registry = await startDistribution();
const agent = new Agent({ connections: 1 });
try {
  const bytes = seededBytes('bench/datapath', SIZE);
  const ref = await clientFor(registry).pushBlob('bench/datapath', bytes);
  const url = new URL(`http://${registry.host}/v2/bench/datapath/blobs/${ref.digest}`);
  const expected = ref.digest.slice('sha256:'.length);

  const reusedBuffer = Buffer.allocUnsafe(256 * 1024);
  const reused1MiB = Buffer.allocUnsafe(1024 * 1024);
  const reused4MiB = Buffer.allocUnsafe(4 * 1024 * 1024);
  const ways: Record<string, () => Promise<string>> = {
    'undici + sha256': async () => {
      const res = await request(url, { dispatcher: agent });
      const h = createHash('sha256');
      for await (const chunk of res.body) h.update(chunk as Buffer);
      return h.digest('hex');
    },
    'undici, no hash (the verification left out)': async () => {
      const res = await request(url, { dispatcher: agent });
      let n = 0;
      for await (const chunk of res.body) n += (chunk as Buffer).byteLength;
      return n === SIZE ? expected : `${n} bytes`;
    },
    'node:http + sha256': () =>
      new Promise((resolve, reject) => {
        http
          .get(url, (res) => {
            const h = createHash('sha256');
            res.on('data', (chunk: Buffer) => h.update(chunk));
            res.on('end', () => resolve(h.digest('hex')));
            res.on('error', reject);
          })
          .on('error', reject);
      }),
    // onread calls the buffer function for every read: returning the same buffer each time reuses it.
    'socket, reused buffer + sha256': () => rawSocket(url, SIZE, () => reusedBuffer),
    // The pipe's buffer when it reads alone (src/transport/raw-http.ts ReadBuffer grows it to 4 MiB): fewer, larger reads.
    'socket, reused 1 MiB + sha256': () => rawSocket(url, SIZE, () => reused1MiB),
    'socket, reused 4 MiB + sha256': () => rawSocket(url, SIZE, () => reused4MiB),
    'socket, data events + sha256': () => rawSocket(url, SIZE, undefined),
    'socket, fresh 256 KiB per read + sha256': () => rawSocket(url, SIZE, () => Buffer.allocUnsafe(256 * 1024)),
    'sha256 from memory (no I/O)': async () => {
      const h = createHash('sha256');
      for (let o = 0; o < SIZE; o += 64 * 1024) h.update(bytes.subarray(o, o + 64 * 1024));
      return h.digest('hex');
    },
  };

  const cpu: Record<string, number[]> = {};
  const faults: Record<string, number[]> = {};
  for (let run = 0; run < RUNS; run++) {
    for (const [name, way] of Object.entries(ways)) {
      const before = process.cpuUsage();
      const faultsBefore = process.resourceUsage().minorPageFault;
      const hex = await way();
      const used = process.cpuUsage(before);
      (faults[name] ??= []).push(process.resourceUsage().minorPageFault - faultsBefore);
      if (hex !== expected) throw new Error(`${name}: hashed to ${hex}, not ${expected}`);
      (cpu[name] ??= []).push((used.user + used.system) / 1000);
    }
  }
  console.log(`${mib(SIZE)} blob, ${RUNS} runs each, alternating; CPU ms of this process (median, min–max), minor page faults (median):`);
  for (const [name, ms] of Object.entries(cpu)) {
    const s = [...ms].sort((a, b) => a - b);
    console.log(`  ${name.padEnd(40)} ${s[Math.floor(s.length / 2)]!.toFixed(0).padStart(5)}  (${s[0]!.toFixed(0)}–${s[s.length - 1]!.toFixed(0)})  ${median(faults[name]!)} faults`);
  }
} finally {
  await agent.close();
  await registry.stop();
}

/** A bare socket, HTTP head skipped by hand; `buffer` gives the buffer each read goes into (onread: a fresh one, or the same one again), else Node's 'data' events. */
function rawSocket(url: URL, size: number, buffer: (() => Buffer) | undefined): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    let inHead = true;
    let got = 0;
    const take = (data: Buffer): void => {
      if (inHead) {
        const end = data.indexOf('\r\n\r\n');
        if (end < 0) return;
        data = data.subarray(end + 4);
        inHead = false;
      }
      h.update(data);
      got += data.byteLength;
      if (got >= size) {
        socket.destroy();
        resolve(h.digest('hex'));
      }
    };
    const socket = net.connect({
      host: url.hostname,
      port: Number(url.port),
      ...(buffer ? { onread: { buffer, callback: (n: number, buf: Buffer) => (take(buf.subarray(0, n)), true) } } : {}),
    } as net.NetConnectOpts);
    if (!buffer) socket.on('data', take);
    socket.on('connect', () => socket.write(`GET ${url.pathname} HTTP/1.1\r\nHost: ${url.host}\r\nConnection: close\r\n\r\n`));
    socket.on('error', reject);
  });
}

function median(xs: number[]): number {
  return [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
}

function mib(n: number): string {
  return `${(n / 1024 / 1024).toFixed(0)} MiB`;
}
