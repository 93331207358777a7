// Concurrency limits for blob transfers: one limit shared by every transfer of the process
// (all jobs of an agent), plus one per registry so a slow registry cannot take every slot.
import pLimit, { type LimitFunction } from 'p-limit';

export class TransferLimits {
  private readonly global: LimitFunction;
  private readonly perRegistry = new Map<string, LimitFunction>();
  private readonly checksPerRegistry = new Map<string, LimitFunction>();
  readonly globalLimit: number;
  readonly registryLimit: number;

  constructor(globalLimit = 8, registryLimit = globalLimit) {
    this.globalLimit = globalLimit;
    this.registryLimit = registryLimit;
    this.global = pLimit(globalLimit);
  }

  /** Run `fn` holding a slot for `registry` and a global slot. */
  run<T>(registry: string, fn: () => Promise<T>): Promise<T> {
    return this.slotsOf(this.perRegistry, registry)(() => this.global(fn));
  }

  /**
   * Run an existence check (a HEAD) for `registry`. Checks have their own slots, as many as a
   * registry's transfers, so they run ahead of the transfers instead of taking turns with them.
   */
  check<T>(registry: string, fn: () => Promise<T>): Promise<T> {
    return this.slotsOf(this.checksPerRegistry, registry)(fn);
  }

  /** `registry`'s limit in `limits`, made on first use with `registryLimit` slots. */
  private slotsOf(limits: Map<string, LimitFunction>, registry: string): LimitFunction {
    let limit = limits.get(registry);
    if (!limit) {
      limit = pLimit(this.registryLimit);
      limits.set(registry, limit);
    }
    return limit;
  }
}
