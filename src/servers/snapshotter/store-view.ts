// Store views: how containers above target-mode layers see those layers' store paths by default
// (--target-mounts view). A chain's view is ONE read-only overlay the snapshotter mounts, once per image, on a
// tmpfs (mountpoints.ts): its upper lower layer is a small tree holding, per store path, a directory with the
// xattr trusted.overlay.redirect = "/<basename>" (or, for a store path that is a file, an empty sparse stub
// of its size with trusted.overlay.metacopy too; a symlink is copied), under root/<storeDir>/; its lower
// layer is the store's real directory. Looked up through the view, root/nix/store/<basename> is the store's own
// directory (the redirect is followed into the layer below), and only the chain's paths are there: the
// store's other entries sit at the view's top level, which no container sees, since the containers' overlays
// take view/root as their top lower directory.
//
// Why not a bind mount per path (target mode's binds, containerd >= 1.7 mounts them): containerd mounts each
// one twice per container start (its temporary mount, then the shim's), ~0.3 ms each, so an image of 2,000
// paths took 0.85 s to start instead of 0.3 s. A view costs a directory, an xattr and a stat per path once
// per image (on a tmpfs) and one mount(8); containers then start in the same time whatever the path count,
// under any containerd (there is no Mount.target to honour), and share the store's page cache.
// Costs: the container's overlay stacks on the view (overlayfs allows two levels, so a store that is itself on
// overlayfs cannot use views: the probe below then fails and binds are used); files read through it
// keep the store's inode numbers but not its device number; and a container may change a store path in its
// own writable layer (copy-up), as with link mode, where binds are read-only. The store is never written.
import {
  lstatSync,
  lchownSync,
  lutimesSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readlinkSync,
  rmSync,
  type Stats,
  symlinkSync,
  truncateSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { join, relative } from "node:path";
import { setImmediate as yieldTurn } from "node:timers/promises";
import { makeDirsSync } from "../../util/fs.js";
import { mount, mountPointsUnder, unmountAll } from "./mounts.js";
import { METACOPY_OPTIONS, StubXattrWriter } from "./nix-layer-modes/metacopy.js";

/** The directory inside a mounted view that containers take as their top lower directory. */
export const VIEW_ROOT = "root";

/** A store path of a view: where it really is, its name in the store directory, and its lstat if known. */
export interface ViewEntry {
  real: string;
  baseName: string;
  /** Taken when the path was found valid (it never changes after); looked up now when absent. */
  stat?: Stats;
}

/**
 * Builds a view's tree at `tree` (which must not exist): tree/root/<storeDir>/<baseName> per path, redirecting
 * into the store (see above). One stat (none when the entry brings it), one entry, one utimes per path and one
 * setfattr process in all. It yields to the event loop every VIEW_ENTRIES_PER_TURN entries: a tree of 6,000
 * paths takes about 0.25 s, and built in one turn it held up every call meanwhile — containerd's Stat at the end
 * of a pull waited all of it, as would another node's pod; setfattr gets its input as it comes, too.
 */
export async function buildViewTree(tree: string, storeDir: string, paths: ViewEntry[]): Promise<void> {
  const store = join(tree, VIEW_ROOT, storeDir);
  makeDirsSync(store, 0o755);
  const rel = relative(tree, store);
  const owner = { uid: process.getuid?.(), gid: process.getgid?.() };
  const xattrs = new StubXattrWriter(tree); // works while the entries are made
  try {
    for (let i = 0; i < paths.length; i++) {
      if (i > 0 && i % VIEW_ENTRIES_PER_TURN === 0) await yieldTurn();
      addViewEntry(paths[i], store, rel, owner, xattrs);
    }
  } catch (err) {
    await xattrs.end().catch(() => undefined); // the entry's failure is the one reported
    throw err;
  }
  await xattrs.end();
}

/** Entries of a view's tree made per turn of the event loop (about 5 ms of work; see buildViewTree). */
const VIEW_ENTRIES_PER_TURN = 128;

/** Makes the tree's entry for `p` in `store` (see buildViewTree) and hands its xattrs to `xattrs`. */
function addViewEntry(
  p: ViewEntry,
  store: string,
  rel: string,
  owner: { uid?: number; gid?: number },
  xattrs: StubXattrWriter,
): void {
  const st = p.stat ?? lstatSync(p.real);
  const target = join(store, p.baseName);
  if (st.isSymbolicLink()) {
    // The target as its bytes: it need not be UTF-8.
    symlinkSync(readlinkSync(p.real, { encoding: "buffer" }), target);
    lutimesSync(target, st.atime, st.mtime);
    return;
  }
  if (st.isDirectory()) mkdirSync(target, { mode: st.mode & 0o7777 });
  else if (st.isFile()) {
    writeFileSync(target, "", { mode: st.mode & 0o7777 });
    truncateSync(target, st.size); // sparse: the size stat shows; the data is the store's
  } else throw new Error(`${p.real}: not a directory, a file or a symlink`);
  // The entry's metadata is what the view shows (a redirected directory's own stays in the tree).
  if (owner.uid !== undefined && (st.uid !== owner.uid || st.gid !== owner.gid))
    lchownSync(target, st.uid, st.gid);
  utimesSync(target, st.atime, st.mtime);
  xattrs.add({ path: join(rel, p.baseName), redirect: `/${p.baseName}`, metacopy: !st.isDirectory() });
}

/**
 * The options of a view's overlay: the tree above the store (`below`: the store's real directory, and before it
 * the probe's stand-in), read-only, redirects and metacopy followed.
 */
export function viewMountOptions(tree: string, ...below: string[]): string {
  for (const dir of [tree, ...below])
    if (/[,:\\\s]/.test(dir))
      throw new Error(
        `${dir}: an overlay lower directory cannot have a comma, colon, backslash or space in it`,
      );
  return ["ro", `lowerdir=${[tree, ...below].join(":")}`, ...METACOPY_OPTIONS].join(",");
}

/** Mounts the view of `tree` over `below` (the store's real directory) at `at` (an empty directory). */
export function mountView(tree: string, at: string, ...below: string[]): Promise<void> {
  return mount(["-t", "overlay", "overlay", "-o", viewMountOptions(tree, ...below), at]);
}

/** Whether a view is mounted at `at`. */
export function viewMounted(at: string): boolean {
  return mountPointsUnder(at).includes(at);
}

/**
 * Whether views work here, as containers use them: a tiny view (a directory and a file store path of a stand-in
 * store in a temporary directory under `viewsDir`, above the real store `storeRealDir` as the bottom layer, so the
 * view stacks as deep as a real one) and a writable overlay on top of it with its upper directory under
 * `upperParent` (where containers' upper directories go), read back through both. Overlayfs stacks two levels
 * at most: a store on overlayfs (a node in a container) fails here. Resolves to undefined when views work, else
 * to why not. Leaves nothing behind.
 */
export async function probeStoreViews(
  viewsDir: string,
  upperParent: string,
  storeRealDir: string,
): Promise<string | undefined> {
  const dir = mkdtempSync(join(viewsDir, "view-probe-"));
  const upper = mkdtempSync(join(upperParent, "view-probe-"));
  const content = "nixoci view probe\n";
  try {
    const store = join(dir, "store");
    makeDirsSync(join(store, "d"));
    writeFileSync(join(store, "d/f"), content);
    writeFileSync(join(store, "s"), content);
    await buildViewTree(join(dir, "tree"), "nix/store", [
      { real: join(store, "d"), baseName: "d" },
      { real: join(store, "s"), baseName: "s" },
    ]);
    const at = join(dir, "view");
    mkdirSync(at);
    await mountView(join(dir, "tree"), at, store, storeRealDir);
    for (const d of ["fs", "work", "mnt"]) mkdirSync(join(upper, d));
    const options = [`lowerdir=${join(at, VIEW_ROOT)}`, `upperdir=${upper}/fs`, `workdir=${upper}/work`];
    await mount(["-t", "overlay", "overlay", "-o", options.join(","), join(upper, "mnt")]);
    const read = (p: string): string => readFileSync(join(upper, "mnt/nix/store", p), "utf8");
    if (read("d/f") !== content || read("s") !== content)
      return "a store file read back wrong through a view";
    return undefined;
  } catch (err) {
    return (err as Error).message;
  } finally {
    for (const d of [upper, dir]) {
      await unmountAll(d).catch(() => undefined);
      if (!mountPointsUnder(d).length) rmSync(d, { recursive: true, force: true });
    }
  }
}
