// `ferry inspect REF`.
import { exitCodeFor, toFerryError } from '../errors.ts';
import { parseReference } from '../reference/reference.ts';
import { inspectImage } from '../copy/inspect.ts';
import { RegistrySource } from '../ends/registry/source.ts';
import { makeClient, makeKeychain, makeLogger, makeTransport, type GlobalFlags } from './context.ts';
import { formatBytes } from './progress.ts';

interface InspectArgs extends GlobalFlags {
  reference: string;
  creds?: string;
}

export async function runInspect(args: InspectArgs): Promise<number> {
  const logger = makeLogger(args, false);
  const transport = makeTransport(args);
  try {
    const ref = parseReference(args.reference);
    const client = makeClient(ref.registry, 'source', makeKeychain('source', ref.registry, { flag: '--creds', value: args.creds }, args, logger), transport, logger);
    const info = await inspectImage(new RegistrySource(client, ref.repository), ref, logger);
    if (args.json) {
      process.stdout.write(`${JSON.stringify(info)}\n`);
      return 0;
    }
    const lines = [
      `${info.repository}${info.tag ? `:${info.tag}` : ''}`,
      `  digest:     ${info.digest}`,
      `  media type: ${info.media_type}`,
      `  size:       ${formatBytes(info.size)} (${info.size} bytes: manifests, configs and layers)`,
    ];
    if (info.platforms.length) {
      lines.push('  platforms:');
      for (const p of info.platforms) lines.push(`    ${[p.os, p.architecture, p.variant].filter(Boolean).join('/').padEnd(16)} ${p.digest}`);
    }
    lines.push(`  layers: ${info.layers.length}`);
    for (const l of info.layers) lines.push(`    ${l.digest}  ${formatBytes(l.size).padStart(10)}${l.platform ? `  ${l.platform}` : ''}`);
    lines.push(`  referrers: ${info.referrers.length || 'none (referrers API, fallback tags and cosign tags asked)'}`);
    for (const r of info.referrers) {
      const where = r.found_by === 'api' ? 'referrers API' : r.found_by === 'fallback-tag' ? 'fallback tag' : `tag ${r.tag ?? ''}`;
      const of = r.subject === info.digest ? '' : `  of ${r.subject}`;
      lines.push(`    ${r.digest}  ${r.artifact_type}  (${where})${of}`);
    }
    process.stdout.write(`${lines.join('\n')}\n`);
    return 0;
  } catch (e) {
    const err = toFerryError(e);
    if (args.json) process.stdout.write(`${JSON.stringify({ error: { code: err.code, message: err.message } })}\n`);
    process.stderr.write(`ferry: ${err.code}: ${err.message}\n`);
    return exitCodeFor(err);
  } finally {
    await transport.close().catch(() => undefined);
  }
}
