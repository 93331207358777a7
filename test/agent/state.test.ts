// The agent's state directory: the instance id survives restarts, files are replaced
// atomically (readers see the old or the new content, never a torn file), crash leftovers are
// cleaned up, and pending results survive a restart.
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { UsageError } from '../../src/errors.ts';
import { atomicCreateFile, atomicWriteFile, ensureStateDir, JsonFileStore, loadOrCreateInstanceId, openState, PendingResultStore } from '../../src/agent/state.ts';
import { createRng } from '../harness/seed.ts';

let root: string;
before(async () => {
  root = await mkdtemp(join(tmpdir(), 'ferry-state-'));
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

let n = 0;
const fresh = () => join(root, `d${++n}`);

describe('instance id', () => {
  it('is created once and kept across restarts; a new state dir gets a new one', async () => {
    const dir = fresh();
    const s1 = await openState(dir);
    assert.match(s1.instanceId, /^[0-9a-f-]{36}$/);
    assert.equal((await readFile(join(dir, 'instance-id'), 'utf8')).trim(), s1.instanceId);
    const s2 = await openState(dir);
    assert.equal(s2.instanceId, s1.instanceId);
    const other = await openState(fresh());
    assert.notEqual(other.instanceId, s1.instanceId);
    assert.equal((await stat(dir)).mode & 0o777, 0o700);
  });

  it('racing first starts agree on one id', async () => {
    const dir = fresh();
    await ensureStateDir(dir);
    const ids = await Promise.all(Array.from({ length: 16 }, () => loadOrCreateInstanceId(dir)));
    assert.equal(new Set(ids).size, 1);
    assert.equal((await readFile(join(dir, 'instance-id'), 'utf8')).trim(), ids[0]);
    assert.deepEqual(await readdir(dir), ['instance-id'], 'no temp files left behind');
  });

  it('an edited, invalid instance-id file is moved aside and replaced', async () => {
    const dir = fresh();
    await ensureStateDir(dir);
    await writeFile(join(dir, 'instance-id'), 'not a valid id!\n');
    const id = await loadOrCreateInstanceId(dir);
    assert.match(id, /^[0-9a-f-]{36}$/);
    assert.ok((await readdir(dir)).some((f) => f.startsWith('instance-id.invalid-')));
  });

  it('an instance-id that can neither be read nor replaced (a dangling symlink) is a usage error saying what to do, not INTERNAL', async () => {
    const dir = fresh();
    await mkdir(dir, { recursive: true });
    await symlink(join(dir, 'gone'), join(dir, 'instance-id'));
    await assert.rejects(openState(dir), (e: unknown) => {
      assert.ok(e instanceof UsageError, String(e));
      assert.match(e.message, /--state-dir: .*instance-id exists but cannot be read as this agent's instance id .*: remove it and start the agent again/);
      return true;
    });
  });

  it('a state dir that is not a usable directory is a usage error naming --state-dir', async () => {
    const file = join(root, 'a-file');
    await writeFile(file, 'x');
    await assert.rejects(openState(file), (e: unknown) => e instanceof UsageError && /--state-dir/.test(e.message));
    await assert.rejects(openState(join(file, 'sub')), (e: unknown) => e instanceof UsageError && /--state-dir/.test(e.message));
  });
});

describe('atomic files', () => {
  it('atomicCreateFile creates only when absent', async () => {
    const dir = fresh();
    await ensureStateDir(dir);
    assert.equal(await atomicCreateFile(join(dir, 'f'), 'one'), true);
    assert.equal(await atomicCreateFile(join(dir, 'f'), 'two'), false);
    assert.equal(await readFile(join(dir, 'f'), 'utf8'), 'one');
    assert.deepEqual(await readdir(dir), ['f']);
  });

  it('concurrent writers and readers never see a torn file', async () => {
    const dir = fresh();
    await ensureStateDir(dir);
    const path = join(dir, 'doc.json');
    const rng = createRng('state/atomic');
    // Large distinct payloads, so a torn write would show as a mix or a truncation.
    const payloads = Array.from({ length: 8 }, (_, i) => JSON.stringify({ i, fill: String(i).repeat(200_000 + rng.int(50_000)) }));
    await atomicWriteFile(path, payloads[0]!);
    let reads = 0;
    let writing = true;
    const reader = (async () => {
      while (writing) {
        const text = await readFile(path, 'utf8');
        assert.ok(payloads.includes(text), 'a reader saw content that no writer wrote whole');
        reads++;
      }
    })();
    await Promise.all(Array.from({ length: 40 }, (_, k) => atomicWriteFile(path, payloads[k % payloads.length]!)));
    writing = false;
    await reader;
    assert.ok(reads > 0);
    assert.ok(payloads.includes(await readFile(path, 'utf8')));
    assert.deepEqual(await readdir(dir), ['doc.json'], 'no temp files left behind');
    assert.equal((await stat(path)).mode & 0o777, 0o600);
  });
});

describe('JSON store and pending results', () => {
  it('removes crash leftovers and quarantines unreadable entries', async () => {
    const dir = fresh();
    const store = await JsonFileStore.open<number>(dir, (v) => {
      if (typeof v !== 'number') throw new Error('not a number');
      return v;
    });
    await store.put('a', 1);
    await store.put('b', 2);
    // A crash mid-write leaves a temp file; a hand edit leaves garbage; a wrong value fails validation.
    await writeFile(join(dir, 'x.json.tmp-999-abcdef'), '{"key":"half');
    await writeFile(join(dir, 'garbage.json'), '{"key": "c", "saved_');
    await writeFile(join(dir, 'wrong.json'), JSON.stringify({ key: 'd', saved_at: new Date().toISOString(), value: 'four' }));
    const reopened = await JsonFileStore.open<number>(dir, (v) => {
      if (typeof v !== 'number') throw new Error('not a number');
      return v;
    });
    const entries = await reopened.list();
    assert.deepEqual(entries.map((e) => [e.key, e.value]).sort(), [
      ['a', 1],
      ['b', 2],
    ]);
    const files = await readdir(dir);
    assert.ok(!files.some((f) => f.includes('.tmp-')));
    assert.ok(files.includes('garbage.json.corrupt') && files.includes('wrong.json.corrupt'));
    assert.equal(await reopened.get('a'), 1);
    assert.equal(await reopened.delete('a'), true);
    assert.equal(await reopened.delete('a'), false);
    assert.equal(await reopened.get('a'), undefined);
  });

  it('pending results survive a reopen and are checked on the way in', async () => {
    const dir = fresh();
    const s1 = await PendingResultStore.open(dir);
    const failed = { success: false, error_code: 'SOURCE_AUTH', error_message: 'denied' } as const;
    await s1.save({ job_id: 'job-1', exec_id: 'exec-1', result: failed });
    await s1.save({ job_id: 'job-2', exec_id: 'exec-2', result: { success: true } });
    await s1.save({ job_id: 'job-1', exec_id: 'exec-1', result: failed }); // idempotent
    assert.equal(s1.size, 2);
    const s2 = await PendingResultStore.open(dir);
    assert.equal(s2.size, 2, 'a reopened store counts what an earlier run left');
    assert.deepEqual(
      (await s2.list()).map((p) => p.job_id).sort(),
      ['job-1', 'job-2'],
    );
    assert.deepEqual(await s2.get('job-1', 'exec-1'), { job_id: 'job-1', exec_id: 'exec-1', result: failed });
    await s2.remove('job-1', 'exec-1');
    assert.equal(await s2.get('job-1', 'exec-1'), undefined);
    assert.equal((await s2.list()).length, 1);
    assert.equal(s2.size, 1);
    await s2.remove('job-1', 'exec-1'); // gone already
    assert.equal(s2.size, 1);
  });
});
