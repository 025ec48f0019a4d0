// An OCI content descriptor: what a manifest or index says about a blob it points to.
import { isDigest, type Digest } from "./digest.js";

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  /** What an artifact manifest holds (image spec 1.1), copied into the descriptors that point at it. */
  artifactType?: string;
  annotations?: Record<string, string>;
  platform?: { architecture: string; os: string; variant?: string };
}

/**
 * `x` (untrusted JSON) as a descriptor with a sha256 digest; otherwise an Error saying so, naming it as `what`
 * ("index.json manifests[0]"). Annotations, when present, must map strings to strings.
 */
export function checkDescriptor(x: unknown, what: string): Descriptor & { digest: Digest } {
  const d = x as Descriptor | null;
  if (
    typeof d !== "object" ||
    d === null ||
    typeof d.mediaType !== "string" ||
    typeof d.digest !== "string" ||
    !isDigest(d.digest) ||
    !Number.isSafeInteger(d.size) ||
    d.size < 0
  )
    throw new Error(`${what} is not a valid descriptor (mediaType, sha256 digest, size)`);
  if (d.annotations !== undefined) {
    const a = d.annotations as unknown;
    if (typeof a !== "object" || a === null || Object.values(a).some((v) => typeof v !== "string"))
      throw new Error(`${what} has malformed annotations`);
  }
  return d as Descriptor & { digest: Digest };
}
