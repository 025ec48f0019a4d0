// Content digests as OCI writes them ("sha256:<64 hex>"); parsed strictly because they come from the
// network and from files, and become file names in blob stores.
import { createHash } from "node:crypto";
import { NixociError, quote } from "../util/errors.js";

export type Digest = `sha256:${string}`;

const DIGEST_RE = /^sha256:[a-f0-9]{64}$/;

export function isDigest(s: string): s is Digest {
  return DIGEST_RE.test(s);
}

export function parseDigest(s: string, input = "digest"): Digest {
  if (!isDigest(s))
    throw new NixociError(input, `malformed digest ${quote(s)} (expected sha256:<64 hex digits>)`);
  return s;
}

export function sha256Digest(data: Buffer | string): Digest {
  return `sha256:${createHash("sha256").update(data).digest("hex")}`;
}

/** The hex part, safe to use as a file name once the digest is validated. */
export function digestHex(d: Digest): string {
  return d.slice("sha256:".length);
}

/** containerd's chain ID of a layer with diff ID `diffId` above the chain `parent` ("": the bottom layer's is its
 * diff ID): sha256 of "PARENT DIFF_ID". */
export function chainIdOf(parent: string, diffId: string): string {
  return parent ? sha256Digest(`${parent} ${diffId}`) : diffId;
}
