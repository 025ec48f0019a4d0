// Writes a store layer the snapshotter fetched itself (layer-fetch.ts) into a snapshot's fs directory, which starts
// empty. What a store layer may hold, and nothing else: the store directory's ancestors (directories) and members
// inside store paths — regular files, directories, symlinks (their targets as they are: a store path's links point
// into the store, absolute ones included) and hard links to files extracted before. Never through a symlink (every
// parent of a member is a directory this extraction made), never over a member already written, never outside the
// directory. Names and targets keep their bytes (util/file-names.ts). Modes, times and (as root) owners are the
// tar's; directories get theirs once their contents are written, as the store's are read-only. (node-tar, used
// before, decodes names as UTF-8, rewriting other bytes, and in strict mode refuses absolute symlink targets.)
import * as fs from "node:fs";
import type { TarMember } from "../../image/tar-reader.js";
import { isStorePath } from "../../nix/store-path.js";
import { quote } from "../../util/errors.js";
import { fsPath } from "../../util/file-names.js";

const FILE_FLAGS =
  fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | (fs.constants.O_NOFOLLOW ?? 0);

const TYPE_NAMES: Record<string, string> = {
  "3": "character device",
  "4": "block device",
  "6": "FIFO",
};

/**
 * Extracts the tar `members` into `dir` for the store directory `storeDir`. Returns why the layer was refused (a
 * member a store layer may not have), else undefined; throws on a corrupt tar or a failed write. What was written
 * before a refusal is left for the caller to remove with the directory.
 */
export async function extractStoreLayer(
  members: AsyncIterable<TarMember>,
  dir: string,
  storeDir: string,
): Promise<string | undefined> {
  const store = storeDir.replace(/^\/+/, "").replace(/\/+$/, "");
  const ancestors = new Set(store.split("/").map((_, i, parts) => parts.slice(0, i + 1).join("/")));
  /** What this extraction made at each relative path. */
  const made = new Map<string, "dir" | "file" | "symlink">();
  /** The directories' headers (a directory listed twice: the later one), to apply once everything is written. */
  const dirs = new Map<string, TarMember>();
  const at = (rel: string): string | Buffer => fsPath(`${dir}/${rel}`);
  const asRoot = process.getuid?.() === 0;

  /** Why a member's path may not be in a store layer, or undefined. */
  const placeProblem = (name: string, rel: string): string | undefined => {
    if (ancestors.has(rel)) return undefined;
    if (!rel.startsWith(`${store}/`)) return `${quote(name)} is outside ${storeDir}`;
    const rest = rel.slice(store.length + 1).split("/");
    if (!isStorePath(`/${store}/${rest[0]}`, `/${store}`)) return `${quote(name)} is not in a store path`;
    if (rest.some((c) => c === "" || c === "." || c === ".." || c.startsWith(".wh.")))
      return `${quote(name)}: a whiteout, "." or ".."`;
    return undefined;
  };

  for await (const m of members) {
    const rel = relative(m.name);
    if (rel === "") continue; // the layer's root ("./")
    const problem = placeProblem(m.name, rel);
    if (problem) return problem;
    if (ancestors.has(rel) && m.type !== "5") return `${quote(m.name)} is not a directory`;
    const parts = rel.split("/");
    for (let i = 1; i < parts.length; i++) {
      const parent = parts.slice(0, i).join("/");
      const kind = made.get(parent);
      if (kind === undefined) {
        fs.mkdirSync(at(parent), 0o755); // a parent the tar does not list: as containerd makes it
        made.set(parent, "dir");
      } else if (kind !== "dir")
        return `${quote(m.name)} is under ${quote(parent)}, which is not a directory`;
    }
    if (made.has(rel)) {
      // A directory listed again (after members that made it, or twice) takes the later header, as tar does.
      if (m.type === "5" && made.get(rel) === "dir") {
        dirs.set(rel, m);
        continue;
      }
      return `${quote(m.name)} appears twice`;
    }
    switch (m.type) {
      case "5":
        fs.mkdirSync(at(rel), 0o700);
        made.set(rel, "dir");
        dirs.set(rel, m);
        break;
      case "0":
      case "7":
        await writeFile(at(rel), m, asRoot);
        made.set(rel, "file");
        break;
      case "2":
        if (m.linkname === "") return `${quote(m.name)}: a symlink without a target`;
        fs.symlinkSync(fsPath(m.linkname), at(rel));
        if (asRoot) fs.lchownSync(at(rel), m.uid, m.gid);
        fs.lutimesSync(at(rel), m.mtime, m.mtime);
        made.set(rel, "symlink");
        break;
      case "1": {
        const target = relative(m.linkname);
        if (placeProblem(m.linkname, target) || made.get(target) !== "file")
          return `${quote(m.name)}: a hard link to ${quote(m.linkname)}, not a file of the layer before it`;
        fs.linkSync(at(target), at(rel));
        made.set(rel, "file");
        break;
      }
      default:
        return `${quote(m.name)} is a ${TYPE_NAMES[m.type] ?? `member of tar type ${quote(m.type)}`}`;
    }
  }
  // Deepest first: a directory made read-only before its subdirectories' modes are set would refuse them.
  const depth = (rel: string) => rel.split("/").length;
  for (const [rel, m] of [...dirs].sort(([a], [b]) => depth(b) - depth(a))) {
    if (asRoot) fs.chownSync(at(rel), m.uid, m.gid);
    fs.chmodSync(at(rel), m.mode);
    fs.utimesSync(at(rel), m.mtime, m.mtime);
  }
  return undefined;
}

/** A member's name relative to the layer's root: without "./" prefixes and trailing slashes. */
function relative(name: string): string {
  return name.replace(/^(\.\/)+/, "").replace(/\/+$/, "");
}

async function writeFile(path: string | Buffer, m: TarMember, asRoot: boolean): Promise<void> {
  const fd = fs.openSync(path, FILE_FLAGS, 0o600);
  try {
    for await (const chunk of m.data()) {
      for (let off = 0; off < chunk.length;) off += fs.writeSync(fd, chunk, off, chunk.length - off);
    }
    if (asRoot) fs.fchownSync(fd, m.uid, m.gid);
    fs.fchmodSync(fd, m.mode); // after chown, which clears setuid bits
    fs.futimesSync(fd, m.mtime, m.mtime);
  } finally {
    fs.closeSync(fd);
  }
}
