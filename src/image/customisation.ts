// The customisation layer on top of the store layers: what makes a Nix closure feel like a normal image.
// - a symlink farm at / of the requested packages' top-level directories, merged like Nix's buildEnv
//   (a directory only one package has is one symlink; shared ones become real directories of links);
// - /tmp (1777), /usr/bin/env when the closure has an env, /etc/passwd and /etc/group with root and the
//   configured user, whose home /home/NAME (0755) it owns; and SSL_CERT_FILE when the closure has a CA bundle.
import { lstatSync, statSync } from "node:fs";
import { join, posix } from "node:path";
import type { NarListingNode } from "../nix/nar-listing.js";
import type { BaseTree } from "./base-tree.js";
import type { TreeEntry } from "./layer-tar.js";
import { fsPath, readdirNames } from "../util/file-names.js";

interface LinkNode {
  kind: "link";
  target: string; // absolute path inside the image (/nix/store/...)
  realPath: string; // where it is on this machine, to expand it when another package shares the name
  isDir: boolean;
}
interface DirNode {
  kind: "dir";
  mode: number;
  children: Map<string, Node>;
  uid?: number;
  gid?: number;
}
interface FileNode {
  kind: "file";
  mode: number;
  content: Buffer;
}
type Node = LinkNode | DirNode | FileNode;

/** Top-level names a package cannot take over: they belong to the store or to this layer. */
const RESERVED = new Set(["nix", "tmp", "proc", "sys", "dev"]);

/**
 * What the layer reads of the packages' files, by their paths on this machine (realPath): the files themselves
 * (localFiles), or NAR listings of the store paths (listingFiles), where realPath is the store path.
 */
export interface PackageFiles {
  /** The names in the directory at `real` (links followed). */
  readdir(real: string): string[];
  /** Whether `real` is a directory, links followed (a dangling link is not). */
  isDirectory(real: string): boolean;
  /** Whether anything is at `real` (the last component's link not followed, as lstat). */
  exists(real: string): boolean;
}

export const localFiles: PackageFiles = {
  readdir: readdirNames,
  isDirectory(real) {
    try {
      return statSync(fsPath(real)).isDirectory(); // follows links: a linked directory merges like a directory
    } catch {
      return false;
    }
  },
  exists(real) {
    try {
      lstatSync(fsPath(real));
      return true;
    } catch {
      return false;
    }
  },
};

/**
 * The files of store paths as their NAR listings tell them (`listings`: store path -> its listing's root), for a
 * layer made where the paths are not (the BuildKit frontend's plan step). A path's realPath is the store path
 * itself; links are followed within the listed paths (absolute targets into them, relative ones as the kernel
 * would), so this reads what the same files on disk would give; a link out of them is dangling.
 */
export function listingFiles(listings: ReadonlyMap<string, NarListingNode>, storeDir: string): PackageFiles {
  const storeParts = storeDir.split("/").filter(Boolean);
  const own = (entries: Record<string, NarListingNode>, name: string): NarListingNode | undefined =>
    Object.prototype.hasOwnProperty.call(entries, name) ? entries[name] : undefined;
  /** The node at absolute `path`, links followed (the last one only when `follow`), or undefined. */
  const lookup = (path: string, follow: boolean): NarListingNode | undefined => {
    let parts = posix.normalize(`/${path}`).split("/").filter(Boolean);
    let hops = 0;
    let depth = 0; // components of `parts` walked
    let node: NarListingNode | undefined;
    while (depth < parts.length) {
      const name = parts[depth];
      if (depth < storeParts.length) {
        if (name !== storeParts[depth]) return undefined; // outside the store: not listed
      } else if (depth === storeParts.length) {
        node = listings.get(`${storeDir}/${name}`);
      } else {
        node = node?.type === "directory" ? own(node.entries, name) : undefined;
      }
      depth++;
      if (depth > storeParts.length && !node) return undefined;
      if (node?.type === "symlink" && (depth < parts.length || follow)) {
        if (++hops > 40) return undefined; // a loop, as ELOOP
        const base = node.target.startsWith("/") ? "" : `/${parts.slice(0, depth - 1).join("/")}`;
        parts = posix
          .normalize(`${base}/${node.target}/${parts.slice(depth).join("/")}`)
          .split("/")
          .filter(Boolean);
        depth = 0;
        node = undefined;
      }
    }
    return depth > storeParts.length ? node : undefined;
  };
  return {
    readdir(real) {
      const node = lookup(real, true);
      return node?.type === "directory" ? Object.keys(node.entries) : [];
    },
    isDirectory: (real) => lookup(real, true)?.type === "directory",
    exists: (real) => lookup(real, false) !== undefined,
  };
}

export interface CustomisationInput {
  /** Requested packages, in order: earlier ones win file collisions (as in buildEnv's priority). */
  packages: { storePath: string; realPath: string }[];
  /** Every closure path with where it is on this machine, to find env and CA bundles. */
  closure: { storePath: string; realPath: string }[];
  user?: string;
  /** The base image under this layer (`--from`): its directories merge with the farm's, its accounts are kept. */
  base?: BaseTree;
  /** How the packages' files are read (default: from disk). */
  files?: PackageFiles;
}

export interface Customisation {
  entries: TreeEntry[];
  env: string[];
  warnings: string[];
}

const CA_BUNDLES = [
  "etc/ssl/certs/ca-bundle.crt",
  "etc/ssl/certs/ca-certificates.crt",
  "etc/pki/tls/certs/ca-bundle.crt",
];

export function customisationLayer(input: CustomisationInput): Customisation {
  const root: DirNode = { kind: "dir", mode: 0o755, children: new Map() };
  const warnings: string[] = [];
  const files = input.files ?? localFiles;

  const merge = (dir: DirNode, target: string, real: string, top: boolean): void => {
    // Names as bytes (util/file-names.ts): a package's file whose name is not UTF-8 gets a link of that name.
    for (const name of files.readdir(real).sort()) {
      if (top && RESERVED.has(name)) continue;
      const childTarget = `${target}/${name}`;
      const childReal = join(real, name);
      const isDir = files.isDirectory(childReal);
      const existing = dir.children.get(name);
      if (!existing) {
        dir.children.set(name, { kind: "link", target: childTarget, realPath: childReal, isDir });
      } else if (isDir && existing.kind === "link" && existing.isDir) {
        const expanded: DirNode = { kind: "dir", mode: 0o755, children: new Map() };
        merge(expanded, existing.target, existing.realPath, false);
        merge(expanded, childTarget, childReal, false);
        dir.children.set(name, expanded);
      } else if (isDir && existing.kind === "dir") {
        merge(existing, childTarget, childReal, false);
      } else {
        warnings.push(`collision: ${childTarget} is shadowed by an earlier package`);
      }
    }
  };

  for (const pkg of input.packages) {
    if (files.isDirectory(pkg.realPath)) merge(root, pkg.storePath, pkg.realPath, true);
  }

  /** A directory at `path` in the farm, expanding a symlinked directory into real links when needed. */
  const ensureDir = (path: string[]): DirNode => {
    let dir = root;
    for (const name of path) {
      let child = dir.children.get(name);
      if (child?.kind === "link" && child.isDir) {
        const expanded: DirNode = { kind: "dir", mode: 0o755, children: new Map() };
        merge(expanded, child.target, child.realPath, false);
        child = expanded;
        dir.children.set(name, expanded);
      } else if (!child || child.kind !== "dir") {
        if (child) warnings.push(`/${path.join("/")} replaces a package's file with a directory`);
        child = { kind: "dir", mode: 0o755, children: new Map() };
        dir.children.set(name, child);
      }
      dir = child;
    }
    return dir;
  };

  root.children.set("tmp", { kind: "dir", mode: 0o1777, children: new Map() });

  const env: string[] = [];
  const findInClosure = (rel: string): string | undefined => {
    const sorted = [...input.closure].sort((a, b) => (a.storePath < b.storePath ? -1 : 1));
    for (const p of sorted) if (files.exists(join(p.realPath, rel))) return `${p.storePath}/${rel}`;
    return undefined;
  };
  const envBinary = findInClosure("bin/env");
  if (envBinary) {
    const usrBin = ensureDir(["usr", "bin"]);
    if (!usrBin.children.has("env"))
      usrBin.children.set("env", { kind: "link", target: envBinary, realPath: "", isDir: false });
  }
  for (const rel of CA_BUNDLES) {
    const bundle = findInClosure(rel);
    if (bundle) {
      env.push(`SSL_CERT_FILE=${bundle}`);
      break;
    }
  }

  const etc = ensureDir(["etc"]);
  const own = accounts(input.user);
  const passwd = input.base?.passwd ? appendAccounts(input.base.passwd, own.passwd) : own.passwd;
  const group = input.base?.group ? appendAccounts(input.base.group, own.group) : own.group;
  // A user the base already has keeps its own uid and home: the made-up one would not match it.
  const home =
    input.base?.passwd && accountNames(input.base.passwd).has(own.home?.name ?? "") ? undefined : own.home;
  if (home) {
    const homes = ensureDir(["home"]);
    if (homes.children.has(home.name))
      warnings.push(`/home/${home.name} from a package is replaced by the user's home`);
    homes.children.set(home.name, {
      kind: "dir",
      mode: 0o755,
      children: new Map(),
      uid: home.uid,
      gid: home.gid,
    });
  }
  etc.children.set("passwd", { kind: "file", mode: 0o644, content: Buffer.from(passwd) });
  etc.children.set("group", { kind: "file", mode: 0o644, content: Buffer.from(group) });

  if (input.base) mergeWithBase(root, input.base, files);

  const entries: TreeEntry[] = [];
  const emit = (dir: DirNode, prefix: string): void => {
    for (const name of [...dir.children.keys()].sort()) {
      const node = dir.children.get(name)!;
      const path = prefix ? `${prefix}/${name}` : name;
      if (node.kind === "dir") {
        entries.push({
          path,
          type: "directory",
          mode: node.mode,
          ...(node.uid ? { uid: node.uid } : {}),
          ...(node.gid ? { gid: node.gid } : {}),
        });
        emit(node, path);
      } else if (node.kind === "file")
        entries.push({ path, type: "file", mode: node.mode, content: node.content });
      else entries.push({ path, type: "symlink", target: node.target });
    }
  };
  emit(root, "");
  return { entries, env, warnings };
}

/** The account names of a passwd or group file (its lines' first fields). */
function accountNames(file: Buffer): Set<string> {
  return new Set(
    file
      .toString("utf8")
      .split("\n")
      .map((l) => l.split(":")[0])
      .filter(Boolean),
  );
}

/** The base's passwd or group file, with the lines of ours whose account it lacks appended. */
function appendAccounts(base: Buffer, ours: string): string {
  const have = accountNames(base);
  const text = base.toString("utf8");
  const added = ours.split("\n").filter((l) => l && !have.has(l.split(":")[0]));
  return added.length ? `${text}${text && !text.endsWith("\n") ? "\n" : ""}${added.join("\n")}\n` : text;
}

/**
 * Makes the farm merge with the base's filesystem instead of hiding it. A layer's symlink or directory at a
 * path replaces a lower layer's symlink there, so:
 * - a farm symlink to a package's directory where the base has a directory becomes a directory of links
 *   (the runtime then merges it with the base's: /share over the base's /share);
 * - a farm directory where the base has a symlink to a directory (merged-usr /bin -> usr/bin, or an image
 *   nixoci built, whose /bin links into the store) also gets links to the entries of the base's directory,
 *   so /bin/sh of the base stays beside the packages' /bin/hello.
 * Packages win where both have a name, as the upper layer does.
 */
function mergeWithBase(root: DirNode, base: BaseTree, files: PackageFiles): void {
  const resolve = (path: string): string | undefined => {
    for (let hops = 0; hops < 16; hops++) {
      const e = base.entries.get(path);
      if (e?.type === "dir") return path;
      if (e?.type !== "link" || e.target === undefined) return undefined;
      const target = e.target.startsWith("/") ? e.target : posix.join(posix.dirname(path), e.target);
      path = posix.normalize(`/${target}`).slice(1);
    }
    return undefined;
  };
  const expand = (link: LinkNode): DirNode => {
    const dir: DirNode = { kind: "dir", mode: 0o755, children: new Map() };
    for (const name of files.readdir(link.realPath).sort()) {
      const real = join(link.realPath, name);
      const isDir = files.isDirectory(real); // a dangling link is a link
      dir.children.set(name, { kind: "link", target: `${link.target}/${name}`, realPath: real, isDir });
    }
    return dir;
  };
  const visit = (dir: DirNode, farmPath: string): void => {
    for (const [name, node] of [...dir.children]) {
      const path = farmPath ? `${farmPath}/${name}` : name;
      const entry = base.entries.get(path);
      if (!entry || (node.kind === "link" && !node.isDir) || node.kind === "file") continue;
      const baseDir = resolve(path);
      if (baseDir === undefined) continue;
      const merged = node.kind === "dir" ? node : expand(node);
      dir.children.set(name, merged);
      if (entry.type === "link") {
        // The base's directory is elsewhere: link its entries in, since this directory hides the link.
        const prefix = `${baseDir}/`;
        for (const k of base.entries.keys())
          if (k.startsWith(prefix) && !k.slice(prefix.length).includes("/")) {
            const child = k.slice(prefix.length);
            if (!merged.children.has(child))
              merged.children.set(child, { kind: "link", target: `/${k}`, realPath: "", isDir: false });
          }
      }
      visit(merged, baseDir);
    }
  };
  visit(root, "");
}

/**
 * /etc/passwd and /etc/group: root, plus the configured user (NAME or UID, optionally :GROUP or :GID), whose
 * home is /home/NAME.
 */
function accounts(user?: string): {
  passwd: string;
  group: string;
  home?: { name: string; uid: number; gid: number };
} {
  let passwd = "root:x:0:0:root:/root:/bin/sh\n";
  let group = "root:x:0:\n";
  if (!user) return { passwd, group };
  const [u, g] = user.split(":");
  const numeric = (s: string): boolean => /^\d+$/.test(s);
  const rootGroup = g === "root" || g === "0";
  if (u === "root" || u === "0") {
    // root in another group: a named one must exist (docker and runc refuse a name they cannot find).
    if (g !== undefined && !rootGroup && !numeric(g)) group += `${g}:x:1000:\n`;
    return { passwd, group };
  }
  const uid = numeric(u) ? Number(u) : 1000;
  const name = numeric(u) ? `user${uid}` : u;
  const gid = rootGroup ? 0 : g !== undefined && numeric(g) ? Number(g) : uid;
  const groupName = g === undefined || numeric(g) ? name : g;
  passwd += `${name}:x:${uid}:${gid}:${name}:/home/${name}:/bin/sh\n`;
  if (gid !== 0) group += `${groupName}:x:${gid}:\n`;
  return { passwd, group, home: { name, uid, gid } };
}
