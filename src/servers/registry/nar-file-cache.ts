// Compressed NARs the binary cache endpoint has made, kept on disk by content, so a NAR is compressed once and
// then served as a file (a populated binary cache, as Nix's own caches are) instead of spawning a compressor for
// every download: compressing was most of the server's work when many clients fetch the same closure.
//
// A file's name is its content's identity: the NAR's NarHash (nix32), the compression and its level, e.g.
// `<52 chars>.zstd-3`; nothing from a request reaches a name except through those. A file is written under a
// temporary name while the NAR streams to its first client and renamed into place only when the whole NAR went
// through (the endpoint verifies the NAR against its NarHash before its last bytes); a client that leaves early
// leaves nothing. The total size is bounded (least recently served files go first); a size of 0 keeps nothing.
import { createWriteStream, type WriteStream } from "node:fs";
import { open, readdir, rename, rm, stat, type FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { finished } from "node:stream/promises";
import { makeDirs, sweepAbandonedTemps, tempSibling } from "../../util/fs.js";
import { holdErrors } from "../../util/streams.js";

const KEY = /^[0123456789abcdfghijklmnpqrsvwxyz]{52}\.[a-z]+-\d{1,2}$/;

/**
 * A cached NAR file, opened (so evicting it meanwhile cannot cut a download short): read it with
 * `file.createReadStream()`, which closes it, or close it.
 */
export interface CachedNar {
  file: FileHandle;
  size: number;
}

/** A NAR being written: `stream` takes its bytes; then `commit()` (all of it went through) or `abort()`. */
export interface NarFileWriter {
  stream: WriteStream;
  commit(): Promise<void>;
  abort(): Promise<void>;
}

export class NarFileCache {
  private total = 0;
  private ready: Promise<void>;

  constructor(
    readonly dir: string,
    readonly maxBytes: number,
  ) {
    this.ready = this.init();
  }

  /** The key of a NAR compressed with `compression` at `level`. */
  static key(narHashNix32: string, compression: string, level: number): string {
    const key = `${narHashNix32}.${compression}-${level}`;
    if (!KEY.test(key)) throw new Error(`NAR cache: malformed key ${JSON.stringify(key)}`);
    return key;
  }

  private async init(): Promise<void> {
    if (this.maxBytes <= 0) return;
    await makeDirs(this.dir);
    await sweepAbandonedTemps(this.dir);
    for (const name of await readdir(this.dir)) {
      if (!KEY.test(name)) continue;
      this.total += (await stat(join(this.dir, name)).catch(() => ({ size: 0 }))).size;
    }
    await this.evict();
  }

  /** The cached file for `key`, opened and marked as just served; undefined when there is none. */
  async get(key: string): Promise<CachedNar | undefined> {
    if (this.maxBytes <= 0) return undefined;
    await this.ready;
    let file: FileHandle;
    try {
      file = await open(join(this.dir, key), "r");
    } catch {
      return undefined;
    }
    try {
      const { size } = await file.stat();
      const now = new Date();
      await file.utimes(now, now); // recency, for eviction
      return { file, size };
    } catch {
      await file.close();
      return undefined; // unreadable as a cached file: made again
    }
  }

  /** A writer for `key`, or undefined when nothing is kept. */
  async writer(key: string): Promise<NarFileWriter | undefined> {
    if (this.maxBytes <= 0) return undefined;
    await this.ready;
    const temp = tempSibling(this.dir, key);
    const stream = holdErrors(createWriteStream(temp, { flags: "wx" }));
    let done = false;
    const abort = async (): Promise<void> => {
      if (done) return;
      done = true;
      stream.destroy();
      await rm(temp, { force: true });
    };
    const commit = async (): Promise<void> => {
      if (done) return;
      stream.end();
      try {
        await finished(stream);
      } catch {
        await abort();
        return;
      }
      done = true;
      const { size } = await stat(temp);
      await rename(temp, join(this.dir, key));
      this.total += size;
      await this.evict();
    };
    return { stream, commit, abort };
  }

  /** Removes the least recently served files until the total is within the bound. */
  private async evict(): Promise<void> {
    if (this.total <= this.maxBytes) return;
    const files: Array<{ name: string; size: number; used: number }> = [];
    for (const name of await readdir(this.dir)) {
      if (!KEY.test(name)) continue;
      const s = await stat(join(this.dir, name)).catch(() => undefined);
      if (s) files.push({ name, size: s.size, used: s.mtimeMs });
    }
    files.sort((a, b) => a.used - b.used);
    this.total = files.reduce((n, f) => n + f.size, 0);
    for (const f of files) {
      if (this.total <= this.maxBytes) break;
      await rm(join(this.dir, f.name), { force: true });
      this.total -= f.size;
    }
  }
}
