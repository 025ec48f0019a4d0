// Whether a nix layer's chain ID is what its store paths make. containerd names a committed layer by its chain ID,
// computed from the image config's diff_ids, and checks a diff_id only when it unpacks the layer itself: when the
// snapshotter answers ALREADY_EXISTS for a Prepare whose labels name store paths, nothing else checks that the
// layer is those paths. Without this check, an image whose config claims another image's diff_id and whose layer
// names some store paths would make the snapshot of that chain ID hold those paths, and every image sharing the
// chain ID would then run them (a later pull of the real image finds the chain ID and unpacks nothing).
//
// So before committing a nix layer, the snapshotter computes the diff_id of the tar nixoci makes of its paths (each
// layer tar format nixoci writes, the standard one first) and checks that the parent's chain ID with that diff_id
// is the chain ID containerd asked for. That reads the paths' files once; the diff_ids are kept in the metadata
// database by the set of paths, so a layer is read once per node, whatever the images and chains it appears in.
// A layer built otherwise (another tool's tar of the same paths, e.g. nix-snapshotter's mountpoint-only layers)
// does not verify and is unpacked as usual, unless --trust-layer-labels says every pulled image is trusted.
import { createHash } from "node:crypto";
import { storePathsTar } from "../../image/layer-tar.js";
import { LAYER_TAR_FORMATS } from "../../image/tar-header.js";
import { chainIdOf } from "../../oci/digest.js";
import type { LocalStore } from "../../store/local-store.js";
import type { MetadataStore } from "./metadata.js";

/** The name of a set of store paths in the diff_id table: sha256 of the sorted paths, one per line. */
export function pathsKey(paths: readonly string[]): string {
  return createHash("sha256")
    .update([...paths].sort().join("\n"))
    .digest("hex");
}

async function tarDigest(
  store: LocalStore,
  paths: readonly string[],
  format: keyof typeof LAYER_TAR_FORMATS,
) {
  const hash = createHash("sha256");
  const sources = paths.map((p) => ({ storePath: p, realPath: store.realPath(p) }));
  for await (const chunk of storePathsTar(sources, { format: LAYER_TAR_FORMATS[format] }))
    hash.update(chunk as Buffer);
  return `sha256:${hash.digest("hex")}`;
}

/**
 * The format of nixoci's tar of `paths` whose diff_id makes `chainId` on top of `parent` (a chain ID, "" for the
 * bottom layer), or undefined when none does. Computed diff_ids are kept in `metadata`.
 */
export async function verifyNixLayerChain(
  metadata: MetadataStore,
  store: LocalStore,
  paths: readonly string[],
  parent: string,
  chainId: string,
): Promise<string | undefined> {
  const key = pathsKey(paths);
  const known = metadata.layerDiffIds(key) ?? [];
  const formats = Object.keys(LAYER_TAR_FORMATS) as (keyof typeof LAYER_TAR_FORMATS)[];
  for (const [i, format] of formats.entries()) {
    let diffId = known[i];
    if (diffId === undefined) {
      diffId = await tarDigest(store, paths, format);
      known[i] = diffId;
      metadata.saveLayerDiffIds(key, known);
    }
    if (chainIdOf(parent, diffId) === chainId) return format;
  }
  return undefined;
}
