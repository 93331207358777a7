// Concurrency limits for blob transfers: one limit shared by every transfer of the process
// (all jobs of an agent: `--concurrency`), and one per registry host, so a slow or throttling
// registry cannot take every slot. A host's limit is its flow controller's AIMD limit
// (src/transport/flow.ts): the ceiling until the host throttles or times out, halved then,
// growing back with good answers.
import pLimit, { type LimitFunction } from 'p-limit';

/** Where a host's current limit comes from: the transport's flow controller. */
export interface HostLimits {
  concurrency(host: string): number;
}

/** Slots whose number may change while they are in use (a host's AIMD limit). */
class Slots {
  private active = 0;
  private readonly waiting: Array<() => void> = [];
  private readonly limit: () => number;

  constructor(limit: () => number) {
    this.limit = limit;
  }

  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.waiting.length > 0 || this.active >= this.limit()) {
      // In line behind the others; a waiter is counted in by whoever wakes it.
      const turn = new Promise<void>((resolve) => this.waiting.push(resolve));
      this.wake();
      await turn;
    } else this.active += 1;
    try {
      return await fn();
    } finally {
      this.active -= 1;
      this.wake();
    }
  }

  /** Let waiters in, first come first, while there is room (the limit may have grown meanwhile). */
  private wake(): void {
    while (this.waiting.length > 0 && this.active < this.limit()) {
      this.active += 1;
      this.waiting.shift()!();
    }
  }
}

export class TransferLimits {
  private readonly global: LimitFunction;
  private readonly perHost = new Map<string, Slots>();
  private readonly checksPerHost = new Map<string, Slots>();
  private readonly hosts: HostLimits | undefined;
  readonly globalLimit: number;

  /**
   * `globalLimit`: transfers at once in this process. `hosts`: each registry host's limit (the
   * transport's flow controller); without it, every host may use the global limit.
   */
  constructor(globalLimit = 8, hosts?: HostLimits) {
    this.globalLimit = globalLimit;
    this.hosts = hosts;
    this.global = pLimit(globalLimit);
  }

  /** The limit for `host` now. */
  hostLimit(host: string): number {
    return Math.max(1, Math.min(this.globalLimit, this.hosts?.concurrency(host) ?? this.globalLimit));
  }

  /**
   * Run `fn` holding a slot of each registry host it talks to and a global slot. Hosts are taken
   * in one order (sorted), so two transfers between the same registries never wait for each other.
   */
  run<T>(hosts: string | string[], fn: () => Promise<T>): Promise<T> {
    const keys = [...new Set(typeof hosts === 'string' ? [hosts] : hosts)].sort();
    const step = (i: number): Promise<T> => (i < keys.length ? this.slotsOf(this.perHost, keys[i]!).run(() => step(i + 1)) : this.global(fn));
    return step(0);
  }

  /**
   * Run an existence check (a HEAD) for `host`. Checks have their own slots, as many as the
   * host's transfers, so they run ahead of the transfers instead of taking turns with them.
   */
  check<T>(host: string, fn: () => Promise<T>): Promise<T> {
    return this.slotsOf(this.checksPerHost, host).run(fn);
  }

  private slotsOf(map: Map<string, Slots>, host: string): Slots {
    let slots = map.get(host);
    if (!slots) {
      slots = new Slots(() => this.hostLimit(host));
      map.set(host, slots);
    }
    return slots;
  }
}
