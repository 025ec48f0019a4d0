// Nix's store database (db.sqlite, schema 10), through better-sqlite3. Reads use a read-only handle: SQLite's
// WAL gives consistent snapshots without Nix's locks. (A user who may not write beside the database reads a copy
// of it in memory while no Nix process has it open: such a handle cannot create the WAL's index; so does anyone
// reading a store on a read-only filesystem, e.g. shared storage several nodes mount read-only.) Registering
// substituted paths (so Nix itself sees them as valid) opens a second, writable handle only when needed and writes
// rows the way Nix does.
import Database from "better-sqlite3";
import { existsSync, readFileSync, statSync } from "node:fs";
import { basename, dirname } from "node:path";
import { parseHash } from "../nix/hash.js";
import { NixociError } from "../util/errors.js";
import type { PathInfo } from "./path-info.js";

interface ValidPathRow {
  id: number;
  path: string;
  hash: string;
  registrationTime: number;
  deriver: string | null;
  narSize: number | null;
  ultimate: number | null;
  sigs: string | null;
  ca: string | null;
}

/** The read statements, prepared on one read handle. */
interface Reader {
  db: Database.Database;
  byPath: Database.Statement<[string], ValidPathRow>;
  validOf: Database.Statement<[string], { path: string }>;
  refs: Database.Statement<[number], { path: string }>;
  closureOf: Database.Statement<[string], { path: string }>;
  /** For a copy in memory (see snapshot): the database file as it was copied, to notice a change. */
  copied?: FileState;
  /** When the copy was taken (Date.now()). */
  copiedAt?: number;
}

interface FileState {
  /** The filesystem too: a store on shared storage that was unmounted and mounted again (another image). */
  dev: number;
  ino: number;
  size: number;
  mtimeMs: number;
  /** Any write or utimes sets it (a new filesystem may reuse the device number and give the file the same inode). */
  ctimeMs: number;
}

const fileState = (file: string): FileState | undefined => {
  const st = statSync(file, { throwIfNoEntry: false });
  return st && { dev: st.dev, ino: st.ino, size: st.size, mtimeMs: st.mtimeMs, ctimeMs: st.ctimeMs };
};

const sameState = (a: FileState | undefined, b: FileState | undefined): boolean =>
  a !== undefined &&
  b !== undefined &&
  a.dev === b.dev &&
  a.ino === b.ino &&
  a.size === b.size &&
  a.mtimeMs === b.mtimeMs &&
  a.ctimeMs === b.ctimeMs;

/**
 * How long after the file's last change a copy of it stays suspect: some filesystems keep whole seconds (sshfs:
 * SFTP's times, ctime = mtime), so a write later in the same second may leave the state above as it was. Within this window
 * the copy is taken again on the next query (the "racy" case, as git handles its index).
 */
const COARSE_MTIME_MS = 2000;

/**
 * SQLite's answers when a read-only handle cannot create the WAL's index (db.sqlite-shm) because the directory is
 * not writable: a user other than the store's owner, at a moment no Nix process has the database open (the last
 * one to close it removes the index).
 */
const NO_WAL_INDEX = new Set(["SQLITE_READONLY_DIRECTORY", "SQLITE_CANTOPEN", "SQLITE_READONLY_CANTINIT"]);

/**
 * How long a read handle stays open after its last query. A handle holds descriptors on the database (and its WAL
 * files, when a Nix that did not close cleanly left them), which keep the filesystem busy: a node could not unmount
 * a shared store to pick up a writer's new paths while its snapshotter runs. Reopening costs about a millisecond.
 */
const IDLE_CLOSE_MS = 2000;

export class NixDb {
  /** The read handle; undefined once closed for being idle (reopened by the next query). */
  private reader: Reader | undefined;
  private idle?: NodeJS.Timeout;

  constructor(readonly file: string) {
    // Opened now so that a database that cannot be read fails here, where the store is given.
    this.reader = this.open();
    this.closeWhenIdle();
  }

  /** Closes a read handle IDLE_CLOSE_MS after the last query (the timer never keeps the process alive). */
  private closeWhenIdle(): void {
    if (this.idle) {
      this.idle.refresh();
      return;
    }
    this.idle = setTimeout(() => {
      this.idle = undefined;
      // A copy in memory holds no descriptor, and taking it again would read the whole file: it is kept.
      if (!this.reader || this.reader.copied) return;
      this.reader.db.close();
      this.reader = undefined;
    }, IDLE_CLOSE_MS);
    this.idle.unref();
  }

  /**
   * A read handle on the file; for a user who cannot write beside a database no Nix process has open, a copy of
   * it in memory instead (see snapshot).
   */
  private open(): Reader {
    let db: Database.Database | undefined;
    try {
      db = new Database(this.file, { readonly: true, fileMustExist: true });
      return prepare(db);
    } catch (err) {
      db?.close();
      const code = (err as { code?: unknown }).code;
      if (typeof code === "string" && NO_WAL_INDEX.has(code) && fileState(this.file))
        return this.snapshot(err);
      throw new NixociError(this.file, `cannot open Nix store database: ${(err as Error).message}`);
    }
  }

  /**
   * The database read whole into memory: with no db.sqlite-wal beside it, every committed transaction is in the
   * file itself, so a copy taken while the file does not change (its inode, size and mtime the same before and
   * after, still no WAL) is a consistent snapshot. The copy is marked as a rollback-journal database (header bytes
   * 18 and 19: 1, not WAL's 2), which is what lets SQLite open it in memory. Queries check the file again first
   * (current()): a WAL that appeared means a read handle works now, a changed file means a new copy.
   */
  private snapshot(cause: unknown): Reader {
    for (let attempt = 0; attempt < 5; attempt++) {
      if (existsSync(`${this.file}-wal`)) break;
      const before = fileState(this.file);
      const bytes = readFileSync(this.file);
      if (!sameState(before, fileState(this.file)) || existsSync(`${this.file}-wal`)) continue;
      if (bytes.length >= 20 && bytes[18] === 2 && bytes[19] === 2) bytes[18] = bytes[19] = 1;
      return { ...prepare(new Database(bytes, { readonly: true })), copied: before, copiedAt: Date.now() };
    }
    throw new NixociError(
      this.file,
      `cannot read Nix store database as this user: SQLite needs to create ${basename(this.file)}-shm in ` +
        `${dirname(this.file)}, which this user cannot write, and Nix is writing the database right now; ` +
        `try again (${(cause as Error).message})`,
    );
  }

  /**
   * The current read handle: a copy in memory is replaced when the file changed (or may have: see
   * COARSE_MTIME_MS) or a read handle works again. A copy holds no descriptor on the file, so the filesystem of a
   * read-only store can be unmounted and mounted again under a running reader.
   */
  private current(): Reader {
    this.closeWhenIdle();
    const r = (this.reader ??= this.open());
    if (!r.copied) return r;
    const settled = (r.copiedAt ?? 0) - r.copied.mtimeMs >= COARSE_MTIME_MS;
    if (settled && !existsSync(`${this.file}-wal`) && sameState(r.copied, fileState(this.file))) return r;
    const next = this.open();
    r.db.close();
    this.reader = next;
    return next;
  }

  /**
   * Which of `paths` are registered valid: one query (a statement each cost 4x as much), no path info read.
   */
  validOf(paths: string[]): Set<string> {
    if (!paths.length) return new Set();
    return new Set(
      this.current()
        .validOf.all(JSON.stringify(paths))
        .map((r) => r.path),
    );
  }

  queryPathInfo(path: string): PathInfo | undefined {
    const reader = this.current();
    const row = reader.byPath.get(path);
    if (!row) return undefined;
    const references = reader.refs
      .all(row.id)
      .map((r) => r.path)
      .sort();
    const info: PathInfo = {
      path: row.path,
      narHash: parseHash(row.hash, `${this.file}: ${row.path}`, "sha256"),
      narSize: row.narSize ?? 0,
      references,
      sigs: row.sigs ? row.sigs.split(" ").filter(Boolean) : [],
      registrationTime: row.registrationTime,
    };
    if (row.deriver) info.deriver = row.deriver;
    if (row.ultimate) info.ultimate = true;
    if (row.ca) info.ca = row.ca;
    return info;
  }

  /** All paths reachable from `path` (itself included); empty when `path` is not valid. */
  closure(path: string): string[] {
    return this.current()
      .closureOf.all(path)
      .map((r) => r.path);
  }

  private writable?: Database.Database;

  /**
   * Registers a path whose bytes are already in place, as Nix's registerValidPath does: a ValidPaths row
   * (hash as sha256:<base16>) and one Refs row per reference, self included. References must be valid.
   */
  register(info: PathInfo): void {
    if (!this.writable) {
      try {
        this.writable = new Database(this.file, { fileMustExist: true, timeout: 60_000 });
      } catch (err) {
        throw new NixociError(
          this.file,
          `cannot open Nix store database for writing: ${(err as Error).message}`,
        );
      }
    }
    const db = this.writable;
    const idOf = db.prepare<[string], { id: number }>("select id from ValidPaths where path = ?");
    db.transaction(() => {
      if (idOf.get(info.path)) return;
      const { lastInsertRowid } = db
        .prepare(
          "insert into ValidPaths (path, hash, registrationTime, deriver, narSize, ultimate, sigs, ca) values (?, ?, ?, ?, ?, NULL, ?, ?)",
        )
        .run(
          info.path,
          `sha256:${info.narHash.digest.toString("hex")}`,
          Math.floor(Date.now() / 1000),
          info.deriver ?? null,
          info.narSize,
          info.sigs.length ? info.sigs.join(" ") : null,
          info.ca ?? null,
        );
      const insertRef = db.prepare("insert or ignore into Refs (referrer, reference) values (?, ?)");
      for (const ref of info.references) {
        const id = ref === info.path ? Number(lastInsertRowid) : idOf.get(ref)?.id;
        if (id === undefined)
          throw new NixociError(info.path, `cannot register: reference ${ref} is not valid`);
        insertRef.run(lastInsertRowid, id);
      }
    }).immediate();
  }

  close(): void {
    clearTimeout(this.idle);
    this.idle = undefined;
    this.reader?.db.close();
    this.reader = undefined;
    this.writable?.close();
  }
}

/** The read statements on `db` (preparing the first reads the schema: where a handle that cannot read fails). */
function prepare(db: Database.Database): Reader {
  return {
    db,
    byPath: db.prepare("select * from ValidPaths where path = ?"),
    validOf: db.prepare("select path from ValidPaths where path in (select value from json_each(?))"),
    refs: db.prepare(
      "select v.path as path from Refs r join ValidPaths v on r.reference = v.id where r.referrer = ?",
    ),
    // The closure in one query: SQLite walks the Refs graph itself (UNION drops repeats, so cycles end).
    closureOf: db.prepare(
      `with recursive closure(id) as (
         select id from ValidPaths where path = ?
         union select r.reference from Refs r join closure c on r.referrer = c.id)
       select v.path as path from closure c join ValidPaths v on v.id = c.id`,
    ),
  };
}
