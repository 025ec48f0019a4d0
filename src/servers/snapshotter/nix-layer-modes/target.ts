// Target mode (--nix-layers target; auto's choice under containerd >= 1.7, see auto.ts): the layer's fs is
// empty, and the mounts of an active snapshot or view above such layers are an overlay of the chain's other
// layers topped by the chain's mountpoints directory (an empty mountpoint per store path of its target layers,
// made once per chain and shared by its containers: nix-layers.ts makeMountpoints; directories and empty files
// only, no per-file work whatever the paths hold), followed by one {bind, STORE/<basename>, target
// /nix/store/<basename>, [ro, rbind]} per store path. containerd >= 1.7 mounts each at its target inside the rootfs (the runc shim, and its temporary
// mounts for `ctr run` and CRI) and unmounts them with the rootfs, so the snapshotter mounts nothing and a
// restart of either leaves nothing behind; the container reads the store's own files. containerd 1.6 ignores
// Mount.target (the binds would stack on the rootfs), so this is for 1.7 and later only.
import { lstatSync } from "node:fs";
import { join } from "node:path";
import { parseStorePath } from "../../../nix/store-path.js";
import type { LocalStore } from "../../../store/local-store.js";
import type { Mount } from "../overlay.js";
import { buildEmptyLayer, type LayerMode } from "./layer-mode.js";

export const targetMode: LayerMode = {
  kind: "target",
  rootfs: "targets",
  build: buildEmptyLayer,
  dataLayer: () => undefined,
};

/**
 * The read-only bind mounts giving a container `paths` at their place in its rootfs: one per path, source the
 * store's real directory, target the logical one. A symlink store path has none: its layer holds the symlink.
 */
export function targetBinds(store: LocalStore, paths: string[]): Mount[] {
  const out: Mount[] = [];
  for (const p of paths) {
    const real = store.realPath(p);
    if (lstatSync(real).isSymbolicLink()) continue;
    const target = join(store.storeDir, parseStorePath(p, store.storeDir).baseName);
    out.push({ type: "bind", source: real, target, options: ["ro", "rbind"] });
  }
  return out;
}
