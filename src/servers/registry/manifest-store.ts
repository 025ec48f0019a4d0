// The manifests of the registry storage: tags, revisions (the manifests a repository has, by digest) and
// referrers (the manifests naming another as their subject). A push is checked (every blob it names is in the
// blob store with its size; an index's children are manifests of the repository) before it is recorded, its
// blobs linked and its tag pointed at it (last, atomically); what is read back is checked against its digest.
import { readdir, readFile, rm } from "node:fs/promises";
import { dirname, join } from "node:path";
import type { BlobStore } from "../../oci/blob-store.js";
import type { Descriptor } from "../../oci/descriptor.js";
import { digestHex, isDigest, sha256Digest, type Digest } from "../../oci/digest.js";
import { compareTags, isValidTag } from "../../oci/reference.js";
import { makeDirs, writeFileAtomic } from "../../util/fs.js";
import { registryError } from "./errors.js";
import type { StoredManifest } from "./manifest-source.js";
import { MANIFEST_MEDIA_TYPES, MAX_MANIFEST_SIZE, parseManifest } from "./manifests.js";
import { exists, type StorageLayout } from "./storage-layout.js";

/** A referrer as the referrers API lists it. */
export interface ReferrerDescriptor extends Descriptor {
  artifactType?: string;
}

export class ManifestStore {
  constructor(
    private readonly layout: StorageLayout,
    private readonly blobs: BlobStore,
  ) {}

  /** The repository's tags in the spec's order (compareTags: case-insensitive, then by code units). */
  async listTags(repo: string): Promise<string[]> {
    const dir = join(this.layout.repoDir(repo), "_manifests", "tags");
    let names: string[];
    try {
      names = await readdir(dir);
    } catch {
      return [];
    }
    return names.filter(isValidTag).sort(compareTags);
  }

  /** A manifest by tag or digest (undefined when the repository does not have it). */
  async getManifest(repo: string, reference: string): Promise<StoredManifest | undefined> {
    this.layout.repoDir(repo);
    let digest: Digest;
    if (isDigest(reference)) digest = reference;
    else {
      if (!isValidTag(reference)) return undefined;
      let text: string;
      try {
        text = (await readFile(this.layout.tagPath(repo, reference), "utf8")).trim();
      } catch {
        return undefined;
      }
      if (!isDigest(text)) return undefined;
      digest = text;
    }
    return this.readManifest(repo, digest);
  }

  private async readManifest(repo: string, digest: Digest): Promise<StoredManifest | undefined> {
    let mediaType: string;
    try {
      const rec = JSON.parse(await readFile(this.layout.revisionPath(repo, digest), "utf8")) as {
        mediaType?: unknown;
      };
      if (typeof rec.mediaType !== "string") return undefined;
      mediaType = rec.mediaType;
    } catch {
      return undefined;
    }
    let bytes: Buffer;
    try {
      const size = await this.blobs.size(digest);
      if (size === undefined || size > MAX_MANIFEST_SIZE) return undefined;
      bytes = await readFile(this.blobs.path(digest));
    } catch {
      return undefined;
    }
    // A damaged file is not served under a digest it does not have.
    if (sha256Digest(bytes) !== digest) return undefined;
    // Nor a blob that is no manifest of its recorded type (recorded by an index naming it before indexes'
    // children were checked).
    if (MANIFEST_MEDIA_TYPES.has(mediaType)) {
      try {
        parseManifest(bytes, mediaType);
      } catch {
        return undefined;
      }
    }
    return { digest, mediaType, bytes };
  }

  /**
   * Stores a manifest pushed under a tag or its digest. Checks that it is JSON of a supported type whose
   * mediaType (when present) is `mediaType`, that every blob it names (config, layers) is in the blob store with
   * the size it says, and that an index's manifests are manifests of the repository (400 MANIFEST_BLOB_UNKNOWN
   * otherwise, as docker-registry answers), with the sizes it says (an index's other children, as BuildKit's
   * registry cache has, are checked as blobs); then records it,
   * links its blobs to the repository and points the tag at it (atomically, last).
   */
  async putManifest(repo: string, reference: string, bytes: Buffer, mediaType: string): Promise<Digest> {
    this.layout.repoDir(repo);
    const refIsDigest = isDigest(reference);
    if (!refIsDigest) this.layout.tagPath(repo, reference);
    if (bytes.length > MAX_MANIFEST_SIZE)
      throw registryError("SIZE_INVALID", {
        status: 413,
        message: "manifest too large",
        detail: { limit: MAX_MANIFEST_SIZE },
      });
    const m = parseManifest(bytes, mediaType);
    const digest = sha256Digest(bytes);
    if (refIsDigest && reference !== digest)
      throw registryError("DIGEST_INVALID", {
        message: "manifest digest did not match the reference",
        detail: { reference, digest },
      });
    for (const b of m.blobs) {
      if (b.foreign) continue;
      const size = await this.blobs.size(b.digest);
      if (size === undefined) throw registryError("MANIFEST_BLOB_UNKNOWN", { detail: { digest: b.digest } });
      if (size !== b.size)
        throw registryError("MANIFEST_INVALID", {
          message: "manifest gives a blob a size it does not have",
          detail: { digest: b.digest, size: b.size, actual: size },
        });
    }
    const children = new Map<string, ReturnType<typeof this.readManifest>>(); // each one read once
    for (const c of m.manifests) {
      // A child must be a manifest of this repository: a blob that is not one (a config, a layer) would be
      // served as a manifest once the index named it.
      let read = children.get(c.digest);
      if (!read) children.set(c.digest, (read = this.readManifest(repo, c.digest)));
      const child = await read;
      if (!child)
        throw registryError("MANIFEST_BLOB_UNKNOWN", {
          message: "index references a manifest unknown to the repository",
          detail: { digest: c.digest },
        });
      if (child.bytes.length !== c.size)
        throw registryError("MANIFEST_INVALID", {
          message: "index gives a manifest a size it does not have",
          detail: { digest: c.digest, size: c.size, actual: child.bytes.length },
        });
    }
    await this.record(repo, { digest, mediaType, bytes }, m);
    if (!refIsDigest) {
      const tagFile = this.layout.tagPath(repo, reference);
      await makeDirs(dirname(tagFile));
      await writeFileAtomic(tagFile, digest);
    }
    return digest;
  }

  /**
   * Records a manifest by digest without the checks of putManifest, linking what it names to the repository:
   * for manifests the server made (Docker conversions) or that a manifest source produced.
   */
  async adoptManifest(repo: string, m: StoredManifest): Promise<void> {
    if (sha256Digest(m.bytes) !== m.digest)
      throw new Error(`adoptManifest: the bytes of ${m.digest} have digest ${sha256Digest(m.bytes)}`);
    if (await exists(this.layout.revisionPath(repo, m.digest))) return;
    let parsed: ReturnType<typeof parseManifest> | undefined;
    try {
      parsed = parseManifest(m.bytes, m.mediaType);
    } catch {
      parsed = undefined; // an unusual type: recorded as it is
    }
    await this.record(repo, m, parsed);
  }

  private async record(
    repo: string,
    m: StoredManifest,
    parsed?: ReturnType<typeof parseManifest>,
  ): Promise<void> {
    if (!(await this.blobs.has(m.digest))) await this.blobs.putBytes(m.bytes);
    for (const b of parsed?.blobs ?? []) if (!b.foreign) await this.layout.linkBlob(repo, b.digest);
    if (parsed?.subject) {
      const dir = this.layout.referrersDir(repo, parsed.subject);
      await makeDirs(dir);
      const d: ReferrerDescriptor = { mediaType: m.mediaType, digest: m.digest, size: m.bytes.length };
      if (parsed.artifactType) d.artifactType = parsed.artifactType;
      if (parsed.annotations) d.annotations = parsed.annotations;
      await writeFileAtomic(join(dir, digestHex(m.digest)), JSON.stringify(d));
    }
    await this.writeRevision(repo, m.digest, m.mediaType);
  }

  private async writeRevision(repo: string, digest: Digest, mediaType: string): Promise<void> {
    const file = this.layout.revisionPath(repo, digest);
    await makeDirs(dirname(file));
    await writeFileAtomic(file, JSON.stringify({ mediaType }));
  }

  /**
   * Deletes by digest (the manifest, every tag pointing at it, its referrer entry) or by tag (the tag only).
   * False when there was nothing to delete.
   */
  async deleteManifest(repo: string, reference: string): Promise<boolean> {
    this.layout.repoDir(repo);
    if (!isDigest(reference)) {
      if (!isValidTag(reference)) return false;
      const file = this.layout.tagPath(repo, reference);
      if (!(await exists(file))) return false;
      await rm(file, { force: true });
      return true;
    }
    const digest = reference;
    const rev = this.layout.revisionPath(repo, digest);
    if (!(await exists(rev))) return false;
    const m = await this.readManifest(repo, digest);
    await rm(rev, { force: true });
    for (const tag of await this.listTags(repo)) {
      const file = this.layout.tagPath(repo, tag);
      const text = await readFile(file, "utf8").catch(() => "");
      if (text.trim() === digest) await rm(file, { force: true });
    }
    if (m) {
      try {
        const subject = parseManifest(m.bytes, m.mediaType).subject;
        if (subject)
          await rm(join(this.layout.referrersDir(repo, subject), digestHex(digest)), { force: true });
      } catch {
        // nothing more to remove
      }
    }
    return true;
  }

  /** Manifests of the repository whose subject is `digest` (optionally only those of one artifact type). */
  async referrers(repo: string, digest: Digest, artifactType?: string): Promise<ReferrerDescriptor[]> {
    const dir = this.layout.referrersDir(repo, digest);
    let names: string[];
    try {
      names = await readdir(dir);
    } catch {
      return [];
    }
    const out: ReferrerDescriptor[] = [];
    for (const name of names.sort()) {
      if (!/^[a-f0-9]{64}$/.test(name)) continue;
      if (!(await exists(this.layout.revisionPath(repo, `sha256:${name}`)))) continue;
      try {
        const d = JSON.parse(await readFile(join(dir, name), "utf8")) as ReferrerDescriptor;
        if (artifactType === undefined || d.artifactType === artifactType) out.push(d);
      } catch {
        // being written or damaged: skipped
      }
    }
    return out;
  }
}
