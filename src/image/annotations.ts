// The vocabulary nixoci shares with containerd through images and snapshots, in one place: the layer annotations
// that name a layer's store paths (written by the image builder, read by the snapshotter, which gets them as
// snapshot labels), and the snapshot labels containerd's unpacker and CRI plugin set, which nixoci's snapshotter
// and image service read or write.

/** Labels containerd passes to snapshotters start with this (annotations with it become snapshot labels). */
export const SNAPSHOT_LABEL_PREFIX = "containerd.io/snapshot/";

/** The chain ID a Prepare is meant to become (containerd's remote-snapshot protocol). */
export const REF_LABEL = "containerd.io/snapshot.ref";
/** The manifest digest of the image a layer is unpacked for (CRI, with snapshot annotations enabled). */
export const MANIFEST_DIGEST_LABEL = "containerd.io/snapshot/cri.manifest-digest";

/** Annotation key naming a layer's store paths (the key nix-snapshotter reads): `<prefix>.<i>` = path. */
export const NIX_STORE_PATH_ANNOTATION = "containerd.io/snapshot/nix-store-path";

/**
 * Annotation key naming the image's roots on each of its store layers, `<prefix>.<i>` = path: the layer's paths
 * are all in their closure, so a node holding the roots keeps the layer's paths (one GC root link per image
 * root instead of one per store path; gcroots.ts).
 */
export const NIX_CLOSURE_ROOT_ANNOTATION = "containerd.io/snapshot/nix-closure-root";

/** Whether `key` is one of the per-path annotations (or labels) above: `<NIX_STORE_PATH_ANNOTATION>.<i>` etc. */
export function isStorePathLabel(key: string): boolean {
  return key.startsWith(`${NIX_STORE_PATH_ANNOTATION}.`) || key.startsWith(`${NIX_CLOSURE_ROOT_ANNOTATION}.`);
}

/**
 * The store paths `<NIX_STORE_PATH_ANNOTATION>.<i>` keys name (layer annotations, or the snapshot labels
 * containerd copies from them), in index order, deduplicated; a non-numeric index sorts last.
 */
export function storePathsFromAnnotations(
  annotations: Readonly<Record<string, string>>,
  key = NIX_STORE_PATH_ANNOTATION,
): string[] {
  const prefix = `${key}.`;
  const indexed: Array<[number, string]> = [];
  for (const [k, v] of Object.entries(annotations)) {
    if (!k.startsWith(prefix)) continue;
    const i = Number(k.slice(prefix.length));
    indexed.push([Number.isFinite(i) ? i : Number.MAX_SAFE_INTEGER, v]);
  }
  indexed.sort((a, b) => a[0] - b[0]);
  return [...new Set(indexed.map((x) => x[1]))];
}
