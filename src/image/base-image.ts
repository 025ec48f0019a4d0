// A base image (`nixoci build --from REF`), as the build takes it: data read and checked before the build
// starts (outputs/base-image.ts opens the reference), plus a way to copy its layer blobs into the layer cache's
// blob store. The image layer cannot read images itself (it sits below outputs/), so the base comes in as this.
import type { BlobStore } from "../oci/blob-store.js";
import type { Descriptor } from "../oci/descriptor.js";
import type { Digest } from "../oci/digest.js";

export interface BaseLayer {
  /** The layer's descriptor exactly as the base has it (mediaType, digest, size): never re-compressed. */
  descriptor: Descriptor & { digest: Digest };
  diffId: Digest;
}

export interface BaseImage {
  /** The reference as given (errors and reports name it). */
  ref: string;
  /** The base manifest's digest: with the build's inputs, what the result's digest depends on. */
  manifestDigest: Digest;
  os: string;
  architecture: string;
  /** The base's image config JSON (its `config`, `history`, ...). */
  config: Record<string, unknown>;
  layers: BaseLayer[];
  /**
   * Copies every layer blob `blobs` lacks into it, verified by digest; returns the digests it had to fetch
   * (none when an earlier build with this base left them in the cache).
   */
  fetchInto(blobs: BlobStore): Promise<Digest[]>;
}
