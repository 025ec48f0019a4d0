// Filesystem storage of the registry, in the shape docker-registry uses (content-addressed blobs, and per
// repository links to them), under one root:
//
//   root/blobs/sha256/<hex>                                   every blob and manifest (a BlobStore: the same
//                                                             directory as nixoci's layer cache, so images built
//                                                             with --cache-dir ROOT have their blobs here already)
//   root/repositories/<name>/_layers/sha256/<hex>             empty file: the blob is visible in this repository
//   root/repositories/<name>/_manifests/revisions/sha256/<hex> {"mediaType"}: the manifest is in the repository
//   root/repositories/<name>/_manifests/tags/<tag>            the digest the tag points to
//   root/repositories/<name>/_referrers/sha256/<subject hex>/<hex>  the descriptor of a manifest naming it as subject
//   root/uploads/<uuid>/{info.json,data}                      blob uploads in progress
//   root/nix-images, root/layers, root/images                 on-demand images (nix-images.ts) and the layer
//                                                             cache's index (image/layer-cache.ts)
//
// Repository name components never start with "_" or ".", so the internal directories cannot collide with
// names; every name, tag and digest is validated before it becomes a path. Small files are written under a
// temporary name and renamed; uploads become blobs only after their digest is verified (rename into
// blobs/sha256, which is atomic and idempotent: identical concurrent pushes are harmless).
//
// Blob visibility is per repository (as in docker-registry): a blob is served from a repository once it was
// uploaded or mounted there, or a manifest stored there names it. Manifests may name any blob of the blob store
// (putManifest checks the blob store, not the repository), so images built into the shared layer cache can be
// recorded without copying anything.
//
// Upkeep (startMaintenance, run by `nixoci serve`): at start, the temporaries of writers that were killed
// (".<name>.tmp-<pid>-<random>" whose pid is gone: a SIGKILLed build or push) are removed from every
// directory above; upload sessions idle longer than the TTL (default 1 h) are removed at start and then every
// quarter of the TTL. Sessions are resumable across restarts (the spec's chunked uploads), so they go by age,
// not by restart.
import { createHash, randomUUID, type Hash } from "node:crypto";
import { createReadStream, createWriteStream } from "node:fs";
import { mkdir, readdir, readFile, rename, rm, stat, truncate, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { Transform, type Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { BlobStore } from "../oci/blob-store.js";
import type { Descriptor } from "../oci/descriptor.js";
import { digestHex, isDigest, sha256Digest, type Digest } from "../oci/digest.js";
import { isAbandonedTemp, removeTree, writeFileAtomic } from "../util/fs.js";
import { compareTags, isValidName, isValidTag } from "../oci/reference.js";
import { registryError, type RegistryError } from "./errors.js";
import { uploadRange } from "./http-range.js";
import type { StoredManifest } from "./manifest-source.js";
import { MANIFEST_MEDIA_TYPES, MAX_MANIFEST_SIZE, parseManifest } from "./manifests.js";

export interface UploadStatus {
  uuid: string;
  repo: string;
  /** Bytes received so far. */
  size: number;
  startedAt: number;
}

/** A referrer as the referrers API lists it. */
export interface ReferrerDescriptor extends Descriptor {
  artifactType?: string;
}

export interface RegistryStorageOptions {
  /** Upload sessions idle (no bytes received) longer than this are removed by the upkeep (default 1 h). */
  uploadTtlMs?: number;
}

/** What one upkeep pass removed (relative to the storage root), or why it failed. */
export interface MaintenanceReport {
  /** Temporaries of writers that no longer run (the first pass only). */
  temporaries: string[];
  /** Upload sessions idle longer than the TTL. */
  uploads: number;
  error?: string;
}

export const DEFAULT_UPLOAD_TTL_MS = 3600_000;
/** The directories of the storage root that writers put temporaries in (walked recursively by the sweep). */
const WRITTEN_DIRS = ["blobs", "repositories", "uploads", "nix-images", "layers", "images"];

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

function errno(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException)?.code;
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

function uploadUnknown(uuid: string): RegistryError {
  return registryError("BLOB_UPLOAD_UNKNOWN", { detail: { uuid } });
}

export class RegistryStorage {
  readonly root: string;
  readonly blobs: BlobStore;
  /** Running sha256 of each upload in progress (rebuilt from its data file after a restart). */
  private readonly hashes = new Map<string, { hash: Hash; size: number }>();
  private readonly locks = new Map<string, Promise<unknown>>();
  readonly uploadTtlMs: number;
  private upkeep?: NodeJS.Timeout;

  constructor(root: string, opts: RegistryStorageOptions = {}) {
    this.root = root;
    this.blobs = new BlobStore(root);
    this.uploadTtlMs = opts.uploadTtlMs ?? DEFAULT_UPLOAD_TTL_MS;
    if (!(this.uploadTtlMs > 0))
      throw new Error(`RegistryStorage: uploadTtlMs must be positive, got ${opts.uploadTtlMs}`);
  }

  // ---- paths (every argument validated first) ----

  private repoDir(repo: string): string {
    if (!isValidName(repo)) throw registryError("NAME_INVALID", { detail: { name: repo } });
    return join(this.root, "repositories", ...repo.split("/"));
  }

  private revisionPath(repo: string, digest: Digest): string {
    return join(this.repoDir(repo), "_manifests", "revisions", "sha256", digestHex(digest));
  }

  private tagPath(repo: string, tag: string): string {
    if (!isValidTag(tag))
      throw registryError("MANIFEST_INVALID", { message: "invalid tag", detail: { tag } });
    return join(this.repoDir(repo), "_manifests", "tags", tag);
  }

  private layerLink(repo: string, digest: Digest): string {
    return join(this.repoDir(repo), "_layers", "sha256", digestHex(digest));
  }

  private referrersDir(repo: string, subject: Digest): string {
    return join(this.repoDir(repo), "_referrers", "sha256", digestHex(subject));
  }

  private uploadDir(uuid: string): string {
    if (!UUID_RE.test(uuid)) throw uploadUnknown(uuid);
    return join(this.root, "uploads", uuid);
  }

  /** Runs `f` after every earlier call for the same key (uploads are appended to one at a time). */
  private async serial<T>(key: string, f: () => Promise<T>): Promise<T> {
    const prev = this.locks.get(key) ?? Promise.resolve();
    const run = prev.then(f, f);
    const tail = run.catch(() => undefined);
    this.locks.set(key, tail);
    try {
      return await run;
    } finally {
      if (this.locks.get(key) === tail) this.locks.delete(key);
    }
  }

  // ---- repositories ----

  async hasRepository(repo: string): Promise<boolean> {
    const dir = this.repoDir(repo);
    return (await exists(join(dir, "_manifests"))) || (await exists(join(dir, "_layers")));
  }

  /** Every repository name, sorted (compareTags: the order the catalog pages in). */
  async listRepositories(): Promise<string[]> {
    const out: string[] = [];
    const walk = async (dir: string, prefix: string): Promise<void> => {
      let entries;
      try {
        entries = await readdir(dir, { withFileTypes: true });
      } catch {
        return;
      }
      const names = new Set(entries.map((e) => e.name));
      if (prefix && (names.has("_manifests") || names.has("_layers"))) out.push(prefix);
      for (const e of entries) {
        if (!e.isDirectory() || e.name.startsWith("_") || e.name.startsWith(".")) continue;
        const name = prefix ? `${prefix}/${e.name}` : e.name;
        if (isValidName(name)) await walk(join(dir, e.name), name);
      }
    };
    await walk(join(this.root, "repositories"), "");
    return out.sort(compareTags);
  }

  /** The repository's tags in the spec's order (compareTags: case-insensitive, then by code units). */
  async listTags(repo: string): Promise<string[]> {
    const dir = join(this.repoDir(repo), "_manifests", "tags");
    let names: string[];
    try {
      names = await readdir(dir);
    } catch {
      return [];
    }
    return names.filter(isValidTag).sort(compareTags);
  }

  // ---- blobs ----

  async linkBlob(repo: string, digest: Digest): Promise<void> {
    const link = this.layerLink(repo, digest);
    try {
      await writeFile(link, "", { flag: "a" });
    } catch (err) {
      if (errno(err) !== "ENOENT") throw err;
      await mkdir(dirname(link), { recursive: true });
      await writeFile(link, "", { flag: "a" });
    }
  }

  async blobLinked(repo: string, digest: Digest): Promise<boolean> {
    return exists(this.layerLink(repo, digest));
  }

  /** Removes the blob from the repository (the blob store keeps it: other repositories and the layer cache share it). */
  async unlinkBlob(repo: string, digest: Digest): Promise<boolean> {
    const link = this.layerLink(repo, digest);
    if (!(await exists(link))) return false;
    await rm(link, { force: true });
    return true;
  }

  /** Size of a blob visible in the repository, or undefined. */
  async blobSize(repo: string, digest: Digest): Promise<number | undefined> {
    if (!(await this.blobLinked(repo, digest))) return undefined;
    return this.blobs.size(digest);
  }

  /** Cross-repository mount: true (and linked) when `from` has the blob. */
  async mountBlob(repo: string, digest: Digest, from: string): Promise<boolean> {
    if (!(await this.blobLinked(from, digest)) || !(await this.blobs.has(digest))) return false;
    await this.linkBlob(repo, digest);
    return true;
  }

  // ---- manifests ----

  /** A manifest by tag or digest (undefined when the repository does not have it). */
  async getManifest(repo: string, reference: string): Promise<StoredManifest | undefined> {
    this.repoDir(repo);
    let digest: Digest;
    if (isDigest(reference)) digest = reference;
    else {
      if (!isValidTag(reference)) return undefined;
      let text: string;
      try {
        text = (await readFile(this.tagPath(repo, reference), "utf8")).trim();
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
      const rec = JSON.parse(await readFile(this.revisionPath(repo, digest), "utf8")) as {
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
   * otherwise, as docker-registry answers), with the sizes it says; then records it,
   * links its blobs to the repository and points the tag at it (atomically, last).
   */
  async putManifest(repo: string, reference: string, bytes: Buffer, mediaType: string): Promise<Digest> {
    this.repoDir(repo);
    const refIsDigest = isDigest(reference);
    if (!refIsDigest) this.tagPath(repo, reference);
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
    for (const c of m.manifests) {
      // A child must be a manifest of this repository: a blob that is not one (a config, a layer) would be
      // served as a manifest once the index named it.
      const child = await this.readManifest(repo, c.digest);
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
      const tagFile = this.tagPath(repo, reference);
      await mkdir(dirname(tagFile), { recursive: true });
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
    if (await exists(this.revisionPath(repo, m.digest))) return;
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
    for (const b of parsed?.blobs ?? []) if (!b.foreign) await this.linkBlob(repo, b.digest);
    if (parsed?.subject) {
      const dir = this.referrersDir(repo, parsed.subject);
      await mkdir(dir, { recursive: true });
      const d: ReferrerDescriptor = { mediaType: m.mediaType, digest: m.digest, size: m.bytes.length };
      if (parsed.artifactType) d.artifactType = parsed.artifactType;
      if (parsed.annotations) d.annotations = parsed.annotations;
      await writeFileAtomic(join(dir, digestHex(m.digest)), JSON.stringify(d));
    }
    await this.writeRevision(repo, m.digest, m.mediaType);
  }

  private async writeRevision(repo: string, digest: Digest, mediaType: string): Promise<void> {
    const file = this.revisionPath(repo, digest);
    await mkdir(dirname(file), { recursive: true });
    await writeFileAtomic(file, JSON.stringify({ mediaType }));
  }

  /**
   * Deletes by digest (the manifest, every tag pointing at it, its referrer entry) or by tag (the tag only).
   * False when there was nothing to delete.
   */
  async deleteManifest(repo: string, reference: string): Promise<boolean> {
    this.repoDir(repo);
    if (!isDigest(reference)) {
      if (!isValidTag(reference)) return false;
      const file = this.tagPath(repo, reference);
      if (!(await exists(file))) return false;
      await rm(file, { force: true });
      return true;
    }
    const digest = reference;
    const rev = this.revisionPath(repo, digest);
    if (!(await exists(rev))) return false;
    const m = await this.readManifest(repo, digest);
    await rm(rev, { force: true });
    for (const tag of await this.listTags(repo)) {
      const file = this.tagPath(repo, tag);
      const text = await readFile(file, "utf8").catch(() => "");
      if (text.trim() === digest) await rm(file, { force: true });
    }
    if (m) {
      try {
        const subject = parseManifest(m.bytes, m.mediaType).subject;
        if (subject) await rm(join(this.referrersDir(repo, subject), digestHex(digest)), { force: true });
      } catch {
        // nothing more to remove
      }
    }
    return true;
  }

  /** Manifests of the repository whose subject is `digest` (optionally only those of one artifact type). */
  async referrers(repo: string, digest: Digest, artifactType?: string): Promise<ReferrerDescriptor[]> {
    const dir = this.referrersDir(repo, digest);
    let names: string[];
    try {
      names = await readdir(dir);
    } catch {
      return [];
    }
    const out: ReferrerDescriptor[] = [];
    for (const name of names.sort()) {
      if (!/^[a-f0-9]{64}$/.test(name)) continue;
      if (!(await exists(this.revisionPath(repo, `sha256:${name}`)))) continue;
      try {
        const d = JSON.parse(await readFile(join(dir, name), "utf8")) as ReferrerDescriptor;
        if (artifactType === undefined || d.artifactType === artifactType) out.push(d);
      } catch {
        // being written or damaged: skipped
      }
    }
    return out;
  }

  // ---- uploads ----

  /** Starts an upload session for the repository. */
  async startUpload(repo: string): Promise<UploadStatus> {
    this.repoDir(repo);
    const uuid = randomUUID();
    const dir = this.uploadDir(uuid);
    await mkdir(dir, { recursive: true });
    const startedAt = Date.now();
    await writeFile(join(dir, "data"), "", { flag: "wx" });
    await writeFileAtomic(join(dir, "info.json"), JSON.stringify({ repo, startedAt }));
    this.hashes.set(uuid, { hash: createHash("sha256"), size: 0 });
    return { uuid, repo, size: 0, startedAt };
  }

  /** The session's state; throws 404 BLOB_UPLOAD_UNKNOWN when there is none for this repository. */
  async uploadStatus(repo: string, uuid: string): Promise<UploadStatus> {
    const dir = this.uploadDir(uuid);
    let info: { repo?: unknown; startedAt?: unknown };
    let size: number;
    try {
      info = JSON.parse(await readFile(join(dir, "info.json"), "utf8")) as typeof info;
      size = (await stat(join(dir, "data"))).size;
    } catch {
      throw uploadUnknown(uuid);
    }
    if (info.repo !== repo) throw uploadUnknown(uuid);
    return { uuid, repo, size, startedAt: typeof info.startedAt === "number" ? info.startedAt : 0 };
  }

  /** The running hash at `size` bytes, rebuilt from the data file when this process has none. */
  private async hashAt(uuid: string, size: number): Promise<{ hash: Hash; size: number }> {
    const have = this.hashes.get(uuid);
    if (have && have.size === size) return have;
    const hash = createHash("sha256");
    if (size === 0) {
      const empty = { hash, size: 0 };
      this.hashes.set(uuid, empty);
      return empty;
    }
    let n = 0;
    await pipeline(createReadStream(join(this.uploadDir(uuid), "data"), { end: size - 1 }), async (src) => {
      for await (const c of src as AsyncIterable<Buffer>) {
        hash.update(c);
        n += c.length;
      }
    });
    const state = { hash, size: n };
    this.hashes.set(uuid, state);
    return state;
  }

  /**
   * Appends a chunk (streamed). `offset`, when given (Content-Range), must be the current size: else 416.
   * A chunk that fails midway (the client went away) is cut off again, so the session stays consistent.
   * Returns the new size.
   */
  async appendUpload(
    repo: string,
    uuid: string,
    source: Readable,
    opts: { offset?: number; length?: number } = {},
  ): Promise<UploadStatus> {
    return this.serial(uuid, async () => {
      const st = await this.uploadStatus(repo, uuid);
      if (opts.offset !== undefined && opts.offset !== st.size)
        throw registryError("BLOB_UPLOAD_INVALID", {
          message: "chunk out of order: its range does not start at the end of the upload",
          detail: { offset: opts.offset, size: st.size },
          headers: { Range: uploadRange(st.size) },
        });
      const state = await this.hashAt(uuid, st.size);
      const saved = state.hash.copy();
      const file = join(this.uploadDir(uuid), "data");
      let written = 0;
      const hasher = new Transform({
        transform(chunk: Buffer, _enc, done) {
          state.hash.update(chunk);
          written += chunk.length;
          done(null, chunk);
        },
      });
      try {
        await pipeline(source, hasher, createWriteStream(file, { flags: "a" }));
        if (opts.length !== undefined && written !== opts.length)
          throw registryError("SIZE_INVALID", {
            message: "chunk length does not match its Content-Range",
            detail: { expected: opts.length, received: written },
          });
      } catch (err) {
        // Back to the state before this chunk.
        await truncate(file, st.size).catch(() => undefined);
        this.hashes.set(uuid, { hash: saved, size: st.size });
        throw err;
      }
      state.size = st.size + written;
      return { ...st, size: state.size };
    });
  }

  /**
   * Verifies the upload against `expected` and moves it into the blob store (linked to the repository). On a
   * mismatch the session is removed and 400 DIGEST_INVALID thrown: nothing becomes visible.
   */
  async finishUpload(
    repo: string,
    uuid: string,
    expected: Digest,
  ): Promise<{ digest: Digest; size: number }> {
    return this.serial(uuid, async () => {
      const st = await this.uploadStatus(repo, uuid);
      const state = await this.hashAt(uuid, st.size);
      const digest: Digest = `sha256:${state.hash.copy().digest("hex")}`;
      const dir = this.uploadDir(uuid);
      if (digest !== expected) {
        await this.removeUpload(uuid);
        throw registryError("DIGEST_INVALID", {
          message: "provided digest did not match uploaded content",
          detail: { expected, digest, size: st.size },
        });
      }
      if (!(await this.blobs.has(digest))) {
        await mkdir(this.blobs.blobDir, { recursive: true });
        try {
          await rename(join(dir, "data"), this.blobs.path(digest));
        } catch (err) {
          if (errno(err) !== "EXDEV") throw err;
          await this.blobs.putStream(createReadStream(join(dir, "data")), digest);
        }
      }
      await this.linkBlob(repo, digest);
      await this.removeUpload(uuid);
      return { digest, size: st.size };
    });
  }

  /** Cancels a session (false when there was none for this repository). */
  async cancelUpload(repo: string, uuid: string): Promise<boolean> {
    return this.serial(uuid, async () => {
      try {
        await this.uploadStatus(repo, uuid);
      } catch {
        return false;
      }
      await this.removeUpload(uuid);
      return true;
    });
  }

  private async removeUpload(uuid: string): Promise<void> {
    this.hashes.delete(uuid);
    await rm(this.uploadDir(uuid), { recursive: true, force: true });
  }

  /** When the session last changed (its start, or the last bytes received); 0 when unknown. */
  private async uploadTouched(uuid: string): Promise<number> {
    const dir = this.uploadDir(uuid);
    let started: number;
    try {
      const info = JSON.parse(await readFile(join(dir, "info.json"), "utf8")) as { startedAt?: unknown };
      started = typeof info.startedAt === "number" ? info.startedAt : 0;
    } catch {
      started = (await stat(dir).catch(() => undefined))?.mtimeMs ?? 0;
    }
    const touched = (await stat(join(dir, "data")).catch(() => undefined))?.mtimeMs ?? 0;
    return Math.max(started, touched);
  }

  /**
   * Removes sessions idle (nothing started or received) for more than maxAgeMs (default: the storage's upload
   * TTL); returns how many. A chunk being received is waited for, and then keeps its session.
   */
  async purgeUploads(maxAgeMs: number = this.uploadTtlMs): Promise<number> {
    let names: string[];
    try {
      names = await readdir(join(this.root, "uploads"));
    } catch {
      return 0;
    }
    let n = 0;
    for (const uuid of names) {
      if (!UUID_RE.test(uuid)) continue;
      if (Date.now() - (await this.uploadTouched(uuid)) <= maxAgeMs) continue;
      const removed = await this.serial(uuid, async () => {
        if (Date.now() - (await this.uploadTouched(uuid)) <= maxAgeMs) return false;
        await this.removeUpload(uuid);
        return true;
      });
      if (removed) n++;
    }
    return n;
  }

  /**
   * Removes the temporaries (".<name>.tmp-<pid>-<random>", files or trees) that writers which no longer run
   * left anywhere in the storage: a killed build's half-written layer in blobs/sha256, a killed push's
   * info.json or tag being replaced. A live process's temporaries are kept (this process's and other ones',
   * say a `nixoci build --cache-dir` writing into the same blob store). Returns the paths removed, relative
   * to the root.
   */
  async sweepTemporaries(): Promise<string[]> {
    const removed: string[] = [];
    const walk = async (dir: string, rel: string): Promise<void> => {
      let entries;
      try {
        entries = await readdir(dir, { withFileTypes: true });
      } catch {
        return; // not there (yet), or gone meanwhile
      }
      for (const e of entries) {
        const path = join(dir, e.name);
        const relPath = `${rel}/${e.name}`;
        if (isAbandonedTemp(e.name)) {
          await removeTree(path).then(
            () => removed.push(relPath),
            () => undefined, // removed meanwhile, or not ours to remove: left as it is
          );
        } else if (e.isDirectory()) await walk(path, relPath);
      }
    };
    for (const d of WRITTEN_DIRS) await walk(join(this.root, d), d);
    return removed;
  }

  /**
   * Starts the upkeep (see the file comment): sweeps temporaries and purges idle upload sessions now, then
   * purges every quarter of the upload TTL (at least every second, at most every 15 minutes). The timer does
   * not keep the process alive; stopMaintenance() ends it. `onReport` hears of the first pass, and of every
   * later one that removed something or failed.
   */
  startMaintenance(onReport?: (r: MaintenanceReport) => void): void {
    if (this.upkeep) return;
    const pass = async (first: boolean): Promise<void> => {
      const r: MaintenanceReport = { temporaries: [], uploads: 0 };
      try {
        if (first) r.temporaries = await this.sweepTemporaries();
        r.uploads = await this.purgeUploads();
      } catch (err) {
        r.error = err instanceof Error ? err.message : String(err);
      }
      if (first || r.error !== undefined || r.temporaries.length > 0 || r.uploads > 0) {
        try {
          onReport?.(r);
        } catch {
          // a failing observer must not stop the upkeep
        }
      }
    };
    let running = pass(true);
    const every = Math.min(Math.max(this.uploadTtlMs / 4, 1000), 15 * 60_000);
    this.upkeep = setInterval(() => {
      running = running.then(() => pass(false));
    }, every);
    this.upkeep.unref();
  }

  stopMaintenance(): void {
    clearInterval(this.upkeep);
    this.upkeep = undefined;
  }
}
