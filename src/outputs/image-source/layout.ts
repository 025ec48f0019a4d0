// OCI image layouts as image sources: a directory (oci:DIR[:TAG]) or a tar of one (oci-archive:FILE[:TAG],
// indexed once, its members then read by offset); TAG picks index.json entries by org.opencontainers.image.ref.name.
// The tar's member index also serves docker-archive.ts.
import { createReadStream } from "node:fs";
import { open, stat } from "node:fs/promises";
import { join } from "node:path";
import { Readable } from "node:stream";
import type { Platform } from "../../image/platforms.js";
import { readTarMembers } from "../../image/tar-reader.js";
import { checkDescriptor, type Descriptor } from "../../oci/descriptor.js";
import { digestHex } from "../../oci/digest.js";
import { quote } from "../../util/errors.js";
import { MAX_JSON_BYTES, parseJsonObject } from "../../util/json.js";
import { collectBounded } from "../../util/streams.js";
import { REF_NAME_ANNOTATION } from "../layout.js";
import {
  buildSource,
  MAX_ENTRIES,
  platformOf,
  readVerified,
  resolveManifest,
  selectPlatform,
  type BlobAccess,
  type ImageSource,
  type LayerDescriptor,
} from "./source.js";

/** Files of a layout: a directory or the members of a tar. */
export interface LayoutFiles {
  size(name: string): Promise<number | undefined>;
  stream(name: string): Readable;
}

export function dirFiles(dir: string): LayoutFiles {
  return {
    async size(name) {
      const st = await stat(join(dir, name)).catch(() => undefined);
      return st?.isFile() ? st.size : undefined;
    },
    stream: (name) => createReadStream(join(dir, name), { highWaterMark: 1 << 20 }),
  };
}

/** Indexes a tar file's regular members (one pass over its headers), for reads by offset. */
export async function archiveFiles(file: string, input: string): Promise<LayoutFiles> {
  const members = new Map<string, { offset: number; size: number }>();
  const fh = await open(file, "r").catch((err: NodeJS.ErrnoException) => {
    throw new Error(err.code === "ENOENT" ? "no such file" : err.message);
  });
  const isDir = (await fh.stat().finally(() => fh.close())).isDirectory();
  if (isDir) throw new Error("a directory, not a tar archive");
  const stream = createReadStream(file, { highWaterMark: 1 << 20 });
  try {
    for await (const m of readTarMembers(stream, input)) {
      if (m.type !== "0" && m.type !== "7") continue;
      const name = m.name.replace(/^(\.\/)+/, "").replace(/^\/+/, "");
      members.set(name, { offset: m.dataOffset, size: m.size });
    }
  } finally {
    stream.destroy();
  }
  return {
    size: async (name) => members.get(name)?.size,
    stream(name) {
      const m = members.get(name);
      if (!m) throw new Error(`the archive has no member ${quote(name)}`);
      if (m.size === 0) return Readable.from([]);
      return createReadStream(file, { start: m.offset, end: m.offset + m.size - 1, highWaterMark: 1 << 20 });
    },
  };
}

export async function readFileBounded(
  files: LayoutFiles,
  name: string,
  max: number,
): Promise<Buffer | undefined> {
  const size = await files.size(name);
  if (size === undefined) return undefined;
  if (size > max) throw new Error(`${name} is ${size} bytes (limit ${max})`);
  return collectBounded(files.stream(name), max);
}

function layoutAccess(files: LayoutFiles): BlobAccess {
  const blobName = (d: LayerDescriptor): string => `blobs/sha256/${digestHex(d.digest)}`;
  return {
    async read(d, max) {
      const b = await readFileBounded(files, blobName(d), max);
      if (!b) throw new Error(`blob ${d.digest} is missing`);
      return b;
    },
    async stream(d) {
      if ((await files.size(blobName(d))) === undefined) throw new Error(`blob ${d.digest} is missing`);
      return files.stream(blobName(d));
    },
    close: async () => undefined,
  };
}

export async function openLayout(
  ref: string,
  files: LayoutFiles,
  tag: string | undefined,
  o: { storeDir: string; platform: Platform },
): Promise<ImageSource> {
  const layoutFile = await readFileBounded(files, "oci-layout", 4096);
  if (!layoutFile) throw new Error("no oci-layout file (not an OCI image layout)");
  if (parseJsonObject(layoutFile, "oci-layout").imageLayoutVersion !== "1.0.0")
    throw new Error("oci-layout: unsupported imageLayoutVersion");
  const indexBytes = await readFileBounded(files, "index.json", MAX_JSON_BYTES);
  if (!indexBytes) throw new Error("no index.json");
  const index = parseJsonObject(indexBytes, "index.json");
  if (!Array.isArray(index.manifests)) throw new Error("index.json has no manifests array");
  if (index.manifests.length > MAX_ENTRIES) throw new Error("index.json lists too many manifests");
  const entries = index.manifests.map((m, i) => checkDescriptor(m, `index.json manifests[${i}]`));
  const tagOf = (e: Descriptor): string | undefined => e.annotations?.[REF_NAME_ANNOTATION];
  const tags = [...new Set(entries.map(tagOf).filter((t): t is string => t !== undefined))].sort();
  let chosen = entries;
  if (tag !== undefined) {
    chosen = entries.filter((e) => tagOf(e) === tag);
    if (chosen.length === 0)
      throw new Error(
        `no image tagged ${quote(tag)} in index.json (tags: ${tags.length ? tags.join(", ") : "none"})`,
      );
  } else if (entries.length === 0) throw new Error("index.json lists no image");
  const access = layoutAccess(files);
  const fetch = (d: LayerDescriptor): Promise<Buffer> => readVerified(access, d, "manifest");
  let entry: LayerDescriptor;
  if (chosen.length === 1) entry = chosen[0];
  else if (new Set(chosen.map(tagOf)).size > 1 || chosen.some((e) => !platformOf(e)))
    throw new Error(
      `index.json holds ${chosen.length} images; name one as ${ref}:TAG (tags: ${tags.join(", ") || "none"})`,
    );
  else entry = selectPlatform(chosen, o.platform);
  const m = await resolveManifest(await fetch(entry), entry.digest, entry.mediaType, o.platform, fetch);
  return buildSource(ref, access, m, o.storeDir);
}
