// What SHA-256 alone costs on this machine, in CPU seconds per GiB: the floor under the CPU of any
// copier that verifies every byte it copies (ferry hashes each piece as it passes; so does crane).
// It is the cheapest case on purpose — the bytes come from one small buffer that stays in the
// cache, in the 256 KiB pieces ferry's pipe reads — so a floor built on it is never too high.
// Run by the benchmark with the Node ferry embeds (the same OpenSSL):
//   node bench/sha256-cost.mjs [MiB]   →   {"bytes":…,"cpu_s":…,"cpu_s_per_gib":…}
import { createHash } from 'node:crypto';

const MiB = 1024 * 1024;
const total = Number(process.argv[2] ?? 1024) * MiB;
if (!Number.isInteger(total) || total <= 0) {
  console.error('usage: node bench/sha256-cost.mjs [MiB to hash, default 1024]');
  process.exit(2);
}
const PIECE = 256 * 1024;
const buffer = Buffer.allocUnsafe(4 * MiB);
for (let i = 0; i < buffer.length; i++) buffer[i] = (i * 2654435761) >>> 24; // not all one byte

const before = process.cpuUsage();
const hash = createHash('sha256');
for (let done = 0; done < total; done += PIECE) {
  const at = done % buffer.length;
  hash.update(buffer.subarray(at, at + PIECE));
}
hash.digest();
const used = process.cpuUsage(before);
const cpu_s = (used.user + used.system) / 1e6;
console.log(JSON.stringify({ bytes: total, cpu_s, cpu_s_per_gib: cpu_s / (total / 1024 ** 3) }));
