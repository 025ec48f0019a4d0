// Loads a Nix image description (src/outputs/nix-image.ts) into containerd, as containerd's own client imports and
// unpacks an image, but without a registry and without reading or writing the bytes of store layers:
//
// 1. config, manifest and blob layers (the customisation layer) go into the content store, under a lease;
// 2. each layer is unpacked through containerd's snapshots service into `snapshotter`, keyed by its chain ID:
//    a store layer's Prepare carries `containerd.io/snapshot.ref` and its `containerd.io/snapshot/nix-store-path.<i>`
//    labels (plus the CRI manifest-digest label nixoci's GC roots are grouped by), so nixoci's snapshotter commits
//    it from the Nix store and answers ALREADY_EXISTS, which containerd's metadata records as a committed snapshot;
//    a blob layer is applied by containerd's diff service and committed. When the snapshotter does not make a
//    store layer itself (another snapshotter, or a path it cannot find), the layer's tar is generated from the
//    local store (nixoci's tar format is deterministic) and applied, and must match the config's diff_id;
// 3. the garbage-collection labels containerd's importer sets (manifest -> config and blobs, config -> top
//    snapshot) and the image record named `name`, labelled as a CRI-managed image, so containerd's CRI plugin
//    lists it (it watches image events in its namespace).
import { randomBytes } from "node:crypto";
import { createReadStream } from "node:fs";
import type { ContainerdClient, DescriptorMessage } from "../../outputs/containerd-client.js";
import { ALREADY_EXISTS, grpcCode } from "../../outputs/containerd-client.js";
import { MANIFEST_DIGEST_LABEL, REF_LABEL, SNAPSHOT_LABEL_PREFIX } from "../../image/annotations.js";
import { storePathsTar } from "../../image/layer-tar.js";
import { LAYER_TAR_FORMATS } from "../../image/tar-header.js";
import { OCI_LAYER } from "../../oci/media-types.js";
import { chainIdOf } from "../../oci/digest.js";
import type { NixImage, NixImageLayer } from "../../outputs/nix-image.js";
import type { Logger } from "../../util/logger.js";
import type { LocalStore } from "../../store/local-store.js";
import { NixociError } from "../../util/errors.js";

export const CRI_IMAGE_LABEL = "io.cri-containerd.image";

export interface ImportOptions {
  containerd: ContainerdClient;
  snapshotter: string;
  store: LocalStore;
  log?: Logger;
}

export interface ImportResult {
  /** The image ID CRI reports: the config digest. */
  id: string;
  /** Layers already present as snapshots, made by the snapshotter from the store, applied from a blob, or
   * applied from a tar generated from the store. */
  layers: { present: number; fromStore: number; applied: number; generated: number };
}

/** containerd's chain IDs: chain[0] = diff[0]; chain[i] = sha256(chain[i-1] + " " + diff[i]). */
export function chainIds(diffIds: string[]): string[] {
  const out: string[] = [];
  for (const d of diffIds) out.push(chainIdOf(out[out.length - 1] ?? "", d));
  return out;
}

function descriptorMessage(d: {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
}): DescriptorMessage {
  return { media_type: d.mediaType, digest: d.digest, size: d.size, annotations: d.annotations ?? {} };
}

export async function importNixImage(
  image: NixImage,
  name: string,
  opts: ImportOptions,
): Promise<ImportResult> {
  const { snapshotter } = opts;
  const counts = { present: 0, fromStore: 0, applied: 0, generated: 0 };
  const chains = chainIds(image.layers.map((l) => l.diffId));
  await opts.containerd.withLease(async (containerd) => {
    const leased = { ...opts, containerd };
    await containerd.writeContent(image.config.digest, image.config.size, image.config.bytes);
    const manifestLabels: Record<string, string> = {
      "containerd.io/gc.ref.content.config": image.config.digest,
    };
    // Store layers' blobs (when the description has them) are written only if a layer must be applied from one.
    for (const [i, layer] of image.layers.entries()) {
      if (!layer.blobFile || layer.storePaths.length) continue;
      await containerd.writeContent(
        layer.descriptor.digest,
        layer.descriptor.size,
        createReadStream(layer.blobFile),
      );
      manifestLabels[`containerd.io/gc.ref.content.l.${i}`] = layer.descriptor.digest;
    }
    await containerd.writeContent(
      image.manifest.digest,
      image.manifest.size,
      image.manifest.bytes,
      manifestLabels,
    );

    const lateBlobs: Record<string, string> = {};
    for (const [i, layer] of image.layers.entries()) {
      const how = await unpackLayer(image, layer, chains[i], i ? chains[i - 1] : "", leased);
      counts[how]++;
      if (how === "applied" && layer.storePaths.length)
        lateBlobs[`containerd.io/gc.ref.content.l.${i}`] = layer.descriptor.digest;
    }
    if (Object.keys(lateBlobs).length) await containerd.updateContentLabels(image.manifest.digest, lateBlobs);
    const top = chains[chains.length - 1];
    if (top)
      await containerd.updateContentLabels(image.config.digest, {
        [`containerd.io/gc.ref.snapshot.${snapshotter}`]: top,
      });
    await containerd.putImage(name, descriptorMessage(image.manifest), { [CRI_IMAGE_LABEL]: "managed" });
  });
  opts.log?.info("nix image loaded", { image: name, id: image.config.digest, ...counts });
  return { id: image.config.digest, layers: counts };
}

async function unpackLayer(
  image: NixImage,
  layer: NixImageLayer,
  chain: string,
  parent: string,
  opts: ImportOptions,
): Promise<keyof ImportResult["layers"]> {
  const { containerd, snapshotter } = opts;
  if (await containerd.stat(snapshotter, chain)) return "present";
  const labels: Record<string, string> = {
    [REF_LABEL]: chain,
    [MANIFEST_DIGEST_LABEL]: image.manifest.digest,
  };
  for (const [k, v] of Object.entries(layer.descriptor.annotations ?? {}))
    if (k.startsWith(SNAPSHOT_LABEL_PREFIX)) labels[k] = v;
  const key = `extract-${Date.now()}${randomBytes(4).toString("hex")} ${chain}`;
  let mounts;
  try {
    mounts = await containerd.prepare(snapshotter, key, parent, labels);
  } catch (err) {
    if (grpcCode(err) === ALREADY_EXISTS) return layer.storePaths.length ? "fromStore" : "present";
    throw err;
  }
  try {
    let how: "applied" | "generated";
    let applied: DescriptorMessage;
    if (layer.blobFile) {
      // A blob layer, or a store layer whose blob the description carries (an OCI archive as a store path):
      // applied as it is (a nix-snapshotter image's nix layer holds only mountpoints, not the store contents).
      if (layer.storePaths.length)
        await containerd.writeContent(
          layer.descriptor.digest,
          layer.descriptor.size,
          createReadStream(layer.blobFile),
        );
      applied = await containerd.apply(descriptorMessage(layer.descriptor), mounts);
      how = "applied";
    } else {
      applied = await containerd.apply(await writeGeneratedLayer(layer, opts), mounts);
      how = "generated";
    }
    if (applied.digest !== layer.diffId)
      throw new NixociError(
        image.storePath,
        `layer ${layer.descriptor.digest} unpacked to ${applied.digest}, but the config's diff_id is ${layer.diffId}`,
      );
    try {
      await containerd.commit(snapshotter, chain, key, { [REF_LABEL]: chain });
    } catch (err) {
      if (grpcCode(err) !== ALREADY_EXISTS) throw err;
      await containerd.removeSnapshot(snapshotter, key).catch(() => undefined);
    }
    return how;
  } catch (err) {
    await containerd.removeSnapshot(snapshotter, key).catch(() => undefined);
    throw err;
  }
}

/**
 * A store layer the snapshotter did not make: its uncompressed tar, generated from the local store, written to
 * the content store (its digest is computed on the way, and must be the config's diff_id).
 */
async function writeGeneratedLayer(layer: NixImageLayer, opts: ImportOptions): Promise<DescriptorMessage> {
  const sources = [];
  for (const p of layer.storePaths) {
    if (!(await opts.store.queryPathInfo(p)))
      throw new NixociError(
        p,
        "is not in the store, and the snapshotter did not provide the layer that needs it",
      );
    sources.push({ storePath: p, realPath: opts.store.realPath(p) });
  }
  // The tar is deterministic: its digest is the diff_id when this nixoci's tar format, with the header format
  // the image was built with, is the one that built the image. It is written under that digest (size unchecked:
  // 0), so containerd rejects the commit if it differs; then the next header format is tried.
  let firstError: unknown;
  for (const format of Object.values(LAYER_TAR_FORMATS)) {
    try {
      await opts.containerd.writeContent(layer.diffId, 0, storePathsTar(sources, { format }));
      firstError = undefined;
      break;
    } catch (err) {
      firstError ??= err;
    }
  }
  if (firstError) throw firstError;
  const info = await opts.containerd.contentInfo(layer.diffId);
  return { media_type: OCI_LAYER, digest: layer.diffId, size: info?.size ?? 0, annotations: {} };
}
