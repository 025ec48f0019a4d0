// A finished image as the outputs see it: every blob it needs is in `blobs` (the layer cache or a temporary
// store), and the manifest and config are kept as the exact bytes their digests were computed over.
import type { BlobStore } from "./blob-store.js";
import type { Descriptor } from "./descriptor.js";
import type { Digest } from "./digest.js";

export interface BuiltImage {
  blobs: BlobStore;
  /** The OCI image manifest (application/vnd.oci.image.manifest.v1+json). */
  manifest: { digest: Digest; size: number; bytes: Buffer; mediaType: string };
  config: { digest: Digest; size: number; bytes: Buffer; mediaType: string };
  /** Layer descriptors, bottom first, exactly as listed in the manifest. */
  layers: Descriptor[];
  /** sha256 of each layer's uncompressed tar, in the same order. */
  diffIds: Digest[];
  /** Platform of the image, for indexes. */
  platform: { architecture: string; os: string; variant?: string };
}
