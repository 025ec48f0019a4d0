// The referrers tag schema (OCI distribution spec 1.1, "Referrers Tag Schema"): on a registry without the
// referrers API, a manifest's referrers are listed by an OCI index tagged `sha256-<hex of its digest>`, which the
// clients that push referrers keep up to date (fetch, add, put back) and the clients that read them fetch.
import type { Descriptor } from "./descriptor.js";
import { digestHex, parseDigest } from "./digest.js";
import { OCI_INDEX } from "./media-types.js";
import { NixociError } from "../util/errors.js";

/** The tag listing the referrers of `subject`. */
export function referrersTag(subject: string): string {
  return `sha256-${digestHex(parseDigest(subject, "subject"))}`;
}

/**
 * The fallback index with `add` listed, keeping what `existing` (the bytes under the tag, if any) lists; undefined
 * when it lists every one of them already, so a repeated push leaves the tag as it is. New entries follow the old
 * ones in the order given.
 */
export function mergeReferrersIndex(
  existing: Buffer | undefined,
  add: readonly Descriptor[],
  input: string,
): Buffer | undefined {
  let manifests: Descriptor[] = [];
  if (existing !== undefined) {
    let json: unknown;
    try {
      json = JSON.parse(existing.toString("utf8"));
    } catch {
      throw new NixociError(input, "the referrers tag holds something that is not JSON");
    }
    const list = (json as { manifests?: unknown } | null)?.manifests;
    if (!Array.isArray(list)) throw new NixociError(input, "the referrers tag holds no image index");
    manifests = list as Descriptor[];
  }
  const have = new Set(manifests.map((m) => m.digest));
  const fresh: Descriptor[] = [];
  for (const d of add)
    if (!have.has(d.digest)) {
      have.add(d.digest);
      fresh.push(d);
    }
  if (existing !== undefined && !fresh.length) return undefined;
  return Buffer.from(
    JSON.stringify({ schemaVersion: 2, mediaType: OCI_INDEX, manifests: [...manifests, ...fresh] }),
  );
}
