// Layer compression choices (issue 17, deliverables 1, 3 and 6). gzip through ISA-L: under the default
// `--gzip-encoder auto`, a layer of at least 256 KiB of NAR is igzip's bytes (level 1; several layers through one
// igzip process, util/compressor-batch.ts), smaller ones zlib -6's; the same inputs give the same
// digests whatever the cache directory and -j; the encoder is part of a layer's identity (a zlib layer is never
// reused for an ISA-L build or the other way round); the images run in dockerd 20.10 and unpack with umoci; and
// `--compression auto` picks zstd only where every reader takes it (nix: descriptions; run by containerd in
// test/servers/cri/image-service.test.ts).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createCipheriv, createHash } from "node:crypto";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { gunzipSync, gzipSync } from "node:zlib";
import { nixociOk } from "../support/cli.js";
import { startDockerd, type Dockerd } from "../support/daemons.js";
import { dockerRelease } from "../support/docker-release.js";
import { buildFixtures, makeTempDir } from "../support/fixtures.js";
import { runText } from "../support/run.js";
import { runIgzip } from "../support/isal.js";
import { ISAL_MIN_NAR_SIZE } from "../../src/image/layer-encoder.js";

const fx = buildFixtures();
const work = makeTempDir("gzip-encoder");
let dockerd: Dockerd;

before(async () => {
  dockerd = await startDockerd();
});
after(async () => {
  await dockerd?.stop();
});

interface Report {
  manifestDigest: string;
  layers: Array<{ digest: string; diffId: string; paths: string[]; status: "built" | "reused" }>;
}

/** busybox (to run something) and big (3 MiB of NAR: an igzip layer) in one layer each. */
function build(name: string, cache: string, extra: string[] = []): Report {
  const out = nixociOk([
    "build",
    "--json",
    "--cache-dir",
    cache,
    "--layering",
    "size",
    "--entrypoint",
    `${fx.busybox}/bin/busybox`,
    ...extra,
    fx.big,
    fx.busybox,
    "-o",
    `oci:${join(work, name)}:t`,
  ]);
  return JSON.parse(out.text) as Report;
}

function blob(layout: string, digest: string): Buffer {
  return readFileSync(join(work, layout, "blobs/sha256", digest.slice(7)));
}

const sha256 = (b: Buffer) => `sha256:${createHash("sha256").update(b).digest("hex")}`;

let auto: Report | undefined;
function autoBuild(): Report {
  auto ??= build("auto", join(work, "cache-a"), ["-j", "1"]);
  return auto;
}

/** Whether auto gives the layer to igzip: at least ISAL_MIN_NAR_SIZE of NAR. */
function isalLayer(layer: { paths: string[] }): boolean {
  if (!layer.paths.length) return false;
  const sizes = runText("nix-store", ["--query", "--size", ...layer.paths])
    .split("\n")
    .filter(Boolean);
  return sizes.reduce((n, s) => n + Number(s), 0) >= ISAL_MIN_NAR_SIZE;
}

test("auto: layers from 256 KiB of NAR are igzip -1's bytes, smaller ones zlib -6's; digests do not depend on cache or -j", () => {
  const a = autoBuild();
  const b = build("auto-b", join(work, "cache-b"), ["-j", "4"]);
  assert.equal(b.manifestDigest, a.manifestDigest);
  const big = a.layers.find((l) => l.paths.includes(fx.big))!;
  assert.ok(isalLayer(big));
  const igzipLayers = a.layers.filter(isalLayer);
  for (const layer of igzipLayers) {
    const tar = gunzipSync(blob("auto", layer.digest));
    assert.equal(sha256(tar), layer.diffId);
    assert.ok(runIgzip(["-c", "-n", "-1"], tar).equals(blob("auto", layer.digest)), "ISA-L's bytes");
  }
  assert.ok(
    a.layers.some((l) => !isalLayer(l)),
    "the customisation layer: zlib's",
  );
  for (const layer of a.layers.filter((l) => !igzipLayers.includes(l))) {
    const bytes = blob("auto", layer.digest);
    const zlib = gzipSync(gunzipSync(bytes), { level: 6 });
    zlib[9] = 3; // OS: Unix
    assert.ok(zlib.equals(bytes), `${layer.paths.join(" ") || "customisation"}: zlib -6's bytes`);
  }
});

test("the encoder is part of the layer's identity: zlib and ISA-L layers never stand in for each other", () => {
  const a = autoBuild();
  const cache = join(work, "cache-a");
  const zlib = build("zlib", cache, ["--gzip-encoder", "zlib"]);
  const bigA = a.layers.find((l) => l.paths.includes(fx.big))!;
  const bigZ = zlib.layers.find((l) => l.paths.includes(fx.big))!;
  assert.equal(bigZ.status, "built", "not the ISA-L layer of the same paths");
  assert.notEqual(bigZ.digest, bigA.digest);
  assert.equal(bigZ.diffId, bigA.diffId, "the same tar");
  // The small layers were zlib's in both: reused; the others built again.
  for (const l of zlib.layers) assert.equal(l.status, isalLayer(l) ? "built" : "reused", l.paths.join(" "));
  const again = build("auto-again", cache);
  assert.equal(again.manifestDigest, a.manifestDigest);
  assert.ok(again.layers.every((l) => l.status === "reused"));
  // An explicit level is zlib's scale: zlib everywhere.
  const level = build("level", cache, ["--compression-level", "6"]);
  assert.equal(level.manifestDigest, zlib.manifestDigest);
  // --gzip-encoder isal: every layer, at --compression-level 0-3.
  const isal = build("isal", join(work, "cache-isal"), [
    "--gzip-encoder",
    "isal",
    "--compression-level",
    "1",
  ]);
  for (const layer of isal.layers) {
    const bytes = blob("isal", layer.digest);
    assert.ok(runIgzip(["-c", "-n", "-1"], gunzipSync(bytes)).equals(bytes));
  }
});

test("the ISA-L image runs in dockerd 20.10 and unpacks with umoci, files intact", () => {
  autoBuild();
  const want = createHash("sha256")
    .update(readFileSync(join(fx.big, "random.bin")))
    .digest("hex");
  const archive = join(work, "auto.tar");
  runText("skopeo", ["copy", `oci:${join(work, "auto")}:t`, `docker-archive:${archive}:nixoci/isal:t`]);
  dockerd.docker(["load", "-i", archive]);
  const out = dockerd
    .docker(["run", "--rm", "--network", "none", "nixoci/isal:t", "sha256sum", `${fx.big}/random.bin`])
    .toString();
  assert.equal(out.split(" ")[0], want);
  const bundle = join(work, "bundle");
  runText("umoci", ["unpack", "--rootless", "--image", `${join(work, "auto")}:t`, bundle]);
  const unpacked = readFileSync(join(bundle, "rootfs", fx.big, "random.bin"));
  assert.equal(createHash("sha256").update(unpacked).digest("hex"), want);
});

test("--gzip-encoder: an unknown encoder and an ISA-L level out of range are usage errors", () => {
  for (const [args, message] of [
    [["--gzip-encoder", "pigz"], "--gzip-encoder must be one of auto, isal, zlib"],
    [
      ["--gzip-encoder", "isal", "--compression-level", "6"],
      "--compression-level: 6 is out of range for ISA-L gzip (0..3)",
    ],
  ] as const) {
    const r = spawnSync(
      process.execPath,
      [join(process.cwd(), "bin/nixoci.js"), "build", ...args, fx.big, "-o", `oci:${join(work, "bad")}`],
      { encoding: "utf8" },
    );
    assert.notEqual(r.status, 0);
    assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
    assert.ok(r.stderr.includes(message), r.stderr);
  }
});

test("--compression auto: zstd when every output is a nix: description, gzip for anything else", () => {
  const mediaTypes = (args: string[]) =>
    (
      JSON.parse(
        nixociOk(["build", "-q", "--json", "--no-cache", "--compression", "auto", fx.greeting, ...args]).text,
      ) as { layers: Array<{ mediaType: string }> }
    ).layers.map((l) => l.mediaType);
  const ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd";
  const GZIP = "application/vnd.oci.image.layer.v1.tar+gzip";
  assert.deepEqual(new Set(mediaTypes(["-o", "nix:nixoci-auto-compression"])), new Set([ZSTD]));
  for (const args of [
    ["-o", `oci:${join(work, "auto-oci")}`],
    ["-o", `oci-archive:${join(work, "auto.oci.tar")}`],
    ["-o", "nix:nixoci-auto-compression", "-o", `oci:${join(work, "auto-mixed")}`],
    [],
  ])
    assert.deepEqual(new Set(mediaTypes(args)), new Set([GZIP]), args.join(" ") || "--json only");
  const bad = spawnSync(
    process.execPath,
    [join(process.cwd(), "bin/nixoci.js"), "build", "--compression", "brotli", fx.greeting, "--json"],
    { encoding: "utf8" },
  );
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /--compression must be one of gzip, zstd, none, auto/);
});

test("a large layer (80 MiB) is igzip -1's bytes of its tar, as a small one is; docker reads it", () => {
  // 80 MiB of pseudo-random bytes (AES-CTR of zeros: the same store path every run).
  const tree = join(work, "nixoci-members-big");
  mkdirSync(tree);
  const cipher = createCipheriv("aes-256-ctr", Buffer.alloc(32), Buffer.alloc(16));
  writeFileSync(join(tree, "data.bin"), cipher.update(Buffer.alloc(80 << 20)));
  const bigPath = runText("nix-store", ["--add", tree]).trim();
  const out = nixociOk([
    "build",
    "--json",
    "--cache-dir",
    join(work, "cache-members"),
    "--layering",
    "size",
    "--entrypoint",
    `${fx.busybox}/bin/busybox`,
    bigPath,
    fx.busybox,
    "-o",
    `oci:${join(work, "members")}:t`,
  ]);
  const report = JSON.parse(out.text) as Report;
  const layer = report.layers.find((l) => l.paths.includes(bigPath))!;
  const bytes = blob("members", layer.digest);
  const tar = gunzipSync(bytes);
  assert.equal(sha256(tar), layer.diffId);
  assert.ok(runIgzip(["-c", "-n", "-1"], tar).equals(bytes), "igzip -1 -n of the layer's tar");
  const archive = join(work, "members.tar");
  runText("skopeo", ["copy", `oci:${join(work, "members")}:t`, `docker-archive:${archive}:nixoci/members:t`]);
  dockerd.docker(["load", "-i", archive]);
  const sum = dockerd
    .docker(["run", "--rm", "--network", "none", "nixoci/members:t", "sha256sum", `${bigPath}/data.bin`])
    .toString()
    .split(" ")[0];
  assert.equal(
    sum,
    createHash("sha256")
      .update(readFileSync(join(bigPath, "data.bin")))
      .digest("hex"),
  );
});

test("zstd layers (compressed through the batch) load and run in Docker 28.5", async () => {
  const docker28 = await startDockerd({ release: dockerRelease({ ...process.env, NIXOCI_DOCKER: "28.5" }) });
  try {
    const archive = join(work, "zstd-28.tar");
    const out = nixociOk([
      "build",
      "--json",
      "--cache-dir",
      join(work, "cache-zstd"),
      "--compression",
      "zstd",
      "--layering",
      "size",
      "--entrypoint",
      `${fx.busybox}/bin/busybox`,
      fx.big,
      fx.busybox,
      "-o",
      `docker-archive:${archive}:nixoci/zstd:t`,
    ]);
    const report = JSON.parse(out.text) as { layers: Array<{ mediaType: string }> };
    assert.ok(report.layers.every((l) => l.mediaType.endsWith("+zstd")));
    // docker load takes the zstd layers as they are (Docker 23+ reads zstd; 20.10 does not).
    docker28.docker(["load", "-i", archive]);
    const image = "nixoci/zstd:t";
    const want = createHash("sha256")
      .update(readFileSync(join(fx.big, "random.bin")))
      .digest("hex");
    const sum = docker28
      .docker(["run", "--rm", "--network", "none", image, "sha256sum", `${fx.big}/random.bin`])
      .toString()
      .split(" ")[0];
    assert.equal(sum, want);
  } finally {
    await docker28.stop();
  }
});
