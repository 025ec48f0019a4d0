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
//
// This class is the facade the handlers, the on-demand images and the CLI use: repositories and blob links are
// here; manifests (tags, revisions, referrers) are manifest-store.ts, uploads upload-store.ts, and the paths
// of the tree above storage-layout.ts.
import { readdir, rm } from "node:fs/promises";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { BlobStore } from "../../oci/blob-store.js";
import type { Digest } from "../../oci/digest.js";
import { compareTags, isValidName } from "../../oci/reference.js";
import { isAbandonedTemp, removeTree } from "../../util/fs.js";
import type { StoredManifest } from "./manifest-source.js";
import { ManifestStore, type ReferrerDescriptor } from "./manifest-store.js";
import { exists, StorageLayout } from "./storage-layout.js";
import { UploadStore, type UploadStatus } from "./upload-store.js";

export type { ReferrerDescriptor } from "./manifest-store.js";
export type { UploadStatus } from "./upload-store.js";

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

export class RegistryStorage {
  readonly root: string;
  readonly blobs: BlobStore;
  readonly uploadTtlMs: number;
  private readonly layout: StorageLayout;
  private readonly manifests: ManifestStore;
  private readonly uploads: UploadStore;
  private upkeep?: NodeJS.Timeout;

  constructor(root: string, opts: RegistryStorageOptions = {}) {
    this.root = root;
    this.blobs = new BlobStore(root);
    this.uploadTtlMs = opts.uploadTtlMs ?? DEFAULT_UPLOAD_TTL_MS;
    if (!(this.uploadTtlMs > 0))
      throw new Error(`RegistryStorage: uploadTtlMs must be positive, got ${opts.uploadTtlMs}`);
    this.layout = new StorageLayout(root);
    this.manifests = new ManifestStore(this.layout, this.blobs);
    this.uploads = new UploadStore(this.layout, this.blobs);
  }

  // ---- repositories ----

  async hasRepository(repo: string): Promise<boolean> {
    const dir = this.layout.repoDir(repo);
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
  listTags(repo: string): Promise<string[]> {
    return this.manifests.listTags(repo);
  }

  // ---- blobs ----

  linkBlob(repo: string, digest: Digest): Promise<void> {
    return this.layout.linkBlob(repo, digest);
  }

  async blobLinked(repo: string, digest: Digest): Promise<boolean> {
    return exists(this.layout.layerLink(repo, digest));
  }

  /** Removes the blob from the repository (the blob store keeps it: other repositories and the layer cache share it). */
  async unlinkBlob(repo: string, digest: Digest): Promise<boolean> {
    const link = this.layout.layerLink(repo, digest);
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

  // ---- manifests (manifest-store.ts) ----

  /** A manifest by tag or digest (undefined when the repository does not have it). */
  getManifest(repo: string, reference: string): Promise<StoredManifest | undefined> {
    return this.manifests.getManifest(repo, reference);
  }

  /** Checks and stores a manifest pushed under a tag or its digest (ManifestStore.putManifest). */
  putManifest(repo: string, reference: string, bytes: Buffer, mediaType: string): Promise<Digest> {
    return this.manifests.putManifest(repo, reference, bytes, mediaType);
  }

  /** Records a manifest the server made or a manifest source produced, by digest, without the push checks. */
  adoptManifest(repo: string, m: StoredManifest): Promise<void> {
    return this.manifests.adoptManifest(repo, m);
  }

  /** Deletes by digest (the manifest, its tags, its referrer entry) or by tag; false when nothing was there. */
  deleteManifest(repo: string, reference: string): Promise<boolean> {
    return this.manifests.deleteManifest(repo, reference);
  }

  /** Manifests of the repository whose subject is `digest` (optionally only those of one artifact type). */
  referrers(repo: string, digest: Digest, artifactType?: string): Promise<ReferrerDescriptor[]> {
    return this.manifests.referrers(repo, digest, artifactType);
  }

  // ---- uploads (upload-store.ts) ----

  /** Starts an upload session for the repository. */
  startUpload(repo: string): Promise<UploadStatus> {
    return this.uploads.startUpload(repo);
  }

  /** The session's state; throws 404 BLOB_UPLOAD_UNKNOWN when there is none for this repository. */
  uploadStatus(repo: string, uuid: string): Promise<UploadStatus> {
    return this.uploads.uploadStatus(repo, uuid);
  }

  /** Appends a chunk (streamed; 416 when `offset` is not the current size); returns the new size. */
  appendUpload(
    repo: string,
    uuid: string,
    source: Readable,
    opts: { offset?: number; length?: number } = {},
  ): Promise<UploadStatus> {
    return this.uploads.appendUpload(repo, uuid, source, opts);
  }

  /** Verifies the upload against `expected` and moves it into the blob store (400 DIGEST_INVALID on a mismatch). */
  finishUpload(repo: string, uuid: string, expected: Digest): Promise<{ digest: Digest; size: number }> {
    return this.uploads.finishUpload(repo, uuid, expected);
  }

  /** Cancels a session (false when there was none for this repository). */
  cancelUpload(repo: string, uuid: string): Promise<boolean> {
    return this.uploads.cancelUpload(repo, uuid);
  }

  /**
   * Removes sessions idle (nothing started or received) for more than maxAgeMs (default: the storage's upload
   * TTL); returns how many. A chunk being received is waited for, and then keeps its session.
   */
  purgeUploads(maxAgeMs: number = this.uploadTtlMs): Promise<number> {
    return this.uploads.purgeUploads(maxAgeMs);
  }

  // ---- upkeep ----

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
