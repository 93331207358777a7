// What ECR's layer-upload API costs against a monolithic Docker-API PUT, for one large layer:
// bytes on the wire (TLS, both directions) and ferry's CPU, with the real ferry CLI against the
// test stand-ins (the ECR API stand-in behind TLS, the "ECR" registry host behind its TLS front).
// The numbers and the threshold chosen from them are in docs/resume.md ("ECR").
//
//   node scripts/ecr-overhead.ts [--size-mib 256] [--runs 3] [--part-mib 10]
//
// Each run copies the same one-layer image from a local registry to a fresh ECR repository, once
// with every layer through the layer API (FERRY_ECR_LAYER_API_MIN_BYTES=0) and once with none
// (the Docker API's POST + one PUT), alternating which goes first. CPU is ferry's own (user +
// system, read by a preloaded module as the process exits); wall time includes the stand-in's
// work and is only indicative on a shared machine.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer as createNetServer, connect as netConnect, type AddressInfo, type Socket } from 'node:net';
import { createServer as createTlsServer } from 'node:tls';
import { createServer as createHttpServer, type IncomingMessage } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { AwsStandin, TEST_ACCESS_KEY_ID, TEST_SECRET_ACCESS_KEY } from '../test/harness/aws-standin.ts';
import { makeTestPki, startEcrRegistry, type ConnectProxy } from '../test/harness/cloud-registry.ts';
import { startDistribution } from '../test/harness/distribution.ts';
import { pushLargeImage } from '../test/harness/fixtures.ts';
import { clientFor } from '../test/harness/oci-client.ts';
import { freshHome, isolatedEnv } from '../test/cloud/cloud-e2e.ts';

const MiB = 1024 * 1024;
const { values } = parseArgs({ options: { 'size-mib': { type: 'string', default: '256' }, runs: { type: 'string', default: '3' }, 'part-mib': { type: 'string', default: '10' } } });
const size = Number(values['size-mib']) * MiB;
const runs = Number(values.runs);
const partBytes = Number(values['part-mib']) * MiB;
const MAIN = new URL('../src/main.ts', import.meta.url).pathname;
const PASSWORD = 'eyJwYXlsb2FkIjoiZmVycnktZWNyLW92ZXJoZWFkIn0';

/** Bytes through a set of sockets: what each raw (TLS) socket read and wrote, counted live. */
class Wire {
  private readonly sockets = new Set<Socket>();
  private closedUp = 0;
  private closedDown = 0;
  add(s: Socket): void {
    this.sockets.add(s);
    s.on('close', () => {
      this.closedUp += s.bytesRead;
      this.closedDown += s.bytesWritten;
      this.sockets.delete(s);
    });
  }
  /** Client → server and server → client bytes so far. */
  totals(): { up: number; down: number } {
    let up = this.closedUp;
    let down = this.closedDown;
    for (const s of this.sockets) {
      up += s.bytesRead;
      down += s.bytesWritten;
    }
    return { up, down };
  }
  destroy(): void {
    for (const s of this.sockets) s.destroy();
  }
}

/** A CONNECT proxy like the harness's, counting the tunnelled (TLS) bytes to the registry. */
async function countingProxy(wire: Wire): Promise<ConnectProxy> {
  const routes = new Map<string, number>();
  const connects: ConnectProxy['connects'] = [];
  const server = createHttpServer((_req, res) => res.writeHead(403).end());
  server.on('connect', (req: IncomingMessage, client: Socket, head: Buffer) => {
    const target = String(req.url ?? '').toLowerCase();
    const to = routes.get(target.split(':')[0] ?? '');
    connects.push({ target, routed: to !== undefined });
    if (to === undefined) return void client.end('HTTP/1.1 403 Forbidden\r\n\r\n');
    client.on('error', () => undefined);
    const upstream = netConnect(to, '127.0.0.1', () => {
      client.write('HTTP/1.1 200 Connection Established\r\n\r\n');
      wire.add(client);
      if (head.length) upstream.write(head);
      upstream.pipe(client);
      client.pipe(upstream);
    });
    upstream.on('error', () => client.destroy());
    upstream.on('close', () => client.destroy());
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    connects,
    plainRequests: [],
    route: (name, port) => void routes.set(name.toLowerCase(), port),
    stop: async () => {
      wire.destroy();
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/** TLS in front of the ECR API stand-in (the real API is HTTPS): `https://localhost:PORT`. */
async function tlsFront(cert: Buffer, key: Buffer, to: number, wire: Wire): Promise<{ url: string; stop(): Promise<void> }> {
  const tls = createTlsServer({ cert, key }, (s) => {
    const up = netConnect(to, '127.0.0.1');
    s.pipe(up).pipe(s);
    s.on('error', () => up.destroy());
    up.on('error', () => s.destroy());
  });
  tls.on('connection', (raw: Socket) => wire.add(raw));
  await new Promise<void>((r) => tls.listen(0, '127.0.0.1', r));
  return {
    url: `https://localhost:${(tls.address() as AddressInfo).port}`,
    stop: async () => {
      wire.destroy();
      await new Promise<void>((r) => tls.close(() => r()));
    },
  };
}

interface Run {
  mode: 'layer API' | 'Docker PUT';
  cpuMs: number;
  userMs: number;
  sysMs: number;
  wallMs: number;
  maxRssMiB: number;
  registryUp: number;
  registryDown: number;
  apiUp: number;
  apiDown: number;
  partBodies: number;
  calls: number;
}

const preloadDir = mkdtempSync(join(tmpdir(), 'ferry-ecr-overhead-'));
const preload = join(preloadDir, 'cpu.mjs');
writeFileSync(
  preload,
  `import { writeSync } from 'node:fs';\nprocess.on('exit', () => { const c = process.cpuUsage(); writeSync(2, '\\nFERRY_CPU ' + JSON.stringify({ user: c.user, system: c.system, maxRSS: process.resourceUsage().maxRSS }) + '\\n'); });\n`,
);

const aws = await AwsStandin.start({ region: 'us-west-2', ecrPassword: PASSWORD });
const pki = makeTestPki([aws.registryHost(), 'localhost']);
const registryWire = new Wire();
const apiWire = new Wire();
const proxy = await countingProxy(registryWire);
const [ecr, local] = await Promise.all([startEcrRegistry({ aws, pki, proxy, password: PASSWORD }), startDistribution()]);
const api = await tlsFront(pki.cert, pki.key, Number(new URL(aws.ecr.url).port), apiWire);
try {
  console.log(`pushing a ${size / MiB} MiB layer to the source registry…`);
  await pushLargeImage(clientFor(local), 'bench/app', 'v1', { layerCount: 1, layerSize: size });
  const results: Run[] = [];
  for (let i = 0; i < runs; i++) {
    const order: Run['mode'][] = i % 2 === 0 ? ['layer API', 'Docker PUT'] : ['Docker PUT', 'layer API'];
    for (const mode of order) {
      const repo = `bench/${mode === 'layer API' ? 'api' : 'put'}-${i}`;
      aws.addRepository(repo);
      const reg0 = registryWire.totals();
      const api0 = apiWire.totals();
      const parts0 = aws.ecrBytes('UploadLayerPart');
      const calls0 = [...aws.calls.values()].reduce((a, b) => a + b, 0);
      const home = freshHome();
      const env = isolatedEnv(
        {
          ...aws.env(),
          AWS_ENDPOINT_URL_ECR: api.url,
          HTTPS_PROXY: proxy.url,
          NO_PROXY: '127.0.0.1,localhost',
          NODE_EXTRA_CA_CERTS: pki.caPath,
          AWS_ACCESS_KEY_ID: TEST_ACCESS_KEY_ID,
          AWS_SECRET_ACCESS_KEY: TEST_SECRET_ACCESS_KEY,
          FERRY_ECR_LAYER_API_MIN_BYTES: mode === 'layer API' ? '0' : String(Number.MAX_SAFE_INTEGER),
          FERRY_ECR_PART_BYTES: String(partBytes),
        },
        home,
      );
      const started = Date.now();
      const out = await new Promise<{ code: number | null; stderr: string }>((resolve, reject) => {
        const child = spawn(process.execPath, ['--import', preload, MAIN, 'copy', '--json', '--no-create-repository', '--state-dir', home.state, `${local.host}/bench/app:v1`, `${ecr.host}/${repo}:v1`], {
          env: { ...process.env, ...env } as NodeJS.ProcessEnv,
          stdio: ['ignore', 'ignore', 'pipe'],
        });
        let stderr = '';
        child.stderr.on('data', (d) => (stderr += d));
        child.on('error', reject);
        child.on('close', (code) => resolve({ code, stderr }));
      });
      const wallMs = Date.now() - started;
      if (out.code !== 0) throw new Error(`${mode} run ${i} failed:\n${out.stderr.slice(-3000)}`);
      await new Promise((r) => setTimeout(r, 200)); // let the sockets close
      const cpu = JSON.parse(/FERRY_CPU (.*)/.exec(out.stderr)?.[1] ?? '{}') as { user: number; system: number; maxRSS: number };
      const reg = registryWire.totals();
      const apiT = apiWire.totals();
      const run: Run = {
        mode,
        userMs: cpu.user / 1000,
        sysMs: cpu.system / 1000,
        cpuMs: (cpu.user + cpu.system) / 1000,
        wallMs,
        maxRssMiB: cpu.maxRSS / 1024,
        registryUp: reg.up - reg0.up,
        registryDown: reg.down - reg0.down,
        apiUp: apiT.up - api0.up,
        apiDown: apiT.down - api0.down,
        partBodies: aws.ecrBytes('UploadLayerPart') - parts0,
        calls: [...aws.calls.values()].reduce((a, b) => a + b, 0) - calls0,
      };
      results.push(run);
      console.log(
        `run ${i} ${mode.padEnd(10)} up ${((run.registryUp + run.apiUp) / MiB).toFixed(1)} MiB (registry ${(run.registryUp / MiB).toFixed(1)}, ECR API ${(run.apiUp / MiB).toFixed(1)}), ` +
          `down ${((run.registryDown + run.apiDown) / 1024).toFixed(0)} KiB, cpu ${run.cpuMs.toFixed(0)} ms (user ${run.userMs.toFixed(0)}, sys ${run.sysMs.toFixed(0)}), ` +
          `wall ${run.wallMs} ms, max RSS ${run.maxRssMiB.toFixed(0)} MiB, ECR API calls ${run.calls}`,
      );
    }
  }
  const median = (xs: number[]) => {
    const s = [...xs].sort((a, b) => a - b);
    return s[Math.floor(s.length / 2)] as number;
  };
  const row = (mode: Run['mode']) => {
    const rs = results.filter((r) => r.mode === mode);
    return {
      up: median(rs.map((r) => r.registryUp + r.apiUp)),
      down: median(rs.map((r) => r.registryDown + r.apiDown)),
      cpu: median(rs.map((r) => r.cpuMs)),
      wall: median(rs.map((r) => r.wallMs)),
      rss: median(rs.map((r) => r.maxRssMiB)),
    };
  };
  const a = row('layer API');
  const p = row('Docker PUT');
  console.log(`\n${size / MiB} MiB layer, ${partBytes / MiB} MiB parts, median of ${runs} runs each:\n`);
  console.log('| path | bytes up (TLS) | over the layer | bytes down | ferry CPU (user+sys) | max RSS | wall |');
  console.log('|---|---|---|---|---|---|---|');
  for (const [name, r] of [['ECR layer API', a], ['Docker API, one PUT', p]] as const) {
    console.log(
      `| ${name} | ${(r.up / MiB).toFixed(1)} MiB | +${((r.up / size - 1) * 100).toFixed(1)}% | ${(r.down / 1024).toFixed(0)} KiB | ${(r.cpu / 1000).toFixed(2)} s | ${r.rss.toFixed(0)} MiB | ${(r.wall / 1000).toFixed(1)} s |`,
    );
  }
  console.log(`\nlayer API / PUT: bytes up ×${(a.up / p.up).toFixed(3)}, CPU ×${(a.cpu / p.cpu).toFixed(2)} (+${((a.cpu - p.cpu) / (size / MiB)).toFixed(2)} ms per MiB)`);
} finally {
  await Promise.all([api.stop(), ecr.stop(), local.stop(), proxy.stop()]);
  await aws.close();
  rmSync(preloadDir, { recursive: true, force: true });
}
