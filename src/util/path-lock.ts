// A lock between processes writing one file in place (an OCI layout's index.json: read, add an entry, write): each
// writer holds it from its read to its rename, so concurrent builds into one layout all keep their tags. The lock is
// a symbolic link created next to the file — symlink(2) fails if the name exists, atomically — whose target names
// the holder's pid, so a lock a killed writer left is recognised (the pid is gone) and taken over. Nothing is left
// behind: the holder removes it, a signal's cleanup removes it (noted as a temporary), a SIGKILL's is taken over.
import { randomBytes } from "node:crypto";
import { readlink, symlink, unlink } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";
import { NixociError } from "./errors.js";
import { forgetTemporary, noteTemporary } from "./temporaries.js";

/** How long a writer waits for another before it gives up (a write of index.json takes milliseconds). */
const WAIT_MS = 60_000;

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code !== "ESRCH";
  }
}

/** Runs `fn` holding the lock `lock` (a path next to what `fn` writes); `what` names that for a timeout's error. */
export async function withPathLock<T>(lock: string, what: string, fn: () => Promise<T>): Promise<T> {
  const mine = `pid-${process.pid}-${randomBytes(6).toString("hex")}`;
  const deadline = Date.now() + WAIT_MS;
  for (let wait = 2; ; wait = Math.min(wait * 2, 50)) {
    try {
      noteTemporary(lock);
      await symlink(mine, lock);
      break;
    } catch (err) {
      forgetTemporary(lock);
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
    }
    const holder = await readlink(lock).catch(() => undefined);
    const pid = holder === undefined ? undefined : Number(/^pid-(\d+)-/.exec(holder)?.[1]);
    if (pid !== undefined && Number.isSafeInteger(pid) && !alive(pid)) {
      // A killed writer's: taken over.
      await unlink(lock).catch(() => undefined);
      continue;
    }
    if (Date.now() > deadline)
      throw new NixociError(
        what,
        `another writer (pid ${pid ?? "unknown"}) has held ${lock} for over ${WAIT_MS / 1000} s; if none runs, remove it`,
      );
    await sleep(wait);
  }
  try {
    return await fn();
  } finally {
    forgetTemporary(lock);
    if ((await readlink(lock).catch(() => undefined)) === mine) await unlink(lock).catch(() => undefined);
  }
}
