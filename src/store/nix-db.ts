// Nix's store database (db.sqlite, schema 10), through better-sqlite3. Reads use a read-only handle: SQLite's
// WAL gives consistent snapshots without Nix's locks. Registering substituted paths (so Nix itself sees them
// as valid) opens a second, writable handle only when needed and writes rows the way Nix does.
import Database from "better-sqlite3";
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

export class NixDb {
  private readonly db: Database.Database;
  private readonly byPath: Database.Statement<[string], ValidPathRow>;
  private readonly refs: Database.Statement<[number], { path: string }>;
  private readonly closureOf: Database.Statement<[string], { path: string }>;

  constructor(readonly file: string) {
    try {
      this.db = new Database(file, { readonly: true, fileMustExist: true });
    } catch (err) {
      throw new NixociError(file, `cannot open Nix store database: ${(err as Error).message}`);
    }
    this.byPath = this.db.prepare("select * from ValidPaths where path = ?");
    this.refs = this.db.prepare(
      "select v.path as path from Refs r join ValidPaths v on r.reference = v.id where r.referrer = ?",
    );
    // The closure in one query: SQLite walks the Refs graph itself (UNION drops repeats, so cycles end).
    this.closureOf = this.db.prepare(
      `with recursive closure(id) as (
         select id from ValidPaths where path = ?
         union select r.reference from Refs r join closure c on r.referrer = c.id)
       select v.path as path from closure c join ValidPaths v on v.id = c.id`,
    );
  }

  queryPathInfo(path: string): PathInfo | undefined {
    const row = this.byPath.get(path);
    if (!row) return undefined;
    const references = this.refs
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
    return this.closureOf.all(path).map((r) => r.path);
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
    this.db.close();
    this.writable?.close();
  }
}
