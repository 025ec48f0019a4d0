// CycloneDX 1.6 JSON of a closure, built with the CycloneDX library's models and serializer (which sorts every
// list, so equal inputs give equal bytes): one component per store path, bom-ref = the store path.
import { Enums, Models, Serialize, Spec } from "@cyclonedx/cyclonedx-library";
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

export function cyclonedxJson(input: SbomInput): string {
  const paths = sbomPaths(input);
  const time = documentTime(input.created);
  const bom = new Models.Bom();

  const components = new Map<string, InstanceType<typeof Models.Component>>();
  for (const p of paths) {
    const { name, version } = parseDrvName(p.name);
    const c = new Models.Component(
      isApplication(p) ? Enums.ComponentType.Application : Enums.ComponentType.Library,
      name,
      { bomRef: p.info.path, version: version || undefined, purl: nixPurl(p.name) },
    );
    c.hashes.set(Enums.HashAlgorithm["SHA-256"], p.narSha256);
    c.properties.add(new Models.Property("nixoci:narSize", String(p.info.narSize)));
    if (p.info.deriver) c.properties.add(new Models.Property("nixoci:deriver", p.info.deriver));
    components.set(p.info.path, c);
    bom.components.add(c);
  }
  // Dependencies point at the other components' BomRef objects: the serializer writes them by reference.
  for (const p of paths) {
    const c = components.get(p.info.path)!;
    for (const ref of p.dependsOn) c.dependencies.add(components.get(ref)!.bomRef);
  }

  // The subject: the image (type container, bom-ref its manifest digest) or the closure of the roots.
  const image = input.image;
  const subject = new Models.Component(
    image ? Enums.ComponentType.Container : Enums.ComponentType.Application,
    documentName(input, paths),
    { bomRef: image ? image.manifestDigest : "nixoci:closure" },
  );
  if (image) subject.hashes.set(Enums.HashAlgorithm["SHA-256"], image.manifestDigest.replace(/^sha256:/, ""));
  for (const p of paths) if (p.isRoot) subject.dependencies.add(components.get(p.info.path)!.bomRef);
  bom.metadata.component = subject;
  bom.metadata.timestamp = new Date(time);
  bom.metadata.tools.components.add(
    new Models.Component(Enums.ComponentType.Application, "nixoci", { version: input.toolVersion }),
  );

  const serializer = new Serialize.JsonSerializer(new Serialize.JSON.Normalize.Factory(Spec.Spec1dot6));
  const render = (): string => serializer.serialize(bom, { sortLists: true, space: 2 });
  // The serial number is derived from the document without it, so it changes exactly when the content does.
  bom.serialNumber = `urn:uuid:${contentUuid(render())}`;
  return render() + "\n";
}
