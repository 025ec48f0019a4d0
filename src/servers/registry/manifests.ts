// Manifests as the registry accepts them: the four supported types (OCI image manifest and index, Docker schema
// 2 manifest and manifest list), parsed and checked into the descriptors they name (blobs, child manifests,
// subject). Shared by the storage (what it records and serves) and the handlers (what they convert and answer).
// Anything else is 400 MANIFEST_INVALID.
import { isDigest, type Digest } from "../../oci/digest.js";
import { DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST } from "../../oci/media-types.js";
import { classifyDigest } from "../../oci/reference.js";
import { registryError, type RegistryError } from "./errors.js";

/** The largest manifest stored or read (the spec asks registries to accept at least 4 MiB). */
export const MAX_MANIFEST_SIZE = 4 << 20;

export const MANIFEST_MEDIA_TYPES: ReadonlySet<string> = new Set([
  OCI_MANIFEST,
  OCI_INDEX,
  DOCKER_MANIFEST,
  DOCKER_MANIFEST_LIST,
]);
const DOCKER_SCHEMA1 = [
  "application/vnd.docker.distribution.manifest.v1+json",
  "application/vnd.docker.distribution.manifest.v1+prettyjws",
];
export const DOCKER_FOREIGN_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
export const OCI_NONDISTRIBUTABLE_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
const MEDIA_TYPE_RE = /^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}\/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$/;

export interface ParsedDescriptor {
  mediaType: string;
  digest: Digest;
  size: number;
  /** A foreign / non-distributable layer (fetched from its urls; not required in the blob store). */
  foreign: boolean;
  platform?: { architecture: string; os: string; variant?: string; [k: string]: unknown };
  annotations?: Record<string, string>;
  urls?: string[];
}

export interface ParsedManifest {
  kind: "image" | "index";
  /** Blobs named (image manifests: config first, then layers; indexes: children that are not manifests). */
  blobs: ParsedDescriptor[];
  /** Manifests named (indexes: the children whose media type is a manifest's). */
  manifests: ParsedDescriptor[];
  subject?: Digest;
  artifactType?: string;
  annotations?: Record<string, string>;
  json: Record<string, unknown>;
}

function invalid(message: string, detail?: unknown): RegistryError {
  return registryError("MANIFEST_INVALID", { message, detail });
}

function isObject(x: unknown): x is Record<string, unknown> {
  return typeof x === "object" && x !== null && !Array.isArray(x);
}

function stringMap(x: unknown, where: string): Record<string, string> | undefined {
  if (x === undefined) return undefined;
  if (!isObject(x) || !Object.values(x).every((v) => typeof v === "string"))
    throw invalid(`${where} must be an object of strings`);
  return x as Record<string, string>;
}

function descriptor(x: unknown, where: string): ParsedDescriptor {
  if (!isObject(x)) throw invalid(`${where} is not a descriptor`, { field: where });
  const { mediaType, digest, size } = x;
  if (typeof mediaType !== "string" || !MEDIA_TYPE_RE.test(mediaType))
    throw invalid(`${where}.mediaType is missing or invalid`, { field: where });
  if (typeof digest !== "string" || !isDigest(digest))
    throw invalid(
      typeof digest === "string" && classifyDigest(digest) === "unsupported"
        ? `${where}.digest uses an unsupported algorithm (sha256 only)`
        : `${where}.digest is missing or invalid`,
      { field: where, digest },
    );
  if (typeof size !== "number" || !Number.isSafeInteger(size) || size < 0)
    throw invalid(`${where}.size is missing or invalid`, { field: where });
  const d: ParsedDescriptor = { mediaType, digest, size, foreign: false };
  d.annotations = stringMap(x.annotations, `${where}.annotations`);
  if (x.urls !== undefined) {
    if (!Array.isArray(x.urls) || !x.urls.every((u) => typeof u === "string"))
      throw invalid(`${where}.urls must be an array of strings`);
    d.urls = x.urls as string[];
  }
  d.foreign =
    (mediaType === DOCKER_FOREIGN_GZIP ||
      mediaType.startsWith("application/vnd.oci.image.layer.nondistributable")) &&
    (d.urls?.length ?? 0) > 0;
  if (x.platform !== undefined) {
    const p = x.platform;
    if (!isObject(p) || typeof p.architecture !== "string" || typeof p.os !== "string")
      throw invalid(`${where}.platform needs architecture and os`);
    // The image spec's fields with their types, others as plain values: a platform is copied into converted
    // manifest lists, and an arbitrary value there (100,000 nested arrays) would fail every client asking for one.
    for (const [k, v] of Object.entries(p)) {
      const ok =
        k === "architecture" || k === "os" || k === "variant" || k === "os.version"
          ? typeof v === "string"
          : k === "os.features" || k === "features"
            ? Array.isArray(v) && v.every((f) => typeof f === "string")
            : v === null || ["string", "number", "boolean"].includes(typeof v);
      if (!ok) throw invalid(`${where}.platform.${k} has a value of the wrong type`);
    }
    d.platform = p as ParsedDescriptor["platform"];
  }
  return d;
}

/**
 * Parses and checks a manifest of one of the four supported types (OCI image manifest and index, Docker schema 2
 * manifest and manifest list) given as `mediaType` (the Content-Type it was pushed with). 400 MANIFEST_INVALID
 * for anything else.
 */
export function parseManifest(bytes: Buffer, mediaType: string): ParsedManifest {
  if (DOCKER_SCHEMA1.includes(mediaType))
    throw invalid("Docker schema 1 manifests are not supported", { mediaType });
  if (!MANIFEST_MEDIA_TYPES.has(mediaType)) throw invalid("unsupported manifest media type", { mediaType });
  let json: unknown;
  try {
    json = JSON.parse(bytes.toString("utf8"));
  } catch {
    throw invalid("manifest is not valid JSON");
  }
  if (!isObject(json)) throw invalid("manifest is not a JSON object");
  if (json.schemaVersion !== 2)
    throw invalid("schemaVersion must be 2", { schemaVersion: json.schemaVersion });
  if (json.mediaType !== undefined && json.mediaType !== mediaType)
    throw invalid("the manifest's mediaType does not match its Content-Type", {
      mediaType: json.mediaType,
      contentType: mediaType,
    });
  const out: ParsedManifest = { kind: "image", blobs: [], manifests: [], json };
  if (json.artifactType !== undefined) {
    if (typeof json.artifactType !== "string" || !MEDIA_TYPE_RE.test(json.artifactType))
      throw invalid("artifactType is invalid");
    out.artifactType = json.artifactType;
  }
  out.annotations = stringMap(json.annotations, "annotations");
  if (json.subject !== undefined) out.subject = descriptor(json.subject, "subject").digest;
  if (mediaType === OCI_INDEX || mediaType === DOCKER_MANIFEST_LIST) {
    out.kind = "index";
    if (!Array.isArray(json.manifests)) throw invalid("manifests must be an array");
    // Children that are manifests must be manifests of the repository; other content an index may list
    // (BuildKit's registry cache lists its layers and its cache config so) is checked as blobs, and is never
    // served as a manifest.
    const children = json.manifests.map((d, i) => descriptor(d, `manifests[${i}]`));
    out.manifests = children.filter((c) => MANIFEST_MEDIA_TYPES.has(c.mediaType));
    out.blobs = children.filter((c) => !MANIFEST_MEDIA_TYPES.has(c.mediaType));
  } else {
    if (json.manifests !== undefined) throw invalid("an image manifest has no manifests");
    const config = descriptor(json.config, "config");
    if (!Array.isArray(json.layers)) throw invalid("layers must be an array");
    out.blobs = [config, ...json.layers.map((d, i) => descriptor(d, `layers[${i}]`))];
    if (out.artifactType === undefined && mediaType === OCI_MANIFEST && out.subject)
      out.artifactType = config.mediaType;
  }
  return out;
}
