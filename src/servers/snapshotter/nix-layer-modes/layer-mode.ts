// The one interface behind --nix-layers: how a committed nix layer's fs holds its store paths (link.ts,
// metacopy.ts, bind.ts, target.ts; what each means for containers is told in nix-layers.ts), what the overlays of
// snapshots above such a layer add, and how containers above it get the paths. auto.ts chooses one.
import { lstatSync, mkdirSync, readlinkSync, symlinkSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { makeDirsSync } from "../../../util/fs.js";
import type { NixLayerKind } from "../metadata.js";
import type { DataLayer, Usage } from "../overlay.js";
import { buildTrees, type TreeJob, type TreeResult } from "../layer-tree.js";

/** One store path of a new layer: where it really is, and where the layer's fs/nix/store/<baseName> goes. */
export interface LayerPath {
  real: string;
  target: string;
  baseName: string;
}

/** A new layer's fs (to be made) and the paths it is to hold. */
export interface NewLayer {
  fs: string;
  /** The store's logical directory, e.g. /nix/store. */
  storeDir: string;
  paths: LayerPath[];
}

/** What building a layer gave: its files replicated (0 for none) and its disk usage. */
export interface BuiltLayer {
  files: number;
  usage: Usage;
}

export interface LayerMode {
  readonly kind: NixLayerKind;
  /** Makes the new layer's fs hold its paths (the tree copies run in a worker thread). */
  build(layer: NewLayer): Promise<BuiltLayer>;
  /** The data-only lower layer the overlays of snapshots above such a layer take, if any. */
  dataLayer(storeRealDir: string): DataLayer | undefined;
  /**
   * How containers and views above such a layer see its paths: in the overlay itself ("overlay"), through a
   * root the snapshotter composes and mounts (bind.ts: "composed"), or through one read-only bind mount per path
   * with Mount.target that containerd >= 1.7 makes itself (target.ts: "targets").
   */
  readonly rootfs: "overlay" | "composed" | "targets";
}

/**
 * Makes an empty mountpoint at each path's target (a directory, or an empty file for a file store path; a
 * symlink store path is copied, since a bind mount would follow it): directories only, no per-file work.
 * Returns the bytes they take, as diskUsage would count them (one sample stat for the empty directories, which
 * all take the same blocks) instead of walking the new tree again (a walk took about 170 ms for 2,000 paths).
 */
export function makeMountpoints(paths: LayerPath[]): number {
  let size = 0;
  let emptyDir: number | undefined;
  for (const p of paths) {
    const st = lstatSync(p.real);
    if (st.isDirectory()) {
      mkdirSync(p.target, { mode: 0o555 });
      emptyDir ??= lstatSync(p.target).blocks * 512;
      size += emptyDir;
    } else if (st.isSymbolicLink()) {
      // The target as its bytes: it need not be UTF-8.
      symlinkSync(readlinkSync(p.real, { encoding: "buffer" }), p.target);
      size += lstatSync(p.target).blocks * 512;
    } else writeFileSync(p.target, "", { mode: 0o444 }); // an empty file has no blocks
  }
  return size;
}

/** The layer's fs/<storeDir> (fs/nix/store), made with its ancestors. */
function makeStoreDir(layer: NewLayer): string {
  const dir = join(layer.fs, layer.storeDir);
  makeDirsSync(dir, 0o755);
  return dir;
}

/** Makes the layer's fs hold an empty mountpoint per path (makeMountpoints); its usage is counted as made. */
export function buildMountpointLayer(layer: NewLayer): Promise<BuiltLayer> {
  const storeDir = makeStoreDir(layer);
  let size = makeMountpoints(layer.paths);
  // fs itself and the store directory's ancestors in it (fs/nix, fs/nix/store), the last holding the entries.
  let inodes = layer.paths.length;
  for (let d = storeDir; ; d = dirname(d)) {
    size += lstatSync(d).blocks * 512;
    inodes++;
    if (d === layer.fs || d === dirname(d)) break;
  }
  return Promise.resolve({ files: 0, usage: { size, inodes } });
}

/** Makes the layer's fs an empty directory (target mode: the mountpoints are made per chain, not per layer). */
export function buildEmptyLayer(layer: NewLayer): Promise<BuiltLayer> {
  makeDirsSync(layer.fs, 0o755);
  return Promise.resolve({ files: 0, usage: { size: lstatSync(layer.fs).blocks * 512, inodes: 1 } });
}

/**
 * Builds the trees of `jobs` (one per store path) into the layer's fs; `after` sees the result before the usage
 * is counted. The usage adds the store directory's ancestors (nix/, nix/store/) and fs itself.
 */
export async function buildTreeLayer(
  layer: NewLayer,
  jobs: TreeJob[],
  after?: (built: TreeResult) => Promise<void>,
): Promise<BuiltLayer> {
  makeStoreDir(layer);
  const built = await buildTrees(layer.fs, jobs);
  await after?.(built);
  const extra = layer.storeDir.split("/").filter(Boolean).length + 1;
  return {
    files: built.counts.files,
    usage: { size: built.usage.size, inodes: built.usage.inodes + extra },
  };
}
