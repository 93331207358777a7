// Atomic file writes, shared by the agent's state store and the copy journal: a temp file in
// the same directory, fsync, rename (or link, for create-only), then fsync of the directory, so
// a crash leaves either the old content or the new, never a torn file. Temp files carry
// TEMP_MARK in their name so a store can remove leftovers from a crash when it opens.
import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { access, link, open, rename, unlink } from 'node:fs/promises';
import { resolve } from 'node:path';

export const TEMP_MARK = '.tmp-';

export async function fsyncDir(dir: string): Promise<void> {
  let fh;
  try {
    fh = await open(dir, 'r');
    await fh.sync();
  } catch (e) {
    // Some filesystems refuse fsync on a directory; the rename is still atomic there.
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== 'EISDIR' && code !== 'EINVAL' && code !== 'EPERM' && code !== 'EBADF') throw e;
  } finally {
    await fh?.close();
  }
}

function tempPathFor(path: string): string {
  return `${path}${TEMP_MARK}${process.pid}-${randomBytes(6).toString('hex')}`;
}

async function writeTemp(path: string, data: string | Uint8Array, mode: number): Promise<string> {
  const tmp = tempPathFor(path);
  const fh = await open(tmp, 'wx', mode);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } catch (e) {
    await fh.close();
    await unlink(tmp).catch(() => {});
    throw e;
  }
  await fh.close();
  return tmp;
}

/** Replace `path` atomically with `data` (temp file, fsync, rename, fsync of the directory). */
export async function atomicWriteFile(path: string, data: string | Uint8Array, mode = 0o600): Promise<void> {
  const tmp = await writeTemp(path, data, mode);
  try {
    await rename(tmp, path);
  } catch (e) {
    await unlink(tmp).catch(() => {});
    throw e;
  }
  await fsyncDir(resolve(path, '..'));
}

/**
 * Create `path` with `data` only if it does not exist, atomically: the file appears complete
 * or not at all, and of two racing creators exactly one wins. Returns false when it existed.
 */
export async function atomicCreateFile(path: string, data: string | Uint8Array, mode = 0o600): Promise<boolean> {
  const tmp = await writeTemp(path, data, mode);
  try {
    await link(tmp, path);
    await fsyncDir(resolve(path, '..'));
    return true;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') return false;
    if (code === 'EPERM' || code === 'ENOTSUP' || code === 'EOPNOTSUPP' || code === 'ENOSYS') {
      // No hard links here (some network and FUSE filesystems): a check then rename, racy only against a concurrent first start.
      try {
        await access(path, constants.F_OK);
        return false;
      } catch {
        await rename(tmp, path);
        await fsyncDir(resolve(path, '..'));
        return true;
      }
    }
    throw e;
  } finally {
    await unlink(tmp).catch(() => {});
  }
}
