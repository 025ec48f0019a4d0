// Where target mode's mountpoints directories live (nix-layer-modes/target.ts, nix-layers.ts): one directory per
// committed chain that containers or views were mounted above, holding an empty mountpoint per store path of the
// chain's target-mode layers, the top lower directory of their overlays. They are derived data, remade on first
// need (after a reboot too), and made of nothing but directory entries, which on a disk filesystem cost a journal
// update each (about 0.2 ms a mkdir on the machines measured, 6 us on tmpfs: 0.4 s against 12 ms for an image of
// 2,000 paths). So by default they go on a tmpfs: /dev/shm/nixoci-sn-<instance> (the instance as for GC roots:
// from the snapshotter's root), a directory this user owns with mode 0700 (anything else there is refused, so
// another user cannot point it elsewhere); where /dev/shm is no tmpfs, ROOT/mountpoints.
import {
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  renameSync,
  rmdirSync,
  rmSync,
  statfsSync,
} from "node:fs";
import { join } from "node:path";
import { makeDirsSync } from "../../util/fs.js";
import { snapshotterInstance } from "./gcroots.js";
import { makeMountpoints, type LayerPath } from "./nix-layer-modes/layer-mode.js";

const SHM = "/dev/shm";
const TMPFS_MAGIC = 0x01021994;

/** The default place for a snapshotter's mountpoints directories (see above). */
export function defaultMountpointsDir(snapshotterRoot: string): string {
  try {
    if (statfsSync(SHM).type === TMPFS_MAGIC)
      return join(SHM, `nixoci-${snapshotterInstance(snapshotterRoot)}`);
  } catch {
    // no /dev/shm
  }
  return join(snapshotterRoot, "mountpoints");
}

/** Whether something (a symlink too, even a dangling one) is at `path`. */
function lstatExists(path: string): boolean {
  try {
    lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

/** Makes `dir` (its parent must exist) or checks that it is a directory of this user's with mode 0700. */
function privateDir(dir: string): void {
  try {
    mkdirSync(dir, { mode: 0o700 });
    return;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
  }
  const st = lstatSync(dir);
  const uid = process.getuid?.() ?? st.uid;
  if (!st.isDirectory() || st.uid !== uid || (st.mode & 0o077) !== 0)
    throw new Error(
      `${dir}: not a private directory of this user (a ${st.isSymbolicLink() ? "symlink" : st.isDirectory() ? "directory" : "file"}, ` +
        `owner ${st.uid}, mode ${(st.mode & 0o777).toString(8)}); remove it, or give --mountpoints-dir`,
    );
}

export class MountpointDirs {
  private made = false;

  /** Checks a directory already at `dir` at once (fail fast on a planted one); makes it on first need. */
  constructor(readonly dir: string) {
    if (lstatExists(dir)) this.ensure();
  }

  private ensure(): void {
    if (this.made) return;
    if (this.dir.startsWith(`${SHM}/`)) privateDir(this.dir);
    else makeDirsSync(this.dir, 0o700);
    this.made = true;
  }

  /** The mountpoints directory of the chain whose top is snapshot `id`. */
  path(id: number): string {
    return join(this.dir, String(id));
  }

  /**
   * Makes the chain's directory if it is not there (`storeDir` inside it, an empty mountpoint per path): built
   * under a temporary name and renamed, so a concurrent caller or a crash leaves it whole or absent.
   */
  make(id: number, storeDir: string, paths: Omit<LayerPath, "target">[]): string {
    const dest = this.path(id);
    if (lstatExists(dest)) return dest;
    this.ensure();
    const tmp = mkdtempSync(join(this.dir, "new-"));
    try {
      const store = join(tmp, storeDir);
      makeDirsSync(store, 0o755);
      makeMountpoints(paths.map((p) => ({ ...p, target: join(store, p.baseName) })));
      try {
        renameSync(tmp, dest);
      } catch (err) {
        if (
          (err as NodeJS.ErrnoException).code !== "ENOTEMPTY" &&
          (err as NodeJS.ErrnoException).code !== "EEXIST"
        )
          throw err; // else another caller made it first
      }
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
    return dest;
  }

  /** Removes the chain's directory (its top snapshot is gone). */
  remove(id: number): void {
    rmSync(this.path(id), { recursive: true, force: true });
  }

  /** Removes the directory itself when it holds no chain's (the snapshotter stops). */
  removeIfEmpty(): void {
    try {
      rmdirSync(this.dir);
      this.made = false;
    } catch {
      // not empty, or gone
    }
  }

  /** Removes every directory but those of `keep` (startup, Cleanup). Returns the names removed. */
  sweep(keep: Set<number>): string[] {
    const removed: string[] = [];
    if (!existsSync(this.dir)) return removed;
    for (const name of readdirSync(this.dir)) {
      if (/^\d+$/.test(name) && keep.has(Number(name))) continue;
      rmSync(join(this.dir, name), { recursive: true, force: true });
      removed.push(name);
    }
    return removed;
  }
}
