// How far a heart-beat extends a job's lease (src/agent/job.ts leaseAfterHeartbeat). The control
// plane extends an execution's lease on a heart-beat only while no other instance has attached,
// which may happen as soon as the lease runs out; so a heart-beat that reached it too late must
// not count, whatever time the agent took before sending it.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { ControlPlaneError, isNotHeld } from '../../src/agent/control-plane-client.ts';
import { JobLease, leaseAfterHeartbeat, type HeartbeatWindow } from '../../src/agent/lease.ts';
import { silentLogger } from '../../src/log/logger.ts';

const LEASE = 4000;

describe('leaseAfterHeartbeat', () => {
  test('a heart-beat answered within the lease extends it from when it was sent', () => {
    assert.equal(leaseAfterHeartbeat(10_000, { sent: 12_000, answered: 12_005 }, LEASE), 12_000);
    // answered exactly as the lease runs out still counts (the control plane saw it no later)
    assert.equal(leaseAfterHeartbeat(10_000, { sent: 13_990, answered: 14_000 }, LEASE), 13_990);
  });

  test('no heart-beat yet, or one older than the last extension, changes nothing', () => {
    assert.equal(leaseAfterHeartbeat(10_000, undefined, LEASE), 10_000);
    assert.equal(leaseAfterHeartbeat(10_000, { sent: 9_000, answered: 9_010 }, LEASE), 10_000);
    assert.equal(leaseAfterHeartbeat(10_000, { sent: 10_000, answered: 10_010 }, LEASE), 10_000);
  });

  test('frozen between taking the time and sending: an early send time with a late answer does not extend', () => {
    // Heart-beats every second; the last extension at 10 000. The process takes the time for its
    // next heart-beat at 11 000 and is frozen before the request goes out; the lease runs out at
    // 14 000 and another replica attaches; thawed at 14 300, the request goes out and is accepted
    // (heart-beats always are). Counting it from its send time would keep the job alive forever.
    assert.equal(leaseAfterHeartbeat(10_000, { sent: 11_000, answered: 14_310 }, LEASE), 10_000);
  });

  test('a slow answer past the lease does not extend either: only a PATCH can tell then', () => {
    assert.equal(leaseAfterHeartbeat(10_000, { sent: 13_500, answered: 14_500 }, LEASE), 10_000);
  });
});

describe('JobLease', () => {
  function lease(answer: () => Promise<void>) {
    let now = 10_000;
    let beat: HeartbeatWindow | undefined;
    let asked = 0;
    const lost: ControlPlaneError[] = [];
    const l = new JobLease({
      leaseMs: LEASE,
      lastHeartbeat: () => beat,
      confirm: () => {
        asked++;
        return answer();
      },
      onLost: (e) => lost.push(e),
      isNotHeld,
      logger: silentLogger(),
      now: () => now,
    });
    return {
      l,
      lost,
      asked: () => asked,
      at: (t: number) => void (now = t),
      beat: (b: HeartbeatWindow) => void (beat = b),
    };
  }
  const notHeld = () => new ControlPlaneError('conflict', 'status', 'execution exec-1 is held by another instance', { status: 409, serverCode: 'EXECUTION_NOT_HELD', requestId: 'r1' });

  test('within the lease a write goes ahead without asking; heart-beats keep it fresh', async () => {
    const t = lease(async () => assert.fail('asked'));
    t.at(13_000);
    await t.l.beforeWrite();
    t.beat({ sent: 13_500, answered: 13_510 });
    t.at(17_000);
    await t.l.beforeWrite();
    assert.equal(t.asked(), 0);
  });

  test('past the lease, writes wait for one question shared by all of them, and are refused when another instance holds it', async () => {
    let answer!: (e: unknown) => void;
    const t = lease(() => new Promise((_, reject) => (answer = reject)));
    t.at(14_500);
    const writes = [t.l.beforeWrite(), t.l.beforeWrite(), t.l.beforeWrite()].map((p) => p.then(() => 'written', (e: Error) => e.message));
    await new Promise((r) => setImmediate(r));
    assert.equal(t.asked(), 1, 'one question for every write waiting');
    answer(notHeld());
    assert.deepEqual(await Promise.all(writes), Array(3).fill('execution exec-1 is held by another instance'));
    assert.equal(t.lost.length, 1);
    await assert.rejects(t.l.beforeWrite(), /held by another instance/);
    assert.equal(t.asked(), 1, 'once lost, nothing more is asked');
  });

  test('past the lease, an accepted answer extends it from when the question went out; an outage lets the copy write on', async () => {
    const t = lease(async () => undefined);
    t.at(14_500);
    await t.l.beforeWrite();
    t.at(18_000);
    await t.l.beforeWrite();
    assert.equal(t.asked(), 1, 'the answer extended the lease from 14 500');
    const down = lease(async () => {
      throw new ControlPlaneError('unavailable', 'status', 'control plane unreachable', { status: 503, requestId: 'r2' });
    });
    down.at(14_500);
    await down.l.beforeWrite();
    assert.equal(down.lost.length, 0);
  });
});
