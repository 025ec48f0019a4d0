// Content negotiation of manifests: which type to serve for a client's Accept list, and the conversions that make
// it possible to serve an OCI image to a client that accepts only Docker schema 2 (an OCI manifest becomes a
// Docker manifest with the same blobs, an OCI index a Docker manifest list of converted children). Pure: the
// manifest handlers store the conversions and answer 404 for what cannot be converted.
import type { Digest } from "../../oci/digest.js";
import {
  DOCKER_CONFIG,
  DOCKER_LAYER_GZIP,
  DOCKER_MANIFEST,
  DOCKER_MANIFEST_LIST,
  OCI_CONFIG,
  OCI_INDEX,
  OCI_LAYER_GZIP,
  OCI_MANIFEST,
} from "../../oci/media-types.js";
import {
  DOCKER_FOREIGN_GZIP,
  OCI_NONDISTRIBUTABLE_GZIP,
  parseManifest,
  type ParsedDescriptor,
} from "./manifests.js";

/** The media types of an Accept header (parameters dropped, lowercased); [] when absent. */
export function parseAccept(header: string | string[] | undefined): string[] {
  const all = Array.isArray(header) ? header.join(",") : (header ?? "");
  return all
    .split(",")
    .map((s) => s.split(";")[0].trim().toLowerCase())
    .filter(Boolean);
}

const DOCKER_SCHEMA2_TYPES = new Set([DOCKER_MANIFEST, DOCKER_MANIFEST_LIST]);

/**
 * What to serve for a stored manifest given the client's Accept list: the manifest as it is; or its Docker
 * schema 2 conversion (an OCI manifest or index, to a client that accepts the Docker type but not the OCI one);
 * or `reject` (an OCI manifest that a Docker-only client cannot be given).
 */
export function negotiate(
  mediaType: string,
  accept: string[],
): { as: "as-is" } | { as: "docker"; to: string } | { as: "reject" } {
  if (
    accept.length === 0 ||
    accept.includes("*/*") ||
    accept.includes("application/*") ||
    accept.includes(mediaType)
  )
    return { as: "as-is" };
  if (mediaType === OCI_MANIFEST && accept.includes(DOCKER_MANIFEST))
    return { as: "docker", to: DOCKER_MANIFEST };
  if (mediaType === OCI_INDEX && accept.includes(DOCKER_MANIFEST_LIST))
    return { as: "docker", to: DOCKER_MANIFEST_LIST };
  if (
    (mediaType === OCI_MANIFEST || mediaType === OCI_INDEX) &&
    accept.some((t) => DOCKER_SCHEMA2_TYPES.has(t))
  )
    return { as: "reject" };
  return { as: "as-is" };
}

/** Why a manifest cannot be converted: thrown by the converters, becomes a 404's detail. */
export class NotConvertible extends Error {}

function withOptional<T extends Record<string, unknown>>(o: T, extra: Record<string, unknown>): T {
  for (const [k, v] of Object.entries(extra)) if (v !== undefined) (o as Record<string, unknown>)[k] = v;
  return o;
}

/**
 * An OCI image manifest as Docker schema 2 (same config and layer blobs: the config's JSON is Docker's image
 * config, gzip layers are Docker's rootfs.diff.tar.gzip). Annotations are kept (Docker ignores them; containerd's
 * snapshotters read them); subject and other OCI-only fields are dropped. Throws NotConvertible for artifacts,
 * non-image configs and layers Docker schema 2 cannot describe (uncompressed, zstd).
 */
export function ociManifestToDocker(bytes: Buffer): Buffer {
  const m = parseManifest(bytes, OCI_MANIFEST);
  const config = m.blobs[0];
  if (m.json.artifactType !== undefined)
    throw new NotConvertible("the manifest is an artifact, not an image");
  if (config.mediaType !== OCI_CONFIG && config.mediaType !== DOCKER_CONFIG)
    throw new NotConvertible(`the config is ${config.mediaType}, not an image config`);
  const layers = m.blobs.slice(1).map((l) => {
    let mediaType: string;
    if (l.mediaType === OCI_LAYER_GZIP || l.mediaType === DOCKER_LAYER_GZIP) mediaType = DOCKER_LAYER_GZIP;
    else if (l.mediaType === OCI_NONDISTRIBUTABLE_GZIP || l.mediaType === DOCKER_FOREIGN_GZIP)
      mediaType = DOCKER_FOREIGN_GZIP;
    else
      throw new NotConvertible(
        `layer ${l.digest} is ${l.mediaType}; Docker schema 2 describes gzip-compressed layers only`,
      );
    return withOptional(
      { mediaType, size: l.size, digest: l.digest },
      { urls: l.urls, annotations: l.annotations },
    );
  });
  const out = withOptional(
    {
      schemaVersion: 2,
      mediaType: DOCKER_MANIFEST,
      config: withOptional(
        { mediaType: DOCKER_CONFIG, size: config.size, digest: config.digest },
        { annotations: config.annotations },
      ),
      layers,
    },
    { annotations: m.annotations },
  );
  return Buffer.from(JSON.stringify(out));
}

/**
 * An OCI index as a Docker manifest list: each OCI image manifest in it is converted (with `convertChild`, which
 * returns the converted child's descriptor); Docker manifests are kept; anything else is NotConvertible.
 */
export async function ociIndexToDocker(
  bytes: Buffer,
  convertChild: (d: ParsedDescriptor) => Promise<{ digest: Digest; size: number }>,
): Promise<Buffer> {
  const m = parseManifest(bytes, OCI_INDEX);
  if (m.json.artifactType !== undefined) throw new NotConvertible("the index is an artifact");
  const manifests = [];
  // Each child converted once, however many entries name it (an index of thousands of entries naming one
  // manifest cost seconds of CPU per GET).
  const converted = new Map<string, Promise<{ digest: Digest; size: number }>>();
  for (const d of m.manifests) {
    if (!d.platform) throw new NotConvertible(`index entry ${d.digest} has no platform`);
    let child: { mediaType: string; digest: Digest; size: number };
    if (d.mediaType === DOCKER_MANIFEST)
      child = { mediaType: DOCKER_MANIFEST, digest: d.digest, size: d.size };
    else if (d.mediaType === OCI_MANIFEST) {
      let c = converted.get(d.digest);
      if (!c) converted.set(d.digest, (c = convertChild(d)));
      child = { mediaType: DOCKER_MANIFEST, ...(await c) };
    } else throw new NotConvertible(`index entry ${d.digest} is ${d.mediaType}`);
    manifests.push(withOptional(child, { platform: d.platform, annotations: d.annotations }));
  }
  return Buffer.from(
    JSON.stringify(
      withOptional(
        { schemaVersion: 2, mediaType: DOCKER_MANIFEST_LIST, manifests },
        { annotations: m.annotations },
      ),
    ),
  );
}
