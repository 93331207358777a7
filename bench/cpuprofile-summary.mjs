// Summarize a V8 .cpuprofile (from `node --cpu-prof`): where the time went, by function (self),
// by file (self) and by function including callees. Used for docs/performance.md.
//
//   node bench/cpuprofile-summary.mjs PROFILE.cpuprofile [TOP_SELF=25] [TOP_INCLUSIVE=30]
import { readFileSync } from 'node:fs';

const [file, topSelf = '25', topIncl = '30'] = process.argv.slice(2);
if (!file) {
  console.error('usage: node bench/cpuprofile-summary.mjs PROFILE.cpuprofile [TOP_SELF] [TOP_INCLUSIVE]');
  process.exit(2);
}
const p = JSON.parse(readFileSync(file, 'utf8'));
const total = p.endTime - p.startTime;
const self = new Map();
for (let i = 0; i < p.samples.length; i++) self.set(p.samples[i], (self.get(p.samples[i]) ?? 0) + (p.timeDeltas[i] ?? 0));
const nodes = new Map(p.nodes.map((n) => [n.id, n]));
const parent = new Map();
for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
const short = (url) => url.split('/').slice(-2).join('/');
const key = (cf) => `${cf.functionName || '(anonymous)'} ${short(cf.url)}:${cf.lineNumber}`;

const byFn = new Map();
const byFile = new Map();
const incl = new Map();
for (const n of p.nodes) {
  const t = self.get(n.id) ?? 0;
  if (!t) continue;
  byFn.set(key(n.callFrame), (byFn.get(key(n.callFrame)) ?? 0) + t);
  const f = n.callFrame.url ? short(n.callFrame.url) : `(${n.callFrame.functionName})`;
  byFile.set(f, (byFile.get(f) ?? 0) + t);
  const seen = new Set();
  for (let id = n.id; id !== undefined; id = parent.get(id)) {
    const k = key(nodes.get(id).callFrame);
    if (seen.has(k)) continue;
    seen.add(k);
    incl.set(k, (incl.get(k) ?? 0) + t);
  }
}
const top = (m, n) =>
  [...m]
    .sort((a, b) => b[1] - a[1])
    .slice(0, n)
    .map(([k, v]) => `${(v / 1000).toFixed(1).padStart(9)} ms ${((100 * v) / total).toFixed(1).padStart(5)}%  ${k}`)
    .join('\n');
console.log(`profile: ${(total / 1000).toFixed(0)} ms wall`);
console.log('--- self time by function');
console.log(top(byFn, Number(topSelf)));
console.log('--- self time by file');
console.log(top(byFile, 15));
console.log('--- inclusive time');
console.log(top(incl, Number(topIncl)));
