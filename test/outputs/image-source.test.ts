// Reading images back (image-source.ts, image-store-paths.ts): a real image built by `nixoci build` from fixture
// store paths, opened from every transport it was written to (an OCI layout, an oci-archive, a docker-archive and
// a real docker-registry); its manifest, config and layers must be the build's, each layer stream must hash to
// its digest, and scanning the layers must find the store paths the annotations name. A blob cut short fails.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { cpSync, readFileSync, truncateSync } from "node:fs";
import { join } from "node:path";
import { buildFixtures, makeTempDir } from "../support/fixtures.js";
import { nixociOk } from "../support/cli.js";
import { startRegistry, type Registry } from "../support/daemons.js";
import { openImage, type ImageSource } from "../../src/outputs/image-source.js";
import { imageStorePaths, layerPathsOf } from "../../src/outputs/image-store-paths.js";

const fx = buildFixtures();
const work = makeTempDir("image-source");

interface Report {
  manifestDigest: string;
  configDigest: string;
  layers: { digest: string; size: number; paths: string[] }[];
}

let registry: Registry;
let report: Report;
let refs: Record<string, string>;

before(async () => {
  registry = await startRegistry();
  refs = {
    oci: `oci:${join(work, "layout")}:v1`,
    "oci-archive": `oci-archive:${join(work, "image.tar")}`,
    "docker-archive": `docker-archive:${join(work, "docker.tar")}`,
    docker: `docker://${registry.host}/src/app:v1`,
  };
  report = JSON.parse(
    nixociOk([
      "build",
      "--json",
      "-q",
      fx.hello,
      fx["long-names"],
      ...Object.values(refs).flatMap((r) => ["-o", r]),
    ]).text,
  ) as Report;
});
after(async () => {
  await registry?.stop();
});

async function sha256Of(img: ImageSource, i: number): Promise<string> {
  const h = createHash("sha256");
  for await (const c of await img.openLayer(i)) h.update(c as Buffer);
  return `sha256:${h.digest("hex")}`;
}

for (const kind of ["oci", "oci-archive", "docker-archive", "docker"]) {
  test(`${kind}: manifest, config, layers and their streams are the build's`, async () => {
    const img = await openImage(refs[kind]);
    try {
      // A docker-archive has no manifest of its own (one is made up); the others keep the build's.
      if (kind !== "docker-archive") assert.equal(img.manifest.digest, report.manifestDigest);
      assert.equal(img.config.digest, report.configDigest);
      assert.deepEqual(img.platform, { os: "linux", architecture: "amd64" });
      assert.deepEqual(
        img.layers.map((l) => [l.descriptor.digest, l.descriptor.size]),
        report.layers.map((l) => [l.digest, l.size]),
      );
      for (const i of img.layers.keys())
        assert.equal(await sha256Of(img, i), img.layers[i].descriptor.digest);
      // Annotations where nixoci wrote them, a scan where it could not (docker-archive): the same paths.
      const layers = await layerPathsOf(img, "/nix/store");
      assert.deepEqual(
        layers.map((l) => l.storePaths),
        report.layers.map((l) => [...l.paths].sort()),
      );
      assert.deepEqual(
        layers.map((l) => l.source),
        report.layers.map((l) =>
          kind === "docker-archive" || l.paths.length === 0 ? "scan" : "annotations",
        ),
      );
      assert.deepEqual(imageStorePaths(layers), [fx.busybox, fx.greeting, fx.hello, fx["long-names"]].sort());
    } finally {
      await img.close();
    }
  });
}

test("a layer blob cut short fails its stream, naming the blob", async () => {
  const dir = join(work, "short");
  cpSync(join(work, "layout"), dir, { recursive: true });
  const big = report.layers.reduce((x, y) => (y.size > x.size ? y : x));
  const file = join(dir, "blobs/sha256", big.digest.slice(7));
  truncateSync(file, big.size - 100);
  assert.equal(readFileSync(file).length, big.size - 100);
  const img = await openImage(`oci:${dir}:v1`);
  try {
    const i = img.layers.findIndex((l) => l.descriptor.digest === big.digest);
    await assert.rejects(sha256Of(img, i), {
      message: `oci:${dir}:v1: blob ${big.digest} has ${big.size - 100} bytes, its descriptor says ${big.size}`,
    });
  } finally {
    await img.close();
  }
});

test("references that cannot be read say why", async () => {
  await assert.rejects(openImage(""), /image reference: empty/);
  await assert.rejects(openImage("-"), /^NixociError: -: images are not read from standard input/);
  await assert.rejects(openImage("nix:foo"), /nix:foo: a nix: image to read is its description's store path/);
  for (const transport of ["oci-archive", "docker-archive"])
    await assert.rejects(openImage(`${transport}:${work}`), {
      message: `${transport}:${work}: a directory, not a tar archive`,
    });
  await assert.rejects(openImage(`docker://${registry.host}/src/nothing:v1`), {
    message: new RegExp(`^docker://${registry.host}/src/nothing:v1: manifest fetch failed: 404`),
  });
});
