// Bind mode (--nix-layers bind; never auto's choice): the layer's fs/nix/store/<basename> is an empty
// mountpoint (dir, or empty file; a symlink store path is copied, since a bind mount would follow it), and the
// root of an active snapshot or view above such layers is composed at ROOT/snapshots/<id>/rootfs: the chain's
// overlay (or, for a one-parent view, a read-only bind), made private, then a read-only bind mount of every
// store path onto rootfs/nix/store/<basename> (mounts.ts bindReadOnly); the answer is one
// {bind, rootfs, [rbind, rw|ro]} mount. A composition is complete when ROOT/snapshots/<id>/composed exists
// (written last): Mounts reuses it, Remove unmounts it before deleting, startup and Cleanup unmount incomplete or
// orphaned ones. Why auto never picks it: see nix-layers.ts (target.ts is the same layer for containerd >= 1.7,
// which mounts the binds itself).
import { existsSync, lstatSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseStorePath } from "../../../nix/store-path.js";
import type { LocalStore } from "../../../store/local-store.js";
import type { Logger } from "../../../util/logger.js";
import { SnapshotError, type MetadataStore, type SnapshotRecord } from "../metadata.js";
import { bindReadOnly, mount, mountPointsUnder, unmountAll } from "../mounts.js";
import { Lock, type Mount } from "../overlay.js";
import { buildMountpointLayer, type LayerMode } from "./layer-mode.js";
import { makeDirsSync } from "../../../util/fs.js";

export const bindMode: LayerMode = {
  kind: "bind",
  rootfs: "composed",
  build: buildMountpointLayer,
  dataLayer: () => undefined,
};

export interface CompositionsOptions {
  snapshotsDir: string;
  metadata: MetadataStore;
  store: LocalStore;
  /** Concurrent mount(8) processes when bind mounts fall back to one per path. */
  mountParallelism: number;
  log?: Logger;
}

/** The composed roots of snapshots above bind-mode layers, one at a time. */
export class BindCompositions {
  private readonly lock = new Lock();

  constructor(private readonly opts: CompositionsOptions) {}

  rootfsPath(id: number): string {
    return join(this.opts.snapshotsDir, String(id), "rootfs");
  }

  private markerPath(id: number): string {
    return join(this.opts.snapshotsDir, String(id), "composed");
  }

  /**
   * The one mount of `rec`'s composed root (an active snapshot or view), composing it unless it is complete:
   * `base` is the snapshot's own mount with paths relative to the snapshots directory (they keep long chains
   * under the kernel's one-page option limit), `paths` the store paths to bind onto it.
   */
  async mounts(rec: SnapshotRecord, base: Mount, paths: string[]): Promise<Mount[]> {
    const rootfs = this.rootfsPath(rec.id);
    await this.lock.run(async () => {
      const current = this.opts.metadata.get(rec.key);
      if (!current || current.id !== rec.id)
        throw new SnapshotError("not-found", `snapshot ${JSON.stringify(rec.key)} does not exist`);
      const marker = this.markerPath(rec.id);
      if (existsSync(marker) && mountPointsUnder(rootfs).includes(rootfs)) return;
      rmSync(marker, { force: true });
      await unmountAll(rootfs);
      const start = performance.now();
      try {
        await this.compose(rec, rootfs, base, paths);
      } catch (err) {
        await unmountAll(rootfs).catch(() => undefined);
        throw err;
      }
      writeFileSync(marker, JSON.stringify({ rootfs, paths: paths.length }) + "\n");
      this.opts.log?.debug("composed", {
        key: rec.key,
        paths: paths.length,
        ms: Math.round(performance.now() - start),
      });
    });
    return [{ type: "bind", source: rootfs, options: ["rbind", rec.kind === "view" ? "ro" : "rw"] }];
  }

  private async compose(rec: SnapshotRecord, rootfs: string, base: Mount, paths: string[]): Promise<void> {
    const { snapshotsDir, store } = this.opts;
    makeDirsSync(rootfs, 0o755);
    const ro = rec.kind === "view";
    if (base.type === "bind")
      await mount(["--bind", ...(ro ? ["-o", "ro"] : []), base.source, rootfs], snapshotsDir);
    else {
      const options = [...base.options, ...(ro ? ["ro"] : [])].join(",");
      await mount(["-t", base.type, base.source, "-o", options, rootfs], snapshotsDir);
    }
    // Private: the store mounts below neither propagate out nor follow containerd's copies when unmounted.
    await mount(["--make-private", rootfs]);
    const storeRel = store.storeDir.replace(/^\/+/, "");
    const pairs: Array<[string, string]> = [];
    for (const p of paths) {
      const real = store.realPath(p);
      if (lstatSync(real).isSymbolicLink()) continue; // the layer holds the symlink itself
      const target = join(rootfs, storeRel, parseStorePath(p, store.storeDir).baseName);
      if (!existsSync(target))
        throw new Error(`${target}: no mountpoint for ${p} (was its nix layer unpacked instead?)`);
      pairs.push([real, target]);
    }
    await bindReadOnly(pairs, this.opts.mountParallelism, (error) =>
      this.opts.log?.warn("bind-mount helper unusable; using mount(8) per store path", { error }),
    );
  }

  /** Runs `fn` with no composition under way (Remove: a snapshot's composition goes before the snapshot). */
  whileIdle<T>(fn: () => Promise<T>): Promise<T> {
    return this.lock.run(fn);
  }

  /** Unmounts whatever is mounted in `rec`'s directory (an active snapshot or view; inside whileIdle). */
  async release(rec: SnapshotRecord): Promise<void> {
    if (rec.kind === "committed") return;
    rmSync(this.markerPath(rec.id), { force: true });
    await unmountAll(join(this.opts.snapshotsDir, String(rec.id)));
  }

  /** Unmounts compositions that are incomplete or belong to no active snapshot or view (startup, Cleanup). */
  unmountStale(): Promise<string[]> {
    const { snapshotsDir, metadata, log } = this.opts;
    return this.lock.run(async () => {
      const live = new Set<number>();
      for (const r of metadata.list()) if (r.kind !== "committed") live.add(r.id);
      const dirs = new Set<string>();
      for (const mp of mountPointsUnder(snapshotsDir)) {
        const name = mp.slice(snapshotsDir.length + 1).split("/")[0];
        if (name) dirs.add(name);
      }
      const done: string[] = [];
      for (const name of dirs) {
        const id = /^\d+$/.test(name) ? Number(name) : undefined;
        const keep = id !== undefined && live.has(id) && existsSync(this.markerPath(id));
        if (keep) continue;
        if (id !== undefined) rmSync(this.markerPath(id), { force: true });
        await unmountAll(join(snapshotsDir, name));
        done.push(name);
      }
      if (done.length) log?.info("unmounted stale compositions", { snapshots: done });
      return done;
    });
  }
}
