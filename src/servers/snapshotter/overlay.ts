// The overlay snapshotter behind `nixoci snapshotter`, with containerd's overlay snapshotter's semantics:
// ROOT/snapshots/<id>/fs is a snapshot's contents (the overlay upper dir of an active snapshot), <id>/work its
// overlay work dir (active snapshots only). Mounts:
//   - no parent: a bind mount of its own fs (rw for active, ro for a view);
//   - active with parents: overlay with lowerdir = the parents' fs (nearest first), upperdir, workdir;
//   - view with one parent: a read-only bind mount of the parent's fs; with more: a read-only overlay.
// A subclass may add a data-only lower layer (dataLayer: overlayfs "::DIR", Linux >= 6.5) with its options;
// then a one-parent view is an overlay too (lowerdir=PARENT::DIR, no upper dir: read-only).
// Paths in the options are absolute, like containerd's overlay snapshotter's: containerd 1.6 shortens
// options near the 4 KiB page limit by making lowerdirs relative to their common prefix, which a data-only
// layer (an empty entry, then a path elsewhere) defeats (see nix-layers.ts for what that limits).
// Commit turns an active snapshot into a committed one (same id and directory) and records its disk usage.
// Metadata lives in MetadataStore; a directory without metadata (a crash between the two, a Remove whose
// deletion was cut short) is removed by Cleanup.
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  renameSync,
  rmSync,
  statSync,
  chownSync,
  readdirSync,
} from "node:fs";
import { lstat, rm } from "node:fs/promises";
import { join } from "node:path";
import { REF_LABEL } from "../../image/annotations.js";
import { MetadataStore, SnapshotError, type SnapshotKind, type SnapshotRecord } from "./metadata.js";
import { mountPointsUnder } from "./mounts.js";
import { fsPath, readdirNamesAsync } from "../../util/file-names.js";
import { makeDirsSync } from "../../util/fs.js";

export interface Mount {
  type: string;
  source: string;
  /** Where inside the rootfs containerd >= 1.7 mounts it (unset: the rootfs itself). */
  target?: string;
  options: string[];
}

export interface SnapshotInfo {
  name: string;
  parent: string;
  kind: SnapshotKind;
  created: number;
  updated: number;
  labels: Record<string, string>;
}

export interface Usage {
  size: number;
  inodes: number;
}

/** An overlayfs data-only lower layer: `dir` goes after "::" in lowerdir, `options` with it. */
export interface DataLayer {
  dir: string;
  options: string[];
}

export interface OverlayOptions {
  root: string;
  /** Add `index=off` to overlay options (default: when the kernel's overlay module has an `index` parameter). */
  indexOff?: boolean;
}

/** A tiny async mutex: mutations of metadata and directories happen one at a time. */
export class Lock {
  private tail: Promise<unknown> = Promise.resolve();
  run<T>(fn: () => Promise<T> | T): Promise<T> {
    const next = this.tail.then(fn, fn);
    this.tail = next.catch(() => undefined);
    return next;
  }
}

/** Gives `dir` the owner of `from` (a chown only when it differs: on a disk filesystem each is a journal update). */
export function takeOwner(dir: string, from: string): void {
  const want = statSync(from);
  const have = statSync(dir);
  if (have.uid !== want.uid || have.gid !== want.gid) chownSync(dir, want.uid, want.gid);
}

/** Disk usage like containerd's fs.DiskUsage: 512-byte blocks and inodes of each distinct inode under dir. */
export async function diskUsage(dir: string): Promise<Usage> {
  const seen = new Set<string>();
  let size = 0;
  const visit = async (p: string): Promise<void> => {
    const st = await lstat(fsPath(p));
    const id = `${st.dev}:${st.ino}`;
    if (!seen.has(id)) {
      seen.add(id);
      size += st.blocks * 512;
    }
    if (st.isDirectory()) {
      // Names as bytes (util/file-names.ts): an unpacked layer's file names need not be UTF-8.
      for (const name of await readdirNamesAsync(p)) await visit(join(p, name));
    }
  };
  await visit(dir);
  return { size, inodes: seen.size };
}

export class OverlaySnapshotter {
  readonly root: string;
  readonly metadata: MetadataStore;
  protected readonly snapshotsDir: string;
  protected readonly indexOff: boolean;
  protected readonly lock = new Lock();

  constructor(opts: OverlayOptions) {
    this.root = opts.root;
    makeDirsSync(this.root, 0o700);
    this.snapshotsDir = join(this.root, "snapshots");
    makeDirsSync(this.snapshotsDir, 0o700);
    this.metadata = new MetadataStore(this.root);
    this.indexOff = opts.indexOff ?? existsSync("/sys/module/overlay/parameters/index");
  }

  close(): void {
    this.metadata.close();
  }

  fsPath(id: number): string {
    return join(this.snapshotsDir, String(id), "fs");
  }

  workPath(id: number): string {
    return join(this.snapshotsDir, String(id), "work");
  }

  prepare(key: string, parent: string, labels: Record<string, string>): Promise<Mount[]> {
    return this.create("active", key, parent, labels);
  }

  view(key: string, parent: string, labels: Record<string, string>): Promise<Mount[]> {
    return this.create("view", key, parent, labels);
  }

  private create(
    kind: "active" | "view",
    key: string,
    parent: string,
    labels: Record<string, string>,
  ): Promise<Mount[]> {
    return this.lock.run(() => {
      let tmp: string | undefined;
      try {
        const rec = this.metadata.transaction(() => {
          const r = this.metadata.create(kind, key, parent || undefined, labels);
          tmp = mkdtempSync(join(this.snapshotsDir, "new-"));
          mkdirSync(join(tmp, "fs"), { mode: 0o755 });
          if (kind === "active") mkdirSync(join(tmp, "work"), { mode: 0o711 });
          // Like containerd: the new upper dir takes the owner of the parent's root.
          if (r.parentId !== undefined) takeOwner(join(tmp, "fs"), this.fsPath(r.parentId));
          const dest = join(this.snapshotsDir, String(r.id));
          // A directory left by a crash before its row was committed carries no data anyone needs.
          if (existsSync(dest)) rmSync(dest, { recursive: true, force: true });
          renameSync(tmp, dest);
          tmp = undefined;
          return r;
        });
        return this.mountsOf(rec);
      } finally {
        if (tmp) rmSync(tmp, { recursive: true, force: true });
      }
    });
  }

  mounts(key: string): Promise<Mount[]> {
    return Promise.resolve().then(() => this.mountsOf(this.metadata.mustGet(key)));
  }

  /**
   * A data-only lower layer the overlay of `rec` (whose ancestors are `parents`) needs, with the mount options
   * it takes; none by default.
   */
  protected dataLayer(_rec: SnapshotRecord, _parents: SnapshotRecord[]): DataLayer | undefined {
    return undefined;
  }

  /**
   * The overlay's lower directories for `rec` (whose ancestors are `parents`), nearest first; with `relative`,
   * relative to the snapshots directory. By default each ancestor's fs.
   */
  protected lowerDirs(_rec: SnapshotRecord, parents: SnapshotRecord[], relative: boolean): string[] {
    return parents.map((p) => (relative ? `${p.id}/fs` : this.fsPath(p.id)));
  }

  /** `rec`'s mounts; with `relative`, their paths are relative to the snapshots directory. */
  protected mountsOf(rec: SnapshotRecord, relative = false): Mount[] {
    const fs = (id: number): string => (relative ? `${id}/fs` : this.fsPath(id));
    const parents = this.metadata.ancestors(rec);
    if (parents.length === 0) {
      return [{ type: "bind", source: fs(rec.id), options: [rec.kind === "view" ? "ro" : "rw", "rbind"] }];
    }
    const data = this.dataLayer(rec, parents);
    const lowers = this.lowerDirs(rec, parents, relative);
    const options: string[] = [];
    if (this.indexOff) options.push("index=off");
    if (rec.kind === "active") {
      const work = relative ? `${rec.id}/work` : this.workPath(rec.id);
      options.push(`workdir=${work}`, `upperdir=${fs(rec.id)}`);
    } else if (lowers.length === 1 && !data) {
      // A read-only overlay needs two lower directories: one is bound read-only instead.
      return [{ type: "bind", source: lowers[0], options: ["ro", "rbind"] }];
    }
    const lower = lowers.join(":");
    options.push(`lowerdir=${data ? `${lower}::${data.dir}` : lower}`, ...(data?.options ?? []));
    return [{ type: "overlay", source: "overlay", options }];
  }

  async commit(name: string, key: string, labels: Record<string, string>): Promise<void> {
    const before = this.metadata.mustGet(key);
    if (before.kind !== "active")
      throw new SnapshotError("failed-precondition", `snapshot ${JSON.stringify(key)} is not active`);
    // Measured before taking the lock (a walk of the tree); a Remove meanwhile takes the tree away: NOT_FOUND.
    let usage: Awaited<ReturnType<typeof diskUsage>>;
    try {
      usage = await diskUsage(this.fsPath(before.id));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT" && this.metadata.get(key)?.id !== before.id)
        throw new SnapshotError("not-found", `snapshot ${JSON.stringify(key)} does not exist`);
      throw err;
    }
    await this.lock.run(() => {
      this.metadata.transaction(() => {
        const rec = this.metadata.get(key);
        if (!rec || rec.id !== before.id)
          throw new SnapshotError("not-found", `snapshot ${JSON.stringify(key)} does not exist`);
        this.metadata.commit(key, name, labels, usage);
      });
    });
  }

  async remove(key: string): Promise<void> {
    const gone = await this.lock.run(() => {
      const rec = this.metadata.transaction(() => this.metadata.remove(key));
      // Out of the way at once; deleted below (and by Cleanup if this process dies first).
      const dir = join(this.snapshotsDir, String(rec.id));
      const rmDir = join(this.snapshotsDir, `rm-${rec.id}`);
      try {
        renameSync(dir, rmDir);
        return rmDir;
      } catch {
        return dir;
      }
    });
    await this.removeDir(gone);
  }

  protected async removeDir(dir: string): Promise<void> {
    if (mountPointsUnder(dir).length) throw new Error(`${dir}: still has mounts; not removing it`);
    await rm(dir, { recursive: true, force: true, maxRetries: 3 });
  }

  stat(key: string): SnapshotInfo {
    return toInfo(this.metadata.mustGet(key));
  }

  /**
   * Updates labels: with no field paths, replaces all of them; `labels` replaces all; `labels.K` sets or (when
   * absent from `info.labels`) deletes one. Other fields are immutable.
   */
  update(key: string, labels: Record<string, string>, paths: string[]): Promise<SnapshotInfo> {
    return this.lock.run(() =>
      toInfo(
        this.metadata.transaction(() => {
          const rec = this.metadata.mustGet(key);
          let next: Record<string, string>;
          if (paths.length === 0) next = { ...labels };
          else {
            next = { ...rec.labels };
            for (const p of paths) {
              if (p === "labels") next = { ...labels };
              else if (p.startsWith("labels.")) {
                const k = p.slice("labels.".length);
                if (Object.hasOwn(labels, k)) next[k] = labels[k];
                else delete next[k];
              } else
                throw new SnapshotError(
                  "invalid-argument",
                  `cannot update ${JSON.stringify(p)} of snapshot ${JSON.stringify(key)}`,
                );
            }
          }
          return this.metadata.setLabels(key, next);
        }),
      ),
    );
  }

  /** Disk usage: measured now for active and view snapshots, as recorded at commit for committed ones. */
  async usage(key: string): Promise<Usage> {
    const rec = this.metadata.mustGet(key);
    if (rec.kind === "committed" && rec.size !== undefined)
      return { size: rec.size, inodes: rec.inodes ?? 0 };
    return diskUsage(this.fsPath(rec.id));
  }

  list(filters: string[] = []): SnapshotInfo[] {
    const preds = filters.filter((f) => f.trim()).map(parseFilter);
    if (!preds.length) return this.metadata.list().map(toInfo);
    // When every filter pins the name or the ref label, only those rows are read: containerd lists by the ref
    // label after each ALREADY_EXISTS of a pull, and a full scan (every row's labels parsed) per layer made a
    // pull's cost grow with the square of its layers.
    const rows = preds.every((p) => p.pinned)
      ? [...new Map(preds.flatMap((p) => this.pinnedRows(p.pinned!)).map((r) => [r.id, r])).values()].sort(
          (a, b) => a.id - b.id,
        )
      : this.metadata.list();
    return rows.map(toInfo).filter((i) => preds.some((p) => p(i)));
  }

  private pinnedRows(pin: Pin): SnapshotRecord[] {
    if (pin.field === "name") {
      const rec = this.metadata.get(pin.value);
      return rec ? [rec] : [];
    }
    return this.metadata.withRefLabel(pin.value);
  }

  /** Removes directories under ROOT/snapshots that no snapshot owns. Returns the names removed. */
  cleanup(): Promise<string[]> {
    return this.lock.run(async () => {
      const ids = this.metadata.ids();
      const removed: string[] = [];
      for (const name of readdirSync(this.snapshotsDir)) {
        if (/^\d+$/.test(name) && ids.has(Number(name))) continue;
        await this.removeDir(join(this.snapshotsDir, name));
        removed.push(name);
      }
      return removed;
    });
  }
}

function toInfo(rec: SnapshotRecord): SnapshotInfo {
  return {
    name: rec.key,
    parent: rec.parent ?? "",
    kind: rec.kind,
    created: rec.created,
    updated: rec.updated,
    labels: rec.labels,
  };
}

// ---- containerd's filter syntax (the subset that applies to snapshots) ----
// A filter is selectors joined by commas (all must match); a selector is a field path (name, parent, kind,
// labels.KEY; path components may be "quoted") alone (present and non-empty) or followed by ==, != or ~= (a
// regular expression) and a value (bare, "quoted" or /regexp/).

type Pred = (i: SnapshotInfo) => boolean;

/** A field a filter requires to equal a value, which the metadata can look up directly. */
interface Pin {
  field: "name" | "ref";
  value: string;
}

/** A parsed filter, and what it pins, if anything (an == selector on the name or the ref label). */
export type Filter = Pred & { pinned?: Pin };

function fieldValue(info: SnapshotInfo, path: string[]): string | undefined {
  switch (path[0]) {
    case "name":
      return path.length === 1 ? info.name : undefined;
    case "parent":
      return path.length === 1 ? info.parent : undefined;
    case "kind":
      return path.length === 1 ? info.kind : undefined;
    case "labels": {
      const k = path.slice(1).join(".");
      return Object.hasOwn(info.labels, k) ? info.labels[k] : undefined;
    }
    default:
      return undefined;
  }
}

export function parseFilter(src: string): Filter {
  let i = 0;
  const bad = (why: string): never => {
    throw new SnapshotError("invalid-argument", `filter ${JSON.stringify(src)}: ${why} at ${i}`);
  };
  const skipWs = (): void => {
    while (i < src.length && /\s/.test(src[i])) i++;
  };
  const quoted = (q: string): string => {
    i++;
    let out = "";
    while (i < src.length && src[i] !== q) {
      if (src[i] === "\\" && i + 1 < src.length) i++;
      out += src[i++];
    }
    if (src[i] !== q) bad("unterminated quote");
    i++;
    return out;
  };
  const component = (): string => {
    skipWs();
    if (src[i] === '"') return quoted('"');
    const m = /^[A-Za-z0-9_\-/]+/.exec(src.slice(i));
    if (!m) return bad("expected a field name");
    i += m[0].length;
    return m[0];
  };
  const value = (): string => {
    skipWs();
    if (src[i] === '"') return quoted('"');
    if (src[i] === "/") return quoted("/");
    const m = /^[^,\s"]+/.exec(src.slice(i));
    if (!m) return bad("expected a value");
    i += m[0].length;
    return m[0];
  };
  const selectors: Pred[] = [];
  let pinned: Pin | undefined;
  for (;;) {
    const path = [component()];
    while (src[i] === ".") {
      i++;
      path.push(component());
    }
    skipWs();
    const op = /^(==|!=|~=)/.exec(src.slice(i))?.[0];
    if (op) {
      i += 2;
      const v = value();
      if (op === "==") {
        selectors.push((x) => fieldValue(x, path) === v);
        if (path.length === 1 && path[0] === "name") pinned ??= { field: "name", value: v };
        if (path[0] === "labels" && path.slice(1).join(".") === REF_LABEL)
          pinned ??= { field: "ref", value: v };
      } else if (op === "!=") selectors.push((x) => fieldValue(x, path) !== v);
      else {
        let re: RegExp;
        try {
          re = new RegExp(v);
        } catch {
          return bad("bad regular expression");
        }
        selectors.push((x) => {
          const f = fieldValue(x, path);
          return f !== undefined && re.test(f);
        });
      }
    } else selectors.push((x) => !!fieldValue(x, path));
    skipWs();
    if (i >= src.length) break;
    if (src[i] !== ",") bad("expected ','");
    i++;
  }
  const filter: Filter = (x) => selectors.every((s) => s(x));
  if (pinned) filter.pinned = pinned;
  return filter;
}
