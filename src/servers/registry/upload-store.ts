// The blob uploads of the registry storage: sessions under root/uploads/<uuid> (info.json, data) that chunks are
// appended to one at a time, with a running sha256 (rebuilt from the data after a restart: sessions are
// resumable), and that become a blob only once their digest is verified. Idle sessions are purged by age.
import { createHash, randomUUID, type Hash } from "node:crypto";
import { createReadStream, createWriteStream } from "node:fs";
import { readdir, readFile, rename, rm, stat, truncate, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { BlobStore } from "../../oci/blob-store.js";
import type { Digest } from "../../oci/digest.js";
import { makeDirs, writeFileAtomic } from "../../util/fs.js";
import { HashingStream } from "../../util/hashing-stream.js";
import { registryError, type RegistryError } from "./errors.js";
import { uploadRange } from "./http-range.js";
import { errno, type StorageLayout } from "./storage-layout.js";

export interface UploadStatus {
  uuid: string;
  repo: string;
  /** Bytes received so far. */
  size: number;
  startedAt: number;
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** Upload sessions open at once (this process's): a few per pusher, so hundreds of pushers at a time. */
export const MAX_OPEN_UPLOADS = 1000;

function uploadUnknown(uuid: string): RegistryError {
  return registryError("BLOB_UPLOAD_UNKNOWN", { detail: { uuid } });
}

export class UploadStore {
  /** Running sha256 of each upload in progress (rebuilt from its data file after a restart). */
  private readonly hashes = new Map<string, { hash: Hash; size: number }>();
  private readonly locks = new Map<string, Promise<unknown>>();

  constructor(
    private readonly layout: StorageLayout,
    private readonly blobs: BlobStore,
  ) {}

  private uploadDir(uuid: string): string {
    if (!UUID_RE.test(uuid)) throw uploadUnknown(uuid);
    return join(this.layout.root, "uploads", uuid);
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

  /**
   * Starts an upload session for the repository. At most MAX_OPEN_UPLOADS at once (each holds a directory and a
   * running hash until it ends or is purged): beyond, 429, as a client that opens sessions and never uses them
   * would otherwise fill the disk's inodes and the memory until --upload-ttl.
   */
  async startUpload(repo: string): Promise<UploadStatus> {
    this.layout.repoDir(repo);
    if (this.hashes.size >= MAX_OPEN_UPLOADS)
      throw registryError("TOOMANYREQUESTS", {
        message: `${MAX_OPEN_UPLOADS} uploads are in progress; finish or cancel some, or try again later`,
        headers: { "Retry-After": "60" },
      });
    const uuid = randomUUID();
    const dir = this.uploadDir(uuid);
    await makeDirs(dir);
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
      const hasher = new HashingStream(state.hash);
      try {
        await pipeline(source, hasher, createWriteStream(file, { flags: "a" }));
        if (opts.length !== undefined && hasher.size !== opts.length)
          throw registryError("SIZE_INVALID", {
            message: "chunk length does not match its Content-Range",
            detail: { expected: opts.length, received: hasher.size },
          });
      } catch (err) {
        // Back to the state before this chunk.
        await truncate(file, st.size).catch(() => undefined);
        this.hashes.set(uuid, { hash: saved, size: st.size });
        throw err;
      }
      state.size = st.size + hasher.size;
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
        await makeDirs(this.blobs.blobDir);
        try {
          await rename(join(dir, "data"), this.blobs.path(digest));
        } catch (err) {
          if (errno(err) !== "EXDEV") throw err;
          await this.blobs.putStream(createReadStream(join(dir, "data")), digest);
        }
      }
      await this.layout.linkBlob(repo, digest);
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
   * Removes sessions idle (nothing started or received) for more than maxAgeMs; returns how many. A chunk being received is waited for, and then keeps its session.
   */
  async purgeUploads(maxAgeMs: number): Promise<number> {
    let names: string[];
    try {
      names = await readdir(join(this.layout.root, "uploads"));
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
}
