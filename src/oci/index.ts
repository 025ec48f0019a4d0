// The OCI image index of a multi-platform build: one manifest per platform, each with its `platform`
// (architecture, os, variant), what registries, containerd, Docker and skopeo pick an image from. The entries are
// sorted by platform, so the same images give the same index bytes (and digest) whatever order they were built in.
import type { BuiltImage } from "./image.js";
import { sha256Digest, type Digest } from "./digest.js";
import { OCI_INDEX } from "./media-types.js";

/** A multi-platform image as the outputs see it: the index's exact bytes and the images it lists. */
export interface BuiltIndex {
  index: { digest: Digest; size: number; bytes: Buffer; mediaType: string };
  /** One image per platform, in the index's order. */
  images: BuiltImage[];
}

/** What an output writes: one image, or an index of several. */
export type BuiltTarget = BuiltImage | BuiltIndex;

export function isIndex(t: BuiltTarget): t is BuiltIndex {
  return "images" in t;
}

/** `os/arch[/variant]`, the order (and the way) platforms are named. */
export function platformKey(p: { os: string; architecture: string; variant?: string }): string {
  return `${p.os}/${p.architecture}${p.variant ? `/${p.variant}` : ""}`;
}

export function comparePlatforms(
  a: Parameters<typeof platformKey>[0],
  b: Parameters<typeof platformKey>[0],
): number {
  const [x, y] = [platformKey(a), platformKey(b)];
  return x < y ? -1 : x > y ? 1 : 0;
}

/** An index entry: a manifest and the platform it is for. */
export interface IndexEntry {
  manifest: { mediaType: string; digest: Digest; size: number };
  platform: { architecture: string; os: string; variant?: string };
}

/**
 * The index of the entries (sorted by platform; two entries of one platform are a caller's mistake): its exact
 * bytes, and the entries in its order.
 */
export function indexOf<T extends IndexEntry>(entries: T[]): { index: BuiltIndex["index"]; entries: T[] } {
  const sorted = [...entries].sort((a, b) => comparePlatforms(a.platform, b.platform));
  for (let i = 1; i < sorted.length; i++)
    if (platformKey(sorted[i].platform) === platformKey(sorted[i - 1].platform))
      throw new Error(`two images for ${platformKey(sorted[i].platform)} in one index`);
  const bytes = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_INDEX,
      manifests: sorted.map((e) => ({
        mediaType: e.manifest.mediaType,
        digest: e.manifest.digest,
        size: e.manifest.size,
        platform: {
          architecture: e.platform.architecture,
          os: e.platform.os,
          ...(e.platform.variant ? { variant: e.platform.variant } : {}),
        },
      })),
    }),
  );
  return {
    index: { digest: sha256Digest(bytes), size: bytes.length, bytes, mediaType: OCI_INDEX },
    entries: sorted,
  };
}

/** The index of the images (sorted by platform; two images of one platform are a caller's mistake). */
export function buildIndex(images: BuiltImage[]): BuiltIndex {
  const { index, entries } = indexOf(images);
  return { index, images: entries };
}
