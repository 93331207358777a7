// The parts of undici ferry uses, loaded without undici's index. The index also loads fetch,
// WebSocket, EventSource, caches, cookies and mocks: measured +14 MiB RSS and ~0.1 s of CPU at
// start-up (docs/performance.md) that a registry client never uses. undici has no `exports`
// map, so its files are importable; the request API is attached to Dispatcher.prototype the
// way undici's own index does, which is what makes `dispatcher.request()` exist.
import type * as Undici from 'undici';
import DispatcherClass from 'undici/lib/dispatcher/dispatcher.js';
import AgentClass from 'undici/lib/dispatcher/agent.js';
import EnvHttpProxyAgentClass from 'undici/lib/dispatcher/env-http-proxy-agent.js';
import api from 'undici/lib/api/index.js';

const prototype = (DispatcherClass as unknown as { prototype: Record<string, unknown> }).prototype;
if (typeof prototype.request !== 'function') Object.assign(prototype, api);

export const Agent = AgentClass as unknown as typeof Undici.Agent;
export const EnvHttpProxyAgent = EnvHttpProxyAgentClass as unknown as typeof Undici.EnvHttpProxyAgent;
export type Agent = Undici.Agent;
export type { Dispatcher } from 'undici';
