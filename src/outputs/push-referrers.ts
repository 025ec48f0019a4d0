// Pushes referrers (oci/referrer.ts) after the image they are about: their blobs (skipped when present), then each
// manifest by digest. A registry with the referrers API answers a manifest with a subject with an OCI-Subject
// header and lists it from then on; one without it (docker-registry 2.8) does not, and then the manifest's
// referrers are listed by the tag-schema fallback (oci/referrers-tag-schema.ts): the index under
// `sha256-<hex of the subject>` is fetched, the new referrers are added (none twice) and it is put back.
import { OCI_INDEX } from "../oci/media-types.js";
import { referrerDescriptor, type BuiltReferrer } from "../oci/referrer.js";
import { mergeReferrersIndex, referrersTag } from "../oci/referrers-tag-schema.js";
import { sha256Digest } from "../oci/digest.js";
import { RegistryClient, type RegistryClientOptions } from "./registry-session.js";

export interface ReferrersPushResult {
  /** The referrer manifests pushed, by digest. */
  referrers: string[];
  /** The fallback tags written (empty when the registry has the referrers API or every tag was up to date). */
  fallbackTags: string[];
}

export async function pushReferrers(
  referrers: readonly BuiltReferrer[],
  target: { registry: string; repository: string },
  opts: RegistryClientOptions = {},
): Promise<ReferrersPushResult> {
  const result: ReferrersPushResult = { referrers: [], fallbackTags: [] };
  if (!referrers.length) return result;
  const client = new RegistryClient(target.registry, target.repository, opts);
  try {
    // Small blobs (documents, the empty config), so one at a time and in one PUT each (no size is over the
    // monolithic limit, so the chunk size is never used).
    const seen = new Set<string>();
    for (const b of referrers.flatMap((r) => r.blobs)) {
      if (seen.has(b.digest)) continue;
      seen.add(b.digest);
      if (await client.hasBlob(b.digest)) continue;
      const session = await client.startUpload();
      await client.uploadBlob(session, b.bytes, b.digest, b.size, {
        monolithicLimit: Infinity,
        chunkSize: 1,
      });
    }
    /** Referrers the registry did not take as such, by subject. */
    const unlisted = new Map<string, BuiltReferrer[]>();
    for (const r of referrers) {
      const sent = await client.sendManifest(
        r.manifest.digest,
        r.manifest.bytes,
        r.manifest.mediaType,
        r.manifest.digest,
      );
      result.referrers.push(sent.digest);
      if (sent.subject === undefined)
        unlisted.set(r.subject.digest, [...(unlisted.get(r.subject.digest) ?? []), r]);
    }
    for (const [subject, rs] of unlisted) {
      const tag = referrersTag(subject);
      const existing = await client.findManifest(tag, [OCI_INDEX]);
      const merged = mergeReferrersIndex(
        existing?.bytes,
        rs.map(referrerDescriptor),
        `${client.input}:${tag}`,
      );
      if (!merged) continue;
      await client.putManifest(tag, merged, OCI_INDEX, sha256Digest(merged));
      result.fallbackTags.push(tag);
    }
  } finally {
    client.close();
  }
  return result;
}
