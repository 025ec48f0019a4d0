// Single-file image outputs: oci-archive (a tar of an OCI image layout, what `skopeo copy oci-archive:` reads)
// and docker-archive (what `docker load`, `podman load` and `skopeo docker-archive:` read: manifest.json =
// [{Config, RepoTags, Layers}], the config as <hex>.json and each layer as <hex>.tar.gz, compressed layers being
// accepted by every reader). The tars are deterministic (sorted names, mtime 1, uid/gid 0, fixed modes) and
// streamed: layers go from the blob store to the output chunk by chunk. A file output is written under a
// temporary name and renamed at the end, so a failure never leaves a partial archive (a killed writer's temporary
// goes with the next write of that file); "-" streams to stdout.
import { constants, createReadStream, createWriteStream } from "node:fs";
import { open, rename, rm, stat } from "node:fs/promises";
import { dirname } from "node:path";
import type { Readable, Writable } from "node:stream";
import { NixociError, quote } from "../util/errors.js";
import { sweepAbandonedTemps, tempSibling } from "../util/fs.js";
import { fsError } from "../util/fs-errors.js";
import { holdErrors } from "../util/streams.js";
import { digestHex } from "../oci/digest.js";
import {
  encodeTarHeader,
  TAR_BLOCK,
  TAR_DIR,
  TAR_FILE,
  TAR_FORMAT_USTAR,
  tarPadding,
} from "../image/tar-header.js";
import type { BuiltImage } from "../oci/image.js";
import type { BuiltTarget } from "../oci/index.js";
import { indexEntry, layoutBlobs, OCI_LAYOUT_FILE, storeBlobPath, targetDigest } from "./layout.js";
import { OCI_INDEX, OCI_LAYER, OCI_LAYER_ZSTD } from "../oci/media-types.js";
import { isValidTag } from "../oci/reference.js";
import { referrerDescriptor, type BuiltReferrer } from "../oci/referrer.js";

/** One archive member: a directory, or a file from bytes or from a file on disk. */
export interface TarEntry {
  name: string;
  type: "file" | "dir";
  size?: number;
  bytes?: Buffer;
  path?: string;
}

/** A member's ustar header (tar-header.ts's plain format: what the archive readers take). */
export function tarHeader(e: TarEntry): Buffer {
  const dir = e.type === "dir";
  const name = dir && !e.name.endsWith("/") ? e.name + "/" : e.name;
  return encodeTarHeader(
    {
      name: Buffer.from(name),
      type: dir ? TAR_DIR : TAR_FILE,
      mode: dir ? 0o755 : 0o644,
      size: dir ? 0 : e.size,
    },
    TAR_FORMAT_USTAR,
  );
}

/** The tar byte stream of the entries, in the given order, ending with two zero blocks. */
export async function* tarChunks(entries: TarEntry[]): AsyncGenerator<Buffer> {
  for (const e of entries) {
    yield tarHeader(e);
    if (e.type === "dir") continue;
    const size = e.size ?? 0;
    if (e.bytes) {
      if (e.bytes.length !== size)
        throw new Error(`tar member ${e.name}: ${e.bytes.length} bytes, expected ${size}`);
      yield e.bytes;
    } else if (e.path) {
      let n = 0;
      const s: Readable = createReadStream(e.path, { highWaterMark: 1 << 20 });
      try {
        for await (const chunk of s as AsyncIterable<Buffer>) {
          n += chunk.length;
          if (n > size) break;
          yield chunk;
        }
      } catch (err) {
        // A source that cannot be read is named as such, not as the archive being written.
        throw fsError(e.path, err, "cannot read the blob");
      }
      if (n !== size)
        throw new NixociError(e.path, `blob changed while being archived (${n} bytes, expected ${size})`);
    }
    const pad = tarPadding(size);
    if (pad) yield Buffer.alloc(pad);
  }
  yield Buffer.alloc(2 * TAR_BLOCK);
}

function sortEntries(entries: TarEntry[]): TarEntry[] {
  const key = (e: TarEntry): string => (e.type === "dir" && !e.name.endsWith("/") ? e.name + "/" : e.name);
  return [...entries].sort((a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0));
}

/** Writes chunks to a stream with backpressure, without ending it (stdout must stay open). */
async function writeAll(chunks: AsyncIterable<Buffer>, out: Writable | NodeJS.WritableStream): Promise<void> {
  const w = out as Writable;
  let failed: Error | undefined;
  const onError = (err: Error): void => {
    failed = err;
  };
  w.on("error", onError);
  try {
    for await (const chunk of chunks) {
      if (failed) throw failed;
      if (!w.write(chunk)) {
        await new Promise<void>((resolve, reject) => {
          const done = (): void => {
            w.off("drain", done);
            w.off("error", err);
            w.off("close", done);
            resolve();
          };
          const err = (e: Error): void => {
            w.off("drain", done);
            w.off("close", done);
            reject(e);
          };
          w.once("drain", done);
          w.once("close", done);
          w.once("error", err);
        });
      }
      if (failed) throw failed;
      if ((w as Writable).destroyed) throw new Error("output closed");
    }
  } finally {
    w.off("error", onError);
  }
}

/** Writes the entries as a tar to `file` via a temporary sibling, renamed into place when complete. */
async function writeTarFile(file: string, entries: TarEntry[]): Promise<void> {
  const st = await stat(file).catch(() => undefined);
  if (st?.isDirectory()) throw new NixociError(file, "is a directory");
  const base = file.slice(file.lastIndexOf("/") + 1) || "archive";
  // What killed writes of this file left beside it (temporaries of other files stay).
  await sweepAbandonedTemps(dirname(file), (name) => name.startsWith(`.${base}.tmp-`));
  const tmp = tempSibling(dirname(file), base);
  try {
    // writeAll and end's callback report its errors; a write still in flight when writeAll returns fails
    // while neither listens, and would be an uncaught exception.
    const out = holdErrors(createWriteStream(tmp, { flags: "wx", mode: 0o644 }));
    try {
      await writeAll(tarChunks(entries), out);
    } finally {
      await new Promise<void>((resolve, reject) => {
        if (out.destroyed) return out.errored ? reject(out.errored) : resolve();
        out.end((err?: Error | null) => (err ? reject(err) : resolve()));
      });
    }
    const fh = await open(tmp, constants.O_RDONLY);
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, file);
  } catch (err) {
    await rm(tmp, { force: true });
    // Named after the archive: the temporary is gone, and its name means nothing to whoever reads this.
    throw fsError(file, err, "cannot write the archive");
  }
}

/**
 * The members of an OCI layout holding just this image, or this index and its images, and the referrers about
 * them as untagged entries (sorted).
 */
export async function ociArchiveEntries(
  image: BuiltTarget,
  tag?: string,
  referrers: readonly BuiltReferrer[] = [],
  name?: string,
): Promise<TarEntry[]> {
  const entries: TarEntry[] = [
    { name: "blobs", type: "dir" },
    { name: "blobs/sha256", type: "dir" },
    { name: "oci-layout", type: "file", bytes: Buffer.from(OCI_LAYOUT_FILE), size: OCI_LAYOUT_FILE.length },
  ];
  for (const b of layoutBlobs(image, referrers)) {
    const name = `blobs/sha256/${digestHex(b.digest)}`;
    if (b.bytes) entries.push({ name, type: "file", bytes: b.bytes, size: b.size });
    else
      entries.push({
        name,
        type: "file",
        path: await storeBlobPath(b.image, b.digest, b.size),
        size: b.size,
      });
  }
  const index = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_INDEX,
      manifests: [indexEntry(image, tag, name), ...referrers.map(referrerDescriptor)],
    }),
  );
  entries.push({ name: "index.json", type: "file", bytes: index, size: index.length });
  return sortEntries(entries);
}

/**
 * Writes an oci-archive (tar of an OCI image layout) of an image or a multi-platform index to `file`, with the
 * referrers about its manifests.
 */
export async function writeOciArchive(
  image: BuiltTarget,
  file: string,
  tag?: string,
  referrers: readonly BuiltReferrer[] = [],
  name?: string,
): Promise<string> {
  if (tag !== undefined && !isValidTag(tag)) throw new NixociError(file, `invalid tag ${quote(tag)}`);
  await writeTarFile(file, await ociArchiveEntries(image, tag, referrers, name));
  return targetDigest(image);
}

function layerExtension(mediaType: string): string {
  if (mediaType === OCI_LAYER) return ".tar";
  if (mediaType === OCI_LAYER_ZSTD || mediaType.endsWith("+zstd")) return ".tar.zst";
  return ".tar.gz";
}

/** The members of a docker-archive of this image (sorted; manifest.json sorts after the hex names). */
export async function dockerArchiveEntries(image: BuiltImage, repoTags: string[]): Promise<TarEntry[]> {
  if (image.layers.length !== image.diffIds.length)
    throw new NixociError(
      image.manifest.digest,
      `${image.layers.length} layers but ${image.diffIds.length} diff_ids: docker load would refuse the archive`,
    );
  const configName = `${digestHex(image.config.digest)}.json`;
  const entries: TarEntry[] = [
    { name: configName, type: "file", bytes: image.config.bytes, size: image.config.size },
  ];
  const layerNames: string[] = [];
  const seen = new Set<string>();
  for (const l of image.layers) {
    const name = `${digestHex(l.digest as `sha256:${string}`)}${layerExtension(l.mediaType)}`;
    layerNames.push(name);
    if (seen.has(name)) continue;
    seen.add(name);
    const path = await storeBlobPath(image, l.digest as `sha256:${string}`, l.size);
    entries.push({ name, type: "file", path, size: l.size });
  }
  const manifest = Buffer.from(
    JSON.stringify([{ Config: configName, RepoTags: repoTags, Layers: layerNames }]),
  );
  entries.push({ name: "manifest.json", type: "file", bytes: manifest, size: manifest.length });
  return sortEntries(entries);
}

/**
 * Writes a docker-archive to `fileOrStdout`: a path, "-" for standard output, or any writable stream (left
 * open). `repoTags` are "name:tag" references docker load tags the image with (may be empty).
 */
export async function writeDockerArchive(
  image: BuiltImage,
  fileOrStdout: string | NodeJS.WritableStream,
  repoTags: string[],
): Promise<string> {
  const entries = await dockerArchiveEntries(image, repoTags);
  if (typeof fileOrStdout !== "string" || fileOrStdout === "-") {
    const out = typeof fileOrStdout === "string" ? process.stdout : fileOrStdout;
    try {
      await writeAll(tarChunks(entries), out);
    } catch (err) {
      throw fsError("stdout", err, "cannot write the archive");
    }
  } else {
    await writeTarFile(fileOrStdout, entries);
  }
  return image.manifest.digest;
}
