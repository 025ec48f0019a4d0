// What every image source gives (image-source.ts opens one by its reference) and what they share: the bounds,
// the checks of untrusted manifests, configs and descriptors, an index resolved to a platform, and the ImageSource
// made from a manifest and a way to read its blobs. Every transport's module (layout.ts, docker-archive.ts,
// registry.ts, nix.ts) ends in buildSource.
import type { Readable } from "node:stream";
import { formatPlatform, platformMatches, type Platform } from "../../image/platforms.js";
import { defaultArch } from "../../image/spec.js";
import { parseStorePath } from "../../nix/store-path.js";
import { checkDescriptor, type Descriptor } from "../../oci/descriptor.js";
import { isDigest, sha256Digest, type Digest } from "../../oci/digest.js";
import { DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST } from "../../oci/media-types.js";
import { CheckedStream } from "../../util/checked-stream.js";
import { quote } from "../../util/errors.js";
import { MAX_JSON_BYTES, parseJsonObject } from "../../util/json.js";
import { layerStorePaths } from "../nix-image.js";

/** More layers or index entries than this is not an image anyone built. */
export const MAX_ENTRIES = 4096;

/** The platform this machine runs. */
export function hostPlatform(): Platform {
  return { os: "linux", architecture: defaultArch() };
}

export type LayerDescriptor = Descriptor & { digest: Digest };

export interface SourceLayer {
  descriptor: LayerDescriptor;
  /** The config's rootfs.diff_ids entry (the uncompressed tar's digest), when the config has one. */
  diffId?: Digest;
  /** Store paths nixoci's layer annotations name (validated), in annotation order; empty when none. */
  storePaths: string[];
}

export interface ImageSource {
  /** The reference as given (every error names it). */
  readonly ref: string;
  readonly manifest: { digest: Digest; mediaType: string; bytes: Buffer };
  readonly config: { digest: Digest; mediaType: string; bytes: Buffer; json: Record<string, unknown> };
  readonly layers: SourceLayer[];
  readonly platform: Platform;
  /** Layer i's blob, streamed and verified against its descriptor (the stream fails at its end otherwise). */
  openLayer(i: number): Promise<Readable>;
  close(): Promise<void>;
}

export interface OpenImageOptions {
  /** The platform an index resolves to (default: the host's). */
  platform?: Platform;
  /** Registry credentials USER:PASS (default: Docker's config.json). */
  creds?: string;
  /** Plain HTTP to a registry that is not on loopback. */
  insecure?: boolean;
  /** The store directory annotated store paths must be in. */
  storeDir?: string;
  env?: NodeJS.ProcessEnv;
}

/** Where the blobs of one source come from. */
export interface BlobAccess {
  /** A blob's bytes, at most `max`; not yet verified. */
  read(d: LayerDescriptor, max: number): Promise<Buffer>;
  /** A blob's stream; not yet verified. */
  stream(d: LayerDescriptor): Promise<Readable>;
  close(): Promise<void>;
}

// ---- checks of what a source says ----

export function verify(bytes: Buffer, d: LayerDescriptor, what: string): Buffer {
  if (bytes.length !== d.size)
    throw new Error(`${what} ${d.digest} has ${bytes.length} bytes, its descriptor says ${d.size}`);
  if (sha256Digest(bytes) !== d.digest) throw new Error(`${what} ${d.digest} does not match its digest`);
  return bytes;
}

export async function readVerified(access: BlobAccess, d: LayerDescriptor, what: string): Promise<Buffer> {
  if (d.size > MAX_JSON_BYTES)
    throw new Error(`${what} ${d.digest} is ${d.size} bytes (limit ${MAX_JSON_BYTES})`);
  return verify(await access.read(d, d.size), d, what);
}

/** Counts and hashes a blob as it flows; fails at the end (or as soon as it is too long) when it does not match. */
export function verifyingStream(d: LayerDescriptor, input: string): CheckedStream {
  return new CheckedStream(
    { algo: "sha256", digest: Buffer.from(d.digest.slice("sha256:".length), "hex"), size: d.size },
    input,
    {
      tooLong: (size) => `blob ${d.digest} is longer than its descriptor's ${size} bytes`,
      wrongSize: (size, got) => `blob ${d.digest} has ${got} bytes, its descriptor says ${size}`,
      wrongDigest: () => `blob ${d.digest} does not match its digest`,
    },
  );
}

function isIndexType(mediaType: string): boolean {
  return mediaType === OCI_INDEX || mediaType === DOCKER_MANIFEST_LIST;
}

export function platformOf(d: Descriptor): Platform | undefined {
  const p = d.platform as Partial<Platform> | undefined;
  if (!p || typeof p.os !== "string" || typeof p.architecture !== "string") return undefined;
  return p.variant
    ? { os: p.os, architecture: p.architecture, variant: p.variant }
    : { os: p.os, architecture: p.architecture };
}

/** The index entry for `want`; the error lists the platforms there are. */
export function selectPlatform(entries: LayerDescriptor[], want: Platform): LayerDescriptor {
  const manifests = entries.filter((e) => !isIndexType(e.mediaType) && platformOf(e));
  const hit = manifests.find((e) => platformMatches(platformOf(e)!, want));
  if (hit) return hit;
  const there = manifests.map((e) => formatPlatform(platformOf(e)!));
  throw new Error(
    `no ${formatPlatform(want)} image in the index (it has ${there.length ? there.join(", ") : "no platform-specific image"}); choose one with --platform`,
  );
}

// ---- from a manifest to an image ----

export interface Resolved {
  digest: Digest;
  mediaType: string;
  bytes: Buffer;
  json: Record<string, unknown>;
}

/** Follows indexes (at most two deep) to the manifest for the platform. */
export async function resolveManifest(
  bytes: Buffer,
  digest: Digest,
  mediaTypeHint: string,
  want: Platform,
  fetch: (d: LayerDescriptor) => Promise<Buffer>,
  depth = 0,
): Promise<Resolved> {
  const json = parseJsonObject(bytes, `manifest ${digest}`);
  const mediaType = typeof json.mediaType === "string" ? json.mediaType : mediaTypeHint;
  if (json.schemaVersion !== 2) throw new Error(`manifest ${digest} is not schemaVersion 2`);
  if (isIndexType(mediaType) || (Array.isArray(json.manifests) && json.layers === undefined)) {
    if (depth >= 2) throw new Error(`index ${digest} nests indexes too deep`);
    if (!Array.isArray(json.manifests) || json.manifests.length === 0)
      throw new Error(`index ${digest} lists no manifest`);
    if (json.manifests.length > MAX_ENTRIES) throw new Error(`index ${digest} lists too many manifests`);
    const entries = json.manifests.map((m, i) => checkDescriptor(m, `index ${digest} manifests[${i}]`));
    const pick = selectPlatform(entries, want);
    return resolveManifest(await fetch(pick), pick.digest, pick.mediaType, want, fetch, depth + 1);
  }
  if (mediaType !== OCI_MANIFEST && mediaType !== DOCKER_MANIFEST)
    throw new Error(`manifest ${digest} has media type ${quote(mediaType)}, not an image manifest`);
  return { digest, mediaType, bytes, json };
}

export async function buildSource(
  ref: string,
  access: BlobAccess,
  m: Resolved,
  storeDir: string,
): Promise<ImageSource> {
  const configDesc = checkDescriptor(m.json.config, "manifest config");
  if (!Array.isArray(m.json.layers)) throw new Error("the manifest has no layers array");
  if (m.json.layers.length > MAX_ENTRIES)
    throw new Error(`the manifest lists ${m.json.layers.length} layers`);
  const descriptors = m.json.layers.map((l, i) => checkDescriptor(l, `manifest layers[${i}]`));
  const configBytes = await readVerified(access, configDesc, "config");
  const config = parseJsonObject(configBytes, "config");
  const rootfs = config.rootfs as { diff_ids?: unknown } | undefined;
  const diffIds = rootfs?.diff_ids;
  if (
    !Array.isArray(diffIds) ||
    diffIds.length !== descriptors.length ||
    !diffIds.every((d) => typeof d === "string" && isDigest(d))
  )
    throw new Error("config rootfs.diff_ids does not match the manifest's layers");
  const layers: SourceLayer[] = descriptors.map((descriptor, i) => {
    const storePaths = layerStorePaths(descriptor);
    for (const p of storePaths)
      parseStorePath(p, storeDir, `layer ${i} (${descriptor.digest}) store path annotation`);
    return { descriptor, diffId: diffIds[i] as Digest, storePaths };
  });
  const platform: Platform = { os: String(config.os ?? ""), architecture: String(config.architecture ?? "") };
  if (typeof config.variant === "string") platform.variant = config.variant;
  return {
    ref,
    manifest: { digest: m.digest, mediaType: m.mediaType, bytes: m.bytes },
    config: { digest: configDesc.digest, mediaType: configDesc.mediaType, bytes: configBytes, json: config },
    layers,
    platform,
    async openLayer(i: number): Promise<Readable> {
      const d = layers[i].descriptor;
      const raw = await access.stream(d);
      const out = verifyingStream(d, ref);
      raw.on("error", (err) => out.destroy(err));
      out.on("close", () => raw.destroy());
      return raw.pipe(out);
    },
    close: () => access.close(),
  };
}
