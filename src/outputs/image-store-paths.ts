// The store paths an image holds, layer by layer: nixoci's layer annotations say them outright (validated when
// the image was opened); a layer without them (any other tool's image, or nixoci's customisation layer) is
// streamed, decompressed (gzip, zstd or none, told by its first bytes rather than a media type that may lie) and
// its tar's top-level `<store dir>/<hash>-<name>` entries collected. Whiteouts count as the overlay filesystem
// applies them: `<store dir>/.wh.<hash>-<name>` removes that path from the layers below, an opaque
// `<store dir>/.wh..wh..opq` removes all of them.
import type { Readable } from "node:stream";
import { NixociError } from "../util/errors.js";
import { uncompressedLayer } from "../util/compression.js";
import { isStorePath } from "../nix/store-path.js";
import { readTarMembers } from "../image/tar-reader.js";
import type { ImageSource, LayerDescriptor } from "./image-source.js";

export interface LayerPaths {
  descriptor: LayerDescriptor;
  /** Store paths the layer adds (sorted). */
  storePaths: string[];
  /** Store paths it whites out from the layers below (sorted). */
  whiteouts: string[];
  /** It hides every store path of the layers below. */
  opaque: boolean;
  /** Where the paths came from. */
  source: "annotations" | "scan";
}

const WHITEOUT = ".wh.";
const OPAQUE = ".wh..wh..opq";

/** Scans one layer's tar for top-level store path entries and whiteouts. */
async function scanLayer(
  img: ImageSource,
  i: number,
  storeDir: string,
): Promise<Omit<LayerPaths, "descriptor">> {
  const input = `${img.ref} layer ${i} (${img.layers[i].descriptor.digest})`;
  const dir = storeDir.replace(/^\/+/, "").replace(/\/+$/, "") + "/";
  const added = new Set<string>();
  const whiteouts = new Set<string>();
  let opaque = false;
  const blob = await img.openLayer(i);
  let tar: Readable | undefined;
  try {
    tar = await uncompressedLayer(blob, input);
    for await (const m of readTarMembers(tar, input)) {
      const name = m.name.replace(/^(\.\/)+/, "").replace(/^\/+/, "");
      if (!name.startsWith(dir)) continue;
      const top = name.slice(dir.length).split("/")[0];
      if (top === OPAQUE) opaque = true;
      else if (top.startsWith(WHITEOUT)) {
        const p = `${storeDir}/${top.slice(WHITEOUT.length)}`;
        if (isStorePath(p, storeDir) && name.slice(dir.length) === top) whiteouts.add(p);
      } else if (top !== "" && isStorePath(`${storeDir}/${top}`, storeDir)) added.add(`${storeDir}/${top}`);
    }
  } catch (err) {
    if (err instanceof NixociError) throw err;
    throw new NixociError(input, (err as Error).message, { cause: err });
  } finally {
    tar?.destroy();
    blob.destroy();
  }
  return { storePaths: [...added].sort(), whiteouts: [...whiteouts].sort(), opaque, source: "scan" };
}

/** Every layer's store paths, in layer order (annotations where there are any, else a scan). */
export async function layerPathsOf(img: ImageSource, storeDir: string): Promise<LayerPaths[]> {
  const out: LayerPaths[] = [];
  for (const [i, l] of img.layers.entries()) {
    if (l.storePaths.length)
      out.push({
        descriptor: l.descriptor,
        storePaths: [...l.storePaths].sort(),
        whiteouts: [],
        opaque: false,
        source: "annotations",
      });
    else out.push({ descriptor: l.descriptor, ...(await scanLayer(img, i, storeDir)) });
  }
  return out;
}

/** The store paths of the image's root filesystem: the layers applied in order, whiteouts included (sorted). */
export function imageStorePaths(layers: LayerPaths[]): string[] {
  let have = new Set<string>();
  for (const l of layers) {
    if (l.opaque) have = new Set();
    for (const w of l.whiteouts) have.delete(w);
    for (const p of l.storePaths) have.add(p);
  }
  return [...have].sort();
}
