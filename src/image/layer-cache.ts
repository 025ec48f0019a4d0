// The layer cache: a content-addressed blob store plus an index from a layer's identity (its inputs: the
// sorted store paths with their NarHashes, the tar format version, compression and level) to the blob built
// from them. Store paths are immutable, so the same identity always means the same bytes: a layer is built
// once and looked up forever after. Images built from the cache are recorded so `cache gc` can keep what
// recent images use.
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { readdir, readFile, rm, stat, utimes } from "node:fs/promises";
import { homedir } from "node:os";
import { join } from "node:path";
import { BlobStore } from "../oci/blob-store.js";
import { isDigest, type Digest } from "../oci/digest.js";
import { makeDirs, sweepAbandonedTemps, writeFileAtomic } from "../util/fs.js";
import { fsError } from "../util/fs-errors.js";
import type { LayerBlob } from "./layer-builder.js";

export function defaultCacheDir(): string {
  const base = process.env.XDG_CACHE_HOME || join(homedir(), ".cache");
  return join(base, "nixoci");
}

/** A stable identity for a layer's inputs; any change to what goes into the tar or how it is packed changes it. */
export function layerIdentity(inputs: Record<string, unknown>): string {
  return createHash("sha256").update(JSON.stringify(inputs)).digest("hex");
}

export interface CachedLayer extends LayerBlob {
  paths: string[];
  /** Ownership rules changed some of its headers (permissions.ts): its bytes are not the store's tar. */
  rewritten?: boolean;
}

export class LayerCache {
  readonly blobs: BlobStore;

  constructor(readonly dir: string) {
    this.blobs = new BlobStore(dir);
  }

  private indexFile(identity: string): string {
    return join(this.dir, "layers", `${identity}.json`);
  }

  /**
   * Removes what killed writers left in the cache (half-written blobs, index entries, image records and the
   * encoders' memoized versions (tools/, util/tool-versions.ts) under their temporary names; a live writer's
   * stay). Returns the paths removed, relative to the cache directory.
   */
  async sweepTemporaries(): Promise<string[]> {
    const removed: string[] = [];
    for (const sub of ["blobs/sha256", "layers", "images", "tools"])
      for (const name of await sweepAbandonedTemps(join(this.dir, sub))) removed.push(`${sub}/${name}`);
    return removed;
  }

  /** The cached layer for an identity, if its blob is still there with the recorded size. */
  async lookup(identity: string): Promise<CachedLayer | undefined> {
    // Synchronous: a record is a few hundred bytes, and a rebuild looks up a hundred of them before anything else
    // can start; five thread-pool round trips each cost more than the reads themselves.
    let entry: CachedLayer;
    try {
      entry = JSON.parse(readFileSync(this.indexFile(identity), "utf8")) as CachedLayer;
    } catch {
      return undefined;
    }
    if (!isDigest(entry.digest) || !isDigest(entry.diffId)) return undefined;
    const size = this.blobs.sizeSync(entry.digest);
    return size === entry.size ? entry : undefined;
  }

  async record(identity: string, layer: CachedLayer): Promise<void> {
    const file = this.indexFile(identity);
    try {
      await makeDirs(join(this.dir, "layers"));
      await writeFileAtomic(file, JSON.stringify(layer) + "\n");
    } catch (err) {
      throw fsError(file, err, "cannot record the layer");
    }
  }

  /** Remembers which blobs an image uses; the file's mtime is the image's last use. */
  async recordImage(manifest: Digest, blobs: Digest[]): Promise<void> {
    const dir = join(this.dir, "images");
    const file = join(dir, `${manifest.slice(7)}.json`);
    try {
      await makeDirs(dir);
      await writeFileAtomic(file, JSON.stringify({ manifest, blobs }) + "\n");
      const now = new Date();
      await utimes(file, now, now);
    } catch (err) {
      throw fsError(file, err, "cannot record the image");
    }
  }

  /**
   * Keeps the blobs of the `keepImages` most recently built images (and of any built within `keepDays`),
   * removes every other blob, and drops index entries whose blob is gone.
   */
  async gc(opts: {
    keepImages: number;
    keepDays: number;
  }): Promise<{ keptImages: number; removedImages: number; removedBlobs: number; freedBytes: number }> {
    const imagesDir = join(this.dir, "images");
    const images: { file: string; mtime: number; blobs: string[] }[] = [];
    for (const name of await readdir(imagesDir).catch(() => [] as string[])) {
      if (!name.endsWith(".json")) continue;
      const file = join(imagesDir, name);
      try {
        const [st, text] = await Promise.all([stat(file), readFile(file, "utf8")]);
        const rec = JSON.parse(text) as { manifest: string; blobs: string[] };
        images.push({ file, mtime: st.mtimeMs, blobs: [rec.manifest, ...rec.blobs] });
      } catch {
        /* a corrupt record protects nothing */
      }
    }
    images.sort((a, b) => b.mtime - a.mtime || (a.file < b.file ? -1 : 1));
    const cutoff = Date.now() - opts.keepDays * 86_400_000;
    const kept = images.filter((img, i) => i < opts.keepImages || img.mtime >= cutoff);
    const keep = new Set(kept.flatMap((img) => img.blobs));
    let removedBlobs = 0;
    let freedBytes = 0;
    for (const hex of await readdir(this.blobs.blobDir).catch(() => [] as string[])) {
      const digest = `sha256:${hex}`;
      if (!isDigest(digest) || keep.has(digest)) continue;
      const file = join(this.blobs.blobDir, hex);
      freedBytes += (await stat(file)).size;
      await rm(file, { force: true });
      removedBlobs++;
    }
    for (const img of images) if (!kept.includes(img)) await rm(img.file, { force: true });
    const layersDir = join(this.dir, "layers");
    for (const name of await readdir(layersDir).catch(() => [] as string[])) {
      const id = name.replace(/\.json$/, "");
      if (!(await this.lookup(id))) await rm(join(layersDir, name), { force: true });
    }
    return { keptImages: kept.length, removedImages: images.length - kept.length, removedBlobs, freedBytes };
  }
}
