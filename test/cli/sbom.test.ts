// `nixoci sbom` as a user runs it: every format from the local store and from a binary cache, stdout and -o,
// reproducible bytes, and one-line errors with the right exit code for bad input.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseHash } from "../../src/nix/hash.js";
import { buildFixtures, makeTempDir } from "../support/fixtures.js";
import { runText } from "../support/run.js";
import { nixoci, nixociOk } from "../support/cli.js";

const fx = buildFixtures();
const work = makeTempDir("sbom-cli");
const CREATED = ["--created", "2024-01-02T03:04:05Z"];
const helloClosure = runText("nix-store", ["-qR", fx.hello]).split("\n").sort();

interface Bom {
  metadata: { timestamp: string };
  components: { "bom-ref": string; hashes: { content: string }[] }[];
}

test("the default is CycloneDX of the closure on stdout, with nix-store's NAR hashes", () => {
  const bom = JSON.parse(nixociOk(["sbom", ...CREATED, fx.hello]).text) as Bom & { bomFormat: string };
  assert.equal(bom.bomFormat, "CycloneDX");
  assert.equal(new Date(bom.metadata.timestamp).toISOString(), "2024-01-02T03:04:05.000Z");
  assert.deepEqual(bom.components.map((c) => c["bom-ref"]).sort(), helloClosure);
  for (const c of bom.components)
    assert.equal(
      c.hashes[0].content,
      parseHash(runText("nix-store", ["-q", "--hash", c["bom-ref"]])).digest.toString("hex"),
    );
});

test("every format is byte-identical run after run; -o writes exactly what stdout shows", () => {
  for (const format of ["cyclonedx", "spdx", "provenance"]) {
    const a = nixociOk(["sbom", "--format", format, ...CREATED, fx.hello, fx.tree]).stdout;
    const b = nixociOk(["sbom", "--format", format, ...CREATED, fx.tree, fx.hello]).stdout;
    assert.ok(a.equals(b), `${format}: two runs differ`);
    const file = join(work, `out.${format}.json`);
    nixociOk(["sbom", "--format", format, ...CREATED, "-o", file, fx.hello, fx.tree]);
    assert.ok(readFileSync(file).equals(a), `${format}: -o differs from stdout`);
    // SOURCE_DATE_EPOCH stands in for --created (1704164645 is 2024-01-02T03:04:05Z).
    const env = { SOURCE_DATE_EPOCH: "1704164645" };
    assert.ok(nixociOk(["sbom", "--format", format, fx.hello, fx.tree], { env }).stdout.equals(a));
  }
  // A bare file name is relative to the working directory (and its temporary is written beside it).
  nixociOk(["sbom", ...CREATED, "-o", "relative.json", fx.hello], { cwd: work });
  assert.ok(
    readFileSync(join(work, "relative.json")).equals(nixociOk(["sbom", ...CREATED, fx.hello]).stdout),
  );
  assert.deepEqual(
    readdirSync(work).filter((n) => n.startsWith(".")),
    [],
    "no temporaries left beside the outputs",
  );
});

test("from a binary cache: the same components, and provenance names the cache", () => {
  const cache = join(work, "cache");
  nixociOk(["cache", "push", "-q", "--to", `file://${cache}`, fx.hello]);
  const url = `file://${cache}`;
  const fromCache = nixociOk(["sbom", "--store", url, "--no-check-sigs", ...CREATED, fx.hello]).stdout;
  assert.ok(
    fromCache.equals(nixociOk(["sbom", ...CREATED, fx.hello]).stdout),
    "same CycloneDX from both stores",
  );
  const prov = JSON.parse(
    nixociOk(["sbom", "--format", "provenance", "--store", url, "--no-check-sigs", ...CREATED, fx.hello])
      .text,
  ) as { predicate: { buildDefinition: { resolvedDependencies: { uri: string; name: string }[] } } };
  const deps = prov.predicate.buildDefinition.resolvedDependencies;
  assert.deepEqual(
    deps.filter((d) => d.name === "binary cache").map((d) => d.uri),
    [url],
  );
  assert.deepEqual(
    deps.filter((d) => d.name !== "binary cache").map((d) => d.name),
    helloClosure,
  );
});

/** A failed run: the exit code, one line on stderr that matches, nothing on stdout. */
function fails(args: string[], status: number, message: RegExp): void {
  const r = nixoci(args);
  assert.equal(r.status, status, `${args.join(" ")}: ${r.stderr}`);
  assert.equal(r.stderr.trimEnd().split("\n").length, 1, `one line: ${r.stderr}`);
  assert.match(r.stderr, message);
  assert.equal(r.stdout.length, 0);
}

test("bad input: one line, exit 1 for what is wrong with the world, 2 for usage, no partial file", () => {
  const missing = "/nix/store/00000000000000000000000000000000-not-there";
  fails(["sbom", ...CREATED, missing], 1, /not-there: path is not valid/);
  fails(["sbom", ...CREATED, join(work, "no-such-result")], 1, /no-such-result: not a store path/);
  fails(
    ["sbom", "--format", "swid", fx.hello],
    2,
    /--format: unknown format "swid" \(cyclonedx, spdx, provenance\)/,
  );
  fails(
    ["sbom", "--created", "last tuesday", fx.hello],
    2,
    /--created: "last tuesday" is not an RFC 3339 time/,
  );
  fails(["sbom"], 2, /PATH/);
  const notDir = join(work, "a-file");
  writeFileSync(notDir, "x");
  fails(["sbom", ...CREATED, "-o", join(notDir, "sbom.json"), fx.hello], 1, /a-file: .*not a directory/);
  fails(["sbom", ...CREATED, "-o", join(work, "no-dir", "sbom.json"), fx.hello], 1, /no-dir\/sbom\.json/);
  assert.ok(!existsSync(join(work, "no-dir")));
  // An unknown path leaves an existing output alone.
  const kept = join(work, "kept.json");
  writeFileSync(kept, "before");
  fails(["sbom", ...CREATED, "-o", kept, missing], 1, /not valid/);
  assert.equal(readFileSync(kept, "utf8"), "before");
  fails(["sbom", "--store", `file://${join(work, "nowhere")}`, fx.hello], 1, /nowhere/);
  const env = { SOURCE_DATE_EPOCH: "soon" };
  const r = nixoci(["sbom", fx.hello], { env });
  assert.equal(r.status, 1);
  assert.match(r.stderr, /^nixoci: SOURCE_DATE_EPOCH: "soon" is not a number of seconds\n$/);
});

test("of an image: its store paths (annotations, or a scan of a docker-archive) with the image as subject", () => {
  const layout = join(work, "image-layout");
  const digest = nixociOk(["build", "-q", "--no-cache", fx.hello, "-o", `oci:${layout}:v1`]).text.trim();
  interface ImageBom {
    metadata: { timestamp: string; component: { "bom-ref": string; type: string } };
    components: Array<{ "bom-ref": string; type: string }>;
  }
  const bom = JSON.parse(nixociOk(["sbom", `oci:${layout}:v1`]).text) as ImageBom;
  assert.equal(bom.metadata.component["bom-ref"], digest);
  assert.equal(bom.metadata.component.type, "container");
  // The image's creation time (nixoci build's default), not now.
  assert.equal(new Date(bom.metadata.timestamp).toISOString(), "1970-01-01T00:00:01.000Z");
  assert.deepEqual(bom.components.map((c) => c["bom-ref"]).sort(), helloClosure);
  const apps = bom.components.filter((c) => c.type === "application").map((c) => c["bom-ref"]);
  assert.deepEqual(apps, [fx.hello], "the roots the build named");
  // A docker-archive keeps no annotations: its layers are scanned and the roots are what nothing refers to.
  const archive = join(work, "image.docker.tar");
  nixociOk(["build", "-q", "--no-cache", fx.hello, "-o", `docker-archive:${archive}`]);
  const scanned = JSON.parse(nixociOk(["sbom", `docker-archive:${archive}`]).text) as ImageBom;
  assert.deepEqual(scanned.components.map((c) => c["bom-ref"]).sort(), helloClosure);
  assert.deepEqual(
    scanned.components.filter((c) => c.type === "application").map((c) => c["bom-ref"]),
    [fx.hello],
  );
  for (const [args, message] of [
    [[`oci:${layout}:v1`, fx.hello], /give one image, or store paths, not both/],
    [["--platform", "linux/arm64", fx.hello], /--platform, --creds and --insecure are for an IMAGE argument/],
    [["--platform", "linux", `oci:${layout}:v1`], /--platform/],
  ] as const) {
    const r = nixoci(["sbom", ...args]);
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, message);
    assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
  }
  const missing = nixoci(["sbom", `oci:${join(work, "no-such-layout")}:v1`]);
  assert.equal(missing.status, 1, missing.stderr);
  assert.match(missing.stderr, /^nixoci: .*no-such-layout/);
});
