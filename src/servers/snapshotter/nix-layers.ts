// The Nix part of `nixoci snapshotter`: layers whose descriptors name their store paths are taken from the
// local Nix store instead of being downloaded.
//
// Prepare(key, parent, labels) with `containerd.io/snapshot.ref` = the target chain ID and
// `containerd.io/snapshot/nix-store-path.<i>` = store paths: when every path is valid in the store (after
// substituting the missing ones from the configured caches, in parallel, when there are any), a committed
// snapshot named after the ref is created (same parent) and Prepare answers ALREADY_EXISTS, so containerd
// skips fetching and unpacking that layer. Otherwise the Prepare is an ordinary one and containerd unpacks the
// layer's real bytes (nixoci images carry them). The layer's store paths are recorded in the metadata
// (table nix_layers) with how its fs holds them (--nix-layers):
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
// - bind: fs/nix/store/<basename> is an empty mountpoint (dir, or empty file; a symlink store path is copied,
//   since a bind mount would follow it). containerd 1.6 has no Mount.Target, so Mounts of an active snapshot or
//   view above such a layer composes the root filesystem at ROOT/snapshots/<id>/rootfs: the overlay (or, for a
//   one-parent view, a read-only bind) of the chain, made private, then a read-only bind mount of every store
//   path onto rootfs/nix/store/<basename>; the answer is one {bind, rootfs, [rbind, rw|ro]} mount. A
//   composition is complete when ROOT/snapshots/<id>/composed exists (written last); Mounts reuses it, Remove
//   unmounts it before deleting, startup and Cleanup unmount incomplete or orphaned ones. Caveat: containerd
//   1.6 unmounts rootfs mounts it makes with plain umount(2), which fails (EBUSY) on the nested binds, so
//   `ctr run` (its temporary mount for /etc/group) fails and leaks a mount; hence auto mode never picks bind
//   and, with the store on another filesystem and no metacopy support, lets containerd download the layer.
//
// Prepares made by containerd's unpacker (they carry containerd.io/snapshot.ref, or an extract- key) keep the
// plain overlay mounts (plus the data-only store layer above a metacopy layer), as the diff applier wants.
//
// Layer trees are built in a worker thread (layer-tree.ts), so the server answers other calls meanwhile.
//
// GC roots (gcroots.ts): a nix layer's paths are linked into its image's root (one per manifest digest, else
// one per layer) before its row is committed, and a later ALREADY_EXISTS answer for the same layer under
// another image's manifest digest makes that image's root hold it too. Remove drops the links of roots no
// snapshot holds any more; startup (syncGcRoots) and Cleanup make the roots directory match the metadata.
import { execFile } from "node:child_process";
import {
  chownSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readlinkSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { rm } from "node:fs/promises";
import { dirname, join } from "node:path";
import { REF_LABEL, storePathsFromAnnotations } from "../../image/annotations.js";
import { parseStorePath } from "../../nix/store-path.js";
import type { Logger } from "../../util/logger.js";
import { BinaryCacheStore, type TrustOptions } from "../../store/binary-cache.js";
import type { LocalStore } from "../../store/local-store.js";
import type { Store } from "../../store/store.js";
import { Substituter } from "../../store/substituter.js";
import { Limiter } from "../../util/concurrency.js";
import { GcRoots, gcRootName, gcRootsDir } from "./gcroots.js";
import type { SnapshotterMetrics } from "./metrics.js";
import { buildTrees, type TreeJob } from "./layer-tree.js";
import { METACOPY_OPTIONS, probeMetacopy, setStubXattrs } from "./metacopy.js";
import { SnapshotError, type NixLayerKind, type SnapshotRecord } from "./metadata.js";
import {
  diskUsage,
  Lock,
  mountPointsUnder,
  OverlaySnapshotter,
  type DataLayer,
  type Mount,
  type OverlayOptions,
} from "./overlay.js";

export { REF_LABEL } from "../../image/annotations.js";

export interface NixSnapshotterOptions extends OverlayOptions {
  store: LocalStore;
  /** Binary cache URLs to substitute missing paths from. */
  substituters?: string[];
  trust?: TrustOptions;
  log?: Logger;
  /** Counters for --metrics-address. */
  metrics?: SnapshotterMetrics;
  /** Concurrent mount(8) processes while composing (default 16). */
  mountParallelism?: number;
  /**
   * How a nix layer holds its store paths: "link" (a tree of hard links to the store's files: containers get
   * plain overlay mounts, which containerd 1.6 mounts and unmounts itself), "metacopy" (overlay metacopy stubs
   * redirecting into the store as a data-only lower layer: one plain overlay mount too, across filesystems),
   * "bind" (mountpoints, composed with read-only bind mounts), or "auto" (default: link when the store and ROOT
   * share a filesystem, else metacopy when the kernel supports it, else the layer is downloaded).
   */
  nixLayers?: NixLayerMode;
}

export type NixLayerMode = "auto" | NixLayerKind;

function run(cmd: string, args: string[], cwd?: string): Promise<void> {
  return new Promise((resolve, reject) =>
    execFile(cmd, args, { cwd, timeout: 60_000 }, (err, _stdout, stderr) =>
      err
        ? reject(new Error(`${cmd} ${args.join(" ")}: ${String(stderr).trim() || err.message}`))
        : resolve(),
    ),
  );
}

/**
 * Unmounts everything at and under `dir`: each top-most mount is detached with its whole subtree in one call
 * (MNT_DETACH; a composition's mounts are private, so nothing propagates), then checked gone.
 */
export async function unmountAll(dir: string): Promise<void> {
  const mps = mountPointsUnder(dir);
  if (!mps.length) return;
  const set = new Set(mps);
  const top = [...set].filter((mp) => {
    for (let p = dirname(mp); p.length >= dir.length && p !== dirname(p); p = dirname(p))
      if (set.has(p)) return false;
    return true;
  });
  for (const mp of top) await run("umount", ["-l", mp]).catch(() => undefined);
  for (const mp of mountPointsUnder(dir).sort((a, b) => b.length - a.length))
    await run("umount", ["-l", mp]).catch(() => undefined);
  if (mountPointsUnder(dir).length) throw new Error(`${dir}: could not unmount everything under it`);
}

/** mount(2)'s syscall number per architecture, for the bind-mount helper. */
const MOUNT_SYSCALL: Partial<Record<string, number>> = {
  x64: 165,
  arm64: 40,
  riscv64: 40,
  ia32: 21,
  arm: 21,
};

// The helper: Debian's essential perl-base calling mount(2) directly, so a closure of thousands of paths takes
// one process instead of one mount(8) per path. stdin: NUL-separated source, target pairs; each becomes a bind
// mount, then a read-only remount of it (MS_BIND = 4096, MS_REMOUNT = 32, MS_RDONLY = 1).
const BIND_RO_PERL = `
my ($nr) = @ARGV; local $/ = "\\0"; my @f = <STDIN>; chomp @f;
for (my $i = 0; $i + 1 < @f; $i += 2) {
  my ($s, $t) = ($f[$i], $f[$i + 1]); my $none = "none";
  syscall($nr + 0, $s, $t, $none, 4096, 0) == 0 or die "mount --bind $s $t: $!\\n";
  syscall($nr + 0, $none, $t, $none, 4096 | 32 | 1, 0) == 0 or die "remount ro $t: $!\\n";
}`;

function perlBindRo(pairs: Array<[string, string]>, nr: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      "perl",
      ["-e", BIND_RO_PERL, String(nr)],
      { timeout: 300_000 },
      (err, _o, stderr) => (err ? reject(new Error(String(stderr).trim() || err.message)) : resolve()),
    );
    // perl dies at the first failed mount, unread pairs left behind: EPIPE here, reported by the callback.
    child.stdin?.on("error", () => undefined);
    child.stdin?.end(Buffer.from(pairs.map(([s, t]) => `${s}\0${t}\0`).join("")));
  });
}

let perlUsable: boolean | undefined;

/**
 * Read-only bind mounts of each [source, target]: through the perl helper when it works here, else (or with
 * NIXOCI_NO_MOUNT_HELPER set) one `mount --bind -o ro` per pair.
 */
export async function bindReadOnly(
  pairs: Array<[string, string]>,
  parallelism = 16,
  onFallback?: (error: string) => void,
): Promise<void> {
  if (!pairs.length) return;
  const nr = MOUNT_SYSCALL[process.arch];
  if (nr !== undefined && perlUsable !== false && !process.env.NIXOCI_NO_MOUNT_HELPER) {
    try {
      await perlBindRo(pairs, nr);
      perlUsable = true;
      return;
    } catch (err) {
      if (perlUsable) throw err;
      onFallback?.((err as Error).message);
      perlUsable = false; // no perl, or a kernel that refuses: fall back for good (partial mounts are redone)
    }
  }
  const limiter = new Limiter(parallelism);
  await Promise.all(
    pairs.map(([s, t]) =>
      limiter.run(async () => {
        if (mountPointsUnder(t).includes(t)) await run("umount", ["-l", t]);
        await run("mount", ["--bind", "-o", "ro", s, t]);
      }),
    ),
  );
}

/**
 * An active snapshot made by containerd's unpacker: its Prepare carried the ref label, or (containerd's older
 * apply path) its key is "extract-..." under the metadata layer's "NS/ID/" prefix.
 */
function isUnpack(rec: SnapshotRecord): boolean {
  return rec.kind === "active" && (Object.hasOwn(rec.labels, REF_LABEL) || /(^|\/)extract-/.test(rec.key));
}

export class NixSnapshotter extends OverlaySnapshotter {
  readonly store: LocalStore;
  private readonly substituterUrls: string[];
  private readonly trust: TrustOptions;
  private readonly log?: Logger;
  private readonly composeLock = new Lock();
  private readonly mountLimit: number;
  private readonly mode: NixLayerMode;
  private sources?: Promise<Store[]>;
  private metacopyProbe?: Promise<boolean>;
  readonly gcRoots: GcRoots;
  readonly metrics?: SnapshotterMetrics;

  constructor(opts: NixSnapshotterOptions) {
    super(opts);
    this.store = opts.store;
    this.substituterUrls = opts.substituters ?? [];
    this.trust = opts.trust ?? { trustedKeys: [] };
    this.log = opts.log;
    this.mountLimit = opts.mountParallelism ?? 16;
    this.mode = opts.nixLayers ?? "auto";
    this.metrics = opts.metrics;
    this.gcRoots = new GcRoots(gcRootsDir(this.root, this.store), this.store.storeDir);
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

  /** Makes the committed nix layer `rec` hold the root its `labels` name (under this.lock). */
  private holdRoot(rec: SnapshotRecord, labels: Record<string, string>): void {
    const layer = this.metadata.nixLayer(rec.id);
    if (!layer) return;
    const name = gcRootName(labels, rec.key);
    if (this.metadata.gcRootsOf(rec.id).includes(name)) return;
    this.gcRoots.add(name, layer.paths);
    this.metadata.transaction(() => this.metadata.addGcRoot(name, rec.id));
    this.log?.info("gc root held", { root: name, snapshot: rec.key, paths: layer.paths.length });
  }

  /**
   * How a new nix layer holds its paths, or undefined when it cannot (auto mode with the store on another
   * filesystem and no metacopy support: the layer is downloaded, since bind compositions trip containerd 1.6's
   * own non-recursive unmounts of the rootfs it mounts, e.g. `ctr run`'s temporary mount).
   */
  private async layerMode(): Promise<NixLayerKind | undefined> {
    if (this.mode !== "auto") return this.mode;
    try {
      // A store directory that does not exist yet (an empty chroot store) is made, as substitution would.
      mkdirSync(this.store.realDir, { recursive: true });
      if (statSync(this.store.realDir).dev === statSync(this.snapshotsDir).dev) return "link";
    } catch {
      return undefined;
    }
    return (await this.metacopySupported()) ? "metacopy" : undefined;
  }

  /** Whether overlay metacopy with data-only layers works here: probed once, on first need, and logged. */
  metacopySupported(): Promise<boolean> {
    this.metacopyProbe ??= probeMetacopy(this.snapshotsDir).then((error) => {
      if (error)
        this.log?.warn("overlay metacopy unsupported; nix layers across filesystems are downloaded", {
          error,
        });
      else this.log?.info("overlay metacopy with data-only layers supported");
      return !error;
    });
    return this.metacopyProbe;
  }

  /** The store as a data-only lower layer when a metacopy nix layer is among `parents`. */
  protected override dataLayer(_rec: SnapshotRecord, parents: SnapshotRecord[]): DataLayer | undefined {
    for (const p of parents)
      if (this.metadata.nixLayer(p.id)?.mode === "metacopy")
        return { dir: this.store.realDir, options: METACOPY_OPTIONS };
    return undefined;
  }

  rootfsPath(id: number): string {
    return join(this.snapshotsDir, String(id), "rootfs");
  }

  private markerPath(id: number): string {
    return join(this.snapshotsDir, String(id), "composed");
  }

  /** Unmounts compositions that are incomplete or belong to no active snapshot or view (startup, Cleanup). */
  async unmountStale(): Promise<string[]> {
    return this.composeLock.run(async () => {
      const live = new Map<number, SnapshotRecord>();
      for (const r of this.metadata.list()) if (r.kind !== "committed") live.set(r.id, r);
      const dirs = new Set<string>();
      for (const mp of mountPointsUnder(this.snapshotsDir)) {
        const name = mp.slice(this.snapshotsDir.length + 1).split("/")[0];
        if (name) dirs.add(name);
      }
      const done: string[] = [];
      for (const name of dirs) {
        const id = /^\d+$/.test(name) ? Number(name) : undefined;
        const keep = id !== undefined && live.has(id) && existsSync(this.markerPath(id));
        if (keep) continue;
        if (id !== undefined) rmSync(this.markerPath(id), { force: true });
        await unmountAll(join(this.snapshotsDir, name));
        done.push(name);
      }
      if (done.length) this.log?.info("unmounted stale compositions", { snapshots: done });
      return done;
    });
  }

  override async cleanup(): Promise<string[]> {
    await this.unmountStale();
    const removed = await super.cleanup();
    for (const name of await this.syncGcRoots()) removed.push(`gcroots/${name}`);
    return removed;
  }

  override async prepare(key: string, parent: string, labels: Record<string, string>): Promise<Mount[]> {
    const ref = labels[REF_LABEL];
    const paths = storePathsFromAnnotations(labels);
    if (ref && paths.length) {
      if (await this.tryNixLayer(ref, parent, labels, paths))
        throw new SnapshotError("already-exists", `snapshot ${JSON.stringify(ref)} already exists`);
    }
    const mounts = await super.prepare(key, parent, labels);
    // The unpacker applies a layer's diff to the plain overlay; containers get the composed root.
    const rec = this.metadata.mustGet(key);
    return isUnpack(rec) ? mounts : this.composedMounts(rec, mounts);
  }

  override async view(key: string, parent: string, labels: Record<string, string>): Promise<Mount[]> {
    const mounts = await super.view(key, parent, labels);
    return this.composedMounts(this.metadata.mustGet(key), mounts);
  }

  override async mounts(key: string): Promise<Mount[]> {
    const rec = this.metadata.mustGet(key);
    const plain = this.mountsOf(rec);
    return isUnpack(rec) ? plain : this.composedMounts(rec, plain);
  }

  override async remove(key: string): Promise<void> {
    await this.composeLock.run(async () => {
      const rec = this.metadata.mustGet(key);
      if (rec.kind !== "committed") {
        rmSync(this.markerPath(rec.id), { force: true });
        await unmountAll(join(this.snapshotsDir, String(rec.id)));
      }
      const roots = this.metadata.gcRootsOf(rec.id);
      await super.remove(key);
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

  /** Valid store paths only, each parsed against the store's logical directory. */
  private checkPaths(paths: string[]): boolean {
    try {
      for (const p of paths) parseStorePath(p, this.store.storeDir);
      return true;
    } catch {
      return false;
    }
  }

  private async missing(paths: string[]): Promise<string[]> {
    const valid = await Promise.all(paths.map((p) => this.store.queryPathInfo(p)));
    return paths.filter((_, i) => !valid[i]);
  }

  private openSources(): Promise<Store[]> {
    this.sources ??= (async () => {
      const out: Store[] = [];
      for (const url of this.substituterUrls) {
        try {
          out.push(await BinaryCacheStore.open(url, this.trust, this.store.storeDir));
        } catch (err) {
          this.log?.warn("substituter unavailable", { url, error: (err as Error).message });
        }
      }
      return out;
    })();
    return this.sources;
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
    const mode = await this.layerMode();
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
    let missing = await this.missing(paths);
    let substitutionFailed = false;
    if (missing.length && this.substituterUrls.length) {
      const start = performance.now();
      try {
        const sources = await this.openSources();
        if (!sources.length) throw new Error("no substituter could be opened");
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
      missing = await this.missing(missing);
    }
    if (missing.length) {
      this.log?.info("nix layer: paths missing from the store; unpacking the layer", {
        ref,
        missing: missing.length,
        first: missing[0],
      });
      this.metrics?.nixLayerFallbacks.inc({ reason: substitutionFailed ? "substitution-failed" : "missing" });
      return false;
    }
    return this.createNixLayer(ref, parent, labels, paths, mode);
  }

  /**
   * Builds the layer's fs at `fs` (in a worker thread: the server keeps answering meanwhile). Returns its file
   * count (files replicated; 0 for bind mode) and disk usage.
   */
  private async buildLayerFs(
    fs: string,
    paths: string[],
    mode: NixLayerKind,
  ): Promise<{ files: number; usage: { size: number; inodes: number } }> {
    const storeDir = join(fs, this.store.storeDir.replace(/^\/+/, ""));
    mkdirSync(storeDir, { recursive: true, mode: 0o755 });
    const jobs: TreeJob[] = [];
    for (const p of paths) {
      const base = parseStorePath(p, this.store.storeDir).baseName;
      const real = this.store.realPath(p);
      const target = join(storeDir, base);
      // A symlink store path is copied in every mode: overlay would not redirect it, a bind mount follow it.
      if (mode === "link" || mode === "metacopy")
        jobs.push({ kind: mode === "link" ? "link" : "stub", src: real, dst: target, redirect: `/${base}` });
      else {
        const st = lstatSync(real);
        if (st.isDirectory()) mkdirSync(target, { mode: 0o555 });
        else if (st.isSymbolicLink()) symlinkSync(readlinkSync(real), target);
        else writeFileSync(target, "", { mode: 0o444 });
      }
    }
    if (!jobs.length) return { files: 0, usage: await diskUsage(fs) };
    const built = await buildTrees(fs, jobs);
    if (mode === "metacopy") await setStubXattrs(fs, built.stubs);
    // The store directory's ancestors (nix/, nix/store/) and fs itself count too.
    const extra = this.store.storeDir.split("/").filter(Boolean).length + 1;
    return {
      files: built.counts.files,
      usage: { size: built.usage.size, inodes: built.usage.inodes + extra },
    };
  }

  private async createNixLayer(
    ref: string,
    parent: string,
    labels: Record<string, string>,
    paths: string[],
    mode: NixLayerKind,
  ): Promise<boolean> {
    // The layer's tree, built before taking the lock (it needs no metadata).
    const start = performance.now();
    const tmp = mkdtempSync(join(this.snapshotsDir, "new-"));
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
        this.gcRoots.add(rootName, paths);
        const tmpKey = `\u0000nix-layer ${ref}`;
        try {
          this.commitNixLayer(tmpKey, ref, parent, labels, usage, paths, mode, rootName, tmp, fs);
        } catch (err) {
          this.gcRoots.sync(rootName, this.metadata.gcRootPaths(rootName)); // only what others hold
          throw err;
        }
        this.metrics?.nixLayers.inc({ mode });
        this.log?.info("nix layer: committed from the store", {
          ref,
          paths: paths.length,
          mode,
          files,
          buildMs,
          ms: Math.round(performance.now() - start),
        });
        return true;
      });
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
  }

  /** Records the nix layer `ref` (its directory built at `tmp`) and the GC root it holds, in one transaction. */
  private commitNixLayer(
    tmpKey: string,
    ref: string,
    parent: string,
    labels: Record<string, string>,
    usage: { size: number; inodes: number },
    paths: string[],
    mode: NixLayerKind,
    rootName: string,
    tmp: string,
    fs: string,
  ): void {
    this.metadata.transaction(() => {
      const rec = this.metadata.create("active", tmpKey, parent || undefined, {});
      if (rec.parentId !== undefined) {
        const pst = statSync(this.fsPath(rec.parentId));
        chownSync(fs, pst.uid, pst.gid);
      }
      const committed = this.metadata.commit(tmpKey, ref, labels, usage);
      this.metadata.setNixLayer(committed.id, paths, mode);
      this.metadata.addGcRoot(rootName, committed.id);
      const dest = join(this.snapshotsDir, String(rec.id));
      if (existsSync(dest)) rmSync(dest, { recursive: true, force: true });
      renameSync(tmp, dest);
    });
  }

  /** The store paths of every bind-mode nix-layer ancestor of `rec`, deduplicated (nearest layer first). */
  private nixPathsOf(rec: SnapshotRecord): string[] {
    const out = new Set<string>();
    for (const a of this.metadata.ancestors(rec)) {
      const layer = this.metadata.nixLayer(a.id);
      if (layer?.mode === "bind") for (const p of layer.paths) out.add(p);
    }
    return [...out];
  }

  private async composedMounts(rec: SnapshotRecord, plain: Mount[]): Promise<Mount[]> {
    if (rec.kind === "committed") return plain;
    const paths = this.nixPathsOf(rec);
    if (!paths.length) return plain;
    const rootfs = this.rootfsPath(rec.id);
    await this.composeLock.run(async () => {
      const current = this.metadata.get(rec.key);
      if (!current || current.id !== rec.id)
        throw new SnapshotError("not-found", `snapshot ${JSON.stringify(rec.key)} does not exist`);
      const marker = this.markerPath(rec.id);
      if (existsSync(marker) && mountPointsUnder(rootfs).includes(rootfs)) return;
      rmSync(marker, { force: true });
      await unmountAll(rootfs);
      const start = performance.now();
      try {
        await this.compose(rec, rootfs, paths);
      } catch (err) {
        await unmountAll(rootfs).catch(() => undefined);
        throw err;
      }
      writeFileSync(marker, JSON.stringify({ rootfs, paths: paths.length }) + "\n");
      this.log?.debug("composed", {
        key: rec.key,
        paths: paths.length,
        ms: Math.round(performance.now() - start),
      });
    });
    return [{ type: "bind", source: rootfs, options: ["rbind", rec.kind === "view" ? "ro" : "rw"] }];
  }

  private async compose(rec: SnapshotRecord, rootfs: string, paths: string[]): Promise<void> {
    mkdirSync(rootfs, { recursive: true, mode: 0o755 });
    const parents = this.metadata.ancestors(rec);
    // Paths relative to the snapshots directory keep long chains under the kernel's one-page option limit.
    const rel = (id: number, sub: string): string => `${id}/${sub}`;
    const data = this.dataLayer(rec, parents);
    if (rec.kind === "view" && parents.length === 1 && !data) {
      await run("mount", ["--bind", "-o", "ro", this.fsPath(parents[0].id), rootfs]);
    } else {
      const options: string[] = [];
      const plain = this.mountsOf(rec)[0];
      if (plain.options.includes("index=off")) options.push("index=off");
      if (rec.kind === "active")
        options.push(`workdir=${rel(rec.id, "work")}`, `upperdir=${rel(rec.id, "fs")}`);
      const lower = parents.map((p) => rel(p.id, "fs")).join(":");
      options.push(`lowerdir=${data ? `${lower}::${data.dir}` : lower}`, ...(data?.options ?? []));
      if (rec.kind === "view") options.push("ro");
      await run("mount", ["-t", "overlay", "overlay", "-o", options.join(","), rootfs], this.snapshotsDir);
    }
    // Private: the store mounts below neither propagate out nor follow containerd's copies when unmounted.
    await run("mount", ["--make-private", rootfs]);
    const storeRel = this.store.storeDir.replace(/^\/+/, "");
    const pairs: Array<[string, string]> = [];
    for (const p of paths) {
      const real = this.store.realPath(p);
      if (lstatSync(real).isSymbolicLink()) continue; // the layer holds the symlink itself
      const target = join(rootfs, storeRel, parseStorePath(p, this.store.storeDir).baseName);
      if (!existsSync(target))
        throw new Error(`${target}: no mountpoint for ${p} (was its nix layer unpacked instead?)`);
      pairs.push([real, target]);
    }
    await bindReadOnly(pairs, this.mountLimit, (error) =>
      this.log?.warn("bind-mount helper unusable; using mount(8) per store path", { error }),
    );
  }
}
