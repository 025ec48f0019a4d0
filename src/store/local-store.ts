// A store directory on this machine: /nix/store with Nix's database, a chroot-style ROOT/nix/store with
// ROOT/nix/var/nix/db, or any directory nixoci substitutes into (metadata in its .nixoci sidecar).
// Store paths keep their logical store directory (/nix/store) while the bytes live under `realDir`.
import { constants, existsSync, lstatSync, type Stats } from "node:fs";
import { access, lutimes, readdir, rename } from "node:fs/promises";
import { join, resolve } from "node:path";
import type { Readable } from "node:stream";
import { DEFAULT_STORE_DIR, parseStorePath } from "../nix/store-path.js";
import { isAbandonedTemp, makeDirs, removeTree, tempSibling } from "../util/fs.js";
import { fsError } from "../util/fs-errors.js";
import { NixociError } from "../util/errors.js";
import { holdErrors } from "../util/streams.js";
import { NixDb } from "./nix-db.js";
import { withNixPathLock } from "./nix-path-lock.js";
import type { PathInfo } from "./path-info.js";
import { SidecarDb } from "./sidecar-db.js";
import type { Store } from "./store.js";

export const DEFAULT_NIX_DB = "/nix/var/nix/db/db.sqlite";

/** Where Nix keeps the database for a store directory: /nix/var/nix/db, or ROOT/nix/var/nix/db. */
export function nixDbFor(realDir: string): string | undefined {
  const candidates =
    realDir === DEFAULT_STORE_DIR ? [DEFAULT_NIX_DB] : [join(realDir, "..", "var/nix/db/db.sqlite")];
  return candidates.find((f) => existsSync(f));
}

export class LocalStore implements Store {
  readonly priority = 0;
  readonly realDir: string;
  readonly storeDir: string;
  private readonly nixDb?: NixDb;
  private readonly sidecar: SidecarDb;

  constructor(opts: { dir?: string; storeDir?: string; dbFile?: string | null } = {}) {
    this.realDir = resolve(opts.dir ?? DEFAULT_STORE_DIR);
    this.storeDir = opts.storeDir ?? DEFAULT_STORE_DIR;
    const dbFile = opts.dbFile === null ? undefined : (opts.dbFile ?? nixDbFor(this.realDir));
    if (dbFile) this.nixDb = new NixDb(dbFile);
    this.sidecar = new SidecarDb(this.realDir, this.storeDir);
  }

  get url(): string {
    return this.realDir;
  }

  /** Where a store path's bytes are on disk. */
  realPath(path: string): string {
    return join(this.realDir, parseStorePath(path, this.storeDir).baseName);
  }

  private exists(path: string): boolean {
    return this.lstatOf(path) !== undefined;
  }

  /** The lstat of a store path's bytes on disk; undefined when they cannot be looked at (missing, no access). */
  private lstatOf(path: string): Stats | undefined {
    try {
      return lstatSync(this.realPath(path));
    } catch {
      return undefined;
    }
  }

  /**
   * Which of `paths` are valid here (registered, and on disk), as queryPathInfo would answer, without reading
   * their path infos (the snapshotter asks it of every store path of every layer it is offered), each with its
   * lstat: a store path never changes once valid, so a caller may keep them (the snapshotter's store views show
   * each path's mode, owner and times).
   */
  validPathStats(paths: string[]): Map<string, Stats> {
    for (const p of paths) parseStorePath(p, this.storeDir);
    const inDb = this.nixDb?.validOf(paths) ?? new Set<string>();
    const out = new Map<string, Stats>();
    for (const p of paths) {
      if (!inDb.has(p) && this.sidecar.queryPathInfo(p) === undefined) continue;
      const st = this.lstatOf(p);
      if (st) out.set(p, st);
    }
    return out;
  }

  async queryPathInfo(path: string): Promise<PathInfo | undefined> {
    parseStorePath(path, this.storeDir);
    const info = this.nixDb?.queryPathInfo(path) ?? this.sidecar.queryPathInfo(path);
    return info && this.exists(path) ? info : undefined;
  }

  /** The closure from the database in one query when there is one; undefined means "walk it yourself". */
  closureFast(path: string): string[] | undefined {
    if (!this.nixDb) return undefined;
    const paths = this.nixDb.closure(path);
    return paths.length ? paths : undefined;
  }

  // The NAR writer and verifier are loaded by the methods that use them: a build that finds its layers cached
  // opens the store for path infos only, and loading them is a measurable part of its start-up.
  async narFromPath(info: PathInfo): Promise<Readable> {
    const [{ NarVerifier }, { dumpPath }] = await Promise.all([
      import("./nar-verify.js"),
      import("../nix/nar-writer.js"),
    ]);
    const verifier = new NarVerifier(info.narHash, info.narSize, info.path);
    const source = dumpPath(this.realPath(info.path));
    source.on("error", (err) => verifier.destroy(err));
    // Piping starts the dump now; the caller may await before reading (see Store.narFromPath).
    return holdErrors(source.pipe(verifier));
  }

  /**
   * Adds a path from its NAR: restored under a temporary name, checked to the last byte (the NAR stream
   * fails at its end on a hash or size mismatch), then renamed into place and registered. A crash or bad
   * input at any point leaves no partial path behind.
   */
  async addPath(info: PathInfo, nar: Readable, input = info.path): Promise<void> {
    // `nar` is read only after the awaits below; an error it meets before (a download that is short or not
    // valid compressed data fails as soon as it ends) waits in the stream for the restore to report it.
    holdErrors(nar);
    let wanted: boolean;
    let restoreVerifiedNar: typeof import("./nar-verify.js").restoreVerifiedNar;
    try {
      ({ restoreVerifiedNar } = await import("./nar-verify.js"));
      wanted = !(await this.queryPathInfo(info.path));
      if (wanted) {
        await makeDirs(this.realDir).catch((err) => {
          throw fsError(this.realDir, err, "cannot create the store directory");
        });
        // A store on shared storage that this node mounts read-only: said plainly, before any byte is read (other
        // failures are named by the restore below, as they always were).
        await access(this.realDir, constants.W_OK).catch((err: unknown) => {
          if ((err as NodeJS.ErrnoException).code === "EROFS")
            throw new NixociError(
              this.realDir,
              `cannot add ${info.path}: the store is on a read-only file system`,
            );
        });
      }
    } catch (err) {
      nar.destroy();
      throw err;
    }
    if (!wanted) {
      nar.destroy(); // already valid: release what feeds the NAR (a download, a decompressor)
      return;
    }
    const sp = parseStorePath(info.path, this.storeDir);
    const final = join(this.realDir, sp.baseName);
    // Named by hash part only: a full base name plus a suffix can exceed the 255-byte name limit.
    const tmp = tempSibling(this.realDir, sp.hashPart);
    // Errors name the path being added, not the temporary it is restored under.
    await restoreVerifiedNar(nar, tmp, { input, canonicalize: true, shownAs: final });
    // In a store Nix also writes, under Nix's lock on the path (nix-path-lock.ts): a directory there that is not
    // valid may be Nix writing it, not something abandoned.
    const commit = () => this.commit(tmp, final, info);
    await (this.nixDb ? withNixPathLock(final, commit) : commit()).catch(async (err) => {
      await removeTree(tmp);
      if (err instanceof NixociError) throw err;
      throw fsError(final, err, "cannot add the path to the store");
    });
  }

  private async commit(tmp: string, final: string, info: PathInfo): Promise<void> {
    try {
      await rename(tmp, final);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== "EEXIST" && code !== "ENOTEMPTY") {
        await removeTree(tmp);
        throw err;
      }
      if (await this.queryPathInfo(info.path)) {
        await removeTree(tmp); // another process finished the same path first
        return;
      }
      // Left over from an interrupted run (no metadata): move it out of the way, then take its place.
      const stale = tempSibling(this.realDir, `${parseStorePath(info.path, this.storeDir).hashPart}.stale`);
      await rename(final, stale);
      await removeTree(stale);
      await rename(tmp, final);
    }
    await lutimes(final, 1, 1).catch(() => undefined); // keep the canonical mtime the rename may touch
    if (this.nixDb) this.nixDb.register(info);
    else this.sidecar.register(info);
  }

  /**
   * Removes what killed writers left in the store directory: dot-named temporaries of addPath and the NAR
   * restorer (".<hash>....tmp-<pid>-<random>") whose process is gone. Live writers' temporaries are kept.
   * Daemons call this at startup. Returns the names removed.
   */
  async sweepTemporaries(): Promise<string[]> {
    let names: string[];
    try {
      names = await readdir(this.realDir);
    } catch {
      return [];
    }
    const removed: string[] = [];
    for (const name of names) {
      if (!/^\.+[0-9a-df-np-sv-z]{32}/.test(name) || !isAbandonedTemp(name)) continue;
      await removeTree(join(this.realDir, name));
      removed.push(name);
    }
    return removed;
  }

  close(): void {
    this.nixDb?.close();
  }
}
