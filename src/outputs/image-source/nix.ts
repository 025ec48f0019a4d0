// An image description in the Nix store as an image source (nix:/nix/store/<hash>-NAME; nix-image.ts). Its store
// layers have no blob in the description: reading one fails, naming the layer (its store paths are in the store).
import { createReadStream } from "node:fs";
import type { Digest } from "../../oci/digest.js";
import { collectBounded } from "../../util/streams.js";
import { readNixImage } from "../nix-image.js";
import { buildSource, type BlobAccess, type ImageSource } from "./source.js";

export async function openNix(ref: string, storePath: string, storeDir: string): Promise<ImageSource> {
  const img = await readNixImage(storePath, storePath, storeDir);
  const json = JSON.parse(img.manifest.bytes.toString("utf8")) as Record<string, unknown>;
  const byDigest = new Map(img.layers.map((l) => [l.descriptor.digest, l]));
  const access: BlobAccess = {
    async read(d, max) {
      if (d.digest === img.config.digest) return img.config.bytes;
      return collectBounded(await this.stream(d), max);
    },
    async stream(d) {
      const l = byDigest.get(d.digest as Digest);
      if (!l?.blobFile)
        throw new Error(
          `layer ${d.digest} is a store layer: its blob is not in the description (its store paths are)`,
        );
      return createReadStream(l.blobFile, { highWaterMark: 1 << 20 });
    },
    close: async () => undefined,
  };
  return buildSource(
    ref,
    access,
    { digest: img.manifest.digest, mediaType: img.manifest.mediaType, bytes: img.manifest.bytes, json },
    storeDir,
  );
}
