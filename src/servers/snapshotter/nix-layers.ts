// The Nix part of `nixoci snapshotter`: layers whose descriptors name their store paths are taken from the
// local Nix store instead of being downloaded.
//
// Prepare(key, parent, labels) with `containerd.io/snapshot.ref` = the target chain ID and
// `containerd.io/snapshot/nix-store-path.<i>` = store paths: when every path is valid in the store (after
// substituting the missing ones from the configured caches, in parallel, when there are any), a committed
// snapshot named after the ref is created (same parent) and Prepare answers ALREADY_EXISTS, so containerd
// skips fetching and unpacking that layer. Otherwise the Prepare is an ordinary one and containerd unpacks the
// layer's real bytes (nixoci images carry them), except where that would make containerd download store layers
// the node holds (those above it): then the snapshotter downloads that layer itself (layer-fetch.ts). A nix
// layer's store paths are recorded in the metadata (table nix_layers) with how its fs holds them (--nix-layers;
// one module each under nix-layer-modes/, behind layer-mode.ts's interface, auto's choice in auto.ts):
//
// - link (auto's choice when the store and ROOT share a filesystem): fs/nix/store/<basename> is a tree of hard
//   links to the store's files (directories recreated, symlinks copied). Containers get containerd's ordinary
//   overlay mounts, which containerd 1.6 mounts and unmounts itself; overlay copy-up keeps the store unchanged,
//   and the links keep a running container's files even if the store path is garbage-collected.
// - metacopy (auto's choice when they do not, e.g. a store on a SAN or NFS share, and the probe below passes):
//   fs/nix/store/<basename> is a metadata-only copy of the store path (layer-tree.ts, metacopy.ts): directories
//   recreated, symlinks copied, each regular file a sparse stub of the same size, mode, owner and mtime with
//   the xattrs trusted.overlay.metacopy (empty) and trusted.overlay.redirect = "/<basename>/<path inside>".
//   Mounts of any snapshot whose chain holds such a layer (containers, views, the unpacker's Prepares above it,
//   so the diff applier reads real content) are one ordinary overlay with the store's real directory appended
//   as a data-only lower layer ("lowerdir=A:B::/nix/store", Linux >= 6.5) and metacopy=on,redirect_dir=on; a
//   one-parent view is the read-only overlay "lowerdir=PARENT::STORE" (no upper dir) instead of a bind mount.
//   containerd 1.6 mounts and unmounts it itself, it shows exactly the closure's files (reads go to the store's
//   files), and it works across filesystems. Unlike link mode, a running container's files go if their store
//   path is garbage-collected (the GC roots below prevent that). Auto mode probes support once, on first need
//   (a tiny such mount under ROOT/snapshots, logged). Limit: the options are absolute paths and must stay
//   under the kernel's 4 KiB page; containerd 1.6 shortens over-long overlay options only when all lowerdirs
//   share a prefix, which the "::STORE" entry defeats, so a chain can hold about 3900 / (len(ROOT) + 18)
//   layers (about 120 with ROOT=/var/lib/nixoci, about 60 with a 50-byte ROOT); deeper images fail to mount.
// - bind (nix-layer-modes/bind.ts): fs/nix/store/<basename> is an empty mountpoint. containerd 1.6 has no
//   Mount.Target, so Mounts of an active snapshot or view above such a layer composes the root filesystem at
//   ROOT/snapshots/<id>/rootfs (the chain's overlay plus a read-only bind mount of every store path, mounts.ts)
//   and answers one {bind, rootfs, [rbind, rw|ro]} mount. Caveat: containerd 1.6 unmounts rootfs mounts it
//   makes with plain umount(2), which fails (EBUSY) on the nested binds, so `ctr run` (its temporary mount for
//   /etc/group) fails and leaks a mount; hence auto mode never picks bind and, with the store on another
//   filesystem and no metacopy support, lets containerd download the layer.
// - target (nix-layer-modes/target.ts; auto's choice when the node's containerd is 1.7 or later, which mounts a
//   Mount's target inside the rootfs): the layer's fs is empty, and the mounts of an active snapshot or view
//   above it are an overlay of the chain's other layers topped by the chain's store view (--target-mounts view,
//   the default where the probe passes: one read-only overlay per image, redirecting into the store, mounted by
//   the snapshotter on a tmpfs and shared by the image's containers: store-view.ts, mountpoints.ts, readyTargets;
//   it needs no Mount.target, so any containerd mounts the result), or with --target-mounts binds by the chain's
//   mountpoints directory followed by a read-only bind per store path with its target, which containerd >= 1.7
//   mounts and unmounts itself. No per-file work, any filesystem, the container reads the store's own files;
//   like metacopy, it loses them if their path is garbage-collected. (Not one recursive bind of a composed
//   store: containerd's temporary mounts cannot unmount nested mounts.)
//
// Prepares made by containerd's unpacker (they carry containerd.io/snapshot.ref, or an extract- key) keep the
// plain overlay mounts (plus the data-only store layer above a metacopy layer), as the diff applier wants.
//
// Layer trees are built in a worker thread (layer-tree.ts), so the server answers other calls meanwhile.
//
// GC roots (gcroots.ts): a nix layer's paths are linked into its image's root (one per manifest digest, else
// one per layer; the image roots its labels name instead when their closure holds the paths: coveringRoots)
// before its row is committed, and a later ALREADY_EXISTS answer for the same layer under
// another image's manifest digest makes that image's root hold it too. Remove drops the links of roots no
// snapshot holds any more; startup (syncGcRoots) and Cleanup make the roots directory match the metadata.
import { existsSync, mkdirSync, mkdtempSync, renameSync, rmSync, type Stats } from "node:fs";
import { rm } from "node:fs/promises";
import { basename, join } from "node:path";
import {
  MANIFEST_DIGEST_LABEL,
  NIX_CLOSURE_ROOT_ANNOTATION,
  REF_LABEL,
  storePathsFromAnnotations,
} from "../../image/annotations.js";
import { parseStorePath } from "../../nix/store-path.js";
import type { Logger } from "../../util/logger.js";
import { BinaryCacheStore, type TrustOptions } from "../../store/binary-cache.js";
import type { LocalStore } from "../../store/local-store.js";
import { LazySources } from "../../store/lazy-sources.js";
import { Substituter } from "../../store/substituter.js";
import { GcRoots, gcRootName, gcRootsDir } from "./gcroots.js";
import type { SnapshotterMetrics } from "./metrics.js";
import { SnapshotError, type NixLayerKind, type SnapshotRecord } from "./metadata.js";
import { ModeChooser, type MountTargets, type TargetMounts } from "./nix-layer-modes/auto.js";
import { BindCompositions } from "./nix-layer-modes/bind.js";
import type { BuiltLayer, LayerMode, LayerPath } from "./nix-layer-modes/layer-mode.js";
import { defaultMountpointsDir, MountpointDirs } from "./mountpoints.js";
import type { ViewEntry } from "./store-view.js";
import { layerMode, type NixLayerMode } from "./nix-layer-modes/modes.js";
import { targetBinds } from "./nix-layer-modes/target.js";
import {
  diskUsage,
  OverlaySnapshotter,
  takeOwner,
  type DataLayer,
  type Mount,
  type OverlayOptions,
} from "./overlay.js";
import { fetchLayerTree, layerSource, manifestLayers, type ManifestLayer } from "./layer-fetch.js";
import { verifyNixLayerChain } from "./layer-verify.js";

export { REF_LABEL } from "../../image/annotations.js";
export type { NixLayerMode } from "./nix-layer-modes/modes.js";

export interface NixSnapshotterOptions extends OverlayOptions {
  store: LocalStore;
  /** Binary cache URLs to substitute missing paths from. */
  substituters?: string[];
  trust?: TrustOptions;
  /** Commit nix layers without checking that their paths make their chain IDs (layer-verify.ts). */
  trustLayerLabels?: boolean;
  log?: Logger;
  /** Counters for --metrics-address. */
  metrics?: SnapshotterMetrics;
  /** Concurrent mount(8) processes while composing, when bind mounts fall back to one per path (default 16). */
  mountParallelism?: number;
  /**
   * How a nix layer holds its store paths: "link" (a tree of hard links to the store's files: containers get
   * plain overlay mounts, which containerd 1.6 mounts and unmounts itself), "metacopy" (overlay metacopy stubs
   * redirecting into the store as a data-only lower layer: one plain overlay mount too, across filesystems),
   * "bind" (mountpoints, composed with read-only bind mounts), "target" (mountpoints, and a read-only bind mount
   * per path with Mount.target that containerd >= 1.7 makes), or "auto" (default: target when `mountTargets`,
   * else link when the store and ROOT share a filesystem, else metacopy when the kernel supports it, else the
   * layer is downloaded).
   */
  nixLayers?: NixLayerMode;
  /**
   * Whether the node's containerd mounts a Mount's target inside the rootfs (>= 1.7): auto then picks target. A
   * function is asked on the first nix layer auto holds.
   */
  mountTargets?: MountTargets;
  /** Where target mode's mountpoints directories and store views go (default: mountpoints.ts defaultMountpointsDir). */
  mountpointsDir?: string;
  /** How containers above target-mode layers get their store paths (auto.ts TargetMounts; default auto). */
  targetMounts?: TargetMounts;
}

/**
 * An active snapshot made by containerd's unpacker: its Prepare carried the ref label, or (containerd's older
 * apply path) its key is "extract-..." under the metadata layer's "NS/ID/" prefix.
 */
function isUnpack(rec: SnapshotRecord): boolean {
  return rec.kind === "active" && isUnpackKey(rec.key, rec.labels);
}

/** Whether a Prepare of `key` with `labels` comes from containerd's unpacker (see isUnpack). */
function isUnpackKey(key: string, labels: Record<string, string>): boolean {
  return Object.hasOwn(labels, REF_LABEL) || /(^|\/)extract-/.test(key);
}

export class NixSnapshotter extends OverlaySnapshotter {
  readonly store: LocalStore;
  private readonly substituterUrls: string[];
  private readonly trust: TrustOptions;
  private readonly log?: Logger;
  private readonly modes: ModeChooser;
  private readonly compositions: BindCompositions;
  private readonly trustLayerLabels: boolean;
  /** The --substituter caches, opened on first use and tried again after a failure. */
  private readonly sources: LazySources;
  /** nix_layers rows by snapshot id (null: an ordinary snapshot); a committed layer's row never changes. */
  private readonly nixLayerRows = new Map<number, { paths: string[]; mode: NixLayerKind } | null>();
  /** The target-mode part of each committed chain a container or view was mounted above, by its top's id. */
  private readonly chainTargets = new Map<number, ChainTargets | null>();
  /** The closures of the latest images' roots (coveringRoots), by the roots. */
  private readonly rootClosures = new Map<string, Set<string>>();
  /**
   * The lstat of store paths found valid for a layer (a valid path never changes), so its chain's store view
   * is built without looking at each path again; the latest PATH_STATS_KEPT.
   */
  private readonly pathStats = new Map<string, Stats>();
  /** The layers of image manifests, by digest (savesDownloads). */
  private readonly manifests = new Map<string, Promise<ManifestLayer[]>>();
  readonly gcRoots: GcRoots;
  readonly mountpoints: MountpointDirs;
  /** The latest committed snapshot whose chain's store view is to be built ahead (see prebuildSoon). */
  private prebuildTimer?: NodeJS.Timeout;
  readonly metrics?: SnapshotterMetrics;

  constructor(opts: NixSnapshotterOptions) {
    super(opts);
    this.store = opts.store;
    this.substituterUrls = opts.substituters ?? [];
    this.trust = opts.trust ?? { trustedKeys: [] };
    this.trustLayerLabels = opts.trustLayerLabels ?? false;
    this.log = opts.log;
    this.sources = new LazySources(
      this.substituterUrls,
      (url) => BinaryCacheStore.open(url, this.trust, this.store.storeDir),
      (url, err) => this.log?.warn("substituter unavailable", { url, error: err.message }),
    );
    this.metrics = opts.metrics;
    this.modes = new ModeChooser(
      opts.nixLayers ?? "auto",
      this.store,
      this.snapshotsDir,
      this.log,
      opts.mountTargets ?? false,
      opts.targetMounts ?? "auto",
      () => this.mountpoints.probeViews(this.snapshotsDir, this.store.realDir),
    );
    this.compositions = new BindCompositions({
      snapshotsDir: this.snapshotsDir,
      metadata: this.metadata,
      store: this.store,
      mountParallelism: opts.mountParallelism ?? 16,
      log: this.log,
    });
    this.gcRoots = new GcRoots(gcRootsDir(this.root, this.store), this.store.storeDir);
    this.mountpoints = new MountpointDirs(opts.mountpointsDir ?? defaultMountpointsDir(this.root));
  }

  /**
   * Makes the GC roots directory match the metadata (startup, Cleanup): nix layers made before roots existed
   * get theirs, every root holds exactly its layers' paths, orphans go. Returns the orphans removed.
   */
  syncGcRoots(): Promise<string[]> {
    return this.lock.run(() => {
      const backfill = this.metadata.nixLayersWithoutRoot();
      if (backfill.length)
        this.metadata.transaction(() => {
          for (const id of backfill) {
            const rec = this.metadata.getById(id);
            if (rec) this.metadata.addGcRoot(gcRootName(rec.labels, rec.key), id);
          }
        });
      const removed = this.gcRoots.syncAll(this.metadata.gcRoots());
      if (removed.length) this.log?.info("removed orphan gc roots", { dir: this.gcRoots.dir, removed });
      return removed;
    });
  }

  /** The nix layer row of snapshot `id` (cached), or undefined for an ordinary snapshot. */
  private nixLayer(id: number): { paths: string[]; mode: NixLayerKind } | undefined {
    let row = this.nixLayerRows.get(id);
    if (row === undefined) {
      // A row is written in the transaction that creates its snapshot and never changed: kept until removal.
      row = this.metadata.nixLayer(id) ?? null;
      this.nixLayerRows.set(id, row);
    }
    return row ?? undefined;
  }

  /** Makes the committed nix layer `rec` hold the root its `labels` name (under this.lock). */
  private holdRoot(rec: SnapshotRecord, labels: Record<string, string>): void {
    const layer = this.nixLayer(rec.id);
    if (!layer) return;
    const name = gcRootName(labels, rec.key);
    if (this.metadata.gcRootsOf(rec.id).includes(name)) return;
    const links = this.coveringRoots(labels, layer.paths);
    this.gcRoots.add(name, links ?? layer.paths);
    this.metadata.transaction(() => this.metadata.addGcRoot(name, rec.id, links));
    this.log?.info("gc root held", { root: name, snapshot: rec.key, paths: layer.paths.length });
  }

  /** The store as a data-only lower layer when a nix layer among `parents` takes one (metacopy). */
  protected override dataLayer(_rec: SnapshotRecord, parents: SnapshotRecord[]): DataLayer | undefined {
    for (const p of parents) {
      const kind = this.nixLayer(p.id)?.mode;
      const data = kind && layerMode(kind).dataLayer(this.store.realDir);
      if (data) return data;
    }
    return undefined;
  }

  /** Unmounts compositions that are incomplete or belong to no active snapshot or view (startup, Cleanup). */
  unmountStale(): Promise<string[]> {
    return this.compositions.unmountStale();
  }

  override close(): void {
    clearTimeout(this.prebuildTimer);
    this.sources.close();
    super.close();
    this.mountpoints.removeIfEmpty(); // nothing of this snapshotter's left on the tmpfs
  }

  override async cleanup(): Promise<string[]> {
    await this.unmountStale();
    const removed = await super.cleanup();
    for (const name of await this.sweepMountpoints()) removed.push(`mountpoints/${name}`);
    for (const name of await this.syncGcRoots()) removed.push(`gcroots/${name}`);
    return removed;
  }

  override async prepare(key: string, parent: string, labels: Record<string, string>): Promise<Mount[]> {
    const ref = labels[REF_LABEL];
    const paths = storePathsFromAnnotations(labels);
    if (isUnpackKey(key, labels)) clearTimeout(this.prebuildTimer); // another layer: the chain grows
    if (ref && paths.length) {
      if (await this.tryNixLayer(ref, parent, labels, paths))
        throw new SnapshotError("already-exists", `snapshot ${JSON.stringify(ref)} already exists`);
    }
    const mounts = isUnpackKey(key, labels)
      ? await super.prepare(key, parent, labels)
      : await this.aboveTargets(key, parent, () => super.prepare(key, parent, labels));
    // The unpacker applies a layer's diff to the plain overlay; containers get the composed root.
    const rec = this.metadata.mustGet(key);
    return isUnpack(rec) ? mounts : this.composedMounts(rec, mounts);
  }

  override async view(key: string, parent: string, labels: Record<string, string>): Promise<Mount[]> {
    const mounts = await this.aboveTargets(key, parent, () => super.view(key, parent, labels));
    return this.composedMounts(this.metadata.mustGet(key), mounts);
  }

  override async mounts(key: string): Promise<Mount[]> {
    const rec = this.metadata.mustGet(key);
    if (isUnpack(rec)) return this.mountsOf(rec);
    if (rec.parentId !== undefined) (await this.readyTargets(key, this.metadata.getById(rec.parentId)))?.();
    return this.composedMounts(rec, this.mountsOf(rec));
  }

  /**
   * Makes the container or view `key` above `parent` with `make` once the chain's target-mode paths are ready
   * (readyTargets), its view kept until the new snapshot is recorded.
   */
  private async aboveTargets(key: string, parent: string, make: () => Promise<Mount[]>): Promise<Mount[]> {
    const done = await this.readyTargets(key, parent ? this.metadata.get(parent) : undefined);
    try {
      return await make();
    } finally {
      done?.();
    }
  }

  override async commit(name: string, key: string, labels: Record<string, string>): Promise<void> {
    await super.commit(name, key, labels);
    this.prebuildSoon(name);
  }

  /**
   * Builds the store view's tree of the chain whose top is `name` (an ordinary layer just committed: typically
   * the image's last, its customisation layer, above its nix layers) ahead of its first container, unless
   * another layer is prepared within PREBUILD_DELAY_MS: so it is built while containerd finishes the pull and the
   * runtime asks for a container (the tree of 2,000 paths: about 50 ms), once. (Not after nix layers: they come
   * one after the other, at uneven pace, and a tree built for a chain that grows is wasted.) Mounting waits for
   * that container. Best effort: failures are logged at debug; the container's Prepare builds what is missing.
   */
  private prebuildSoon(name: string): void {
    clearTimeout(this.prebuildTimer);
    this.prebuildTimer = setTimeout(() => {
      this.prebuildTimer = undefined;
      this.prebuild(name).catch((err: Error) =>
        this.log?.debug("store view not built ahead", { top: name, error: err.message }),
      );
    }, PREBUILD_DELAY_MS);
    this.prebuildTimer.unref();
  }

  private async prebuild(name: string): Promise<void> {
    const top = this.metadata.get(name);
    if (!top || top.kind !== "committed") return;
    const chain = this.targetsAbove(top);
    if (!chain || chain.lowerTop || (await this.modes.targetMounts()) !== "view") return;
    const start = performance.now();
    await this.mountpoints.prebuildView(top.id, this.store.storeDir, () => this.viewEntries(chain.paths));
    this.log?.debug("store view built ahead", {
      top: name,
      paths: chain.paths.length,
      ms: Math.round(performance.now() - start),
    });
  }

  override async remove(key: string): Promise<void> {
    await this.compositions.whileIdle(async () => {
      const rec = this.metadata.mustGet(key);
      await this.compositions.release(rec);
      const roots = this.metadata.gcRootsOf(rec.id);
      await super.remove(key);
      if (rec.kind !== "committed" && rec.parentId !== undefined) await this.releaseView(rec.parentId, key);
      this.nixLayerRows.delete(rec.id);
      this.chainTargets.delete(rec.id);
      await this.mountpoints
        .remove(rec.id)
        .catch((err: Error) =>
          this.log?.warn("store view left mounted", { snapshot: key, error: err.message }),
        );
      if (roots.length)
        await this.lock.run(() => {
          for (const name of roots) {
            const paths = this.metadata.gcRootPaths(name);
            this.gcRoots.sync(name, paths);
            if (!paths.size) this.log?.info("gc root dropped", { root: name, snapshot: key });
          }
        });
    });
  }

  /**
   * The image roots a layer's labels name (nix-closure-root.<i>, written by nixoci build) when they are valid
   * here and their closure holds all of `paths`: the GC root then links them, not every path (a link costs a
   * journal update on a disk filesystem, ~0.2 ms: 0.4 s for an image of 2,000 paths). Undefined otherwise (no
   * such labels, a root missing, no database to walk the closure in): the paths are linked themselves.
   */
  private coveringRoots(labels: Record<string, string>, paths: string[]): string[] | undefined {
    const roots = storePathsFromAnnotations(labels, NIX_CLOSURE_ROOT_ANNOTATION);
    if (!roots.length || !this.checkPaths(roots)) return undefined;
    const key = roots.join("\n");
    let closure = this.rootClosures.get(key);
    if (!closure) {
      const union = new Set<string>();
      for (const r of roots) {
        const c = this.store.closureFast(r); // undefined: r not valid, or no database
        if (!c) break;
        for (const p of c) union.add(p);
      }
      if (!union.size || !roots.every((r) => union.has(r))) return undefined; // asked again next time: paths come
      // A valid path's closure never changes: kept for the next layers of the same image (the latest few images).
      if (this.rootClosures.size >= 8) this.rootClosures.delete(this.rootClosures.keys().next().value!);
      this.rootClosures.set(key, (closure = union));
    }
    // A root gone since (collected by someone's GC) would protect nothing: looked at each time.
    if (!roots.every((r) => existsSync(this.store.realPath(r)))) return undefined;
    return paths.every((p) => closure.has(p)) ? roots : undefined;
  }

  /**
   * Readies the target-mode part of the chain a container or view of `key` goes on (`top`, its parent): the
   * chain's store view mounted, or its mountpoints directory made and its binds listed (--target-mounts binds).
   * Refuses first when the node's containerd cannot mount binds and no view serves (auto mode, containerd older
   * than 1.7: a downgrade, or a root moved to another node; 1.6 would stack the binds on the rootfs itself), so
   * a refusal leaves nothing behind.
   */
  private async readyTargets(
    key: string,
    top: SnapshotRecord | undefined,
  ): Promise<(() => void) | undefined> {
    if (!top || top.kind !== "committed") return undefined; // the Prepare itself says what is wrong
    const chain = this.targetsAbove(top);
    if (!chain) return undefined;
    // Until the caller's snapshot is recorded (done), releaseView must not take the chain's view away.
    chain.pending++;
    const done = (): void => void chain.pending--;
    try {
      if (!chain.lowerTop) await this.readyChain(key, top, chain);
    } catch (err) {
      done();
      throw err;
    }
    return done;
  }

  private async readyChain(key: string, top: SnapshotRecord, chain: ChainTargets): Promise<void> {
    if (!(await this.modes.targetLayersMountable()))
      throw new SnapshotError(
        "failed-precondition",
        `snapshot ${JSON.stringify(key)}: its image's store layers are target-mode (bind mounts containerd >= 1.7 ` +
          `makes), and this node's containerd does not mount a mount's target; remove the image and pull it again`,
      );
    const start = performance.now();
    if ((await this.modes.targetMounts()) === "view") {
      const lowerTop = await this.mountpoints.makeView(top.id, this.store.storeDir, this.store.realDir, () =>
        this.viewEntries(chain.paths),
      );
      chain.binds = [];
      chain.view = true;
      chain.lowerTop = lowerTop;
    } else {
      chain.binds = targetBinds(this.store, chain.paths);
      chain.lowerTop = this.mountpoints.make(top.id, this.store.storeDir, this.viewEntries(chain.paths));
    }
    this.log?.debug("chain's store paths ready", {
      top: top.key,
      paths: chain.paths.length,
      view: chain.view,
      ms: Math.round(performance.now() - start),
    });
  }

  /**
   * Unmounts the store view of the chain whose top is `topId` when its last container or view (`key`, just
   * removed) is gone: a view holds the store's filesystem, so with no container a node's admin can unmount the
   * store (a shared store attached again). Its tree stays; the next container mounts it again.
   */
  private async releaseView(topId: number, key: string): Promise<void> {
    const chain = this.chainTargets.get(topId);
    if (chain?.pending || this.metadata.hasOpenChild(topId)) return;
    if (chain?.view && chain.lowerTop) {
      chain.lowerTop = undefined; // before any await: a container readied from now on mounts it again
    } else if (chain?.lowerTop || !this.mountpoints.viewIsMounted(topId)) {
      // Binds (no view), or no view mounted.
      return;
    }
    // Otherwise a view mounted before this process started (its containers outlived a restart): no record of this
    // process readied it, and it goes with its last container all the same.
    await this.mountpoints
      .unmountView(topId)
      .catch((err: Error) =>
        this.log?.warn("store view left mounted", { snapshot: key, error: err.message }),
      );
  }

  /** Valid store paths only, each parsed against the store's logical directory. */
  private checkPaths(paths: string[]): boolean {
    try {
      for (const p of paths) parseStorePath(p, this.store.storeDir);
      return true;
    } catch {
      return false;
    }
  }

  /** The ones of `paths` not valid here; the valid ones' lstats are kept for store views (keepStats). */
  private missing(paths: string[]): string[] {
    const valid = this.store.validPathStats(paths);
    this.keepStats(valid);
    return paths.filter((p) => !valid.has(p));
  }

  /** Adds `stats` to pathStats as its newest entries, dropping the oldest beyond PATH_STATS_KEPT. */
  private keepStats(stats: Map<string, Stats>): void {
    for (const [p, st] of stats) {
      this.pathStats.delete(p); // re-inserted as the newest
      this.pathStats.set(p, st);
    }
    for (const p of this.pathStats.keys()) {
      if (this.pathStats.size <= PATH_STATS_KEPT) break;
      this.pathStats.delete(p);
    }
  }

  /**
   * Makes `ref` a committed nix layer when all `paths` are (or can be made) valid in the store. Returns true
   * when `ref` exists committed afterwards (made now or before), false for an ordinary Prepare.
   */
  private async tryNixLayer(
    ref: string,
    parent: string,
    labels: Record<string, string>,
    paths: string[],
  ): Promise<boolean> {
    const existing = this.metadata.get(ref);
    if (existing) {
      if (existing.kind !== "committed") return false;
      await this.lock.run(() => {
        const now = this.metadata.get(ref);
        if (now?.id === existing.id) this.holdRoot(now, labels);
      });
      return true;
    }
    const mode = await this.modes.choose();
    if (!mode) {
      this.log?.info("nix layer: the store is on another filesystem and metacopy is unsupported; unpacking", {
        ref,
      });
      this.metrics?.nixLayerFallbacks.inc({ reason: "unsupported" });
      return false;
    }
    if (!this.checkPaths(paths)) {
      this.log?.warn("nix layer: bad store path label; unpacking the layer", { ref });
      this.metrics?.nixLayerFallbacks.inc({ reason: "bad-label" });
      return false;
    }
    let missing = this.missing(paths);
    let substitutionFailed = false;
    if (missing.length && this.substituterUrls.length) {
      const start = performance.now();
      try {
        const sources = await this.sources.stores();
        if (!sources.length) throw new Error("no substituter could be opened (see the warnings above)");
        await new Substituter(this.store, sources, { parallelism: 8 }).realise(missing);
        this.log?.info("nix layer: substituted", {
          ref,
          paths: missing.length,
          ms: Math.round(performance.now() - start),
        });
        this.metrics?.substitutedPaths.inc({}, missing.length);
      } catch (err) {
        substitutionFailed = true;
        this.log?.warn("nix layer: substitution failed; unpacking the layer", {
          ref,
          error: (err as Error).message,
        });
      }
      missing = this.missing(missing);
    }
    if (missing.length) {
      if (await this.fetchLayer(ref, parent, labels, missing)) return true;
      this.log?.info("nix layer: paths missing from the store; unpacking the layer", {
        ref,
        missing: missing.length,
        first: missing[0],
      });
      this.metrics?.nixLayerFallbacks.inc({ reason: substitutionFailed ? "substitution-failed" : "missing" });
      return false;
    }
    if (!this.trustLayerLabels && !(await this.verifyChain(ref, parent, paths))) return false;
    return this.createNixLayer(ref, parent, labels, paths, mode);
  }

  /**
   * The chain ID of the snapshot `parent` names: its ref label (containerd's unpacker commits every layer with
   * one), else the name without the "NAMESPACE/ID/" prefix containerd's metadata layer gives the snapshots it
   * names (an ordinary layer below, e.g. a base image's); a layer this snapshotter made is named by its chain ID.
   */
  private parentChainId(parent: string): string {
    if (!parent) return "";
    const ref = this.metadata.get(parent)?.labels[REF_LABEL];
    return ref ?? parent.replace(/^[^/]+\/\d+\//, "");
  }

  /** Whether the layer's store paths make its chain ID (layer-verify.ts); a warning and a fallback when not. */
  private async verifyChain(ref: string, parent: string, paths: string[]): Promise<boolean> {
    const start = performance.now();
    let format: string | undefined;
    try {
      format = await verifyNixLayerChain(this.metadata, this.store, paths, this.parentChainId(parent), ref);
    } catch (err) {
      this.log?.warn("nix layer: cannot read its store paths to check it; unpacking the layer", {
        ref,
        error: (err as Error).message,
      });
      this.metrics?.nixLayerFallbacks.inc({ reason: "unverified" });
      return false;
    }
    if (!format) {
      this.log?.warn(
        "nix layer: its store paths do not make its chain ID (the image's diff_id is not nixoci's tar of them); unpacking the layer",
        { ref, paths: paths.length, first: paths[0] },
      );
      this.metrics?.nixLayerFallbacks.inc({ reason: "unverified" });
      return false;
    }
    this.log?.debug("nix layer: verified", { ref, format, ms: Math.round(performance.now() - start) });
    return true;
  }

  /**
   * Makes `ref` an ordinary committed snapshot of the layer's own tree, fetched from the registry the pull is from
   * (layer-fetch.ts: why, and what it checks), when CRI's labels say where; true once `ref` exists committed.
   * False (after a warning) when it cannot: containerd then unpacks the layer itself.
   */
  private async fetchLayer(
    ref: string,
    parent: string,
    labels: Record<string, string>,
    missing: string[],
  ): Promise<boolean> {
    const source = layerSource(labels);
    if (!source || !(await this.savesDownloads(labels, source))) return false;
    const start = performance.now();
    const tmp = mkdtempSync(join(this.snapshotsDir, "new-"));
    let committed = false; // then tmp is the snapshot's directory
    try {
      const fs = join(tmp, "fs");
      mkdirSync(fs);
      const { bytes } = await fetchLayerTree({
        ...source,
        parent,
        chainId: ref,
        storeDir: this.store.storeDir,
        dir: fs,
      });
      const usage = await diskUsage(fs);
      return await this.lock.run(() => {
        const existing = this.metadata.get(ref);
        if (existing) return existing.kind === "committed";
        this.commitBuilt(`\u0000fetched ${ref}`, ref, parent, labels, usage, tmp, fs);
        committed = true;
        this.metrics?.fetchedLayers.inc();
        this.log?.info("nix layer: paths missing from the store; fetched the layer from the registry", {
          ref,
          missing: missing.length,
          first: missing[0],
          digest: source.digest,
          bytes,
          ms: Math.round(performance.now() - start),
        });
        return true;
      });
    } catch (err) {
      this.log?.warn("nix layer: fetching the layer from the registry failed; containerd unpacks it", {
        ref,
        image: source.imageRef,
        error: (err as Error).message,
      });
      return false;
    } finally {
      if (!committed) await rm(tmp, { recursive: true, force: true });
    }
  }

  /**
   * Whether fetching the layer `source` here spares containerd downloads: a layer above it in its image's manifest
   * names store paths that are all valid here (containerd would download it all the same). Otherwise containerd
   * downloads this layer and those above in parallel, which is faster than one layer at a time here.
   */
  private async savesDownloads(
    labels: Record<string, string>,
    source: { imageRef: string; digest: string },
  ): Promise<boolean> {
    const manifest = labels[MANIFEST_DIGEST_LABEL];
    if (!manifest) return false;
    let layers = this.manifests.get(manifest);
    if (!layers) {
      layers = manifestLayers(source.imageRef, manifest);
      this.manifests.set(manifest, layers);
      // A failure is kept a minute (the pull's other layers would meet it again), then asked anew.
      layers.catch(() => setTimeout(() => this.manifests.delete(manifest), MANIFEST_RETRY_MS).unref());
      for (const k of this.manifests.keys())
        if (this.manifests.size > MANIFESTS_KEPT) this.manifests.delete(k);
    }
    try {
      const all = await layers;
      const i = all.findIndex((l) => l.digest === source.digest);
      return (
        i >= 0 &&
        all
          .slice(i + 1)
          .some((l) => l.paths.length > 0 && this.checkPaths(l.paths) && !this.missing(l.paths).length)
      );
    } catch (err) {
      this.log?.warn("nix layer: the image's manifest is unavailable; containerd unpacks the layer", {
        image: source.imageRef,
        manifest,
        error: (err as Error).message,
      });
      return false;
    }
  }

  /**
   * Builds the layer's fs at `fs` (tree copies in a worker thread: the server keeps answering meanwhile).
   * Returns its file count (files replicated; 0 for bind mode) and disk usage.
   */
  private async buildLayerFs(fs: string, paths: string[], mode: LayerMode): Promise<BuiltLayer> {
    const storeDir = join(fs, this.store.storeDir.replace(/^\/+/, ""));
    const entries = (): LayerPath[] =>
      paths.map((p) => {
        const entry = this.storeEntry(p);
        return { ...entry, target: join(storeDir, entry.baseName) };
      });
    let mapped: LayerPath[] | undefined;
    // Mapped when a mode reads them: target mode's layer is an empty directory (~4 us a path saved).
    return mode.build({
      fs,
      storeDir: this.store.storeDir,
      get paths() {
        return (mapped ??= entries());
      },
    });
  }

  /** Store paths as a store view shows them: storeEntry, with the lstat a layer's check kept, if any. */
  private viewEntries(paths: string[]): ViewEntry[] {
    return paths.map((p) => ({ ...this.storeEntry(p), stat: this.pathStats.get(p) }));
  }

  /** Where store path `p` really is (the store parses it), and its name in the store directory. */
  private storeEntry(p: string): { real: string; baseName: string } {
    return { real: this.store.realPath(p), baseName: basename(p) };
  }

  private async createNixLayer(
    ref: string,
    parent: string,
    labels: Record<string, string>,
    paths: string[],
    mode: LayerMode,
  ): Promise<boolean> {
    // The layer's tree, built before taking the lock (it needs no metadata).
    const start = performance.now();
    const tmp = mkdtempSync(join(this.snapshotsDir, "new-"));
    let committed = false; // then tmp is the snapshot's directory
    try {
      const fs = join(tmp, "fs");
      const { files, usage } = await this.buildLayerFs(fs, paths, mode);
      const buildMs = Math.round(performance.now() - start);
      return await this.lock.run(() => {
        const existing = this.metadata.get(ref);
        if (existing) {
          if (existing.kind === "committed") this.holdRoot(existing, labels);
          return existing.kind === "committed";
        }
        // The paths are rooted before the layer that needs them is recorded (a crash in between leaves links
        // that startup or Cleanup removes).
        const rootName = gcRootName(labels, ref);
        const links = this.coveringRoots(labels, paths);
        this.gcRoots.add(rootName, links ?? paths);
        const tmpKey = `\u0000nix-layer ${ref}`;
        try {
          // The layer's paths and the GC root it holds, recorded with it in one transaction.
          this.commitBuilt(tmpKey, ref, parent, labels, usage, tmp, fs, (id) => {
            this.metadata.setNixLayer(id, paths, mode.kind);
            this.metadata.addGcRoot(rootName, id, links);
          });
        } catch (err) {
          this.gcRoots.sync(rootName, this.metadata.gcRootPaths(rootName)); // only what others hold
          throw err;
        }
        committed = true;
        this.metrics?.nixLayers.inc({ mode: mode.kind });
        this.log?.info("nix layer: committed from the store", {
          ref,
          paths: paths.length,
          mode: mode.kind,
          files,
          buildMs,
          ms: Math.round(performance.now() - start),
        });
        return true;
      });
    } finally {
      if (!committed) await rm(tmp, { recursive: true, force: true });
    }
  }

  /**
   * Records `ref` as a committed snapshot above `parent` whose directory was built at `tmp` (its fs at `fs`), with
   * what `also` records of it, and moves the directory into place: one transaction.
   */
  private commitBuilt(
    tmpKey: string,
    ref: string,
    parent: string,
    labels: Record<string, string>,
    usage: { size: number; inodes: number },
    tmp: string,
    fs: string,
    also?: (id: number) => void,
  ): void {
    this.metadata.transaction(() => {
      const rec = this.metadata.create("active", tmpKey, parent || undefined, {});
      if (rec.parentId !== undefined) takeOwner(fs, this.fsPath(rec.parentId));
      const committed = this.metadata.commit(tmpKey, ref, labels, usage);
      also?.(committed.id);
      const dest = join(this.snapshotsDir, String(rec.id));
      if (existsSync(dest)) rmSync(dest, { recursive: true, force: true });
      renameSync(tmp, dest);
    });
  }

  /**
   * The store paths of the layers of `parents` whose mode gives containers the paths as `rootfs` (bind's
   * "composed"), deduplicated, nearest first.
   */
  private pathsOf(parents: SnapshotRecord[], rootfs: LayerMode["rootfs"]): string[] {
    const out = new Set<string>();
    for (const a of parents) {
      const layer = this.nixLayer(a.id);
      if (layer && layerMode(layer.mode).rootfs === rootfs) for (const p of layer.paths) out.add(p);
    }
    return [...out];
  }

  /**
   * The target-mode part of the chain whose top is `top` (null: it has none), worked out once per chain from its
   * snapshots (`chainOf()`: top first, asked only then) and kept: which of them are target-mode layers and their
   * paths (readyTargets adds how containers get them).
   */
  private targetsOf(top: SnapshotRecord, chainOf: () => SnapshotRecord[]): ChainTargets | null {
    let chain = this.chainTargets.get(top.id);
    if (chain === undefined) {
      const layerIds = new Set<number>();
      const paths = new Set<string>();
      for (const p of chainOf()) {
        const layer = this.nixLayer(p.id);
        if (!layer || layerMode(layer.mode).rootfs !== "targets") continue;
        layerIds.add(p.id);
        for (const path of layer.paths) paths.add(path);
      }
      chain = layerIds.size ? { layerIds, paths: [...paths], binds: [], view: false, pending: 0 } : null;
      this.chainTargets.set(top.id, chain);
    }
    return chain;
  }

  /** The target-mode part of the chain whose top is the committed snapshot `top` (targetsOf). */
  private targetsAbove(top: SnapshotRecord): ChainTargets | null {
    return this.targetsOf(top, () => [top, ...this.metadata.ancestors(top)]);
  }

  /**
   * Removes mountpoints directories and store views whose chain top is gone (startup, Cleanup); at startup
   * (`unmountIdle`, before serving: no call is under way) also unmounts the views of chains with no container
   * left (a predecessor killed before it could). Returns the names removed.
   */
  sweepMountpoints(unmountIdle = false): Promise<string[]> {
    return this.lock.run(() =>
      this.mountpoints.sweep(this.metadata.ids(), unmountIdle ? this.metadata.withOpenChildren() : undefined),
    );
  }

  /**
   * Lower directories without the chain's target-mode layers (their fs is empty), topped by the chain's store
   * view or mountpoints directory (readied before: readyTargets); the unpacker's snapshots need neither (the top
   * layer's empty fs stands in when nothing else is left).
   */
  protected override lowerDirs(rec: SnapshotRecord, parents: SnapshotRecord[], relative: boolean): string[] {
    const unpack = isUnpack(rec);
    const chain = this.targetsOf(parents[0], () => parents);
    if (!chain) return super.lowerDirs(rec, parents, relative);
    const rel = (dir: string): string =>
      relative && dir.startsWith(`${this.snapshotsDir}/`) ? dir.slice(this.snapshotsDir.length + 1) : dir;
    const rest = super.lowerDirs(
      rec,
      parents.filter((p) => !chain.layerIds.has(p.id)),
      relative,
    );
    if (unpack) return rest.length ? rest : super.lowerDirs(rec, parents.slice(0, 1), relative);
    if (!chain.lowerTop)
      throw new Error(`snapshot ${JSON.stringify(rec.key)}: its chain's store paths are not ready`);
    return [rel(chain.lowerTop), ...rest];
  }

  /** A container's or view's mounts: `plain`, or the composed root, then the binds of target-mode paths. */
  private async composedMounts(rec: SnapshotRecord, plain: Mount[]): Promise<Mount[]> {
    if (rec.kind === "committed") return plain;
    const parents = this.metadata.ancestors(rec);
    const composed = this.pathsOf(parents, "composed");
    const base = composed.length
      ? await this.compositions.mounts(rec, this.mountsOf(rec, true)[0], composed)
      : plain;
    const chain = parents.length ? this.targetsOf(parents[0], () => parents) : null;
    if (!chain) return base;
    const composedReal = new Set(composed.map((p) => this.store.realPath(p)));
    const binds = composed.length ? chain.binds.filter((b) => !composedReal.has(b.source)) : chain.binds;
    return binds.length ? [...base, ...binds] : base;
  }
}

/** Image manifests whose layers are kept (savesDownloads): one per image being pulled, a few at most. */
const MANIFESTS_KEPT = 16;
/** How long a manifest that could not be fetched is not asked for again. */
const MANIFEST_RETRY_MS = 60_000;
/** How long after a commit with no other on top the chain's store view is built ahead (prebuildSoon). */
const PREBUILD_DELAY_MS = 15;
/** Store paths whose lstat is kept for store views (pathStats): ~200 bytes each. */
const PATH_STATS_KEPT = 50_000;

/** The target-mode part of a committed chain (see NixSnapshotter.targetsOf). */
interface ChainTargets {
  /** The ids of the chain's target-mode nix layers. */
  layerIds: Set<number>;
  /** Their store paths, deduplicated, nearest layer first. */
  paths: string[];
  /** With --target-mounts binds, a read-only bind per path at its place in the rootfs (target.ts); else none. */
  binds: Mount[];
  /** The top lower directory of the chain's containers, once ready: its store view's root, or mountpoints. */
  lowerTop?: string;
  /** Whether containers get the paths through the chain's store view (else binds). */
  view: boolean;
  /** Containers and views being made above the chain (readyTargets to their record). */
  pending: number;
}
