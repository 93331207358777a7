// A bench lab for profiling by hand: start the benchmark's two registries, seed the chosen
// workloads, print where they are, and keep running until interrupted (Ctrl-C stops and removes them).
//   node bench/lab.ts many,multiarch   →   ferry copy --json SRC/bench/many:v1 DST/x:1 ...
import { writeFileSync } from 'node:fs';
import { OciClient } from '../test/harness/oci-client.ts';
import { BenchRegistry } from './registries.ts';
import { selectWorkloads, workloads } from './workloads.ts';

const wanted = (process.argv[2] ?? 'many,multiarch,big').split(',');
const src = await BenchRegistry.start('source');
const dst = await BenchRegistry.start('destination');
const client = new OciClient({ host: src.host, timeoutMs: 600_000 });
const seeded: Record<string, string[]> = {};
for (const w of selectWorkloads(workloads(false), wanted)) {
  const images = await w.seed(client, false);
  seeded[w.name] = images.map((i) => `${src.host}/${i.repo}:${i.tag}`);
}
const info = { source: src.host, destination: dst.host, sourcePid: src.pid, destinationPid: dst.pid, images: seeded };
writeFileSync(process.argv[3] ?? '/tmp/lab/lab.json', JSON.stringify(info, null, 2));
console.log(JSON.stringify(info, null, 2));
const stop = async () => {
  await Promise.all([src.stop(), dst.stop()]);
  process.exit(0);
};
process.on('SIGINT', stop);
process.on('SIGTERM', stop);
setInterval(() => {}, 1 << 30);
