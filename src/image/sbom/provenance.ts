// Build provenance of a closure (or of the image made from it): an in-toto Statement v1 whose predicate is
// SLSA Provenance v1. The subject is the image manifest when there is one, else the roots by NAR hash; the
// resolved dependencies are every store path of the closure (by NAR hash) and the binary caches read.
import { documentTime, sbomPaths, type SbomInput } from "./closure-model.js";

/** What kind of build this was (a TypeURI; nixoci packs existing store paths, it does not run builders). */
export const BUILD_TYPE = "urn:nixoci:build-type:closure:v1";
export const BUILDER_ID = "pkg:generic/nixoci";

export function provenanceJson(input: SbomInput): string {
  const paths = sbomPaths(input);
  const time = documentTime(input.created);
  const roots = paths.filter((p) => p.isRoot);
  const subject = input.image
    ? [
        {
          name: input.image.name ?? "image",
          digest: { sha256: input.image.manifestDigest.replace(/^sha256:/, "") },
        },
      ]
    : roots.map((p) => ({ name: p.info.path, digest: { sha256: p.narSha256 } }));
  const statement = {
    _type: "https://in-toto.io/Statement/v1",
    subject,
    predicateType: "https://slsa.dev/provenance/v1",
    predicate: {
      buildDefinition: {
        buildType: BUILD_TYPE,
        externalParameters: { roots: roots.map((p) => p.info.path) },
        resolvedDependencies: [
          // Store paths: the digest is the SHA-256 of the path's NAR serialisation (Nix's NarHash).
          ...paths.map((p) => ({
            uri: `file://${p.info.path}`,
            name: p.info.path,
            digest: { sha256: p.narSha256 },
            annotations: {
              narSize: p.info.narSize,
              ...(p.info.deriver ? { deriver: p.info.deriver } : {}),
            },
          })),
          ...[...new Set(input.caches ?? [])].sort().map((url) => ({ uri: url, name: "binary cache" })),
        ],
      },
      runDetails: {
        builder: { id: BUILDER_ID, version: { nixoci: input.toolVersion } },
        metadata: { startedOn: time, finishedOn: time },
      },
    },
  };
  return JSON.stringify(statement, null, 2) + "\n";
}
