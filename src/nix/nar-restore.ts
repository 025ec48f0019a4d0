// Unpacks a NAR onto the filesystem, like `nix-store --restore`, but all-or-nothing: the tree is built under a
// temporary sibling of the destination (".<name>.tmp-<pid>-<random>") and renamed into place only once the
// whole NAR has been parsed and written; on any error, or when the caller aborts (`signal`: `nixoci nar
// restore` on SIGTERM or SIGINT), the temporary tree is removed and nothing is left behind. What a killed
// restorer (SIGKILL, a crash) left can be removed by sweepRestoreTemporaries (the temporary's name carries
// the writer's pid).
//
// Safety: names come from the strict parser (no "", ".", "..", "/" or NUL, no duplicates), so every path we
// create is a fresh name inside a directory we created. Files are created with O_CREAT|O_EXCL|O_NOFOLLOW,
// directories with mkdir and symlinks with symlink, all of which fail instead of following an existing
// symlink; a directory root is mode 0700 until the end, so nobody else can enter the tree while it is built.
//
// The filesystem calls are synchronous: each is one short operation (an open, a write of one chunk of the
// source), far cheaper than a thread-pool round trip per call for trees with thousands of small files.
import * as fs from "node:fs";
import { basename, dirname, resolve } from "node:path";
import { NixociError, quote } from "../util/errors.js";
import { isAbandonedTemp, tempSuffix } from "../util/fs.js";
import { errnoCode, errnoWords, FileSystemError } from "../util/fs-errors.js";
import { noteTemporary, removeTreeSync } from "../util/temporaries.js";
import { fsPath, joinFilePath, readdirNames } from "../util/file-names.js";
import { parseNar, type NarHandler, type NarSource } from "./nar-reader.js";

export interface RestoreNarOptions {
  /** Names the NAR in error messages. */
  input: string;
  /**
   * Give the tree the Nix store's canonical form: modes 0444/0555 (directories 0555, read-only after their
   * contents are written) and mtime 1 everywhere (symlinks included). Otherwise 0644/0755 and mtimes as
   * created.
   */
  canonicalize?: boolean;
  /**
   * Stops the restore: it rejects with the signal's reason at once (a read of the source in progress is not
   * waited for) after removing the temporary tree.
   */
  signal?: AbortSignal;
  /**
   * What file-system errors name instead of `dest`: a caller restoring under a temporary name of its own (a store
   * path being added) names the path the user knows.
   */
  shownAs?: string;
}

const FILE_FLAGS =
  fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | (fs.constants.O_NOFOLLOW ?? 0);

/** ".<name>.tmp-<pid>-<random>", <name> shortened if needed to keep within the 255-byte limit of names. */
function tempName(name: string): string {
  const suffix = tempSuffix();
  let base = name;
  while (Buffer.byteLength(`.${base}${suffix}`) > 255) base = base.slice(0, -1);
  return `.${base}${suffix}`;
}

/**
 * Removes the temporary trees that restores of `dest` by processes no longer running left beside it (a
 * SIGKILL, a crash); live restorers' temporaries are kept. Returns the paths removed. Best effort: what
 * cannot be removed is left.
 */
export function sweepRestoreTemporaries(dest: string): string[] {
  const destPath = resolve(dest);
  const dir = dirname(destPath);
  const name = basename(destPath);
  let names: string[];
  try {
    names = readdirNames(dir);
  } catch {
    return [];
  }
  const removed: string[] = [];
  for (const n of names) {
    const m = /^\.(.*)\.tmp-\d+-[0-9a-f]{12}$/s.exec(n);
    if (!m) continue;
    // tempName shortens long names to fit 255 bytes: a prefix of the name then, in a name of (nearly) 255
    // bytes.
    if (m[1] !== name && !(m[1] !== "" && name.startsWith(m[1]) && Buffer.byteLength(n) > 251)) continue;
    if (!isAbandonedTemp(n)) continue;
    try {
      removeTreeSync(`${dir}/${n}`);
      removed.push(`${dir}/${n}`);
    } catch {
      // left for another time
    }
  }
  return removed;
}

function exists(path: string): boolean {
  try {
    fs.lstatSync(fsPath(path));
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return false;
    throw e;
  }
}

/**
 * Restores the NAR read from `source` at `dest`, which must not exist yet (its parent must). Resolves with
 * the NAR's size once the tree is complete and in place. Errors: NixociError naming `opts.input` for a bad NAR,
 * or `dest` for filesystem failures; in both cases nothing is left at `dest` or beside it.
 */
export async function restoreNar(
  source: NarSource,
  dest: string,
  opts: RestoreNarOptions,
): Promise<{ narSize: number }> {
  const canonical = opts.canonicalize ?? false;
  const destPath = resolve(dest);
  const shown = opts.shownAs ?? dest;
  // A failed system call carries its errno code (a caller maps EACCES or ENOSPC to its own advice).
  const fail = (problem: string, e?: unknown): NixociError => {
    const code = errnoCode(e);
    return code
      ? new FileSystemError(shown, code, problem, { cause: e })
      : new NixociError(shown, problem, { cause: e });
  };
  const signal = opts.signal;
  signal?.throwIfAborted();
  /** Throws once aborted: a handler resumed after the abort must not touch the (removed) tree again. */
  const live = (): void => signal?.throwIfAborted();

  try {
    if (exists(destPath)) throw fail("already exists; refusing to restore a NAR over it");
  } catch (e) {
    if (e instanceof NixociError) throw e;
    throw fail(`cannot check whether it exists (${errnoWords(e)})`, e);
  }

  const tmp = noteTemporary(`${dirname(destPath)}/${tempName(basename(destPath))}`);
  let created = false;
  let fd: number | null = null;
  // Directories not yet finalised (made read-only and given their mtime), innermost last.
  const openDirs: { path: string | Buffer; names: readonly string[] }[] = [];
  const modeIsExact = new Map<number, boolean>();

  const where = (path: readonly string[]) => joinFilePath(tmp, path);
  const what = (kind: string, path: readonly string[]) =>
    path.length === 0 ? `the root ${kind}` : `${kind} ${quote(path.join("/"))}`;

  /** Finalises the directories that are complete once an entry at depth `depth` appears. */
  const finishDirs = (depth: number) => {
    for (let top = openDirs.at(-1); top !== undefined && top.names.length >= depth; top = openDirs.at(-1)) {
      openDirs.pop();
      try {
        if (canonical) fs.utimesSync(top.path, 1, 1);
        fs.chmodSync(top.path, canonical ? 0o555 : 0o755);
      } catch (e) {
        throw fail(`cannot set the mode of directory ${quote(top.names.join("/"))} (${errnoWords(e)})`, e);
      }
    }
  };

  const handler: NarHandler = {
    directory(path) {
      live();
      finishDirs(path.length);
      const p = where(path);
      try {
        fs.mkdirSync(p, 0o700);
      } catch (e) {
        throw fail(`cannot create ${what("directory", path)} (${errnoWords(e)})`, e);
      }
      if (path.length === 0) created = true;
      openDirs.push({ path: p, names: path });
    },

    symlink(path, target) {
      live();
      finishDirs(path.length);
      const p = where(path);
      try {
        fs.symlinkSync(fsPath(target), p);
        if (path.length === 0) created = true;
        if (canonical) fs.lutimesSync(p, 1, 1);
      } catch (e) {
        throw fail(`cannot create ${what("symlink", path)} (${errnoWords(e)})`, e);
      }
    },

    async file(path, executable, _size, contents) {
      live();
      finishDirs(path.length);
      const p = where(path);
      const mode = executable ? (canonical ? 0o555 : 0o755) : canonical ? 0o444 : 0o644;
      try {
        fd = fs.openSync(p, FILE_FLAGS, mode);
      } catch (e) {
        throw fail(`cannot create ${what("file", path)} (${errnoWords(e)})`, e);
      }
      if (path.length === 0) created = true;
      for await (const chunk of contents) {
        live();
        let off = 0;
        while (off < chunk.length) {
          try {
            off += fs.writeSync(fd, chunk, off, chunk.length - off);
          } catch (e) {
            throw fail(`cannot write ${what("file", path)} (${errnoWords(e)})`, e);
          }
        }
      }
      live();
      const f = fd;
      fd = null;
      try {
        // open() applies the umask to the mode. Whether that changes it is checked on the first file with
        // each mode; only if it does is the mode set on every file.
        let exact = modeIsExact.get(mode);
        if (exact === undefined) {
          exact = (fs.fstatSync(f).mode & 0o7777) === mode;
          modeIsExact.set(mode, exact);
        }
        if (!exact) fs.fchmodSync(f, mode);
        if (canonical) fs.futimesSync(f, 1, 1);
      } catch (e) {
        throw fail(`cannot set the mode of ${what("file", path)} (${errnoWords(e)})`, e);
      } finally {
        fs.closeSync(f);
      }
    },
  };

  let onAbort: (() => void) | undefined;
  try {
    const parsing = parseNar(source, handler, { input: opts.input });
    let narSize: number;
    if (!signal) ({ narSize } = await parsing);
    else {
      parsing.catch(() => undefined); // abandoned when aborted: its failure then is of no interest
      const aborted = new Promise<never>((_, reject) => {
        onAbort = () => reject(signal.reason);
        signal.addEventListener("abort", onAbort, { once: true });
      });
      ({ narSize } = await Promise.race([parsing, aborted]));
    }
    live();
    finishDirs(0);
    if (exists(destPath)) throw fail("appeared while the NAR was being restored; not replacing it");
    try {
      fs.renameSync(fsPath(tmp), fsPath(destPath));
    } catch (e) {
      throw fail(`cannot move the restored tree into place (${errnoWords(e)})`, e);
    }
    return { narSize };
  } catch (e) {
    if (fd !== null) {
      try {
        fs.closeSync(fd);
      } catch {
        // already failing
      }
      fd = null;
    }
    if (created) {
      try {
        removeTreeSync(tmp);
      } catch {
        // Best effort: report the original error.
      }
    }
    throw e;
  } finally {
    if (onAbort) signal?.removeEventListener("abort", onAbort);
  }
}
