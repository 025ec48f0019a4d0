// Names for work in progress, and what an interrupted command removes. Writers put files and trees under a
// temporary name (".<name>.tmp-<pid>-<random>") and rename them into place when complete. A command that stops on
// a signal (the CLI's interrupt handling) asks this module for every temporary name this process handed out and
// removes what is still there, so a Ctrl-C leaves nothing half-written; what a SIGKILL leaves carries the dead
// writer's pid and goes with the next sweep of that directory (util/fs.ts isAbandonedTemp).
import { randomBytes } from "node:crypto";
import { chmodSync, lstatSync, renameSync, rmSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { fsPath, readdirNames } from "./file-names.js";

/**
 * The suffix of names for work in progress: ".tmp-<pid>-<random>". The writer's pid lets a later sweep tell the
 * leftovers of a killed process from another live process's work (see isAbandonedTemp).
 */
export function tempSuffix(): string {
  // A random start per process, then counting: unique within the process, unguessable across processes, and one
  // call to the random source instead of one per name (a build names a few hundred temporaries).
  nextTemp ??= randomBytes(6).readUIntBE(0, 6);
  const n = nextTemp;
  nextTemp = (nextTemp + 1) % 2 ** 48;
  return `.tmp-${process.pid}-${n.toString(16).padStart(12, "0")}`;
}

let nextTemp: number | undefined;

// Only commands that remove their temporaries on a signal track them (a server hands out names without end).
let tracked: Set<string> | undefined;

/** From now on, remember every temporary name handed out (noteTemporary), for removeTemporariesSync. */
export function trackTemporaries(): void {
  tracked ??= new Set();
}

/** Remembers `path` (a temporary file or tree this process is about to create) when tracking; returns it. */
export function noteTemporary(path: string): string {
  tracked?.add(path);
  return path;
}

// Process groups writing into temporaries (a compressor lane makes its pipes, and its tool its outputs, in its
// directory): killed before the temporaries are removed, so that none adds a file to a tree being removed.
const writerGroups = new Set<number>();

/** Remembers a process group (its leader's pid) that writes into a temporary, when tracking. */
export function noteTemporaryWriter(pgid: number): void {
  if (tracked) writerGroups.add(pgid);
}

export function forgetTemporaryWriter(pgid: number): void {
  writerGroups.delete(pgid);
}

/** Forgets a noted path (a lock given back: it may be another process's by the time a signal comes). */
export function forgetTemporary(path: string): void {
  tracked?.delete(path);
}

/**
 * Removes a tree, making its directories writable first (store paths are read-only, 0555, once complete); names
 * as bytes. Throws when what remains cannot be removed; nothing there is no error.
 */
export function removeTreeSync(path: string): void {
  try {
    if (lstatSync(fsPath(path)).isDirectory()) {
      chmodSync(fsPath(path), 0o700);
      // Names as bytes (util/file-names.ts): a store path's file names need not be UTF-8.
      for (const name of readdirNames(path)) removeTreeSync(join(path, name));
    }
  } catch {
    // gone already, or not ours to change: rmSync reports what matters
  }
  rmSync(fsPath(path), { recursive: true, force: true });
}

/**
 * Removes every noted temporary that still exists; for a signal handler that exits next (synchronous: no other
 * code of this process runs meanwhile). A tree is first renamed to a new temporary name and removed there: a
 * rename of it into place that a pool thread is doing right now then either happened (the tree is complete where
 * it belongs and stays) or fails, and the removal never eats into a tree that just became the real thing. A file
 * is unlinked, which is atomic the same way. Best effort; returns the paths removed.
 */
export function removeTemporariesSync(): string[] {
  for (const pgid of writerGroups) {
    try {
      process.kill(-pgid, "SIGKILL");
    } catch {
      // gone already
    }
  }
  writerGroups.clear();
  const removed: string[] = [];
  for (const path of tracked ?? []) {
    let victim = path;
    try {
      if (lstatSync(fsPath(path)).isDirectory()) {
        victim = join(dirname(path), `.${basename(path).replace(/^\.+/, "").slice(0, 200)}${tempSuffix()}`);
        renameSync(fsPath(path), fsPath(victim));
      }
      removeTreeWhileWritten(victim);
      removed.push(path);
    } catch {
      // already renamed into place or removed: nothing to do
    }
  }
  tracked?.clear();
  return removed;
}

/**
 * removeTreeSync, again while something still appears in the tree for up to 0.2 s: a writer killed just before may
 * have had a file creation in flight on another core.
 */
function removeTreeWhileWritten(path: string): void {
  const pause = new Int32Array(new SharedArrayBuffer(4));
  for (let attempt = 0; ; attempt++) {
    try {
      removeTreeSync(path);
      return;
    } catch (err) {
      if (attempt >= 40) throw err;
      Atomics.wait(pause, 0, 0, 5);
    }
  }
}
