// NAR listings: the "<hashpart>.ls" files binary caches serve (written by Nix with write-nar-listing=true), a
// JSON description of the tree in a NAR with each file's size and the offset of its contents in the NAR:
//   {"version":1,"root":{"type":"directory","entries":{"a":{"type":"regular","size":3,"narOffset":216}}}}
// Nix writes the node keys in the order type, size, executable, narOffset (or type, entries / type, target)
// and directory entries in NAR order (bytewise ascending names); serializeNarListing does the same.
import { escapeRuns, fileNameBytes, hasEscapedBytes } from "../util/file-names.js";
import { NixociError } from "../util/errors.js";
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

/** How deep a listing read from a cache may nest (a NAR from Nix nests no deeper than its file system allowed). */
const MAX_LISTING_DEPTH = 512;

/**
 * A `.ls` file's JSON (from a binary cache: untrusted) as a NarListing, checked strictly: version 1, every node a
 * regular file (size, optional executable and narOffset), a directory or a symlink, every entry's name one path
 * component (not empty, ".", "..", nor holding "/" or NUL), no nesting past MAX_LISTING_DEPTH. `input` names the
 * file in errors. (A name that was not UTF-8 in the NAR reaches a JSON reader as U+FFFD: readers that need exact
 * names check for it.)
 */
export function parseNarListing(text: string, input: string): NarListing {
  const bad = (why: string): never => {
    throw new NixociError(input, `not a NAR listing: ${why}`);
  };
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    bad(`invalid JSON (${(err as Error).message})`);
  }
  const obj = (v: unknown): v is Record<string, unknown> =>
    typeof v === "object" && v !== null && !Array.isArray(v);
  if (!obj(doc)) return bad("expected a JSON object");
  if (doc.version !== 1) return bad(`version ${JSON.stringify(doc.version)} (expected 1)`);
  const node = (v: unknown, where: string, depth: number): NarListingNode => {
    if (depth > MAX_LISTING_DEPTH) return bad(`nested deeper than ${MAX_LISTING_DEPTH} at ${where}`);
    if (!obj(v)) return bad(`${where}: expected an object`);
    const count = (k: string): number => {
      const n = v[k];
      if (typeof n !== "number" || !Number.isSafeInteger(n) || n < 0)
        return bad(`${where}: ${k} must be a whole number >= 0`);
      return n;
    };
    switch (v.type) {
      case "regular": {
        if (v.executable !== undefined && typeof v.executable !== "boolean")
          return bad(`${where}: executable must be true or false`);
        const out: NarListingNode = { type: "regular", size: count("size"), narOffset: 0 };
        if (v.narOffset !== undefined) out.narOffset = count("narOffset");
        if (v.executable === true) out.executable = true;
        return out;
      }
      case "symlink":
        if (typeof v.target !== "string" || !v.target || v.target.includes("\0"))
          return bad(`${where}: a symlink needs a non-empty target without NUL`);
        return { type: "symlink", target: v.target };
      case "directory": {
        if (!obj(v.entries)) return bad(`${where}: a directory needs an entries object`);
        const entries: Record<string, NarListingNode> = {};
        for (const [name, child] of Object.entries(v.entries)) {
          if (!name || name === "." || name === ".." || name.includes("/") || name.includes("\0"))
            return bad(`${where}: bad entry name ${JSON.stringify(name)}`);
          setEntry(entries, name, node(child, where === "/" ? `/${name}` : `${where}/${name}`, depth + 1));
        }
        return { type: "directory", entries };
      }
      default:
        return bad(`${where}: unknown type ${JSON.stringify(v.type)}`);
    }
  };
  return { version: 1, root: node(doc.root, "/", 0) };
}
