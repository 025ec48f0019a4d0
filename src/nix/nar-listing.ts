// NAR listings: the "<hashpart>.ls" files binary caches serve (written by Nix with write-nar-listing=true), a
// JSON description of the tree in a NAR with each file's size and the offset of its contents in the NAR:
//   {"version":1,"root":{"type":"directory","entries":{"a":{"type":"regular","size":3,"narOffset":216}}}}
// Nix writes the node keys in the order type, size, executable, narOffset (or type, entries / type, target)
// and directory entries in NAR order (bytewise ascending names); serializeNarListing does the same.
import { escapeRuns, fileNameBytes, hasEscapedBytes } from "../util/file-names.js";
import { parseNar, type NarSource } from "./nar-reader.js";

export type NarListingNode =
  | { type: "regular"; size: number; executable?: true; narOffset: number }
  | { type: "directory"; entries: Record<string, NarListingNode> }
  | { type: "symlink"; target: string };

export interface NarListing {
  version: 1;
  root: NarListingNode;
}

/** Sets an own, enumerable property (so an entry named "__proto__" is an entry, not a prototype change). */
function setEntry(entries: Record<string, NarListingNode>, name: string, node: NarListingNode): void {
  Object.defineProperty(entries, name, { value: node, enumerable: true, writable: true, configurable: true });
}

/** Parses (strictly) the NAR from `source` and returns its listing. File contents are skipped, not kept. */
export async function listNar(
  source: NarSource,
  opts: { input: string; maxDepth?: number },
): Promise<NarListing> {
  let root: NarListingNode | undefined;
  // dirs[d] is the entries object of the directory at depth d on the current path.
  const dirs: Record<string, NarListingNode>[] = [];
  const add = (path: readonly string[], node: NarListingNode) => {
    if (path.length === 0) root = node;
    else setEntry(dirs[path.length - 1], path[path.length - 1], node);
  };
  await parseNar(
    source,
    {
      directory(path) {
        const entries: Record<string, NarListingNode> = {};
        add(path, { type: "directory", entries });
        dirs.length = path.length;
        dirs.push(entries);
      },
      symlink(path, target) {
        add(path, { type: "symlink", target });
      },
      file(path, executable, size, _contents, narOffset) {
        add(
          path,
          executable
            ? { type: "regular", size, executable: true, narOffset }
            : { type: "regular", size, narOffset },
        );
      },
    },
    opts,
  );
  return { version: 1, root: root! };
}

function compareNames(a: string, b: string): number {
  return Buffer.compare(fileNameBytes(a), fileNameBytes(b));
}

function writeNode(node: NarListingNode, out: string[]): void {
  switch (node.type) {
    case "regular":
      out.push(`{"type":"regular","size":${node.size}`);
      if (node.executable) out.push(`,"executable":true`);
      if (node.narOffset !== undefined) out.push(`,"narOffset":${node.narOffset}`);
      out.push("}");
      return;
    case "symlink":
      out.push(`{"type":"symlink","target":${jsonName(node.target)}}`);
      return;
    case "directory": {
      out.push(`{"type":"directory","entries":{`);
      const names = Object.keys(node.entries).sort(compareNames);
      names.forEach((name, i) => {
        out.push(i === 0 ? "" : ",", jsonName(name), ":");
        writeNode(node.entries[name], out);
      });
      out.push("}}");
      return;
    }
  }
}

/**
 * A name or target as a JSON string whose escaped bytes (util/file-names.ts) stay escapes (JSON.stringify would write
 * them as "\udcXX" text), for narListingBytes to turn back into the name's bytes: Nix writes a name that is not
 * UTF-8 into the listing as its bytes.
 */
function jsonName(name: string): string {
  if (!hasEscapedBytes(name)) return JSON.stringify(name);
  const parts = escapeRuns(name).map((p) =>
    typeof p === "string" ? JSON.stringify(p).slice(1, -1) : String.fromCharCode(0xdc00 + p),
  );
  return `"${parts.join("")}"`;
}

/**
 * The listing as JSON, as Nix writes it: no whitespace, keys in Nix's order, entries in bytewise name order
 * (JavaScript would put integer-like names such as "10" first), no trailing newline.
 */
export function serializeNarListing(listing: NarListing): string {
  const out: string[] = [`{"version":${listing.version},"root":`];
  writeNode(listing.root, out);
  out.push("}");
  return out.join("");
}

/** serializeNarListing's JSON as bytes: those of names that are not UTF-8 as they are in the NAR, as Nix writes them. */
export function narListingBytes(listing: NarListing): Buffer {
  return fileNameBytes(serializeNarListing(listing));
}
