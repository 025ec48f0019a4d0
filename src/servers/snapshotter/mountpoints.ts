// Where target mode's mountpoints directories and store views live (nix-layer-modes/target.ts, store-view.ts,
// nix-layers.ts): one per committed chain that containers or views were mounted above, the top lower directory
// of their overlays: with --target-mounts binds, <id>/ holds an empty mountpoint per store path of the chain's
// target-mode layers; with views, v<id>/ holds the view's tree and its mount point, view/, where the view is
// mounted while the chain has containers or views (it holds the store's filesystem, which an admin may want to
// unmount and attach again, as a shared store is refreshed), and the tree stays until the chain's top snapshot
// is removed (or a sweep finds it gone). They are derived data, remade on first
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
import { unmountAll } from "./mounts.js";
import { makeMountpoints, type LayerPath } from "./nix-layer-modes/layer-mode.js";
import { Lock } from "./overlay.js";
import {
  buildViewTree,
  mountView,
  probeStoreViews,
  VIEW_ROOT,
  viewMounted,
  type ViewEntry,
} from "./store-view.js";

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
  private readonly viewLock = new Lock();

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

  /** The directory of the view of the chain whose top is snapshot `id` (tree/ and view/). */
  private viewDir(id: number): string {
    return join(this.dir, `v${id}`);
  }

  /**
   * The chain's store view mounted (store-view.ts), made first if it is not there (built under a temporary
   * name and renamed, as make does): returns the directory its containers take as their top lower directory.
   * `storeDir` is the store's logical directory, `storeRealDir` where it really is. `paths` is called only when
   * the tree is built (a view built ahead is just mounted: listing 6,000 entries took ~30 ms).
   */
  makeView(id: number, storeDir: string, storeRealDir: string, paths: () => ViewEntry[]): Promise<string> {
    const dest = this.viewDir(id);
    const at = join(dest, "view");
    return this.viewLock.run(async () => {
      if (viewMounted(at)) return join(at, VIEW_ROOT);
      await this.buildView(dest, storeDir, paths);
      await mountView(join(dest, "tree"), at, storeRealDir);
      return join(at, VIEW_ROOT);
    });
  }

  /** Builds the chain's view (its tree) unless it is there, without mounting it: ahead of its first container. */
  prebuildView(id: number, storeDir: string, paths: () => ViewEntry[]): Promise<void> {
    return this.viewLock.run(() => this.buildView(this.viewDir(id), storeDir, paths));
  }

  private async buildView(dest: string, storeDir: string, paths: () => ViewEntry[]): Promise<void> {
    if (lstatExists(dest)) return;
    this.ensure();
    const tmp = mkdtempSync(join(this.dir, "new-"));
    try {
      await buildViewTree(join(tmp, "tree"), storeDir, paths());
      mkdirSync(join(tmp, "view"));
      renameSync(tmp, dest);
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  }

  /**
   * Whether views work here (store-view.ts probeStoreViews; `upperParent`: where upper directories go,
   * `storeRealDir`: the store's real directory).
   */
  probeViews(upperParent: string, storeRealDir: string): Promise<string | undefined> {
    this.ensure();
    return probeStoreViews(this.dir, upperParent, storeRealDir);
  }

  /** Whether the chain's view is mounted (by this process or a predecessor). */
  viewIsMounted(id: number): boolean {
    return viewMounted(join(this.viewDir(id), "view"));
  }

  /**
   * Unmounts the chain's view, keeping its tree (the chain has no container left). Queued behind any view being
   * made, and ahead of any asked for after this call.
   */
  unmountView(id: number): Promise<void> {
    const at = join(this.viewDir(id), "view");
    return this.viewLock.run(() => unmountAll(at));
  }

  /** Removes the chain's directory and view (its top snapshot is gone); a view that will not unmount stays. */
  async remove(id: number): Promise<void> {
    rmSync(this.path(id), { recursive: true, force: true });
    await this.removeView(this.viewDir(id));
  }

  private removeView(dir: string): Promise<void> {
    return this.viewLock.run(async () => {
      if (!lstatExists(dir)) return;
      await unmountAll(dir); // throws when something stays mounted: nothing is removed then
      rmSync(dir, { recursive: true, force: true });
    });
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

  /**
   * Removes every directory and view but those of `keep` (startup, Cleanup), and unmounts the views of those not
   * in `open` (chains with no container left; all kept mounted when it is not given). Returns the names removed.
   */
  async sweep(keep: Set<number>, open?: Set<number>): Promise<string[]> {
    const removed: string[] = [];
    if (!existsSync(this.dir)) return removed;
    for (const name of readdirSync(this.dir)) {
      const id = /^v?(\d+)$/.exec(name)?.[1];
      if (id !== undefined && keep.has(Number(id))) {
        if (open && name.startsWith("v") && !open.has(Number(id))) await this.unmountView(Number(id));
        continue;
      }
      await this.removeView(join(this.dir, name)); // anything here may hold a mount (a view, a probe's)
      removed.push(name);
    }
    return removed;
  }
}
