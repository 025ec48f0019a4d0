// Durable snapshot metadata for `nixoci snapshotter`: one SQLite database (WAL, synchronous=NORMAL: see the
// constructor) under the snapshotter's root. A snapshot is a row: numeric id (names its directory, never reused),
// key (an active or view snapshot's key, a committed snapshot's name), kind, parent (a committed snapshot),
// labels, created and updated times, and for committed snapshots the disk usage measured at commit. Every change
// is one transaction, so a killed snapshotter restarts with exactly the snapshots it had acknowledged.
// The labels kept are those given but a layer's store-path labels (nix-store-path.<i>, nix-closure-root.<i>): a
// nix layer's paths are its nix_layers row, containerd keeps every label it passed in its own metadata and shows
// the union with ours, and an image of 6,000 paths otherwise made each Stat or List of its big layer carry 6,000
// labels both ways (~10 ms of encoding here, more in containerd, per call).
// Schema changes are additive migrations run at open (e.g. nix_layers.mode, which superseded the `linked`
// flag: older rows get 'link' or 'bind' from it), so a database written by an older nixoci keeps working.
import { join } from "node:path";
import Database from "better-sqlite3";
import { isStorePathLabel, REF_LABEL } from "../../image/annotations.js";
import { makeDirsSync } from "../../util/fs.js";

export type SnapshotKind = "active" | "view" | "committed";

export interface SnapshotRecord {
  id: number;
  key: string;
  kind: SnapshotKind;
  /** The parent's name (a committed snapshot), or undefined. */
  parent?: string;
  parentId?: number;
  labels: Record<string, string>;
  /** Milliseconds since the epoch. */
  created: number;
  updated: number;
  /** Disk usage recorded at commit (committed snapshots only). */
  size?: number;
  inodes?: number;
}

/** How a nix layer's fs holds its store paths (see nix-layers.ts, nix-layer-modes/). */
export type NixLayerKind = "link" | "bind" | "metacopy" | "target";

/** The kinds as the SQL list nix_layers.mode is checked against. */
const NIX_LAYER_KINDS_SQL = "('link', 'bind', 'metacopy', 'target')";

export type SnapshotErrorCode = "not-found" | "already-exists" | "failed-precondition" | "invalid-argument";

/** An error containerd understands: the server maps `code` to the matching gRPC status. */
export class SnapshotError extends Error {
  readonly code: SnapshotErrorCode;
  constructor(code: SnapshotErrorCode, message: string) {
    super(message);
    this.name = "SnapshotError";
    this.code = code;
  }
}

interface Row {
  id: number;
  key: string;
  kind: string;
  parent_id: number | null;
  parent_key: string | null;
  labels: string | null;
  created: number;
  updated: number;
  size: number | null;
  inodes: number | null;
}

const SELECT = `SELECT s.id, s.key, s.kind, s.parent_id, p.key AS parent_key, s.labels, s.created, s.updated,
  s.size, s.inodes FROM snapshots s LEFT JOIN snapshots p ON p.id = s.parent_id`;
/** SELECT without the labels (lookups of parents and ancestors: reading a nix layer's takes ~1 ms). */
const SELECT_NO_LABELS = SELECT.replace("s.labels,", "NULL AS labels,");

/** The snapshot's containerd.io/snapshot.ref label, as SQL (indexed: containerd lists by it during pulls). */
const REF_LABEL_SQL = `json_extract(labels, '$."${REF_LABEL}"')`;

/**
 * The record of row `r`. A row read without its labels (SELECT_NO_LABELS) gets them from `readLabels` when they
 * are first read: what the database holds then ("{}" once the row is gone).
 */
function toRecord(r: Row, readLabels?: () => string): SnapshotRecord {
  const rec = {
    id: r.id,
    key: r.key,
    kind: r.kind as SnapshotKind,
    created: r.created,
    updated: r.updated,
  } as SnapshotRecord;
  // Parsed when first read: most look-ups (a parent, the ancestors of a chain) never read them, and a database
  // written before store-path labels were dropped (see the top) may hold thousands for one layer.
  let labels: Record<string, string> | undefined;
  Object.defineProperty(rec, "labels", {
    enumerable: true,
    get: () => (labels ??= JSON.parse(r.labels ?? readLabels?.() ?? "{}") as Record<string, string>),
    set: (v: Record<string, string>) => void (labels = v),
  });
  if (r.parent_id !== null) {
    rec.parentId = r.parent_id;
    rec.parent = r.parent_key ?? undefined;
  }
  if (r.size !== null) rec.size = r.size;
  if (r.inodes !== null) rec.inodes = r.inodes;
  return rec;
}

function checkLabels(labels: Record<string, string>): void {
  for (const [k, v] of Object.entries(labels)) {
    if (!k) throw new SnapshotError("invalid-argument", "label key must not be empty");
    if (Buffer.byteLength(k) + Buffer.byteLength(v) > 4096)
      throw new SnapshotError(
        "invalid-argument",
        `label ${JSON.stringify(k.slice(0, 64))}: key and value exceed 4096 bytes`,
      );
  }
}

/** The JSON of `labels` as a snapshot keeps them: without store-path labels (see the top). */
function storedLabels(labels: Record<string, string>): string {
  const kept: Record<string, string> = {};
  for (const [k, v] of Object.entries(labels)) if (!isStorePathLabel(k)) kept[k] = v;
  return JSON.stringify(kept);
}

export class MetadataStore {
  readonly file: string;
  private readonly db: Database.Database;
  /** Prepared statements by SQL text: preparing one costs more than running it (~0.1 ms; many per Prepare). */
  private readonly statements = new Map<string, Database.Statement>();

  constructor(root: string) {
    makeDirsSync(root, 0o700);
    this.file = join(root, "metadata.db");
    this.db = new Database(this.file, { timeout: 10_000 });
    this.db.pragma("journal_mode = WAL");
    // NORMAL in WAL mode: a commit survives the process being killed (the WAL is written before it returns) and
    // only a power loss can drop the last commits, which the directory renames they describe would not have
    // survived either. FULL's fsync per commit cost ~10 ms per layer of a 100-layer pull on a slow disk.
    this.db.pragma("synchronous = NORMAL");
    this.db.pragma("foreign_keys = ON");
    this.db.exec(`CREATE TABLE IF NOT EXISTS snapshots (
      id INTEGER PRIMARY KEY AUTOINCREMENT,
      key TEXT NOT NULL UNIQUE,
      kind TEXT NOT NULL CHECK (kind IN ('active', 'view', 'committed')),
      parent_id INTEGER REFERENCES snapshots(id),
      labels TEXT NOT NULL DEFAULT '{}',
      created INTEGER NOT NULL,
      updated INTEGER NOT NULL,
      size INTEGER,
      inodes INTEGER
    );
    CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent_id);
    CREATE TABLE IF NOT EXISTS nix_layers (
      id INTEGER PRIMARY KEY REFERENCES snapshots(id) ON DELETE CASCADE,
      paths TEXT NOT NULL,
      linked INTEGER NOT NULL DEFAULT 0,
      mode TEXT CHECK (mode IN ${NIX_LAYER_KINDS_SQL})
    );
    CREATE TABLE IF NOT EXISTS gc_roots (
      name TEXT NOT NULL,
      id INTEGER NOT NULL REFERENCES snapshots(id) ON DELETE CASCADE,
      paths TEXT,
      PRIMARY KEY (name, id)
    );
    CREATE INDEX IF NOT EXISTS gc_roots_id ON gc_roots(id);
    CREATE TABLE IF NOT EXISTS layer_diff_ids (
      paths_key TEXT PRIMARY KEY,
      diff_ids TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS snapshots_ref ON snapshots(${REF_LABEL_SQL});`);
    this.migrate();
  }

  /**
   * The diff_ids of the tars nixoci makes of a set of store paths (one per tar format), as computed before:
   * `pathsKey` names the set (layer-verify.ts). Store paths never change, so neither do these.
   */
  layerDiffIds(pathsKey: string): string[] | undefined {
    const row = this.sql(`SELECT diff_ids FROM layer_diff_ids WHERE paths_key = ?`).get(pathsKey) as
      { diff_ids: string } | undefined;
    return row ? (JSON.parse(row.diff_ids) as string[]) : undefined;
  }

  saveLayerDiffIds(pathsKey: string, diffIds: string[]): void {
    this.sql(`INSERT OR REPLACE INTO layer_diff_ids (paths_key, diff_ids) VALUES (?, ?)`).run(
      pathsKey,
      JSON.stringify(diffIds),
    );
  }

  /** Brings a database made by an older nixoci up to this schema (idempotent). */
  private migrate(): void {
    // gc_roots.paths (the links a row needs when not its layer's paths) came later: NULL means the layer's paths.
    const rootCols = this.db.prepare(`PRAGMA table_info(gc_roots)`).all() as { name: string }[];
    if (!rootCols.some((c) => c.name === "paths")) this.db.exec(`ALTER TABLE gc_roots ADD COLUMN paths TEXT`);
    const cols = this.db.prepare(`PRAGMA table_info(nix_layers)`).all() as { name: string }[];
    if (!cols.some((c) => c.name === "mode"))
      this.transaction(() => {
        this.db
          .exec(`ALTER TABLE nix_layers ADD COLUMN mode TEXT CHECK (mode IN ('link', 'bind', 'metacopy'));
          UPDATE nix_layers SET mode = CASE linked WHEN 1 THEN 'link' ELSE 'bind' END;`);
      });
    // A CHECK constraint cannot be altered: a table whose constraint predates 'target' is copied into a new one.
    const sql = (
      this.db.prepare(`SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'nix_layers'`).get() as {
        sql: string;
      }
    ).sql;
    if (!sql.includes("'target'"))
      this.transaction(() => {
        this.db.exec(`CREATE TABLE nix_layers_new (
            id INTEGER PRIMARY KEY REFERENCES snapshots(id) ON DELETE CASCADE,
            paths TEXT NOT NULL,
            linked INTEGER NOT NULL DEFAULT 0,
            mode TEXT CHECK (mode IN ${NIX_LAYER_KINDS_SQL})
          );
          INSERT INTO nix_layers_new (id, paths, linked, mode) SELECT id, paths, linked, mode FROM nix_layers;
          DROP TABLE nix_layers;
          ALTER TABLE nix_layers_new RENAME TO nix_layers;`);
      });
  }

  /** Throws when the database cannot be read (for /healthz). */
  ping(): void {
    this.sql("SELECT count(*) FROM snapshots").get();
  }

  close(): void {
    if (this.db.open) this.db.close();
  }

  /** The prepared statement for `text`, prepared once. */
  private sql(text: string): Database.Statement {
    let st = this.statements.get(text);
    if (!st) this.statements.set(text, (st = this.db.prepare(text)));
    return st;
  }

  /** Runs `fn` in one write transaction (rolled back if it throws). */
  transaction<T>(fn: () => T): T {
    return this.db.transaction(fn).immediate();
  }

  get(key: string): SnapshotRecord | undefined {
    const row = this.sql(`${SELECT} WHERE s.key = ?`).get(key) as Row | undefined;
    return row && toRecord(row);
  }

  getById(id: number): SnapshotRecord | undefined {
    const row = this.sql(`${SELECT} WHERE s.id = ?`).get(id) as Row | undefined;
    return row && toRecord(row);
  }

  /** As get, the labels read only if asked for (see toRecord). */
  private getNoLabels(key: string): SnapshotRecord | undefined {
    const row = this.sql(`${SELECT_NO_LABELS} WHERE s.key = ?`).get(key) as Row | undefined;
    return row && toRecord(row, () => this.labelsOf(row.id));
  }

  /** As getById, the labels read only if asked for (see toRecord). */
  private getByIdNoLabels(id: number): SnapshotRecord | undefined {
    const row = this.sql(`${SELECT_NO_LABELS} WHERE s.id = ?`).get(id) as Row | undefined;
    return row && toRecord(row, () => this.labelsOf(id));
  }

  private labelsOf(id: number): string {
    const row = this.sql(`SELECT labels FROM snapshots WHERE id = ?`).get(id) as
      { labels: string } | undefined;
    return row?.labels ?? "{}";
  }

  mustGet(key: string): SnapshotRecord {
    const rec = this.get(key);
    if (!rec) throw new SnapshotError("not-found", `snapshot ${JSON.stringify(key)} does not exist`);
    return rec;
  }

  /** The ancestors of `rec`, nearest first. */
  ancestors(rec: SnapshotRecord): SnapshotRecord[] {
    const out: SnapshotRecord[] = [];
    let next = rec.parentId;
    while (next !== undefined) {
      const p = this.getByIdNoLabels(next);
      if (!p) throw new Error(`metadata: snapshot ${rec.key}: ancestor id ${next} is missing`);
      out.push(p);
      next = p.parentId;
      if (out.length > 100_000) throw new Error(`metadata: snapshot ${rec.key}: parent cycle`);
    }
    return out;
  }

  /** The snapshots whose containerd.io/snapshot.ref label is `ref`. */
  withRefLabel(ref: string): SnapshotRecord[] {
    return (
      this.sql(`${SELECT} WHERE ${REF_LABEL_SQL.replace("labels", "s.labels")} = ? ORDER BY s.id`).all(
        ref,
      ) as Row[]
    ).map((r) => toRecord(r));
  }

  list(): SnapshotRecord[] {
    return (this.sql(`${SELECT} ORDER BY s.id`).all() as Row[]).map((r) => toRecord(r));
  }

  ids(): Set<number> {
    return new Set((this.sql(`SELECT id FROM snapshots`).all() as { id: number }[]).map((r) => r.id));
  }

  /** Whether snapshot `id` has an active or view child (a container's root, a view). */
  hasOpenChild(id: number): boolean {
    return (
      this.sql(`SELECT 1 FROM snapshots WHERE parent_id = ? AND kind != 'committed' LIMIT 1`).get(id) !==
      undefined
    );
  }

  /** The ids of the snapshots that have an active or view child. */
  withOpenChildren(): Set<number> {
    const rows = this.sql(
      `SELECT DISTINCT parent_id AS id FROM snapshots WHERE kind != 'committed' AND parent_id IS NOT NULL`,
    ).all() as { id: number }[];
    return new Set(rows.map((r) => r.id));
  }

  /** Adds an active or view snapshot; the parent, if any, must be committed. Call inside a transaction. */
  create(
    kind: "active" | "view",
    key: string,
    parent: string | undefined,
    labels: Record<string, string>,
  ): SnapshotRecord {
    if (!key) throw new SnapshotError("invalid-argument", "snapshot key must not be empty");
    checkLabels(labels);
    if (this.getNoLabels(key))
      throw new SnapshotError("already-exists", `snapshot ${JSON.stringify(key)} already exists`);
    let parentId: number | null = null;
    if (parent) {
      const p = this.getNoLabels(parent);
      if (!p)
        throw new SnapshotError("not-found", `parent snapshot ${JSON.stringify(parent)} does not exist`);
      if (p.kind !== "committed")
        throw new SnapshotError(
          "invalid-argument",
          `parent ${JSON.stringify(parent)} is not a committed snapshot`,
        );
      parentId = p.id;
    }
    const now = Date.now();
    const info = this.sql(
      `INSERT INTO snapshots (key, kind, parent_id, labels, created, updated) VALUES (?, ?, ?, ?, ?, ?)`,
    ).run(key, kind, parentId, storedLabels(labels), now, now);
    return this.getByIdNoLabels(Number(info.lastInsertRowid))!;
  }

  /**
   * Turns the active snapshot `key` into the committed snapshot `name` (same id, so the same directory); its
   * labels become `labels`. Call inside a transaction.
   */
  commit(
    key: string,
    name: string,
    labels: Record<string, string>,
    usage: { size: number; inodes: number },
  ): SnapshotRecord {
    if (!name) throw new SnapshotError("invalid-argument", "committed snapshot name must not be empty");
    checkLabels(labels);
    const rec = this.mustGet(key);
    if (rec.kind !== "active")
      throw new SnapshotError("failed-precondition", `snapshot ${JSON.stringify(key)} is not active`);
    if (this.getNoLabels(name))
      throw new SnapshotError("already-exists", `snapshot ${JSON.stringify(name)} already exists`);
    const now = Date.now();
    this.sql(
      `UPDATE snapshots SET key = ?, kind = 'committed', labels = ?, created = ?, updated = ?, size = ?, inodes = ?
         WHERE id = ?`,
    ).run(name, storedLabels(labels), now, now, usage.size, usage.inodes, rec.id);
    return this.getByIdNoLabels(rec.id)!;
  }

  /** Deletes `key`; fails when other snapshots name it as parent. Call inside a transaction. */
  remove(key: string): SnapshotRecord {
    const rec = this.mustGet(key);
    const child = this.sql(`SELECT key FROM snapshots WHERE parent_id = ? LIMIT 1`).get(rec.id) as
      { key: string } | undefined;
    if (child)
      throw new SnapshotError(
        "failed-precondition",
        `cannot remove snapshot ${JSON.stringify(key)}: ${JSON.stringify(child.key)} is its child`,
      );
    this.sql(`DELETE FROM snapshots WHERE id = ?`).run(rec.id);
    return rec;
  }

  /**
   * Records the store paths a committed nix layer stands for (see nix-layers.ts) and how its fs holds them.
   * `linked` is still written for an older nixoci reading this database. Call inside a transaction.
   */
  setNixLayer(id: number, paths: string[], mode: NixLayerKind): void {
    this.sql(`INSERT OR REPLACE INTO nix_layers (id, paths, linked, mode) VALUES (?, ?, ?, ?)`).run(
      id,
      JSON.stringify(paths),
      mode === "link" ? 1 : 0,
      mode,
    );
  }

  /** The store paths of a nix layer and how it holds them, or undefined for an ordinary snapshot. */
  nixLayer(id: number): { paths: string[]; mode: NixLayerKind } | undefined {
    const row = this.sql(`SELECT paths, linked, mode FROM nix_layers WHERE id = ?`).get(id) as
      { paths: string; linked: number; mode: string | null } | undefined;
    if (!row) return undefined;
    const mode = (row.mode ?? (row.linked === 1 ? "link" : "bind")) as NixLayerKind;
    return { paths: JSON.parse(row.paths) as string[], mode };
  }

  /**
   * Records that the nix layer `id` needs the GC root `name` (see gcroots.ts), linking `paths` (roots whose
   * closure holds the layer's paths) or, without them, the layer's own paths; the row goes with the snapshot.
   * Call inside a transaction.
   */
  addGcRoot(name: string, id: number, paths?: string[]): void {
    this.sql(`INSERT OR IGNORE INTO gc_roots (name, id, paths) VALUES (?, ?, ?)`).run(
      name,
      id,
      paths ? JSON.stringify(paths) : null,
    );
  }

  /** The GC roots the snapshot `id` holds. */
  gcRootsOf(id: number): string[] {
    return (
      this.sql(`SELECT name FROM gc_roots WHERE id = ? ORDER BY name`).all(id) as { name: string }[]
    ).map((r) => r.name);
  }

  /** Every GC root some snapshot holds, with the union of the paths its rows link (their layers' by default). */
  gcRoots(): Map<string, Set<string>> {
    const rows = this.sql(
      `SELECT g.name, COALESCE(g.paths, n.paths) AS paths FROM gc_roots g JOIN nix_layers n ON n.id = g.id ORDER BY g.name`,
    ).all() as { name: string; paths: string }[];
    const out = new Map<string, Set<string>>();
    for (const r of rows) {
      let set = out.get(r.name);
      if (!set) out.set(r.name, (set = new Set()));
      for (const p of JSON.parse(r.paths) as string[]) set.add(p);
    }
    return out;
  }

  /** The union of the paths the rows of GC root `name` link (empty: nobody holds it). */
  gcRootPaths(name: string): Set<string> {
    const rows = this.sql(
      `SELECT COALESCE(g.paths, n.paths) AS paths FROM gc_roots g JOIN nix_layers n ON n.id = g.id WHERE g.name = ?`,
    ).all(name) as { paths: string }[];
    const out = new Set<string>();
    for (const r of rows) for (const p of JSON.parse(r.paths) as string[]) out.add(p);
    return out;
  }

  /** Nix layers that hold no GC root (made before gc_roots existed). */
  nixLayersWithoutRoot(): number[] {
    return (
      this.sql(
        `SELECT n.id FROM nix_layers n WHERE NOT EXISTS (SELECT 1 FROM gc_roots g WHERE g.id = n.id)`,
      ).all() as { id: number }[]
    ).map((r) => r.id);
  }

  /** Replaces the labels of `key` and bumps its updated time. Call inside a transaction. */
  setLabels(key: string, labels: Record<string, string>): SnapshotRecord {
    checkLabels(labels);
    const rec = this.mustGet(key);
    this.sql(`UPDATE snapshots SET labels = ?, updated = ? WHERE id = ?`).run(
      JSON.stringify(labels),
      Date.now(),
      rec.id,
    );
    return this.getById(rec.id)!;
  }
}
