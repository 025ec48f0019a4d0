// The base image of `nixoci build --from REF`: opened and checked (manifest, config, diff_ids, platform) before
// any layer is built, so a base that is unreachable or malformed fails in one line first; its layer blobs are
// copied into the layer cache's blob store by the build, verified by digest, and only those the cache lacks.
import type { BaseImage } from "../image/base-image.js";
import type { BlobStore } from "../oci/blob-store.js";
import type { Digest } from "../oci/digest.js";
import { NixociError } from "../util/errors.js";
import { openImage, type OpenImageOptions, type ImageSource } from "./image-source.js";

export interface OpenedBase {
  base: BaseImage;
  /** Ends the source's connections (a registry's); call once the build is done. */
  close(): Promise<void>;
}

export async function openBaseImage(ref: string, opts: OpenImageOptions): Promise<OpenedBase> {
  const src: ImageSource = await openImage(ref, opts);
  try {
    const layers = src.layers.map((l, i) => {
      if (!l.diffId) throw new NixociError(ref, `layer ${i} has no diff_id in the config`);
      // The descriptor as the base has it, without annotations: they describe the base's own build (nixoci's
      // store path annotations would make the result's readers take the base's layers for this closure's).
      const { mediaType, digest, size } = l.descriptor;
      return { descriptor: { mediaType, digest, size }, diffId: l.diffId };
    });
    if (!src.platform.os || !src.platform.architecture)
      throw new NixociError(ref, "the base image's config names no os and architecture");
    const base: BaseImage = {
      ref,
      manifestDigest: src.manifest.digest,
      os: src.platform.os,
      architecture: src.platform.architecture,
      config: src.config.json,
      layers,
      fetchInto: (blobs) => fetchLayers(src, blobs),
    };
    return { base, close: () => src.close() };
  } catch (err) {
    await src.close();
    throw err;
  }
}

/** Copies the layers `blobs` lacks (each digest once), verified as they stream in. */
async function fetchLayers(src: ImageSource, blobs: BlobStore): Promise<Digest[]> {
  const fetched: Digest[] = [];
  const seen = new Set<Digest>();
  for (const [i, l] of src.layers.entries()) {
    const { digest, size } = l.descriptor;
    if (seen.has(digest)) continue;
    seen.add(digest);
    if ((await blobs.size(digest)) === size) continue;
    try {
      await blobs.putStream(await src.openLayer(i), digest);
    } catch (err) {
      if (err instanceof NixociError && err.input === src.ref) throw err;
      throw new NixociError(src.ref, `cannot fetch layer ${digest}: ${(err as Error).message}`, {
        cause: err,
      });
    }
    fetched.push(digest);
  }
  return fetched;
}
