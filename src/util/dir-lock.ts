// One daemon per state directory. Two snapshotters on one --root would share one metadata database and each sweep
// the other's mounts and GC roots at start-up, so the second must refuse before touching anything. The lock is an
// SQLite database held in EXCLUSIVE locking mode: SQLite takes a POSIX lock on the file that the kernel drops when
// the process ends however it ends (SIGKILL included), so a killed daemon never leaves a stale lock behind, and
// whatever path reaches the directory (a bind mount, a symlink) the file is the same.
import Database from "better-sqlite3";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { NixociError } from "./errors.js";
import { makeDirsSync } from "./fs.js";

export interface DirectoryLock {
  /** Drops the lock (also dropped when the process ends). */
  release(): void;
}

const LOCK_FILE = "daemon.lock";
const PID_FILE = "daemon.pid";

/**
 * Takes `dir`'s lock or fails with one line naming `dir` and the holder's pid (as it wrote it). `what` is the
 * daemon, for the message ("a nixoci snapshotter").
 */
export function lockDirectory(dir: string, what: string, hint: string): DirectoryLock {
  makeDirsSync(dir, 0o700);
  const db = new Database(join(dir, LOCK_FILE), { timeout: 0 });
  try {
    db.pragma("locking_mode = EXCLUSIVE");
    db.exec("BEGIN EXCLUSIVE");
  } catch (err) {
    db.close();
    if ((err as { code?: string }).code !== "SQLITE_BUSY") throw err;
    const holder = readHolder(dir);
    throw new NixociError(
      dir,
      `${what}${holder ? ` (pid ${holder})` : ""} is already using this directory; ${hint}`,
    );
  }
  // For the message above only: the lock, not this file, decides.
  try {
    writeFileSync(join(dir, PID_FILE), `${process.pid}\n`);
  } catch {
    // a read-only or full directory: the lock holds all the same
  }
  return { release: () => db.close() };
}

function readHolder(dir: string): number | undefined {
  try {
    const pid = Number(readFileSync(join(dir, PID_FILE), "utf8").trim());
    return Number.isSafeInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}
