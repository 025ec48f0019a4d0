// The OCI image layout writer: `oci-layout`, `blobs/sha256/<hex>` and `index.json`, in a new directory or added
// to an existing layout (its other index entries are kept; an entry with the same tag is replaced). Blobs are
// hard-linked from the image's blob store when it is on the same filesystem, else copied, and skipped when
// present; each lands under a temporary name and is renamed into place. index.json is written last (atomically),
// after every blob it names is durable, so an interrupted write never leaves an index pointing to missing blobs.
// A new layout is written whole under a temporary sibling name and renamed into place. The temporaries of a
// killed writer (their names carry its pid) go with the next write to the layout.
import { withPathLock } from "../util/path-lock.js";
import { constants, createReadStream, createWriteStream } from "node:fs";
import { copyFile, link, mkdir, open, readdir, readFile, rename, rm, stat } from "node:fs/promises";
import { basename, dirname, join, resolve } from "node:path";
import { pipeline } from "node:stream/promises";
import { mapLimit } from "../util/concurrency.js";
import { NixociError, quote } from "../util/errors.js";
import { makeDirs, readJsonFile, removeTree, sweepAbandonedTemps, tempSibling } from "../util/fs.js";
import { fsError } from "../util/fs-errors.js";
import type { Descriptor } from "../oci/descriptor.js";
import { digestHex, isDigest, type Digest } from "../oci/digest.js";
import type { BuiltImage } from "../oci/image.js";
import { isIndex, type BuiltTarget } from "../oci/index.js";
import { OCI_INDEX } from "../oci/media-types.js";
import { isValidTag } from "../oci/reference.js";
import { referrerDescriptor, type BuiltReferrer } from "../oci/referrer.js";

export const REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name";
/**
 * The full image name an archive's importer gives the image (containerd's `ctr images import`, Docker's
 * containerd-store `docker load`; BuildKit's OCI exporter writes it too): ref.name alone is just a tag.
 */
export const CONTAINERD_IMAGE_NAME_ANNOTATION = "io.containerd.image.name";
export const OCI_LAYOUT_FILE = '{"imageLayoutVersion":"1.0.0"}';

export interface OciIndex {
  schemaVersion: 2;
  mediaType?: string;
  manifests: Descriptor[];
  annotations?: Record<string, string>;
  [key: string]: unknown;
}

/**
 * The index.json entry for an image, or for a multi-platform image's index (tagged through the ref.name
 * annotation when a tag is given). An index is one entry pointing to the index blob, as BuildKit writes it and
 * skopeo, containerd and umoci read it: the tag names the whole image, the index picks the platform.
 */
export function indexEntry(target: BuiltTarget, tag?: string, name?: string): Descriptor {
  const top = isIndex(target) ? target.index : target.manifest;
  const d: Descriptor = { mediaType: top.mediaType, digest: top.digest, size: top.size };
  const annotations: Record<string, string> = {};
  if (name !== undefined) annotations[CONTAINERD_IMAGE_NAME_ANNOTATION] = name;
  if (tag !== undefined) annotations[REF_NAME_ANNOTATION] = tag;
  if (name !== undefined || tag !== undefined) d.annotations = annotations;
  if (!isIndex(target)) {
    const { architecture, os, variant } = target.platform;
    d.platform = variant ? { architecture, os, variant } : { architecture, os };
  }
  return d;
}

/** The digest outputs report: the manifest's, or a multi-platform image's index's. */
export function targetDigest(target: BuiltTarget): string {
  return isIndex(target) ? target.index.digest : target.manifest.digest;
}

/** Every blob an image consists of: config, layers (each once) and the manifest. */
export function imageBlobs(image: BuiltImage): Array<{ digest: Digest; size: number; bytes?: Buffer }> {
  const out: Array<{ digest: Digest; size: number; bytes?: Buffer }> = [];
  const seen = new Set<string>();
  const add = (digest: string, size: number, bytes?: Buffer): void => {
    if (seen.has(digest)) return;
    if (!isDigest(digest)) throw new NixociError(image.blobs.root, `malformed blob digest ${quote(digest)}`);
    seen.add(digest);
    out.push({ digest, size, bytes });
  };
  add(image.config.digest, image.config.size, image.config.bytes);
  for (const l of image.layers) add(l.digest, l.size);
  add(image.manifest.digest, image.manifest.size, image.manifest.bytes);
  return out;
}

export interface TargetBlob {
  digest: Digest;
  size: number;
  /** The exact bytes, for blobs the image's store may lack (config, manifest, index). */
  bytes?: Buffer;
  /** The image whose blob store holds it (each platform's build may have its own store under --no-cache). */
  image: BuiltImage;
}

/** Every blob of an image or of an index's images (each once), the index last. */
export function targetBlobs(target: BuiltTarget): TargetBlob[] {
  const images = isIndex(target) ? target.images : [target];
  const seen = new Set<string>();
  const out: TargetBlob[] = [];
  for (const image of images)
    for (const b of imageBlobs(image))
      if (!seen.has(b.digest)) {
        seen.add(b.digest);
        out.push({ ...b, image });
      }
  if (isIndex(target))
    out.push({
      digest: target.index.digest,
      size: target.index.size,
      bytes: target.index.bytes,
      image: images[0],
    });
  return out;
}

/**
 * The blobs of referrers not already among `seen` (added to it), kept in memory: every one has its bytes. The
 * image they are written beside stands in as the store they might already be linked from.
 */
export function referrerBlobs(
  referrers: readonly BuiltReferrer[],
  image: BuiltImage,
  seen: Set<string>,
): TargetBlob[] {
  const out: TargetBlob[] = [];
  for (const r of referrers)
    for (const b of [...r.blobs, r.manifest])
      if (!seen.has(b.digest)) {
        seen.add(b.digest);
        out.push({ digest: b.digest, size: b.size, bytes: b.bytes, image });
      }
  return out;
}

/** The image's blobs, then its referrers' (each blob once). */
export function layoutBlobs(target: BuiltTarget, referrers: readonly BuiltReferrer[]): TargetBlob[] {
  const blobs = targetBlobs(target);
  const first = isIndex(target) ? target.images[0] : target;
  return [...blobs, ...referrerBlobs(referrers, first, new Set(blobs.map((b) => b.digest)))];
}

/** Checks a blob of the image's store exists with its descriptor's size; returns its path. */
export async function storeBlobPath(image: BuiltImage, digest: Digest, size: number): Promise<string> {
  const path = image.blobs.path(digest);
  let st;
  try {
    st = await stat(path);
  } catch {
    throw new NixociError(path, "blob is missing from the blob store");
  }
  if (st.size !== size) throw new NixociError(path, `blob has ${st.size} bytes, the manifest says ${size}`);
  return path;
}

async function fsyncPath(path: string, dir = false): Promise<void> {
  const fh = await open(path, dir ? constants.O_RDONLY | constants.O_DIRECTORY : constants.O_RDONLY);
  try {
    await fh.sync();
  } catch (err) {
    // Some filesystems refuse fsync on directories; the rename order still holds.
    if (!dir) throw err;
  } finally {
    await fh.close();
  }
}

async function writeDurable(file: string, data: Buffer | string): Promise<void> {
  const slash = file.lastIndexOf("/");
  const tmp = tempSibling(file.slice(0, slash) || "/", file.slice(slash + 1));
  try {
    const fh = await open(tmp, "wx", 0o644);
    try {
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, file);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}

/** Why a hard link from the blob store can fail where a copy works (another filesystem, no links there). */
const LINK_REFUSED = new Set(["EXDEV", "EPERM", "EMLINK", "ENOTSUP", "EACCES"]);

/** Hard-links `src` at `dest`; false where links are refused (LINK_REFUSED: copy instead), other errors thrown. */
async function linkUnlessRefused(src: string, dest: string): Promise<boolean> {
  try {
    await link(src, dest);
    return true;
  } catch (err) {
    if (LINK_REFUSED.has((err as NodeJS.ErrnoException).code ?? "")) return false;
    throw err;
  }
}

/** Puts one blob into blobDir (link, else copy, else the given bytes), unless it is already there. */
async function placeBlob(
  image: BuiltImage,
  blobDir: string,
  b: { digest: Digest; size: number; bytes?: Buffer },
): Promise<"present" | "linked" | "copied"> {
  const dest = join(blobDir, digestHex(b.digest));
  // A blob the layout has already needs none in the store (the error is for a blob that is in neither).
  let missing: unknown;
  const src = b.bytes
    ? image.blobs.path(b.digest)
    : await storeBlobPath(image, b.digest, b.size).catch((err: unknown) => ((missing = err), ""));
  const srcSt = b.bytes ? await stat(src).catch(() => undefined) : missing ? undefined : { size: b.size };
  const whole = srcSt !== undefined && srcSt.size === b.size;
  // A hard link appears whole or not at all: straight under its name, unless the name is taken. Refused once,
  // a link is not tried again below.
  let linkable = whole;
  if (linkable) {
    try {
      if (await linkUnlessRefused(src, dest)) return "linked";
      linkable = false;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
    }
  }
  const have = await stat(dest).catch(() => undefined);
  if (have?.isFile() && have.size === b.size) return "present";
  if (missing) throw missing;
  const tmp = tempSibling(blobDir, digestHex(b.digest));
  try {
    let how: "linked" | "copied" = "copied";
    if (whole) {
      if (linkable && (await linkUnlessRefused(src, tmp))) how = "linked";
      else {
        await copyFile(src, tmp, constants.COPYFILE_EXCL);
        await fsyncPath(tmp);
      }
    } else if (b.bytes) {
      const fh = await open(tmp, "wx", 0o644);
      try {
        await fh.writeFile(b.bytes);
        await fh.sync();
      } finally {
        await fh.close();
      }
    } else {
      await pipeline(createReadStream(src), createWriteStream(tmp, { flags: "wx" }));
      await fsyncPath(tmp);
    }
    await rename(tmp, dest);
    return how;
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}

/** Reads an existing index.json (undefined when there is none); rejects what is not an OCI index. */
export async function readIndex(dir: string): Promise<OciIndex | undefined> {
  const file = join(dir, "index.json");
  const parsed = await readJsonFile(file);
  if (parsed === undefined) return undefined;
  const j = parsed as OciIndex;
  if (typeof j !== "object" || j === null || j.schemaVersion !== 2 || !Array.isArray(j.manifests))
    throw new NixociError(file, "is not an OCI image index (schemaVersion 2 with a manifests array)");
  return j;
}

async function prepareLayoutDir(dir: string): Promise<void> {
  const st = await stat(dir).catch(() => undefined);
  if (st && !st.isDirectory()) throw new NixociError(dir, "exists and is not a directory");
  if (!st) {
    await makeDirs(dir);
    return;
  }
  let layout: string | undefined;
  try {
    layout = await readFile(join(dir, "oci-layout"), "utf8");
  } catch {
    layout = undefined;
  }
  if (layout === undefined) {
    const names = (await readdir(dir)).filter((n) => !n.startsWith("."));
    if (names.length)
      throw new NixociError(dir, "exists, is not empty and is not an OCI image layout (no oci-layout)");
    return;
  }
  let version: unknown;
  try {
    version = (JSON.parse(layout) as { imageLayoutVersion?: unknown }).imageLayoutVersion;
  } catch {
    throw new NixociError(join(dir, "oci-layout"), "is not valid JSON");
  }
  if (version !== "1.0.0")
    throw new NixociError(
      join(dir, "oci-layout"),
      `unsupported imageLayoutVersion ${quote(String(version))}`,
    );
}

/** True when `dir` does not exist or is an empty directory: the layout is new. */
async function isNewLayout(dir: string): Promise<boolean> {
  const st = await stat(dir).catch(() => undefined);
  if (!st) return true;
  return st.isDirectory() && (await readdir(dir)).length === 0;
}

/**
 * Writes (or adds) the image (or multi-platform index) to the OCI layout `dir`, tagged `tag` when given, with
 * `referrers` (documents about its manifests) as untagged index.json entries, where layout readers (skopeo, oras,
 * regctl) find a manifest's referrers. Returns the manifest (or index) digest.
 * A new layout (no directory, or an empty one) is written whole under a temporary sibling name and renamed into
 * place, so it appears complete or not at all; an existing one gets its blobs first and its index.json last.
 */
export async function writeOciLayout(
  image: BuiltTarget,
  dir: string,
  tag?: string,
  referrers: readonly BuiltReferrer[] = [],
): Promise<string> {
  if (tag !== undefined && !isValidTag(tag)) throw new NixociError(dir, `invalid tag ${quote(tag)}`);
  try {
    const parent = dirname(resolve(dir));
    const base = basename(resolve(dir));
    // What killed writers of a new layout here left beside it.
    await sweepAbandonedTemps(parent, (name) => name.startsWith(`.${base}.tmp-`));
    if (await isNewLayout(dir)) {
      await makeDirs(parent);
      const tmp = tempSibling(parent, base);
      try {
        await mkdir(tmp);
        await writeIntoLayout(image, tmp, tag, referrers);
        await rename(tmp, dir); // replaces an empty directory
        await fsyncPath(parent, true);
        return targetDigest(image);
      } catch (err) {
        await removeTree(tmp);
        const code = (err as NodeJS.ErrnoException).code;
        // Another writer made the layout meanwhile: add to it as to any existing layout.
        if (code !== "ENOTEMPTY" && code !== "EEXIST") throw err;
      }
    }
    return await writeIntoLayout(image, dir, tag, referrers);
  } catch (err) {
    // Named after the layout: the temporaries (a new layout's tree, blobs, index.json) mean nothing to a user.
    throw fsError(dir, err, "cannot write the OCI layout");
  }
}

/** Adds the image to the layout `dir` (a new, empty directory or an existing layout) in place. */
async function writeIntoLayout(
  image: BuiltTarget,
  dir: string,
  tag: string | undefined,
  referrers: readonly BuiltReferrer[],
): Promise<string> {
  await prepareLayoutDir(dir);
  // Not a layout (another file called index.json): refused before any blob is placed.
  await readIndex(dir);
  const blobDir = join(dir, "blobs", "sha256");
  // What killed writers of this layout left: blobs, index.json and oci-layout under temporary names.
  await sweepAbandonedTemps(dir);
  await sweepAbandonedTemps(blobDir);
  await makeDirs(blobDir);
  await mapLimit(layoutBlobs(image, referrers), 8, (b) => placeBlob(b.image, blobDir, b));
  await fsyncPath(blobDir, true);
  if (!(await stat(join(dir, "oci-layout")).catch(() => undefined)))
    await writeDurable(join(dir, "oci-layout"), OCI_LAYOUT_FILE);

  // Read, add, write: concurrent builds into one layout take turns, or all but one tag would be lost.
  return withPathLock(join(dir, ".index.json.lock"), dir, () => addToIndex(image, dir, tag, referrers));
}

/** index.json with the image's entry (replacing the tag's previous one) and its referrers' entries. */
async function addToIndex(
  image: BuiltTarget,
  dir: string,
  tag: string | undefined,
  referrers: readonly BuiltReferrer[],
): Promise<string> {
  const existing = await readIndex(dir);
  const entry = indexEntry(image, tag);
  const referrerEntries = referrers.map(referrerDescriptor);
  // Untagged: only the image's tag names anything, and a referrer is found through its subject.
  const untagged = new Set([
    ...(tag === undefined ? [entry.digest] : []),
    ...referrerEntries.map((d) => d.digest),
  ]);
  const kept = (existing?.manifests ?? []).filter((m) => {
    const name = m.annotations?.[REF_NAME_ANNOTATION];
    if (tag !== undefined && name === tag) return false;
    // An untagged write replaces an untagged entry for the same manifest instead of duplicating it.
    return !(name === undefined && untagged.has(m.digest));
  });
  const index: OciIndex = {
    ...(existing ?? {}),
    schemaVersion: 2,
    mediaType: OCI_INDEX,
    manifests: [...kept, entry, ...referrerEntries],
  };
  await writeDurable(join(dir, "index.json"), JSON.stringify(index));
  await fsyncPath(dir, true);
  return targetDigest(image);
}
