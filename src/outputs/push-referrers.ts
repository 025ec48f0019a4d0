// Pushes referrers (oci/referrer.ts) after the image they are about: their blobs (skipped when present), then each
// manifest by digest. A registry with the referrers API answers a manifest with a subject with an OCI-Subject
// header and lists it from then on; one without it (docker-registry 2.8) does not, and then the manifest's
// referrers are listed by the tag-schema fallback (oci/referrers-tag-schema.ts): the index under
// `sha256-<hex of the subject>` is fetched, the new referrers are added (none twice) and it is put back.
// That read-modify-write has no lock (docker-registry takes no If-Match): two pushes of referrers about one image
// at once can each put an index without the other's. So after a write the index is read again after a pause
// longer than another writer's read-to-put, and merged and put again while ours are missing from it.
import { setTimeout as sleep } from "node:timers/promises";
import type { Descriptor } from "../oci/descriptor.js";
import { OCI_INDEX } from "../oci/media-types.js";
import { referrerDescriptor, type BuiltReferrer } from "../oci/referrer.js";
import { mergeReferrersIndex, referrersTag } from "../oci/referrers-tag-schema.js";
import { sha256Digest } from "../oci/digest.js";
import { NixociError } from "../util/errors.js";
import { RegistryClient, type RegistryClientOptions } from "./registry-session.js";

export interface ReferrersPushOptions extends RegistryClientOptions {
  /** The pause between writing a fallback index and reading it back (ms); a random half again is added. */
  confirmDelayMs?: number;
  /** Runs after each write of a fallback index, before it is read back (tests: another writer's turn). */
  afterFallbackWrite?: (tag: string) => Promise<void>;
}

/** Writes of one fallback index before giving up on a registry where others keep overwriting it. */
const MAX_FALLBACK_WRITES = 8;

export interface ReferrersPushResult {
  /** The referrer manifests pushed, by digest. */
  referrers: string[];
  /** The fallback tags written (empty when the registry has the referrers API or every tag was up to date). */
  fallbackTags: string[];
}

export async function pushReferrers(
  referrers: readonly BuiltReferrer[],
  target: { registry: string; repository: string },
  opts: ReferrersPushOptions = {},
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
      if (await listInFallbackIndex(client, tag, rs.map(referrerDescriptor), opts))
        result.fallbackTags.push(tag);
    }
  } finally {
    client.close();
  }
  return result;
}

/**
 * Makes the fallback index under `tag` list `descriptors`: merged into what it holds and put back, then read back
 * after a pause and written again while any is missing (another writer's index replaced ours). True when written.
 */
async function listInFallbackIndex(
  client: RegistryClient,
  tag: string,
  descriptors: Descriptor[],
  opts: ReferrersPushOptions,
): Promise<boolean> {
  const input = `${client.input}:${tag}`;
  const pause = opts.confirmDelayMs ?? 300;
  let writes = 0;
  for (;;) {
    const existing = await client.findManifest(tag, [OCI_INDEX]);
    const merged = mergeReferrersIndex(existing?.bytes, descriptors, input);
    if (!merged) return writes > 0;
    if (writes === MAX_FALLBACK_WRITES)
      throw new NixociError(
        input,
        `the referrers index was replaced ${writes} times while it was being written (other pushes about the same image); push again`,
      );
    await client.putManifest(tag, merged, OCI_INDEX, sha256Digest(merged));
    writes++;
    await opts.afterFallbackWrite?.(tag);
    await sleep(pause * (1 + Math.random() / 2));
  }
}
