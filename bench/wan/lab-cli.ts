// The WAN lab left running, for measuring and profiling by hand (as bench/lab.ts is for loopback):
// start the TLS registries and the latency proxy, seed the chosen workloads, print how to reach
// them, and keep running until interrupted (Ctrl-C stops and removes everything). Needs root.
//   node bench/wan/lab-cli.ts many,multiarch --rtt 50 [--bandwidth 200] [--window none]
//   → LAB_EXEC dist/ferry copy source.wan.ferry.test/bench/many:v1 destination.wan.ferry.test/x/many:1
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { startWanLab } from './lab.ts';
import { selectWanWorkloads, wanWorkloads } from './workloads.ts';

const { values, positionals } = parseArgs({
  options: {
    rtt: { type: 'string', default: '50' },
    bandwidth: { type: 'string' },
    window: { type: 'string', default: 'tcp' },
    out: { type: 'string', default: '/tmp/wan-lab.json' },
  },
  allowPositionals: true,
});
const wanted = (positionals[0] ?? 'many,multiarch').split(',');
const lab = await startWanLab({ log: (l) => console.error(l) });
const stop = async () => {
  await lab.stop();
  process.exit(0);
};
process.on('SIGINT', stop);
process.on('SIGTERM', stop);
const seeded: Record<string, string[]> = {};
for (const w of selectWanWorkloads(wanWorkloads(false), wanted)) {
  const images = await w.seed(lab.srcClient, false);
  seeded[w.name] = images.map((i) => `${lab.names.source}/${i.repo}:${i.tag}`);
}
await lab.startLink({
  rttMs: Number(values.rtt),
  bandwidthMbps: values.bandwidth ? Number(values.bandwidth) : undefined,
  window: values.window === 'none' ? 'none' : 'tcp',
});
const info = { labExec: lab.execPath, names: lab.names, addresses: lab.addresses, ca: lab.pki.caPath, harness: { source: lab.src.host, destination: lab.dst.host }, images: seeded };
writeFileSync(values.out, JSON.stringify(info, null, 2));
console.log(JSON.stringify(info, null, 2));
setInterval(() => {}, 1 << 30);
