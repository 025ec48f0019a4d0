// The request checks of names and digests in registry routes: the grammar of oci/reference.ts turned into the
// distribution spec's errors (400 NAME_INVALID, DIGEST_INVALID, UNSUPPORTED; 404 for what only a path traversal
// attempt produces). Run on the raw path before anything touches the filesystem.
import type { Digest } from "../../oci/digest.js";
import { classifyDigest, isValidName } from "../../oci/reference.js";
import { registryError } from "./errors.js";

/** A digest from the request (path or ?digest=): sha256, else 400 DIGEST_INVALID / UNSUPPORTED. */
export function requestDigest(s: string | null | undefined, what = "digest"): Digest {
  if (s === null || s === undefined || s === "")
    throw registryError("DIGEST_INVALID", { message: `${what} is missing` });
  const kind = classifyDigest(s);
  if (kind === "sha256") return s as Digest;
  if (kind === "unsupported")
    throw registryError("UNSUPPORTED", {
      status: 400,
      message: "digest algorithm not supported (sha256 only)",
      detail: { digest: s },
    });
  throw registryError("DIGEST_INVALID", { message: `invalid ${what}`, detail: { digest: s } });
}

/**
 * A digest in a GET/HEAD/DELETE path (blobs, manifests, referrers): 400 DIGEST_INVALID when malformed; a
 * well-formed digest of another algorithm is for the caller to answer (it is no resource here).
 */
export function pathDigest(s: string): "sha256" | "unsupported" {
  const kind = classifyDigest(s);
  if (kind === "invalid") throw registryError("DIGEST_INVALID", { detail: { digest: s } });
  return kind;
}

/** Names that only a path traversal attempt produces: answered 404 whatever else is wrong with them. */
function looksLikeTraversal(name: string): boolean {
  return (
    name.includes("%") ||
    name.includes("\\") ||
    name.includes("//") ||
    name.startsWith("/") ||
    name.endsWith("/") ||
    name.split("/").some((seg) => seg === "." || seg === ".." || seg === "")
  );
}

/** The repository name of a route: valid, else 400 NAME_INVALID (404 NAME_UNKNOWN for traversal attempts). */
export function checkName(name: string): string {
  if (isValidName(name)) return name;
  if (looksLikeTraversal(name)) throw registryError("NAME_UNKNOWN", { detail: { name } });
  throw registryError("NAME_INVALID", { detail: { name } });
}
