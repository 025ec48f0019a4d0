// SBOM documents from the real fixture closure, checked against what nix-store reports for every path
// (references, NAR hash, NAR size, deriver), the CycloneDX 1.6 JSON schema the CycloneDX library ships (its own
// validator), SPDX 2.3's required fields, and byte-for-byte reproducibility.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Spec, Validation } from "@cyclonedx/cyclonedx-library";
import { parseHash } from "../../src/nix/hash.js";
import { cyclonedxJson } from "../../src/image/sbom/cyclonedx.js";
import { parseDrvName } from "../../src/nix/drv-name.js";
import { nixPurl } from "../../src/image/sbom/nix-names.js";
import { provenanceJson } from "../../src/image/sbom/provenance.js";
import { spdxJson } from "../../src/image/sbom/spdx.js";
import type { SbomInput } from "../../src/image/sbom/closure-model.js";
import { computeClosure } from "../../src/store/closure.js";
import { LocalStore } from "../../src/store/local-store.js";
import { NixociError } from "../../src/util/errors.js";
import { buildFixtures } from "../support/fixtures.js";
import { runText } from "../support/run.js";

const fx = buildFixtures();
const CREATED = "2024-05-06T07:08:09Z";

/** What nix-store says about one path: the reference implementation every document is compared with. */
interface NixFacts {
  references: string[];
  narHex: string;
  narSize: number;
  deriver?: string;
}
function nixFacts(path: string): NixFacts {
  const deriver = runText("nix-store", ["-q", "--deriver", path]);
  return {
    references: runText("nix-store", ["-q", "--references", path])
      .split("\n")
      .filter((r) => r && r !== path)
      .sort(),
    narHex: parseHash(runText("nix-store", ["-q", "--hash", path])).digest.toString("hex"),
    narSize: Number(runText("nix-store", ["-q", "--size", path])),
    deriver: deriver === "unknown-deriver" ? undefined : deriver,
  };
}

const closurePaths = runText("nix-store", ["-qR", fx.all]).split("\n").sort();
const facts = new Map(closurePaths.map((p) => [p, nixFacts(p)]));

async function inputFor(roots: string[], extra: Partial<SbomInput> = {}): Promise<SbomInput> {
  const store = new LocalStore();
  try {
    const closure = await computeClosure(store, roots);
    return { infos: [...closure.values()], roots, toolVersion: "9.9.9", created: CREATED, ...extra };
  } finally {
    store.close();
  }
}

test("parseDrvName splits names the way builtins.parseDrvName does", () => {
  const names = [
    "hello-2.12.1",
    "busybox",
    "foo-bar-1.0",
    "foo-bar",
    "python3.11-numpy-1.26.4",
    "gcc-13.2.0-lib",
    "foo-_x",
    "foo-",
    "-1",
    "a-b-c-2-d",
    "openssl-3.0.13-dev",
    "glibc-locales-2.38-44",
  ];
  const expr = `map builtins.parseDrvName ${"[" + names.map((n) => JSON.stringify(n)).join(" ") + "]"}`;
  const nix = JSON.parse(runText("nix-instantiate", ["--eval", "--json", "--strict", "-E", expr])) as {
    name: string;
    version: string;
  }[];
  assert.deepEqual(
    names.map((n) => parseDrvName(n)),
    nix,
  );
  assert.equal(nixPurl("hello-2.12.1"), "pkg:nix/hello@2.12.1");
  assert.equal(nixPurl("gtk+-3.24"), "pkg:nix/gtk%2B@3.24");
  assert.equal(nixPurl("busybox"), "pkg:nix/busybox");
});

test("CycloneDX: valid 1.6 JSON (the library's strict validator), every path once with nix-store's facts", async () => {
  const input = await inputFor([fx.all]);
  const text = cyclonedxJson(input);
  const errors = await new Validation.JsonStrictValidator(Spec.Version.v1dot6).validate(text);
  assert.equal(errors, null, JSON.stringify(errors));
  // The validator does reject: the same document with a component lacking its required type.
  const broken = JSON.parse(text) as { components: Record<string, unknown>[] };
  delete broken.components[0].type;
  assert.notEqual(
    await new Validation.JsonStrictValidator(Spec.Version.v1dot6).validate(JSON.stringify(broken)),
    null,
  );
  const bom = JSON.parse(text) as {
    specVersion: string;
    serialNumber: string;
    metadata: {
      timestamp: string;
      tools: { components: { name: string; version: string }[] };
      component: { "bom-ref": string };
    };
    components: {
      type: string;
      "bom-ref": string;
      purl: string;
      hashes: { alg: string; content: string }[];
      properties: { name: string; value: string }[];
    }[];
    dependencies: { ref: string; dependsOn?: string[] }[];
  };
  assert.equal(bom.specVersion, "1.6");
  assert.equal(new Date(bom.metadata.timestamp).toISOString(), "2024-05-06T07:08:09.000Z");
  assert.deepEqual(
    bom.metadata.tools.components.map((c) => [c.name, c.version]),
    [["nixoci", "9.9.9"]],
  );
  assert.deepEqual(bom.components.map((c) => c["bom-ref"]).sort(), closurePaths);
  for (const c of bom.components) {
    const f = facts.get(c["bom-ref"])!;
    assert.deepEqual(c.hashes, [{ alg: "SHA-256", content: f.narHex }], c["bom-ref"]);
    const props = Object.fromEntries(c.properties.map((p) => [p.name, p.value]));
    assert.equal(props["nixoci:narSize"], String(f.narSize));
    assert.equal(props["nixoci:deriver"], f.deriver);
    assert.equal(c.type, c["bom-ref"] === fx.all ? "application" : "library");
    assert.equal(c.purl, nixPurl(c["bom-ref"].slice(c["bom-ref"].indexOf("-") + 1)));
    const dep = bom.dependencies.find((d) => d.ref === c["bom-ref"])!;
    assert.deepEqual([...(dep.dependsOn ?? [])].sort(), f.references, `dependencies of ${c["bom-ref"]}`);
  }
  // The self-referencing fixture's self reference is dropped; the subject depends on the root only.
  assert.ok(
    runText("nix-store", ["-q", "--references", fx["self-ref"]]).split("\n").includes(fx["self-ref"]),
  );
  const subject = bom.dependencies.find((d) => d.ref === bom.metadata.component["bom-ref"])!;
  assert.deepEqual(subject.dependsOn, [fx.all]);
});

test("CycloneDX of an image: the subject is a container named by its manifest digest", async () => {
  const digest = "sha256:" + "ab".repeat(32);
  const bom = JSON.parse(
    cyclonedxJson(await inputFor([fx.hello], { image: { name: "hello:1", manifestDigest: digest } })),
  ) as {
    metadata: { component: { type: string; name: string; "bom-ref": string; hashes: { content: string }[] } };
  };
  assert.deepEqual(
    [bom.metadata.component.type, bom.metadata.component.name, bom.metadata.component["bom-ref"]],
    ["container", "hello:1", digest],
  );
  assert.equal(bom.metadata.component.hashes[0].content, "ab".repeat(32));
});

test("SPDX 2.3: required fields present, one package per path, DEPENDS_ON equals the references", async () => {
  const input = await inputFor([fx.hello, fx.tree]);
  const doc = JSON.parse(spdxJson(input)) as Record<string, unknown> & {
    packages: Record<string, unknown>[];
    relationships: { spdxElementId: string; relationshipType: string; relatedSpdxElement: string }[];
    creationInfo: { created: string; creators: string[] };
  };
  // No npm package ships the official SPDX 2.3 JSON schema: these are the fields it requires.
  for (const k of ["spdxVersion", "dataLicense", "SPDXID", "name", "documentNamespace", "creationInfo"])
    assert.ok(k in doc, `document lacks ${k}`);
  assert.equal(doc.spdxVersion, "SPDX-2.3");
  assert.equal(doc.dataLicense, "CC0-1.0");
  assert.equal(doc.SPDXID, "SPDXRef-DOCUMENT");
  assert.match(String(doc.documentNamespace), /^https:\/\/spdx\.org\/spdxdocs\/nixoci-[^#\s]+$/);
  assert.equal(doc.creationInfo.created, CREATED);
  assert.deepEqual(doc.creationInfo.creators, ["Tool: nixoci-9.9.9"]);
  const expected = runText("nix-store", ["-qR", fx.hello, fx.tree]).split("\n").sort();
  assert.deepEqual(doc.packages.map((p) => p.packageFileName).sort(), expected);
  const pathOf = new Map(doc.packages.map((p) => [String(p.SPDXID), String(p.packageFileName)]));
  assert.equal(pathOf.size, expected.length, "SPDXIDs are unique");
  for (const p of doc.packages) {
    for (const k of ["name", "SPDXID", "downloadLocation"]) assert.ok(k in p, `package lacks ${k}`);
    assert.match(String(p.SPDXID), /^SPDXRef-[A-Za-z0-9.-]+$/);
    const f = facts.get(String(p.packageFileName))!;
    assert.deepEqual(p.checksums, [{ algorithm: "SHA256", checksumValue: f.narHex }]);
    assert.equal(p.filesAnalyzed, false);
    const deps = doc.relationships
      .filter((r) => r.spdxElementId === p.SPDXID && r.relationshipType === "DEPENDS_ON")
      .map((r) => pathOf.get(r.relatedSpdxElement))
      .sort();
    assert.deepEqual(deps, f.references);
  }
  const described = doc.relationships
    .filter((r) => r.relationshipType === "DESCRIBES")
    .map((r) => [r.spdxElementId, pathOf.get(r.relatedSpdxElement)]);
  assert.deepEqual(
    described,
    [
      ["SPDXRef-DOCUMENT", fx.hello],
      ["SPDXRef-DOCUMENT", fx.tree],
    ].sort((a, b) => (a[1]! < b[1]! ? -1 : 1)),
  );
});

test("provenance: in-toto Statement v1, SLSA v1 predicate, every store path and cache as a dependency", async () => {
  const input = await inputFor([fx.hello], { caches: ["file:///srv/cache", "file:///srv/cache"] });
  const st = JSON.parse(provenanceJson(input)) as {
    _type: string;
    predicateType: string;
    subject: { name: string; digest: { sha256: string } }[];
    predicate: {
      buildDefinition: { resolvedDependencies: { uri: string; name: string; digest?: { sha256: string } }[] };
      runDetails: { builder: { id: string; version: Record<string, string> } };
    };
  };
  assert.equal(st._type, "https://in-toto.io/Statement/v1");
  assert.equal(st.predicateType, "https://slsa.dev/provenance/v1");
  assert.deepEqual(st.subject, [{ name: fx.hello, digest: { sha256: facts.get(fx.hello)!.narHex } }]);
  const deps = st.predicate.buildDefinition.resolvedDependencies;
  const storeDeps = deps.filter((d) => d.uri.startsWith("file:///nix/store/"));
  assert.deepEqual(
    storeDeps.map((d) => d.name),
    runText("nix-store", ["-qR", fx.hello]).split("\n").sort(),
  );
  for (const d of storeDeps) assert.equal(d.digest!.sha256, facts.get(d.name)!.narHex);
  assert.deepEqual(
    deps.filter((d) => !storeDeps.includes(d)).map((d) => d.uri),
    ["file:///srv/cache"],
  );
  assert.deepEqual(st.predicate.runDetails.builder.version, { nixoci: "9.9.9" });
  const image = JSON.parse(
    provenanceJson({ ...input, image: { name: "hello:1", manifestDigest: "sha256:" + "cd".repeat(32) } }),
  ) as typeof st;
  assert.deepEqual(image.subject, [{ name: "hello:1", digest: { sha256: "cd".repeat(32) } }]);
});

test("same inputs give the same bytes in every format, whatever the order of the path infos", async () => {
  const input = await inputFor([fx.all]);
  const shuffled: SbomInput = { ...input, infos: [...input.infos].reverse(), roots: [...input.roots] };
  for (const render of [cyclonedxJson, spdxJson, provenanceJson]) {
    const a = render(input);
    assert.equal(render(shuffled), a);
    assert.notEqual(
      render({ ...input, created: "2024-05-06T07:08:10Z" }),
      a,
      "the time is part of the document",
    );
  }
  // The serial number follows the content.
  const serial = (t: string): string => (JSON.parse(t) as { serialNumber: string }).serialNumber;
  assert.match(
    serial(cyclonedxJson(input)),
    /^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/,
  );
  const fewer = await inputFor([fx.hello]);
  assert.notEqual(serial(cyclonedxJson(fewer)), serial(cyclonedxJson(input)));
});

test("inputs that are not a closure are refused with a NixociError naming the path", async () => {
  const input = await inputFor([fx.hello]);
  const withoutDep = input.infos.filter((i) => i.path !== fx.greeting);
  for (const render of [cyclonedxJson, spdxJson, provenanceJson]) {
    assert.throws(
      () => render({ ...input, infos: withoutDep }),
      (e: unknown) =>
        e instanceof NixociError &&
        e.message.includes(fx.greeting) &&
        e.message.includes("not in the closure"),
    );
    assert.throws(
      () => render({ ...input, roots: [fx.tree] }),
      (e: unknown) => e instanceof NixociError && e.message.includes(fx.tree),
    );
    assert.throws(
      () => render({ ...input, infos: [...input.infos, input.infos[0]] }),
      (e: unknown) => e instanceof NixociError && /appears twice/.test(e.message),
    );
    assert.throws(() => render({ ...input, created: "yesterday" }), /not an RFC 3339 time/);
  }
});
