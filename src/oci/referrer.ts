// A referrer (OCI image spec 1.1): an artifact manifest that names another manifest as its `subject`, the way a
// document about an image (an SBOM, provenance) travels with it through layouts and registries. Its config is the
// empty descriptor, its one layer the document, and every byte of it follows from its inputs (no clock is read),
// so the same document about the same image always has the same digest.
import type { Descriptor } from "./descriptor.js";
import { sha256Digest, type Digest } from "./digest.js";
import { OCI_EMPTY, OCI_MANIFEST } from "./media-types.js";

export const TITLE_ANNOTATION = "org.opencontainers.image.title";
export const CREATED_ANNOTATION = "org.opencontainers.image.created";

/** The empty JSON object the image spec prescribes as the config blob of an artifact without one. */
export const EMPTY_BLOB = Buffer.from("{}");
export const EMPTY_DESCRIPTOR: Descriptor = {
  mediaType: OCI_EMPTY,
  digest: sha256Digest(EMPTY_BLOB),
  size: EMPTY_BLOB.length,
};

/** A blob kept in memory: a document, or the empty config. */
export interface MemoryBlob {
  digest: Digest;
  size: number;
  bytes: Buffer;
}

export interface BuiltReferrer {
  /** The artifact manifest's exact bytes (application/vnd.oci.image.manifest.v1+json). */
  manifest: MemoryBlob & { mediaType: string };
  artifactType: string;
  /** The manifest it is about. */
  subject: Descriptor;
  annotations: Record<string, string>;
  /** Every blob the manifest names (the empty config, then the document). */
  blobs: MemoryBlob[];
}

export interface ReferrerInput {
  /** The manifest the document is about (only mediaType, digest and size are kept). */
  subject: Descriptor;
  /** The document's media type: also the referrer's artifactType, as clients filter referrers by it. */
  mediaType: string;
  document: Buffer | string;
  /** The document's file name (org.opencontainers.image.title), what `oras pull` saves it as. */
  title: string;
  /** RFC 3339: the subject's creation time, so a rebuild of the same image gives the same referrer. */
  created: string;
}

function memoryBlob(bytes: Buffer): MemoryBlob {
  return { digest: sha256Digest(bytes), size: bytes.length, bytes };
}

export function buildReferrer(input: ReferrerInput): BuiltReferrer {
  const document = memoryBlob(Buffer.from(input.document));
  const subject: Descriptor = {
    mediaType: input.subject.mediaType,
    digest: input.subject.digest,
    size: input.subject.size,
  };
  const annotations = { [CREATED_ANNOTATION]: input.created };
  const bytes = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      artifactType: input.mediaType,
      config: EMPTY_DESCRIPTOR,
      layers: [
        {
          mediaType: input.mediaType,
          digest: document.digest,
          size: document.size,
          annotations: { [TITLE_ANNOTATION]: input.title },
        },
      ],
      subject,
      annotations,
    }),
  );
  return {
    manifest: { ...memoryBlob(bytes), mediaType: OCI_MANIFEST },
    artifactType: input.mediaType,
    subject,
    annotations,
    blobs: [{ ...EMPTY_DESCRIPTOR, digest: EMPTY_DESCRIPTOR.digest as Digest, bytes: EMPTY_BLOB }, document],
  };
}

/** The descriptor an index (a layout's index.json, the referrers API, the tag-schema fallback) lists it by. */
export function referrerDescriptor(r: BuiltReferrer): Descriptor {
  return {
    mediaType: r.manifest.mediaType,
    digest: r.manifest.digest,
    size: r.manifest.size,
    artifactType: r.artifactType,
    annotations: { ...r.annotations },
  };
}
