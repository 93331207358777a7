// The latency proxy as a process of its own (bench/wan/lab.ts forks it, one per link setting):
// its CPU is measured apart from the tools' and the registries', and its timers do not wait on
// the harness's event loop. Config: argv[2] as JSON ({ routes, model }). Over the IPC channel it
// answers { cmd: 'counters' }; it exits when the channel closes (the harness stopped or died).
import { startLatencyProxy, type LinkModel, type Route } from './latency-proxy.ts';

const config = JSON.parse(process.argv[2] ?? '{}') as { routes: Route[]; model: LinkModel };
const send = (m: unknown) => process.send?.(m);
try {
  const proxy = await startLatencyProxy(config.routes, config.model);
  process.on('message', (m: { cmd?: string; id?: number }) => {
    if (m.cmd === 'counters') send({ id: m.id, counters: proxy.counters() });
  });
  process.on('disconnect', () => {
    void proxy.stop().finally(() => process.exit(0));
  });
  send({ ready: true, routes: proxy.routes });
} catch (e) {
  send({ error: (e as Error).message });
  process.exit(1);
}
