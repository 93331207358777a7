// Transfer limits (src/copy/limits.ts): a cap for the whole process, and per registry host a
// limit that follows the host's AIMD concurrency while transfers are running.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { TransferLimits } from '../../src/copy/limits.ts';

/** Tasks that finish only when the test says so, counting how many run at once, per host. */
function harness() {
  const running = new Map<string, number>();
  const peak = new Map<string, number>();
  let total = 0;
  let peakTotal = 0;
  const release: Array<() => void> = [];
  const task = (hosts: string[]) => async () => {
    for (const h of hosts) {
      running.set(h, (running.get(h) ?? 0) + 1);
      peak.set(h, Math.max(peak.get(h) ?? 0, running.get(h)!));
    }
    total++;
    peakTotal = Math.max(peakTotal, total);
    await new Promise<void>((r) => release.push(r));
    total--;
    for (const h of hosts) running.set(h, running.get(h)! - 1);
  };
  const settle = () => new Promise((r) => setImmediate(r));
  return { running, peak, task, release, settle, peakTotal: () => peakTotal, total: () => total };
}

test('the global cap holds over every host, each host within its own limit, and a limit that grows lets waiters in', async () => {
  const limitOf = new Map([
    ['a.example', 1],
    ['b.example', 3],
  ]);
  const limits = new TransferLimits(4, { concurrency: (h) => limitOf.get(h) ?? 4 });
  const h = harness();
  const all = [
    ...Array.from({ length: 6 }, () => limits.run('a.example', h.task(['a.example']))),
    ...Array.from({ length: 6 }, () => limits.run('b.example', h.task(['b.example']))),
  ];
  await h.settle();
  assert.equal(h.running.get('a.example'), 1);
  assert.equal(h.running.get('b.example'), 3);
  assert.equal(h.total(), 4);
  // a.example's limit grows (good answers): the next release lets two of its waiters in.
  limitOf.set('a.example', 3);
  h.release.shift()!(); // a.example's first transfer ends: its slot and a global one are free
  await h.settle();
  while (h.release.length > 0) {
    h.release.shift()!();
    await h.settle();
  }
  await Promise.all(all);
  assert.equal(h.peakTotal(), 4, 'the global cap');
  assert.equal(h.peak.get('b.example'), 3);
  assert.ok(h.peak.get('a.example')! >= 2 && h.peak.get('a.example')! <= 3, `a.example peaked at ${h.peak.get('a.example')}`);
});

test('a host whose limit is cut takes no new transfer until it is under the new limit', async () => {
  let limit = 4;
  const limits = new TransferLimits(8, { concurrency: () => limit });
  const h = harness();
  const all = Array.from({ length: 10 }, () => limits.run('c.example', h.task(['c.example'])));
  await h.settle();
  assert.equal(h.running.get('c.example'), 4);
  limit = 1;
  for (let i = 0; i < 3; i++) {
    h.release.shift()!();
    await h.settle();
    assert.equal(h.running.get('c.example'), 3 - i, 'a transfer started while over the cut limit');
  }
  h.release.shift()!();
  await h.settle();
  assert.equal(h.running.get('c.example'), 1);
  while (h.release.length > 0) {
    h.release.shift()!();
    await h.settle();
    assert.ok(h.running.get('c.example')! <= 1);
  }
  await Promise.all(all);
});

test('a transfer between two registries holds a slot of each; taken in one order, two opposite transfers never wait for each other', async () => {
  const limits = new TransferLimits(8, { concurrency: () => 1 });
  const h = harness();
  const one = limits.run(['x.example', 'y.example'], h.task(['x.example', 'y.example']));
  const two = limits.run(['y.example', 'x.example'], h.task(['y.example', 'x.example']));
  await h.settle();
  assert.equal(h.total(), 1);
  h.release.shift()!();
  await h.settle();
  assert.equal(h.total(), 1);
  h.release.shift()!();
  await Promise.all([one, two]);
  assert.equal(h.peak.get('x.example'), 1);
  assert.equal(h.peak.get('y.example'), 1);
});
