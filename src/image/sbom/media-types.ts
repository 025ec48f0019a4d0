// The documents' media types (also the artifactType of OCI referrers carrying them), apart from the renderers
// so that naming a format does not load its renderer (the CycloneDX library costs ~80 ms to load).
export const CYCLONEDX_MEDIA_TYPE = "application/vnd.cyclonedx+json";
export const SPDX_MEDIA_TYPE = "application/spdx+json";
export const PROVENANCE_MEDIA_TYPE = "application/vnd.in-toto+json";
