// SPDX 2.3 JSON of a closure, written by hand (no SPDX library is needed for this subset): one package per store
// path, DEPENDS_ON relationships from the references and DESCRIBES for the roots. Keys are written in a fixed
// order and lists sorted, so equal inputs give equal bytes.
import {
  contentUuid,
  documentName,
  documentTime,
  isApplication,
  sbomPaths,
  type SbomInput,
} from "./closure-model.js";
import { parseDrvName } from "../../nix/drv-name.js";
import { nixPurl } from "./nix-names.js";

/** An SPDX identifier from the hash part (nix32: lowercase letters and digits, which SPDX ids allow). */
function spdxId(hashPart: string): string {
  return `SPDXRef-nix-${hashPart}`;
}

export function spdxJson(input: SbomInput): string {
  const paths = sbomPaths(input);
  const idOf = new Map(paths.map((p) => [p.info.path, spdxId(p.hashPart)]));
  const packages = paths.map((p) => {
    const { name, version } = parseDrvName(p.name);
    return {
      name,
      SPDXID: idOf.get(p.info.path)!,
      ...(version ? { versionInfo: version } : {}),
      // The store path itself: what a Nix user looks the package up by.
      packageFileName: p.info.path,
      downloadLocation: "NOASSERTION",
      filesAnalyzed: false,
      checksums: [{ algorithm: "SHA256", checksumValue: p.narSha256 }],
      licenseConcluded: "NOASSERTION",
      licenseDeclared: "NOASSERTION",
      copyrightText: "NOASSERTION",
      externalRefs: [
        { referenceCategory: "PACKAGE-MANAGER", referenceType: "purl", referenceLocator: nixPurl(p.name) },
      ],
      primaryPackagePurpose: isApplication(p) ? "APPLICATION" : "LIBRARY",
      ...(p.info.deriver ? { sourceInfo: `built by ${p.info.deriver}` } : {}),
      comment: `NAR size ${p.info.narSize}; checksum is the SHA-256 of the store path's NAR serialisation`,
    };
  });
  const roots = paths.filter((p) => p.isRoot).map((p) => idOf.get(p.info.path)!);
  const relationships = [
    ...roots.map((id) => ({
      spdxElementId: "SPDXRef-DOCUMENT",
      relationshipType: "DESCRIBES",
      relatedSpdxElement: id,
    })),
    ...paths.flatMap((p) =>
      p.dependsOn.map((ref) => ({
        spdxElementId: idOf.get(p.info.path)!,
        relationshipType: "DEPENDS_ON",
        relatedSpdxElement: idOf.get(ref)!,
      })),
    ),
  ];
  const name = documentName(input, paths);
  const body = {
    name,
    dataLicense: "CC0-1.0",
    creationInfo: {
      created: documentTime(input.created),
      creators: [`Tool: nixoci-${input.toolVersion}`],
    },
    ...(input.image ? { comment: `image manifest ${input.image.manifestDigest}` } : {}),
    documentDescribes: roots,
    packages,
    relationships,
  };
  // The namespace must be unique per document: derive it from the content, so a rebuild gives the same one.
  const namespace = `https://spdx.org/spdxdocs/nixoci-${encodeURIComponent(name)}-${contentUuid(JSON.stringify(body))}`;
  const doc = { spdxVersion: "SPDX-2.3", SPDXID: "SPDXRef-DOCUMENT", documentNamespace: namespace, ...body };
  return JSON.stringify(doc, null, 2) + "\n";
}
