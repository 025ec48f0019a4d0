// Nix's lock on a store path: every Nix process that creates a path (a substitution, a build's output,
// `nix-store --add`) first takes an exclusive flock(2) on "<store path>.lock" and writes the path in place while it
// holds it. A writer that skips the lock can take Nix's half-written directory for an abandoned one and replace it
// (and Nix then fails on files that appear under it). So nixoci takes the same lock before it moves a path into a
// store that Nix also writes (one with Nix's database), as a second Nix process would.
//
// Node has no flock(2): flock(1) (util-linux) takes it on a descriptor it inherits from here. A flock lock belongs
// to the open file description, which this process shares with the child, so the lock stays held after flock(1)
// exits, until this process closes its descriptor. The protocol is Nix's (libstore/pathlocks): after the lock is
// taken, a lock file that is not empty was deleted by its previous holder (who writes one byte to it after
// unlinking it) and another process may hold a new one under the same name: open it again. On release the lock
// file is unlinked, then the byte written, then the descriptor closed.
import { spawn } from "node:child_process";
import { constants, existsSync } from "node:fs";
import { open, unlink, type FileHandle } from "node:fs/promises";
import { NixociError } from "../util/errors.js";

/** util-linux's flock(1): where Debian and most systems install it, else whatever PATH finds (NixOS). */
let flockProgram: string | undefined;
function flockPath(): string {
  flockProgram ??= ["/usr/bin/flock", "/bin/flock"].find((p) => existsSync(p)) ?? "flock";
  return flockProgram;
}

/** Takes flock(2)'s exclusive lock on the open `handle`, waiting as long as another process holds it. */
function flockExclusive(handle: FileHandle, lockFile: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(flockPath(), ["--exclusive", "3"], {
      stdio: ["ignore", "ignore", "pipe", handle.fd],
    });
    let stderr = "";
    child.stderr?.on("data", (d: Buffer) => (stderr += d.toString()));
    child.on("error", (err: NodeJS.ErrnoException) =>
      reject(
        new NixociError(
          lockFile,
          err.code === "ENOENT"
            ? "cannot take Nix's lock on the path: flock(1) is not installed (Debian's util-linux)"
            : `cannot take Nix's lock on the path: ${err.message}`,
        ),
      ),
    );
    child.on("close", (code, signal) =>
      code === 0
        ? resolve()
        : reject(
            new NixociError(
              lockFile,
              `cannot take Nix's lock on the path: flock exited with ${signal ?? `status ${code}`}${stderr.trim() ? `: ${stderr.trim()}` : ""}`,
            ),
          ),
    );
  });
}

/** Runs `fn` holding Nix's lock on `path` (the store path's real location; the lock is "<path>.lock"). */
export async function withNixPathLock<T>(path: string, fn: () => Promise<T>): Promise<T> {
  const lockFile = `${path}.lock`;
  let handle: FileHandle;
  for (;;) {
    handle = await open(lockFile, constants.O_RDWR | constants.O_CREAT, 0o600);
    try {
      await flockExclusive(handle, lockFile);
      if ((await handle.stat()).size === 0) break;
    } catch (err) {
      await handle.close();
      throw err;
    }
    await handle.close(); // a deleted lock file: its holder released it; take the new one
  }
  try {
    return await fn();
  } finally {
    await unlink(lockFile).catch(() => undefined);
    await handle.write("d").catch(() => undefined);
    await handle.close();
  }
}
