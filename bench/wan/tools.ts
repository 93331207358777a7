// The copiers as the WAN lab runs them: TLS verified against the lab's CA (no --insecure, no
// plain-HTTP or tls-verify=false flags), every command under lab-exec (the lab's names and CA).
// node-floor speaks plain HTTP by hand and has no place here.
import type { Command } from '../measure.ts';
import { makeTools, NODE_FLOOR, type Tool, type ToolSettings } from '../tools.ts';

export function wanTools(s: ToolSettings, wrap: (c: Command) => Command): Tool[] {
  const craneArgs = s.craneJobs ? ['--jobs', String(s.craneJobs)] : [];
  const orasArgs = s.orasConcurrency ? ['--concurrency', String(s.orasConcurrency)] : [];
  const lab = ' (under lab-exec: the lab\'s names and CA)';
  const tools: Tool[] = [];
  for (const base of makeTools(s)) {
    if (base.name === NODE_FLOOR) continue;
    const t: Tool = { ...base };
    switch (base.name) {
      case 'skopeo':
        t.invocation = `skopeo copy --all --preserve-digests docker://SRC docker://DST (TLS verified; blob-info cache removed before each run)${lab}`;
        t.copy = (src, dst, ctx) => wrap({ cmd: 'skopeo', args: ['copy', '--quiet', '--all', '--preserve-digests', `docker://${src}`, `docker://${dst}`], env: { ...process.env, DOCKER_CONFIG: ctx.dockerConfig } });
        break;
      case 'crane':
        t.invocation = `crane copy ${craneArgs.join(' ')} SRC DST${lab}`.replace(/\s+/g, ' ');
        t.copy = (src, dst, ctx) => wrap({ cmd: 'crane', args: ['copy', ...craneArgs, src, dst], env: { ...process.env, DOCKER_CONFIG: ctx.dockerConfig } });
        break;
      case 'oras':
        t.invocation = `oras cp ${orasArgs.join(' ')} SRC DST${lab}`.replace(/\s+/g, ' ');
        t.copy = (src, dst, ctx) => wrap({ cmd: 'oras', args: ['cp', ...orasArgs, src, dst], env: { ...process.env, DOCKER_CONFIG: ctx.dockerConfig } });
        break;
      default:
        // ferry and ferry-baseline: the same command line; NODE_EXTRA_CA_CERTS comes from lab-exec.
        t.invocation = `${base.invocation}${lab}`;
        t.copy = (src, dst, ctx) => wrap(base.copy(src, dst, ctx));
    }
    tools.push(t);
  }
  return tools;
}
