// Link mode (--nix-layers link; auto's choice when the store and ROOT share a filesystem): the layer's
// fs/nix/store/<basename> is a tree of hard links to the store's files (directories recreated, symlinks copied).
// Containers get containerd's ordinary overlay mounts; nothing is mounted or released here.
import { buildTreeLayer, type LayerMode } from "./layer-mode.js";

export const linkMode: LayerMode = {
  kind: "link",
  rootfs: "overlay",
  build: (layer) =>
    buildTreeLayer(
      layer,
      layer.paths.map((p) => ({ kind: "link", src: p.real, dst: p.target })),
    ),
  dataLayer: () => undefined,
};
