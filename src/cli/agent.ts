// `ferry agent`: the long-running install-side agent (systemd unit or Kubernetes pod).
// SIGTERM: finish running jobs within --shutdown-grace, then exit 0 leaving the rest open.
// A second SIGTERM, or SIGINT: leave running jobs open and exit at once.
import { exitCodeFor, toFerryError } from '../errors.ts';
import { Agent } from '../agent/agent.ts';
import { loadAgentConfig, yargsOptions } from '../agent/config.ts';
import { createLogger } from '../log/logger.ts';

export const agentOptions = yargsOptions();

export async function runAgent(args: Record<string, unknown>): Promise<number> {
  let config;
  try {
    config = await loadAgentConfig({ flags: args, env: process.env });
  } catch (e) {
    const err = toFerryError(e);
    process.stderr.write(`ferry agent: ${err.code}: ${err.message}\n`);
    return exitCodeFor(err);
  }
  const logger = createLogger({ level: config.logLevel });
  const agent = new Agent({ config, logger });
  let terms = 0;
  const onTerm = () => (++terms === 1 ? agent.stop() : agent.stopNow('second SIGTERM'));
  const onInt = () => agent.stopNow('SIGINT');
  process.on('SIGTERM', onTerm);
  process.on('SIGINT', onInt);
  try {
    await agent.run();
    return 0;
  } catch (e) {
    const err = toFerryError(e);
    logger.fatal({ code: err.code }, err.message);
    process.stderr.write(`ferry agent: ${err.code}: ${err.message}\n`);
    return exitCodeFor(err);
  } finally {
    process.off('SIGTERM', onTerm);
    process.off('SIGINT', onInt);
  }
}
