// The document formats `nixoci sbom` and `nixoci build --sbom` offer, by name.
import type { SbomInput } from "./closure-model.js";
import { CYCLONEDX_MEDIA_TYPE, PROVENANCE_MEDIA_TYPE, SPDX_MEDIA_TYPE } from "./media-types.js";

export const SBOM_FORMATS = ["cyclonedx", "spdx", "provenance"] as const;
export type SbomFormat = (typeof SBOM_FORMATS)[number];

export function isSbomFormat(s: string): s is SbomFormat {
  return (SBOM_FORMATS as readonly string[]).includes(s);
}

// Renderers are imported when a document is made: a build without --sbom does not load them.
const RENDER: Record<
  SbomFormat,
  { mediaType: string; fileName: string; load: () => Promise<(input: SbomInput) => string> }
> = {
  cyclonedx: {
    mediaType: CYCLONEDX_MEDIA_TYPE,
    fileName: "sbom.cyclonedx.json",
    load: async () => (await import("./cyclonedx.js")).cyclonedxJson,
  },
  spdx: {
    mediaType: SPDX_MEDIA_TYPE,
    fileName: "sbom.spdx.json",
    load: async () => (await import("./spdx.js")).spdxJson,
  },
  provenance: {
    mediaType: PROVENANCE_MEDIA_TYPE,
    fileName: "provenance.intoto.json",
    load: async () => (await import("./provenance.js")).provenanceJson,
  },
};

/**
 * The document's text, its media type (also the artifactType of an OCI referrer carrying it) and the file name
 * it goes by where it is stored as a file (a referrer's title).
 */
export async function renderSbom(
  format: SbomFormat,
  input: SbomInput,
): Promise<{ text: string; mediaType: string; fileName: string }> {
  const { mediaType, fileName, load } = RENDER[format];
  return { text: (await load())(input), mediaType, fileName };
}
