// Writes a binary cache directory that Nix itself accepts: nix-cache-info, nar/<FileHash>.nar<ext> and
// <hashpart>.narinfo (signed with the given key). Each NAR is read once: it streams from the source store
// through the compressor into a temporary file while the compressed bytes are hashed; the file is renamed
// to its content address and the narinfo written last, so a reader never sees a narinfo without its NAR.
import { createWriteStream } from "node:fs";
import { readFile, rename, rm, stat } from "node:fs/promises";
import { join, resolve } from "node:path";
import { pipeline } from "node:stream/promises";
import { fileURLToPath } from "node:url";
import { parseCacheInfo, serializeCacheInfo } from "../nix/cache-info.js";
import { Hash } from "../nix/hash.js";
import { nix32Encode } from "../nix/nix32.js";
import { serializeNarInfo, type NarInfo } from "../nix/narinfo.js";
import { pathFingerprint, signFingerprint, type SecretKey } from "../nix/signature.js";
import { parseStorePath } from "../nix/store-path.js";
import { compressStream, compressionExtension, type Compression } from "../util/compression.js";
import { allSettledOrThrow, Limiter } from "../util/concurrency.js";
import { NixociError } from "../util/errors.js";
import { makeDirs, sweepAbandonedTemps, tempSibling, writeFileAtomic } from "../util/fs.js";
import { HashingStream } from "../util/hashing-stream.js";
import { splitCacheUrl } from "./cache-transport.js";
import { referencesFirst } from "./closure.js";
import type { PathInfo } from "./path-info.js";
import type { Store } from "./store.js";

export interface CacheWriterOptions {
  compression: Compression;
  signKey?: SecretKey;
  parallelism?: number;
  onEvent?: (e: { type: "skipped" | "pushed"; path: string; fileSize?: number }) => void;
}

export class BinaryCacheWriter {
  readonly dir: string;

  constructor(
    readonly url: string,
    private readonly storeDir: string,
    private readonly opts: CacheWriterOptions,
  ) {
    if (!url.startsWith("file://")) throw new NixociError(url, "can only write to file:// binary caches");
    // Nix's ?compression= and ?secret-key= are refused, not dropped (a dropped secret-key is an unsigned cache).
    splitCacheUrl(url, [], "give --compression and --sign-key instead");
    try {
      this.dir = resolve(fileURLToPath(url));
    } catch {
      throw new NixociError(url, "malformed file:// URL");
    }
  }

  private async init(): Promise<void> {
    await makeDirs(join(this.dir, "nar"));
    // What killed pushes left: NARs and narinfos under temporary names (their writers' pids are gone).
    await sweepAbandonedTemps(join(this.dir, "nar"));
    await sweepAbandonedTemps(this.dir);
    const infoFile = join(this.dir, "nix-cache-info");
    if (await exists(infoFile)) {
      // A cache of another store directory (/gnu/store...): its readers would take these paths for theirs.
      const info = parseCacheInfo(await readFile(infoFile, "utf8"), infoFile);
      if (info.storeDir !== this.storeDir)
        throw new NixociError(infoFile, `the cache is for store ${info.storeDir}, not ${this.storeDir}`);
    } else {
      await writeFileAtomic(
        infoFile,
        serializeCacheInfo({ storeDir: this.storeDir, wantMassQuery: true, priority: 40 }),
      );
    }
  }

  /** Pushes the given paths (normally a whole closure) from `source`, references first; skips present ones. */
  async push(
    source: Store,
    infos: ReadonlyMap<string, PathInfo>,
  ): Promise<{ pushed: string[]; skipped: string[] }> {
    await this.init();
    const limiter = new Limiter(this.opts.parallelism ?? 2);
    const pushed: string[] = [];
    const skipped: string[] = [];
    const done = new Map<string, Promise<void>>();
    const ordered = referencesFirst(infos);
    const pushOne = (info: PathInfo): Promise<void> => {
      let p = done.get(info.path);
      if (!p) {
        const refs = info.references.filter((r) => r !== info.path && infos.has(r));
        p = Promise.all(refs.map((r) => pushOne(infos.get(r)!))).then(() =>
          limiter.run(async () => {
            if (await this.has(info.path)) {
              skipped.push(info.path);
              this.opts.onEvent?.({ type: "skipped", path: info.path });
              return;
            }
            const fileSize = await this.write(source, info);
            pushed.push(info.path);
            this.opts.onEvent?.({ type: "pushed", path: info.path, fileSize });
          }),
        );
        done.set(info.path, p);
      }
      return p;
    };
    await allSettledOrThrow(ordered.map(pushOne));
    return { pushed: pushed.sort(), skipped: skipped.sort() };
  }

  private narInfoFile(path: string): string {
    return join(this.dir, `${parseStorePath(path, this.storeDir).hashPart}.narinfo`);
  }

  private has(path: string): Promise<boolean> {
    return exists(this.narInfoFile(path));
  }

  /** Writes one path's NAR and narinfo; returns the compressed size. */
  private async write(source: Store, info: PathInfo): Promise<number> {
    const { compression } = this.opts;
    const narDir = join(this.dir, "nar");
    const tmp = tempSibling(narDir, "upload");
    const measure = new HashingStream();
    try {
      await pipeline(
        await source.narFromPath(info),
        compressStream(compression),
        measure,
        createWriteStream(tmp, { flags: "wx" }),
      );
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
    const fileHash = new Hash("sha256", measure.hasher.digest());
    const narName = `nar/${nix32Encode(fileHash.digest)}.nar${compressionExtension(compression)}`;
    await rename(tmp, join(this.dir, narName));

    const sigs = [...info.sigs];
    if (this.opts.signKey) {
      const sig = signFingerprint(
        this.opts.signKey,
        pathFingerprint(info.path, info.narHash, info.narSize, info.references),
      );
      if (!sigs.includes(sig)) sigs.push(sig);
    }
    const narInfo: NarInfo = {
      storePath: info.path,
      url: narName,
      compression,
      fileHash,
      fileSize: measure.size,
      narHash: info.narHash,
      narSize: info.narSize,
      references: info.references.map((r) => parseStorePath(r, this.storeDir).baseName),
      sigs,
    };
    if (info.deriver) narInfo.deriver = parseStorePath(info.deriver, this.storeDir).baseName;
    if (info.ca) narInfo.ca = info.ca;
    await writeFileAtomic(this.narInfoFile(info.path), serializeNarInfo(narInfo));
    return measure.size;
  }
}

async function exists(file: string): Promise<boolean> {
  try {
    await stat(file);
    return true;
  } catch {
    return false;
  }
}
