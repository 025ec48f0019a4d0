// What a base image's filesystem holds, as far as the customisation layer on top of it needs to know: every
// path's type (and a symlink's target) after the base's layers are applied in order with their whiteouts, and
// the contents of its /etc/passwd and /etc/group. Read from the layer blobs in the blob store, decompressed as
// a stream; only names and two small files are kept, never a layer.
import type { Readable } from "node:stream";
import type { BlobStore } from "../oci/blob-store.js";
import { OCI_LAYER_ZSTD } from "../oci/media-types.js";
import { decompressStream, sniffLayerCompression } from "../util/compression.js";
import { NixociError } from "../util/errors.js";
import { collectBounded } from "../util/streams.js";
import type { BaseLayer } from "./base-image.js";
import { readTarMembers } from "./tar-reader.js";

export interface BaseEntry {
  type: "dir" | "link" | "file";
  /** A symlink's target, as the tar spells it. */
  target?: string;
}

export interface BaseTree {
  /** Paths without a leading slash ("bin", "etc/passwd"). */
  entries: Map<string, BaseEntry>;
  passwd?: Buffer;
  group?: Buffer;
}

/** An /etc/passwd or /etc/group bigger than this is not one to merge accounts into. */
const MAX_ACCOUNTS_FILE = 1 << 20;
const ACCOUNT_FILES = ["etc/passwd", "etc/group"] as const;

/** A layer's tar, decompressed (by its magic bytes: Docker's media types do not always say). */
async function layerTar(blobs: BlobStore, layer: BaseLayer): Promise<Readable> {
  const head = await collectBounded(blobs.open(layer.descriptor.digest, { start: 0, end: 3 }), 4).catch(() =>
    Buffer.alloc(0),
  );
  // A zstd layer too short to show its magic is still zstd by its media type.
  const sniffed = sniffLayerCompression(head);
  const c = sniffed === "none" && layer.descriptor.mediaType === OCI_LAYER_ZSTD ? "zstd" : sniffed;
  const raw = blobs.open(layer.descriptor.digest);
  const out = decompressStream(c, `base layer ${layer.descriptor.digest}`);
  raw.on("error", (err) => out.destroy(err));
  return raw.pipe(out);
}

function normalize(name: string): string {
  return name
    .split("/")
    .filter((s) => s !== "" && s !== ".")
    .join("/");
}

/** Reads the tree of the base's layers (already in `blobs`). */
export async function readBaseTree(blobs: BlobStore, layers: BaseLayer[]): Promise<BaseTree> {
  const entries = new Map<string, BaseEntry>();
  // Where the final /etc/passwd and /etc/group are: the layer and the offset of their data in its tar.
  const accountAt = new Map<string, { layer: number; offset: number; size: number }>();
  const removeTree = (path: string, keepSelf: boolean): void => {
    for (const k of [...entries.keys()])
      if ((k === path && !keepSelf) || k.startsWith(`${path}/`) || (path === "" && k !== "")) {
        entries.delete(k);
        accountAt.delete(k);
      }
  };
  for (const [i, layer] of layers.entries()) {
    const tar = await layerTar(blobs, layer);
    const added: [string, BaseEntry, { offset: number; size: number } | undefined][] = [];
    try {
      for await (const m of readTarMembers(tar, `base layer ${layer.descriptor.digest}`)) {
        const path = normalize(m.name);
        const slash = path.lastIndexOf("/");
        const dir = slash < 0 ? "" : path.slice(0, slash);
        const base = path.slice(slash + 1);
        // Whiteouts hide what lower layers have; they apply before this layer's own entries.
        if (base === ".wh..wh..opq") removeTree(dir, true);
        else if (base.startsWith(".wh.")) removeTree(dir ? `${dir}/${base.slice(4)}` : base.slice(4), false);
        else if (path === "") continue;
        else if (m.type === "5") added.push([path, { type: "dir" }, undefined]);
        else if (m.type === "2") added.push([path, { type: "link", target: m.linkname }, undefined]);
        else added.push([path, { type: "file" }, { offset: m.dataOffset, size: m.size }]);
      }
    } finally {
      tar.destroy();
    }
    for (const [path, entry, data] of added) {
      // A non-directory replaces whatever was there, subtree included.
      if (entry.type !== "dir") removeTree(path, true);
      entries.set(path, entry);
      // Tars need not list a member's directories; the runtime creates them, so they are there.
      for (let d = path.lastIndexOf("/"); d > 0; d = path.lastIndexOf("/", d - 1))
        if (!entries.has(path.slice(0, d))) entries.set(path.slice(0, d), { type: "dir" });
      if ((ACCOUNT_FILES as readonly string[]).includes(path)) {
        if (data && entry.type === "file") accountAt.set(path, { layer: i, ...data });
        else accountAt.delete(path);
      }
    }
  }
  const tree: BaseTree = { entries };
  for (const name of ACCOUNT_FILES) {
    const at = accountAt.get(name);
    if (!at || at.size > MAX_ACCOUNTS_FILE) continue;
    const content = await readRange(blobs, layers[at.layer], at.offset, at.size);
    if (name === "etc/passwd") tree.passwd = content;
    else tree.group = content;
  }
  return tree;
}

/** `size` bytes at `offset` of a layer's tar. */
async function readRange(blobs: BlobStore, layer: BaseLayer, offset: number, size: number): Promise<Buffer> {
  const tar = await layerTar(blobs, layer);
  const parts: Buffer[] = [];
  let pos = 0;
  try {
    for await (const chunk of tar) {
      const c = chunk as Buffer;
      const start = Math.max(offset - pos, 0);
      const end = Math.min(offset + size - pos, c.length);
      if (start < end) parts.push(c.subarray(start, end));
      pos += c.length;
      if (pos >= offset + size) break;
    }
  } finally {
    tar.destroy();
  }
  const out = Buffer.concat(parts);
  if (out.length !== size)
    throw new NixociError(`base layer ${layer.descriptor.digest}`, "truncated tar archive");
  return out;
}
