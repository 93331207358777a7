// What one job knows about its execution's lease, and how it finds out it was taken over.
//
// The control plane extends the lease on a PATCH or a progress report from this instance, and on
// every heart-beat the instance sends as long as no one else has attached. Another replica may
// attach as soon as the lease runs out (this process frozen by SIGSTOP or a suspended VM, or cut
// off from the control plane); the control plane then answers this instance 409
// EXECUTION_NOT_HELD. So whenever the lease may have run out, the job asks (a PATCH) before it
// goes on, and before it writes anything to the destination.
import type { Logger } from '../log/logger.ts';
import type { ControlPlaneError } from './control-plane-client.ts';

/** A heart-beat the control plane accepted: when it was sent and when its answer came back. */
export interface HeartbeatWindow {
  sent: number;
  answered: number;
}

/**
 * When a heart-beat the control plane accepted extends a lease last extended at `extendedAt` to.
 * The control plane received it somewhere between `sent` and `answered`, and extends a lease only
 * while no one else has attached, which may happen once the lease runs out. So the heart-beat
 * counts only if it was answered before the lease ran out, and extends it from when it was sent.
 * A process frozen between taking the time and writing the request sends a heart-beat late with
 * an early `sent`: its late `answered` is what gives it away, and then only a PATCH can tell.
 */
export function leaseAfterHeartbeat(extendedAt: number, beat: HeartbeatWindow | undefined, leaseMs: number): number {
  if (beat === undefined || beat.sent <= extendedAt) return extendedAt;
  return beat.answered - extendedAt <= leaseMs ? beat.sent : extendedAt;
}

export interface JobLeaseOptions {
  leaseMs: number;
  /** The last heart-beat the control plane accepted from this instance. */
  lastHeartbeat: () => HeartbeatWindow | undefined;
  /** Ask the control plane whether this instance still holds the execution (a PATCH); rejects with its answer. */
  confirm: () => Promise<void>;
  /** The control plane answered EXECUTION_NOT_HELD. */
  onLost: (e: ControlPlaneError) => void;
  isNotHeld: (e: unknown) => e is ControlPlaneError;
  logger: Logger;
  now?: () => number;
}

export class JobLease {
  /** When the control plane last extended the lease for this job, as far as this instance can be sure. */
  private extendedAt: number;
  private lostTo: ControlPlaneError | undefined;
  private checking: Promise<void> | undefined;
  private readonly o: JobLeaseOptions;
  private readonly now: () => number;

  constructor(o: JobLeaseOptions) {
    this.o = o;
    this.now = o.now ?? Date.now;
    this.extendedAt = this.now();
  }

  /** The control plane accepted something from this instance for this job that was sent at `sentAt`. */
  extended(sentAt: number): void {
    if (sentAt > this.extendedAt) this.extendedAt = sentAt;
  }

  lost(e: ControlPlaneError): void {
    if (this.lostTo) return;
    this.lostTo = e;
    this.o.onLost(e);
  }

  get isLost(): boolean {
    return this.lostTo !== undefined;
  }

  /** Nothing this instance can be sure of extended the lease within its length. */
  mayHaveRunOut(): boolean {
    this.extendedAt = leaseAfterHeartbeat(this.extendedAt, this.o.lastHeartbeat(), this.o.leaseMs);
    return this.now() - this.extendedAt > this.o.leaseMs;
  }

  /**
   * Ask the control plane (one question at a time, shared by every caller). Resolves when it
   * accepted (the lease is extended) or could not be reached (the copy goes on through an
   * outage); `lost` is called when it answered EXECUTION_NOT_HELD.
   */
  check(): Promise<void> {
    this.checking ??= (async () => {
      this.o.logger.info(
        { lease_ms: this.o.leaseMs, since_extended_ms: this.now() - this.extendedAt },
        'the lease may have run out: checking that this instance still holds the execution',
      );
      const sent = this.now();
      try {
        await this.o.confirm();
        this.extended(sent);
      } catch (e) {
        if (this.o.isNotHeld(e)) this.lost(e);
        else this.o.logger.debug({ problem: (e as Error).message }, 'lease check failed');
      }
    })().finally(() => {
      this.checking = undefined;
    });
    return this.checking;
  }

  /**
   * Before a write to the destination: when the lease may have run out, ask first, and refuse
   * (with the control plane's answer) if another instance holds the execution now. A copy that
   * cannot reach the control plane writes on, as it copies on.
   */
  async beforeWrite(): Promise<void> {
    if (!this.lostTo && this.mayHaveRunOut()) await this.check();
    if (this.lostTo) throw this.lostTo;
  }
}
