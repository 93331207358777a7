// When short-lived credentials are renewed (src/auth/renewal.ts): the one rule for the control
// plane's source credentials and the cloud tokens.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MIN_RENEWAL_DELAY_MS, renewalDelay, renewalTime } from '../../src/auth/renewal.ts';

test('at 80 % of the lifetime or 60 s before the end, whichever comes first', () => {
  assert.equal(renewalDelay(12 * 3600_000), 34_560_000); // ECR: 9.6 h
  assert.equal(renewalDelay(15 * 60_000), 12 * 60_000);
  assert.equal(renewalDelay(300_000), 240_000); // both rules agree
  assert.equal(renewalDelay(200_000), 140_000); // 60 s before comes first
});

test('short lifetimes: not before half the lifetime, never sooner than the floor', () => {
  assert.equal(renewalDelay(100_000), 50_000);
  assert.equal(renewalDelay(3_000), 1_500);
  assert.equal(renewalDelay(1_500), MIN_RENEWAL_DELAY_MS);
  // Already expired on arrival (or a broken expires_at): still no renewal storm.
  assert.equal(renewalDelay(0), MIN_RENEWAL_DELAY_MS);
  assert.equal(renewalDelay(-5_000), MIN_RENEWAL_DELAY_MS);
  assert.equal(renewalDelay(Number.NaN), MIN_RENEWAL_DELAY_MS);
});

test('continuous: a slightly longer lifetime is never renewed sooner', () => {
  let last = 0;
  for (let l = 0; l <= 20 * 60_000; l += 250) {
    const d = renewalDelay(l);
    assert.ok(d >= last, `lifetime ${l}: ${d} < ${last}`);
    assert.ok(l <= MIN_RENEWAL_DELAY_MS * 2 || d < l, `lifetime ${l}: renewed at ${d}, not before it expires`);
    last = d;
  }
});

test('renewalTime counts from when the credential was obtained', () => {
  assert.equal(renewalTime(1_000_000, 1_003_000), 1_001_500);
});
