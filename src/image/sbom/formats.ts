// The document formats `nixoci sbom` and `nixoci build --sbom` offer, by name.
import type { SbomInput } from "./closure-model.js";
import { CYCLONEDX_MEDIA_TYPE, cyclonedxJson } from "./cyclonedx.js";
import { PROVENANCE_MEDIA_TYPE, provenanceJson } from "./provenance.js";
import { SPDX_MEDIA_TYPE, spdxJson } from "./spdx.js";

export const SBOM_FORMATS = ["cyclonedx", "spdx", "provenance"] as const;
export type SbomFormat = (typeof SBOM_FORMATS)[number];

export function isSbomFormat(s: string): s is SbomFormat {
  return (SBOM_FORMATS as readonly string[]).includes(s);
}

const RENDER: Record<
  SbomFormat,
  { mediaType: string; fileName: string; render: (input: SbomInput) => string }
> = {
  cyclonedx: { mediaType: CYCLONEDX_MEDIA_TYPE, fileName: "sbom.cyclonedx.json", render: cyclonedxJson },
  spdx: { mediaType: SPDX_MEDIA_TYPE, fileName: "sbom.spdx.json", render: spdxJson },
  provenance: {
    mediaType: PROVENANCE_MEDIA_TYPE,
    fileName: "provenance.intoto.json",
    render: provenanceJson,
  },
};

/**
 * The document's text, its media type (also the artifactType of an OCI referrer carrying it) and the file name
 * it goes by where it is stored as a file (a referrer's title).
 */
export function renderSbom(
  format: SbomFormat,
  input: SbomInput,
): { text: string; mediaType: string; fileName: string } {
  const { mediaType, fileName, render } = RENDER[format];
  return { text: render(input), mediaType, fileName };
}
