// The layer plan: which store paths go into which layer, bottom layer first. Produced by a layering
// strategy from the closure graph; consumed by the layer builder and written into layer annotations.
export type LayeringStrategy = "size" | "popularity" | "nixery";

export interface PlannedLayer {
  /** Store paths in this layer, sorted. */
  paths: string[];
}

/** Annotation key naming a layer's store paths (the key nix-snapshotter reads): `<prefix>.<i>` = path. */
export const NIX_STORE_PATH_ANNOTATION = "containerd.io/snapshot/nix-store-path";

/**
 * The store paths `<NIX_STORE_PATH_ANNOTATION>.<i>` keys name (layer annotations, or the snapshot labels
 * containerd copies from them), in index order, deduplicated; a non-numeric index sorts last.
 */
export function storePathsFromAnnotations(annotations: Readonly<Record<string, string>>): string[] {
  const prefix = `${NIX_STORE_PATH_ANNOTATION}.`;
  const indexed: Array<[number, string]> = [];
  for (const [k, v] of Object.entries(annotations)) {
    if (!k.startsWith(prefix)) continue;
    const i = Number(k.slice(prefix.length));
    indexed.push([Number.isFinite(i) ? i : Number.MAX_SAFE_INTEGER, v]);
  }
  indexed.sort((a, b) => a[0] - b[0]);
  return [...new Set(indexed.map((x) => x[1]))];
}
