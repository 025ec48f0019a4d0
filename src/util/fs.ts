// Filesystem helpers shared by the writers: temporaries' names, atomic file writes, removal of read-only trees and
// mkdir -p that returns under /proc.
import { mkdirSync, statSync } from "node:fs";
import { chmod, lstat, mkdir, readdir, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { NixociError } from "./errors.js";
import { fsPath, readdirNamesAsync } from "./file-names.js";
import { fsError } from "./fs-errors.js";
import { noteTemporary, tempSuffix } from "./temporaries.js";
import { basename, dirname, join } from "node:path";

export { tempSuffix } from "./temporaries.js";

/**
 * A sibling name for work in progress; dot-prefixed so listings and globbing skip it. Noted (util/temporaries.ts),
 * so a command interrupted by a signal removes it.
 */
export function tempSibling(dir: string, base: string): string {
  return noteTemporary(join(dir, `.${base}${tempSuffix()}`));
}

/** True for a name tempSuffix() made whose writer process no longer exists (a crash or a SIGKILL left it). */
export function isAbandonedTemp(name: string): boolean {
  const m = /\.tmp-(\d+)-[0-9a-f]{12}$/.exec(name);
  if (!m) return false;
  const pid = Number(m[1]);
  if (pid === process.pid) return false;
  try {
    process.kill(pid, 0);
    return false; // alive (or not ours to signal): keep
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "ESRCH";
  }
}

/**
 * Removes the temporaries of writers that no longer run (isAbandonedTemp: files or trees) among the entries of
 * `dir` (not recursive) that `only` accepts (default: every temporary). Best effort: what cannot be removed, or
 * a directory that cannot be read, is left. Returns the names removed.
 */
export async function sweepAbandonedTemps(dir: string, only?: (name: string) => boolean): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return [];
  }
  const removed: string[] = [];
  for (const name of names) {
    if ((only && !only(name)) || !isAbandonedTemp(name)) continue;
    try {
      await removeTree(join(dir, name));
      removed.push(name);
    } catch {
      // removed meanwhile, or not ours to remove
    }
  }
  return removed;
}

/**
 * A new private directory for work in progress, `<os.tmpdir()>/<prefix>.tmp-<pid>-<random>`; first removes the
 * ones with the same prefix that killed processes left (the caller removes its own when done).
 */
export async function makeTempWorkDir(prefix: string): Promise<string> {
  const base = tmpdir();
  await sweepAbandonedTemps(base, (name) => name.startsWith(`${prefix}.tmp-`));
  const dir = noteTemporary(join(base, `${prefix}${tempSuffix()}`));
  await mkdir(dir, { mode: 0o700 }).catch((err) => {
    throw fsError(base, err, "cannot create a work directory");
  });
  return dir;
}

/**
 * Writes a file under a temporary name and renames it into place, so readers never see a partial file. A failure
 * names `file` (a FileSystemError, with the errno code), never the temporary.
 */
export async function writeFileAtomic(file: string, data: string | Buffer): Promise<void> {
  const tmp = tempSibling(dirname(file), basename(file));
  try {
    await writeFile(tmp, data, { flag: "wx" });
    await rename(tmp, file);
  } catch (err) {
    await rm(tmp, { force: true });
    throw fsError(file, err, "cannot write");
  }
}

/**
 * Removes a tree even when its directories are read-only (canonical store paths are 0555): a non-root
 * user cannot unlink entries of such a directory before making it writable again.
 */
export async function removeTree(path: string): Promise<void> {
  let st;
  try {
    st = await lstat(fsPath(path));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return;
    throw err;
  }
  if (st.isDirectory()) {
    await chmod(fsPath(path), 0o755).catch(() => undefined);
    // Names as bytes (util/file-names.ts): a store path's file names need not be UTF-8.
    for (const name of await readdirNamesAsync(path)) await removeTree(join(path, name));
  }
  await rm(fsPath(path), { recursive: true, force: true });
}

/** A JSON file's parsed value, or undefined when the file does not exist; other failures name the file. */
export async function readJsonFile(file: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new NixociError(file, `cannot read: ${(err as Error).message}`);
  }
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw new NixociError(file, "is not valid JSON");
  }
}

/**
 * `mkdir -p`, one level at a time: Node's `mkdir(dir, { recursive: true })` (and mkdirSync's) never returns for a
 * directory whose parent exists but refuses entries with ENOENT (anything under /proc), where this fails with that
 * ENOENT. After an ENOENT the parent is made (unless it exists) and the mkdir tried once more: a parent that exists
 * by then may have been made by a concurrent makeDirs (two uploads starting at once), and a second ENOENT with the
 * parent there is the refusal. `mode` is for every directory it creates (before the umask), as with mkdir -p -m.
 */
export async function makeDirs(dir: string, mode?: number): Promise<void> {
  try {
    await mkdir(dir, mode);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "EEXIST") return;
    const parent = dirname(dir);
    if (code !== "ENOENT" || parent === dir) throw err;
    const parentExists = await stat(parent).then(
      () => true,
      () => false,
    );
    if (!parentExists) await makeDirs(parent, mode);
    await mkdir(dir, mode).catch((e: NodeJS.ErrnoException) => {
      if (e.code !== "EEXIST") throw e;
    });
  }
}

const exists = (path: string): boolean => {
  try {
    statSync(path);
    return true;
  } catch {
    return false;
  }
};

/** makeDirs for synchronous code (start-up, SQLite-backed metadata): the same steps, the same errors. */
export function makeDirsSync(dir: string, mode?: number): void {
  try {
    mkdirSync(dir, mode);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "EEXIST") return;
    const parent = dirname(dir);
    if (code !== "ENOENT" || parent === dir) throw err;
    if (!exists(parent)) makeDirsSync(parent, mode);
    try {
      mkdirSync(dir, mode);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
    }
  }
}

/** The owner of `path` by name ("root", a name from /etc/passwd, else "uid N"); undefined when it cannot be seen. */
export async function ownerName(path: string): Promise<string | undefined> {
  let uid: number;
  try {
    uid = (await stat(path)).uid;
  } catch {
    return undefined;
  }
  if (uid === 0) return "root";
  const passwd = await readFile("/etc/passwd", "utf8").catch(() => "");
  const entry = passwd.split("\n").find((l) => l.split(":")[2] === String(uid));
  return entry ? entry.split(":")[0] : `uid ${uid}`;
}

/**
 * Creates `dir` if needed and proves a file can be written in it (the probe is removed): a start-up or pre-build
 * check, so a directory that cannot be used is reported before any work. Throws the errno error.
 */
export async function proveWritableDir(dir: string): Promise<void> {
  const probe = noteTemporary(join(dir, `.write-probe-${process.pid}`));
  await makeDirs(dir);
  await writeFile(probe, "");
  await rm(probe);
}
