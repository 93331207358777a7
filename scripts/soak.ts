// The agent's soak, as long as one likes (test/agent/soak.test.ts runs a shorter one in the suite):
//   node scripts/soak.ts [--jobs N] [--images N] [--flags "--max-semi-space-size=1 ..."] [--stdout FILE] [--parts N] [-- agent flags...]
// Prints the peak RSS, each quarter's RSS floor and high, and its job rate, then the same as JSON.
import { buildBundle, describeSoak, runSoak } from '../test/agent/soak.ts';

const argv = process.argv.slice(2);
const dash = argv.indexOf('--');
const own = dash >= 0 ? argv.slice(0, dash) : argv;
const agentArgs = dash >= 0 ? argv.slice(dash + 1) : [];
const value = (name: string): string | undefined => {
  const i = own.indexOf(name);
  return i >= 0 ? own[i + 1] : undefined;
};
const jobs = Number(value('--jobs') ?? 5000);
const images = Number(value('--images') ?? 20);
const flags = value('--flags');
const stdoutFile = value('--stdout');
const parts = Number(value('--parts') ?? 4);

const { bundle, remove } = await buildBundle();
try {
  const r = await runSoak(bundle, {
    jobs,
    images,
    agentArgs,
    ...(flags !== undefined ? { execArgv: flags.split(/\s+/).filter(Boolean) } : {}),
    verbose: true,
    parts,
    ...(stdoutFile ? { stdoutFile } : {}),
    timeoutMs: 3_600_000,
  });
  console.log(describeSoak(r));
  console.log(JSON.stringify(r));
} finally {
  remove();
}
