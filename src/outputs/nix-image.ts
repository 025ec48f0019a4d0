// Nix image descriptions: an OCI image as a Nix store path, for `nixoci build --output nix:[NAME]` and the CRI
// image service's `nix:0/nix/store/<hash>-<name>` references.
//
// Format (version 1): the store path is a directory holding an OCI image layout, `oci-layout`, `index.json`
// (one manifest, tagged through org.opencontainers.image.ref.name when the build had a tag) and
// `blobs/sha256/<hex>` for the manifest, the config and every layer WITHOUT
// `containerd.io/snapshot/nix-store-path.<i>` annotations (the customisation layer). The blobs of layers with
// those annotations are left out: such a layer is exactly its store paths, which the description references
// (its store references are the union of the annotated paths), so the store that holds the description holds
// them too; a snapshotter composes them from the store, and `nixoci build` regenerates the same tar (diff_id in
// the config) when one is needed. A description is small (kilobytes), copies with `nix copy` together with its
// closure, and is garbage-collected like any store path.
import { createHash } from "node:crypto";
import { readFile, stat, writeFile, copyFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Hash } from "../nix/hash.js";
import { makeContentAddressedPath, parseStorePath, validateStorePathName } from "../nix/store-path.js";
import { storePathsFromAnnotations } from "../image/annotations.js";
import type { LocalStore } from "../store/local-store.js";
import { NixociError, quote } from "../util/errors.js";
import { makeDirs, makeTempWorkDir, removeTree } from "../util/fs.js";
import { fsError } from "../util/fs-errors.js";
import { MAX_JSON_BYTES, parseJsonObject } from "../util/json.js";
import { checkDescriptor, type Descriptor } from "../oci/descriptor.js";
import { digestHex, isDigest, type Digest } from "../oci/digest.js";
import type { BuiltImage } from "../oci/image.js";
import { indexEntry, OCI_LAYOUT_FILE, REF_NAME_ANNOTATION } from "./layout.js";
import { OCI_INDEX } from "../oci/media-types.js";
import { isValidTag } from "../oci/reference.js";

export const NIX_IMAGE_REF_PREFIX = "nix:0";
export const DEFAULT_NIX_IMAGE_NAME = "nixoci-image";

/** Store paths a layer descriptor names (its nix-store-path.<i> annotations, in index order). */
export function layerStorePaths(d: { annotations?: Record<string, string> | null }): string[] {
  return storePathsFromAnnotations(d.annotations ?? {});
}

/**
 * A description's store path name must also make `nix:0/<store dir>/<hash>-<name>` a valid Docker reference
 * (containerd's CRI plugin parses it as one): lowercase letters and digits separated by '.', '_', '__' or '-'.
 */
export function checkNixImageName(name: string, input = "nix: output name"): void {
  validateStorePathName(name, input);
  if (!/^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*$/.test(name))
    throw new NixociError(
      input,
      `${quote(name)} is not usable in an image reference: lowercase letters and digits separated by '.', '_' or '-'`,
    );
}

/** Writes the image's description into `store` (registered like any valid path); returns its store path. */
export async function writeNixImage(
  image: BuiltImage,
  store: LocalStore,
  name = DEFAULT_NIX_IMAGE_NAME,
  tag?: string,
): Promise<string> {
  checkNixImageName(name);
  // The description is assembled in TMPDIR; a failure there names TMPDIR, not the work directory (a temporary).
  const assembling = (err: unknown) => fsError(tmpdir(), err, "cannot assemble the image description");
  // Named after this process, so a later write removes it should this one be killed.
  const tmp = await makeTempWorkDir("nixoci-nix-image").catch((err) => {
    throw assembling(err);
  });
  try {
    const dir = join(tmp, "image");
    await assemble(image, dir, tag).catch((err) => {
      throw assembling(err);
    });
    const references = new Set<string>();
    for (const layer of image.layers)
      for (const p of layerStorePaths(layer)) references.add(parseStorePath(p, store.storeDir).path);
    // The NAR writer is loaded here, not with the module: outputs.ts imports this one for every build.
    const { narHashOfPath, dumpPath } = await import("../nix/nar-writer.js");
    const { narHash, narSize } = await narHashOfPath(dir);

    const hash = new Hash("sha256", narHash);
    const sp = makeContentAddressedPath({
      name,
      narHash: hash,
      references: [...references],
      storeDir: store.storeDir,
    });
    await store.addPath(
      {
        path: sp.path,
        narHash: hash,
        narSize,
        references: [...references].sort(),
        sigs: [],
      },
      dumpPath(dir),
    );
    return sp.path;
  } finally {
    await removeTree(tmp);
  }
}

/** The description's layout in `dir`: oci-layout, index.json, the manifest, the config and the blob layers. */
async function assemble(image: BuiltImage, dir: string, tag: string | undefined): Promise<void> {
  const blobs = join(dir, "blobs", "sha256");
  await makeDirs(blobs);
  await writeFile(join(dir, "oci-layout"), OCI_LAYOUT_FILE);
  const index = { schemaVersion: 2, mediaType: OCI_INDEX, manifests: [indexEntry(image, tag)] };
  await writeFile(join(dir, "index.json"), JSON.stringify(index));
  await writeFile(join(blobs, digestHex(image.manifest.digest)), image.manifest.bytes);
  await writeFile(join(blobs, digestHex(image.config.digest)), image.config.bytes);
  for (const layer of image.layers)
    if (!layerStorePaths(layer).length)
      await copyFile(
        image.blobs.path(layer.digest as Digest),
        join(blobs, digestHex(layer.digest as Digest)),
      );
}

/**
 * The error for a store a nix: output cannot write into (the pre-build check and a write that fails say the same):
 * the output, the store, the problem in words and the fix.
 */
export function storeNotWritable(output: string, dir: string, problem: string, owner: string): NixociError {
  return new NixociError(
    output,
    `cannot write to the store ${dir} (${problem}): nix: outputs go into the store; run as its owner (${owner})` +
      " or give --store DIR",
  );
}

export interface NixImageLayer {
  descriptor: Descriptor;
  /** The uncompressed tar's digest (the config's diff_id). */
  diffId: Digest;
  /** Store paths of a store layer (its blob is not in the description); empty for a blob layer. */
  storePaths: string[];
  /** The blob's file in the description (always for blob layers; for store layers when the layout has it). */
  blobFile?: string;
}

export interface NixImage {
  storePath: string;
  tag?: string;
  manifest: { digest: Digest; size: number; mediaType: string; bytes: Buffer };
  config: { digest: Digest; size: number; mediaType: string; bytes: Buffer };
  layers: NixImageLayer[];
  platform: { architecture: string; os: string };
}

async function readVerifiedBlob(file: string, digest: Digest, size: number, what: string): Promise<Buffer> {
  if (size > MAX_JSON_BYTES) throw new Error(`${what} is ${size} bytes (limit ${MAX_JSON_BYTES})`);
  let bytes: Buffer;
  try {
    bytes = await readFile(file);
  } catch {
    throw new Error(`${what} blob ${digest} is missing`);
  }
  if (bytes.length !== size)
    throw new Error(`${what} blob ${digest} has ${bytes.length} bytes, expected ${size}`);
  if (`sha256:${createHash("sha256").update(bytes).digest("hex")}` !== digest)
    throw new Error(`${what} blob ${digest} does not match its digest`);
  return bytes;
}

/**
 * Reads and checks the description at `storePath` (its real location: `realPath`): layout, index, manifest and
 * config (digests verified), layer store paths (parsed against `storeDir`), blob layers present with their
 * sizes. Errors name the description and what is wrong with it.
 */
export async function readNixImage(storePath: string, realPath: string, storeDir: string): Promise<NixImage> {
  try {
    const st = await stat(realPath).catch(() => undefined);
    if (!st) throw new Error("does not exist");
    if (!st.isDirectory()) throw new Error("is not a directory (not a nixoci image description)");
    const layout = await readFile(join(realPath, "oci-layout"), "utf8").catch(() => undefined);
    if (layout === undefined) throw new Error("has no oci-layout file (not a nixoci image description)");
    if (
      (parseJsonObject(Buffer.from(layout), "oci-layout") as { imageLayoutVersion?: unknown })
        .imageLayoutVersion !== "1.0.0"
    )
      throw new Error("oci-layout: unsupported imageLayoutVersion");
    const indexBytes = await readFile(join(realPath, "index.json")).catch(() => undefined);
    if (!indexBytes) throw new Error("has no index.json");
    if (indexBytes.length > MAX_JSON_BYTES) throw new Error("index.json is too large");
    const index = parseJsonObject(indexBytes, "index.json") as { manifests?: unknown };
    if (!Array.isArray(index.manifests) || index.manifests.length === 0)
      throw new Error("index.json lists no manifest");
    const entry = checkDescriptor(index.manifests[0], "index.json manifests[0]");
    const blobPath = (d: Digest): string => join(realPath, "blobs", "sha256", digestHex(d));
    const manifestBytes = await readVerifiedBlob(
      blobPath(entry.digest),
      entry.digest,
      entry.size,
      "manifest",
    );
    const manifest = parseJsonObject(manifestBytes, "manifest") as { config?: unknown; layers?: unknown };
    const configDesc = checkDescriptor(manifest.config, "manifest config");
    if (!Array.isArray(manifest.layers)) throw new Error("manifest has no layers array");
    const configBytes = await readVerifiedBlob(
      blobPath(configDesc.digest),
      configDesc.digest,
      configDesc.size,
      "config",
    );
    const config = parseJsonObject(configBytes, "config") as {
      architecture?: unknown;
      os?: unknown;
      rootfs?: { diff_ids?: unknown };
    };
    const diffIds = config.rootfs?.diff_ids;
    if (
      !Array.isArray(diffIds) ||
      diffIds.length !== manifest.layers.length ||
      !diffIds.every((d) => isDigest(String(d)))
    )
      throw new Error("config rootfs.diff_ids does not match the manifest's layers");
    const layers: NixImageLayer[] = [];
    for (const [i, raw] of (manifest.layers as unknown[]).entries()) {
      const descriptor = checkDescriptor(raw, `manifest layers[${i}]`);
      const storePaths = layerStorePaths(descriptor);
      for (const p of storePaths) parseStorePath(p, storeDir, `layer ${i} store path`);
      const layer: NixImageLayer = { descriptor, diffId: diffIds[i] as Digest, storePaths };
      // A blob layer's blob must be there; a store layer's may be (a full OCI layout or archive).
      const file = blobPath(descriptor.digest);
      const bst = await stat(file).catch(() => undefined);
      if (bst?.isFile() || !storePaths.length) {
        if (!bst?.isFile()) throw new Error(`layer ${i} blob ${descriptor.digest} is missing`);
        if (bst.size !== descriptor.size)
          throw new Error(`layer ${i} blob has ${bst.size} bytes, the manifest says ${descriptor.size}`);
        layer.blobFile = file;
      }
      layers.push(layer);
    }
    const tag = entry.annotations?.[REF_NAME_ANNOTATION];
    return {
      storePath,
      ...(tag !== undefined ? { tag } : {}),
      manifest: { digest: entry.digest, size: entry.size, mediaType: entry.mediaType, bytes: manifestBytes },
      config: {
        digest: configDesc.digest,
        size: configDesc.size,
        mediaType: configDesc.mediaType,
        bytes: configBytes,
      },
      layers,
      platform: { architecture: String(config.architecture ?? ""), os: String(config.os ?? "") },
    };
  } catch (err) {
    if (err instanceof NixociError) throw err;
    throw new NixociError(storePath, `corrupt image description: ${(err as Error).message}`);
  }
}

/** `nix:0/nix/store/<hash>-<name>[:tag]` -> the store path; anything else is not a nix image reference. */
export function parseNixImageRef(ref: string, storeDir: string): string {
  return parseNixImageRefParts(ref, storeDir).storePath;
}

/** A `nix:0` reference's parts: the description's store path, and the tag or digest it asks for. */
export interface NixImageRefParts {
  storePath: string;
  tag?: string;
  digest?: string;
}

export function parseNixImageRefParts(ref: string, storeDir: string): NixImageRefParts {
  if (!ref.startsWith(`${NIX_IMAGE_REF_PREFIX}/`))
    throw new NixociError(ref, `not a ${NIX_IMAGE_REF_PREFIX}/ reference`);
  let path = ref.slice(NIX_IMAGE_REF_PREFIX.length);
  let digest: string | undefined;
  const at = path.indexOf("@");
  if (at >= 0) {
    digest = path.slice(at + 1);
    path = path.slice(0, at);
    if (!isDigest(digest))
      throw new NixociError(ref, `invalid digest ${JSON.stringify(digest)} (expected sha256:<64 hex>)`);
  }
  let tag: string | undefined;
  const lastSlash = path.lastIndexOf("/");
  const colon = path.indexOf(":", lastSlash);
  if (colon >= 0) {
    tag = path.slice(colon + 1);
    path = path.slice(0, colon);
    if (!isValidTag(tag)) throw new NixociError(ref, `invalid tag ${JSON.stringify(tag)}`);
  }
  return {
    storePath: parseStorePath(path, storeDir, ref).path,
    ...(tag !== undefined ? { tag } : {}),
    ...(digest !== undefined ? { digest } : {}),
  };
}

/**
 * What is wrong with asking `image` for `ask`'s tag or digest, or undefined: a digest must be its manifest's (a
 * pinned digest is a promise about the bytes), a tag other than `latest` its own (`latest`, or none, takes the
 * description's one image whatever its tag). The image service and `nixoci k8s pod` both hold references to it.
 */
export function askedProblem(image: NixImage, ask: { tag?: string; digest?: string }): string | undefined {
  if (ask.digest !== undefined && ask.digest !== image.manifest.digest)
    return `the description's manifest is ${image.manifest.digest}, not ${ask.digest}`;
  if (ask.tag !== undefined && ask.tag !== "latest" && ask.tag !== image.tag)
    return (
      `the description has no tag ${JSON.stringify(ask.tag)} (` +
      (image.tag !== undefined
        ? `its tag is ${JSON.stringify(image.tag)})`
        : "it is untagged: use :latest or no tag)")
    );
  return undefined;
}

/** The reference a pod spec uses for the description at `storePath`. */
export function nixImageRef(storePath: string): string {
  return `${NIX_IMAGE_REF_PREFIX}${storePath}`;
}
