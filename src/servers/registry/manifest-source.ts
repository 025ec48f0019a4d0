// The hook through which `nixoci serve` answers for manifests it does not have yet (Nix package images built on
// demand). The distribution API asks its storage first and the source only on a miss.
import type { Digest } from "../../oci/digest.js";

export interface StoredManifest {
  digest: Digest;
  mediaType: string;
  bytes: Buffer;
  /** An index's manifests, recorded in the repository before it (a source's index names nothing pushed). */
  children?: StoredManifest[];
}

/** A source of manifests the storage does not have yet (nixoci's Nix package images). */
export interface ManifestSource {
  /**
   * undefined = not handled (answer as usual: 404 MANIFEST_UNKNOWN / NAME_UNKNOWN); throw RegistryError for
   * errors. Consulted only when the storage has no manifest for (repo, reference); `repo` and `reference` are
   * already validated (a spec repository name; a tag or a sha256 digest). The blobs the manifest names must be in
   * the storage's blob store (storage.blobs) when it returns: the server records the manifest by digest in the
   * repository and makes those blobs visible there (never the tag: a tag is asked again next time unless the
   * source stored it with storage.putManifest).
   */
  resolve(
    repo: string,
    reference: string,
    ctx: { method: "GET" | "HEAD"; accept: string[]; signal: AbortSignal },
  ): Promise<StoredManifest | undefined>;
  /**
   * The tags that pull `repo` from the source (without building anything), for its tags list next to the
   * repository's pushed tags; undefined = not a name the source serves (the repository's own tags, or 404
   * NAME_UNKNOWN when it has none); throw RegistryError for errors (an unknown package: NAME_UNKNOWN as a pull
   * gets it).
   */
  tags?(repo: string, ctx: { signal: AbortSignal }): Promise<string[] | undefined>;
  /**
   * The repository that the manifests resolved for `repo` are recorded in (their blobs made visible there), when
   * not `repo` itself: one for every spelling of the same image. Reads of `repo` go there while the storage has
   * no repository `repo` of its own (pushed to, or recorded before under that spelling).
   */
  recordedUnder?(repo: string): string;
}
