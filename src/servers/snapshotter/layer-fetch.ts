// A nix layer whose store paths are not all in the store (and no substituter has them), fetched by the
// snapshotter itself from the registry the image is pulled from, so that its Prepare can still answer
// ALREADY_EXISTS. Why: containerd's unpacker, at the first layer whose Prepare it has to unpack, starts fetching
// that layer and every layer above it (core/unpack/unpacker.go: `u.fetch(ctx, h, layers[i:], ...)`), store layers
// the node holds included; one changed package low in an image would cost a node the download of nearly all of it.
// So the snapshotter fetches such a layer only when a layer above it in the image's manifest is one the store holds
// (nix-layers.ts savesDownloads); otherwise containerd's own downloads, in parallel, are the faster way.
//
// It needs CRI's snapshot annotations (containerd.io/snapshot/cri.image-ref and cri.layer-digest; the configs
// `nixoci snapshotter --print-containerd-config` prints turn them on). Credentials are Docker's config.json's, else
// none; plain HTTP for loopback registries only (as `nixoci build -o docker://`). Checked before the layer is
// used: the blob against its digest, the tar against the snapshot's chain ID (sha256 of "PARENT DIFF_ID"), and
// every member: directories, files, symlinks and hard links under the store directory only (a whiteout, a
// device, a path elsewhere or a hard link out of the tree refuses the layer). Any failure is the caller's cue to let
// containerd unpack the layer, as without this.
import { NixociError } from "../../util/errors.js";
import { uncompressedLayer } from "../../util/compression.js";
import { HashingStream } from "../../util/hashing-stream.js";
import { SNAPSHOT_LABEL_PREFIX, storePathsFromAnnotations } from "../../image/annotations.js";
import { chainIdOf, isDigest, sha256Digest } from "../../oci/digest.js";
import { DOCKER_MANIFEST, OCI_MANIFEST } from "../../oci/media-types.js";
import { MAX_JSON_BYTES, parseJsonObject } from "../../util/json.js";
import { parseOutputRef } from "../../outputs/outputs.js";
import { RegistryClient } from "../../outputs/registry-session.js";
import { readTarMembers } from "../../image/tar-reader.js";
import { extractStoreLayer } from "./store-layer-extract.js";

/** The labels containerd's CRI plugin puts on each layer's Prepare when snapshot annotations are on. */
export const IMAGE_REF_LABEL = `${SNAPSHOT_LABEL_PREFIX}cri.image-ref`;
export const LAYER_DIGEST_LABEL = `${SNAPSHOT_LABEL_PREFIX}cri.layer-digest`;

/** Where a layer can be fetched from, when the labels say (undefined: they do not). */
export function layerSource(
  labels: Record<string, string>,
): { imageRef: string; digest: string } | undefined {
  const imageRef = labels[IMAGE_REF_LABEL];
  const digest = labels[LAYER_DIGEST_LABEL];
  return imageRef && digest ? { imageRef, digest } : undefined;
}

/** A socket idle this long fails the fetch (containerd then fetches the layer itself). */
const FETCH_IDLE_MS = 15_000;

/** A client of the repository of `imageRef` (`input` names what it fetches, in errors). */
function clientFor(imageRef: string, input: string): RegistryClient {
  const ref = parseOutputRef(`docker://${imageRef}`);
  if (ref.kind !== "docker") throw new NixociError(input, "not a registry image reference");
  return new RegistryClient(ref.registry, ref.repository, { concurrency: 1, timeoutMs: FETCH_IDLE_MS });
}

/** A layer of an image's manifest: its blob's digest and the store paths its annotations name (maybe none). */
export interface ManifestLayer {
  digest: string;
  paths: string[];
}

/**
 * The layers of the manifest `manifestDigest` of `imageRef` (fetched by digest and checked against it), to tell
 * whether fetching a layer here saves downloads: only when a layer above it is one the store holds (else
 * containerd downloads them all anyway, and does so in parallel).
 */
export async function manifestLayers(imageRef: string, manifestDigest: string): Promise<ManifestLayer[]> {
  const input = `${imageRef} manifest ${manifestDigest}`;
  if (!isDigest(manifestDigest)) throw new NixociError(input, "not a sha256 digest");
  const client = clientFor(imageRef, input);
  try {
    const { bytes } = await client.getManifest(manifestDigest, [OCI_MANIFEST, DOCKER_MANIFEST]);
    if (bytes.length > MAX_JSON_BYTES) throw new NixociError(input, "the manifest is too large");
    if (sha256Digest(bytes) !== manifestDigest)
      throw new NixociError(input, "the registry sent a manifest of another digest");
    const layers = (parseJsonObject(bytes, input) as { layers?: unknown }).layers;
    if (!Array.isArray(layers)) throw new NixociError(input, "the manifest has no layers");
    return layers.map((l: { digest?: unknown; annotations?: Record<string, string> }) => ({
      digest: String(l.digest),
      paths:
        l.annotations && typeof l.annotations === "object" ? storePathsFromAnnotations(l.annotations) : [],
    }));
  } finally {
    client.close();
  }
}

/**
 * Fetches the layer `digest` of `imageRef` and writes its tree into `dir` (an empty directory: the snapshot's fs),
 * checked against `chainId` above `parent`. Returns the blob's size; throws on anything amiss.
 */
export async function fetchLayerTree(opts: {
  imageRef: string;
  digest: string;
  parent: string;
  chainId: string;
  storeDir: string;
  dir: string;
}): Promise<{ bytes: number }> {
  const input = `${opts.imageRef} layer ${opts.digest}`;
  if (!isDigest(opts.digest)) throw new NixociError(input, "not a sha256 layer digest");
  const client = clientFor(opts.imageRef, input);
  try {
    const packed = new HashingStream();
    const blob = await client.openBlob(opts.digest);
    blob.on("error", (err) => packed.destroy(err));
    const tar = await uncompressedLayer(blob.pipe(packed), input);
    const tarHash = new HashingStream();
    tar.on("error", (err) => tarHash.destroy(err));
    const refused = await extractInto(tar.pipe(tarHash), opts.dir, opts.storeDir, input);
    if (refused) throw new NixociError(input, refused);
    const got = `sha256:${packed.hasher.digest("hex")}`;
    if (got !== opts.digest) throw new NixociError(input, `the registry sent a blob whose digest is ${got}`);
    const diffId = `sha256:${tarHash.hasher.digest("hex")}`;
    if (chainIdOf(opts.parent, diffId) !== opts.chainId)
      throw new NixociError(input, `its tar (diff ID ${diffId}) does not make the snapshot ${opts.chainId}`);
    return { bytes: packed.size };
  } finally {
    client.close();
  }
}

/**
 * Writes the tar `source` into `dir` (store-layer-extract.ts). Returns why the tar was refused (a member not allowed
 * in a store layer), else undefined; throws on a corrupt tar or a failed write. The source is read to its end (its
 * hash is the diff ID), unless the layer is refused.
 */
async function extractInto(
  source: AsyncIterable<Buffer>,
  dir: string,
  storeDir: string,
  input: string,
): Promise<string | undefined> {
  const it = source[Symbol.asyncIterator]();
  const once: AsyncIterable<Buffer> = { [Symbol.asyncIterator]: () => it };
  let refused: string | undefined;
  try {
    refused = await extractStoreLayer(readTarMembers(once, input), dir, storeDir);
  } catch (err) {
    await it.return?.();
    if (err instanceof NixociError) throw err;
    throw new NixociError(input, (err as Error).message, { cause: err });
  }
  if (refused) {
    await it.return?.(); // not read further: the caller lets containerd fetch the layer
    return refused;
  }
  // What follows the end-of-archive blocks (padding) is part of the tar's diff ID.
  while (!(await it.next()).done);
  return undefined;
}
