// GC roots for the store paths of nix layers (see nix-layers.ts): one root per image, not one per path.
//
// Nix treats every symlink under its gcroots directory (recursively) that points into the store as a root, so a
// root here is a DIRECTORY of symlinks, DIR/<root name>/<basename> -> <store dir>/<basename>, one per store path
// of the nix layers that hold the root. Creating a single store path that references the whole set would need a
// write to the store (and its database); a directory of links needs none, and `nix-store --gc --print-roots` /
// `nix-store -q --roots PATH` show each link.
//
// Where: for the store at /nix/store, DIR = /nix/var/nix/gcroots/nixoci/<instance>, where <instance> is
// "sn-" + the first 24 hex digits of sha256(the snapshotter's resolved --root) (several snapshotters may share
// one store; each one's Cleanup touches only its own directory). For any other --store, Nix does not read our
// roots anyway, and for a read-only /nix nobody here can collect garbage: DIR = ROOT/gcroots (the same layout,
// for the record and for tools that look there).
//
// Root names: "manifest-<hex>" for the image whose manifest digest is the nix layer's
// `containerd.io/snapshot/cri.manifest-digest` label (containerd's CRI plugin sets it on every layer of a pull),
// else "layer-<hex>" for the nix layer's own chain ID (its committed name). <hex> is the digest's hex when the
// value is a sha256 digest, else the sha256 of the value.
//
// Which snapshot holds which root is the metadata table gc_roots (name, snapshot id), deleted with the snapshot;
// a root's directory holds the union of the paths of its snapshots' nix layers. Active snapshots and views need
// no roots of their own: a committed snapshot cannot be removed while it has children, so the nix layers below a
// container hold their roots as long as the container's snapshot exists.
import { createHash } from "node:crypto";
import {
  accessSync,
  constants,
  existsSync,
  lstatSync,
  readdirSync,
  readlinkSync,
  renameSync,
  rmdirSync,
  rmSync,
  symlinkSync,
} from "node:fs";
import { basename, dirname, join, resolve } from "node:path";

import { MANIFEST_DIGEST_LABEL } from "../../image/annotations.js";
import { makeDirsSync } from "../../util/fs.js";

export { MANIFEST_DIGEST_LABEL } from "../../image/annotations.js";

const NIX_STORE = "/nix/store";
const NIX_GCROOTS = "/nix/var/nix/gcroots";

const hexOf = (value: string): string =>
  /^sha256:[0-9a-f]{64}$/.test(value) ? value.slice(7) : createHash("sha256").update(value).digest("hex");

/** "sn-" + 24 hex digits of sha256(the snapshotter's resolved root): names its directories shared with others. */
export function snapshotterInstance(snapshotterRoot: string): string {
  return `sn-${createHash("sha256").update(resolve(snapshotterRoot)).digest("hex").slice(0, 24)}`;
}

/**
 * The directory that holds a snapshotter's roots (see above). A read-only /nix (a store a node mounts from
 * shared storage, whose owner keeps its paths alive) cannot take them: then ROOT/gcroots too, for the record.
 * `nixGcRoots` is Nix's gcroots directory (a parameter for tests).
 */
export function gcRootsDir(
  snapshotterRoot: string,
  store: { realDir: string; storeDir: string },
  nixGcRoots = NIX_GCROOTS,
): string {
  if (store.realDir === NIX_STORE && store.storeDir === NIX_STORE && !readOnly(nixGcRoots))
    return join(nixGcRoots, "nixoci", snapshotterInstance(snapshotterRoot));
  return join(snapshotterRoot, "gcroots");
}

/** Whether `dir`, or its nearest existing ancestor, is on a read-only filesystem. */
function readOnly(dir: string): boolean {
  for (let d = dir; ; d = dirname(d)) {
    try {
      accessSync(d, constants.W_OK);
      return false;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "EROFS") return true;
      if (code !== "ENOENT" || d === dirname(d)) return false; // not ours to judge: adding a root will say
    }
  }
}

/** The root a nix layer committed as `layerName` with `labels` holds: its image's, else its own. */
export function gcRootName(labels: Record<string, string>, layerName: string): string {
  const manifest = labels[MANIFEST_DIGEST_LABEL];
  return manifest ? `manifest-${hexOf(manifest)}` : `layer-${hexOf(layerName)}`;
}

const ROOT_NAME = /^(manifest|layer)-[0-9a-f]{64}$/;

export class GcRoots {
  constructor(
    readonly dir: string,
    private readonly storeDir: string,
  ) {}

  private linkTarget(path: string): string {
    return join(this.storeDir, basename(path));
  }

  /** Removes the (per-snapshotter) directory when it holds no root any more. */
  private removeIfEmpty(): void {
    try {
      rmdirSync(this.dir);
    } catch {
      // not empty, or already gone
    }
  }

  /** Adds a link in root `name` for each of `paths` (links already there stay). */
  add(name: string, paths: Iterable<string>): void {
    if (!ROOT_NAME.test(name)) throw new Error(`gc root: bad name ${JSON.stringify(name)}`);
    const dir = join(this.dir, name);
    makeDirsSync(dir, 0o755);
    for (const p of paths) {
      const link = join(dir, basename(p));
      const target = this.linkTarget(p);
      try {
        symlinkSync(target, link); // the common case: a new link, one call
        continue;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      }
      try {
        if (readlinkSync(link) === target) continue;
      } catch {
        // not a link: replaced below
      }
      const tmp = join(dir, `.tmp-${process.pid}-${basename(p)}`);
      rmSync(tmp, { force: true });
      symlinkSync(target, tmp);
      renameSync(tmp, link);
    }
  }

  /** Makes root `name` hold exactly `paths`; with none, removes it. */
  sync(name: string, paths: Set<string> | undefined): void {
    const dir = join(this.dir, name);
    if (!paths?.size) {
      rmSync(dir, { recursive: true, force: true });
      this.removeIfEmpty();
      return;
    }
    const want = new Map([...paths].map((p) => [basename(p), p]));
    let present: string[] = [];
    try {
      present = readdirSync(dir);
    } catch {
      // absent: made by add
    }
    for (const entry of present)
      if (!want.has(entry)) rmSync(join(dir, entry), { recursive: true, force: true });
    // A link's name says its target (links are made whole: symlink, or a temporary renamed into place), so only
    // missing ones are made: a removal costs one readdir, not a look at every link the root keeps.
    const have = new Set(present);
    this.add(
      name,
      [...want].filter(([base]) => !have.has(base)).map(([, p]) => p),
    );
  }

  /**
   * Makes the directory match `desired` (root name -> store paths): every root made exact, every other entry
   * (an orphan: its last snapshot went while the snapshotter was down, or a crash cut a change short) removed.
   * Returns the names removed.
   */
  syncAll(desired: Map<string, Set<string>>): string[] {
    const removed: string[] = [];
    if (!desired.size && !existsSync(this.dir)) return removed;
    makeDirsSync(this.dir, 0o755);
    for (const entry of readdirSync(this.dir)) {
      if (desired.has(entry) && lstatSync(join(this.dir, entry)).isDirectory()) continue;
      rmSync(join(this.dir, entry), { recursive: true, force: true });
      removed.push(entry);
    }
    for (const [name, paths] of desired) this.sync(name, paths);
    this.removeIfEmpty();
    return removed;
  }
}
