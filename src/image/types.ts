// The layer plan: which store paths go into which layer, bottom layer first. Produced by a layering
// strategy from the closure graph; consumed by the layer builder and written into layer annotations.
export type LayeringStrategy = "size" | "popularity" | "nixery";

export interface PlannedLayer {
  /** Store paths in this layer, sorted. */
  paths: string[];
}
