// One multi-platform image from one command: `nixoci build --platform linux/amd64=… --platform linux/arm64=…`
// writes an OCI image index to an OCI layout, an oci-archive and a real docker-registry; skopeo, the image reader,
// containerd and dockerd each pick the platform they ask for, and the arm64 image runs through qemu-user-static
// (scripts/install-arm64-emulation.sh).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openImage } from "../../src/outputs/image-source.js";
import { nixoci, nixociOk } from "../support/cli.js";
import {
  startContainerd,
  startDockerd,
  startRegistry,
  type Containerd,
  type Dockerd,
  type Registry,
} from "../support/daemons.js";
import { dockerRelease } from "../support/docker-release.js";
import { buildArm64Fixtures, buildFixtures } from "../support/fixtures.js";
import { runText } from "../support/run.js";

const amd = buildFixtures();
const arm = buildArm64Fixtures();
const work = mkdtempSync(join(tmpdir(), "nixoci-multi-arch-test-"));
const cache = join(work, "cache");
let registry: Registry;
let dockerd: Dockerd;
let containerd: Containerd;

before(async () => {
  [registry, dockerd, containerd] = await Promise.all([startRegistry(), startDockerd(), startContainerd()]);
});
after(async () => {
  await Promise.allSettled([registry?.stop(), dockerd?.stop(), containerd?.stop()]);
  rmSync(work, { recursive: true, force: true });
});

const OCI_INDEX = "application/vnd.oci.image.index.v1+json";
const AMD64 = `linux/amd64=${amd.hello}`;
const ARM64 = `linux/arm64=${arm.hello}`;
const COMMON = ["-q", "--cache-dir", cache, "--entrypoint", "/bin/hello"];

interface Index {
  mediaType: string;
  manifests: Array<{
    mediaType: string;
    digest: string;
    size: number;
    platform: Record<string, string>;
    annotations?: Record<string, string>;
  }>;
}

let built: { digest: string; layout: string; archive: string; ref: string } | undefined;

/** The amd64 + arm64 image, written once to an OCI layout, an oci-archive and the registry. */
function multiArch(): NonNullable<typeof built> {
  if (built) return built;
  const layout = join(work, "layout");
  const archive = join(work, "multi.oci.tar");
  const ref = `${registry.host}/nixoci/multi:v1`;
  const out = nixociOk([
    "build",
    ...COMMON,
    "--platform",
    AMD64,
    "--platform",
    ARM64,
    "-o",
    `oci:${layout}:v1`,
    "-o",
    `oci-archive:${archive}:v1`,
    "-o",
    `docker://${ref}`,
  ]).text.trim();
  assert.match(out, /^sha256:[a-f0-9]{64}$/);
  built = { digest: out, layout, archive, ref };
  return built;
}

function skopeo(args: string[]): string {
  return runText("skopeo", args);
}

/** The index skopeo reads raw, checked to list exactly amd64 and arm64 (sorted), with its digest. */
function checkIndex(raw: string, digest: string): Index {
  assert.equal(`sha256:${sha256(raw)}`, digest, "the index's bytes are the printed digest");
  const index = JSON.parse(raw) as Index;
  assert.equal(index.mediaType, OCI_INDEX);
  assert.deepEqual(
    index.manifests.map((m) => [m.mediaType, m.platform]),
    [
      ["application/vnd.oci.image.manifest.v1+json", { architecture: "amd64", os: "linux" }],
      ["application/vnd.oci.image.manifest.v1+json", { architecture: "arm64", os: "linux" }],
    ],
  );
  return index;
}

function sha256(s: string): string {
  return createHash("sha256").update(s).digest("hex");
}

test("the index goes to an OCI layout, an oci-archive and a registry; skopeo reads it raw and picks each platform", () => {
  const { digest, layout, archive, ref } = multiArch();
  // index.json has one entry for the tag, pointing to the index blob.
  const top = JSON.parse(readFileSync(join(layout, "index.json"), "utf8")) as Index;
  assert.equal(top.manifests.length, 1);
  assert.equal(top.manifests[0].mediaType, OCI_INDEX);
  assert.equal(top.manifests[0].digest, digest);
  const sources = [`oci:${layout}:v1`, `oci-archive:${archive}:v1`, `docker://${ref}`];
  const indexes = sources.map((s) =>
    checkIndex(skopeo(["inspect", "--tls-verify=false", "--raw", s]), digest),
  );
  assert.deepEqual(indexes[1], indexes[0]);
  assert.deepEqual(indexes[2], indexes[0]);
  for (const s of sources)
    for (const [i, arch] of ["amd64", "arm64"].entries()) {
      const info = JSON.parse(
        skopeo(["inspect", "--tls-verify=false", "--override-os", "linux", "--override-arch", arch, s]),
      ) as { Architecture: string; Os: string };
      assert.deepEqual([info.Os, info.Architecture], ["linux", arch], `${s} for ${arch}`);
      // skopeo's digest is the index's (what the tag names); the platform's layers are its manifest's.
      const manifest = JSON.parse(
        readFileSync(join(layout, "blobs/sha256", indexes[0].manifests[i].digest.slice(7)), "utf8"),
      ) as { layers: Array<{ digest: string }> };
      assert.deepEqual(
        (info as unknown as { Layers: string[] }).Layers,
        manifest.layers.map((l) => l.digest),
      );
    }
});

test("the image reader resolves the index to each platform's image, with its own store paths", async () => {
  const { layout, archive, ref } = multiArch();
  const index = JSON.parse(skopeo(["inspect", "--raw", `oci:${layout}:v1`])) as Index;
  for (const source of [`oci:${layout}:v1`, `oci-archive:${archive}:v1`, `docker://${ref}`])
    for (const [i, [arch, hello]] of [
      ["amd64", amd.hello],
      ["arm64", arm.hello],
    ].entries()) {
      const img = await openImage(source, { platform: { os: "linux", architecture: arch } });
      try {
        assert.equal(img.manifest.digest, index.manifests[i].digest, `${source} ${arch}`);
        assert.equal(img.config.json.architecture, arch);
        assert.ok(
          img.layers.some((l) => l.storePaths.includes(hello)),
          `${source} ${arch} holds ${hello}`,
        );
      } finally {
        await img.close();
      }
    }
});

test("containerd runs each platform's image: from the oci-archive (--all-platforms) and pulled from the registry", () => {
  const { archive, ref } = multiArch();
  containerd.ctr(["images", "import", "--all-platforms", "--base-name", "nixoci/multi-archive", archive]);
  const imported = containerd
    .ctr(["images", "ls", "-q"])
    .toString()
    .split("\n")
    .find((i) => i.startsWith("nixoci/multi-archive"));
  assert.ok(imported, "imported");
  const run = (image: string, platform: string, name: string) =>
    containerd.ctr(["run", "--rm", "--platform", platform, image, name]).toString().trim();
  assert.equal(run(imported, "linux/amd64", "multi-amd64"), "Hello from nixoci!");
  assert.equal(run(imported, "linux/arm64", "multi-arm64"), "Hello from aarch64");

  containerd.ctr(["images", "pull", "--plain-http", "--platform", "linux/arm64", ref]);
  assert.equal(run(ref, "linux/arm64", "multi-pulled-arm64"), "Hello from aarch64");
});

test("dockerd pulls each platform from the registry and runs it; docker manifest inspect lists both", () => {
  const { ref, layout } = multiArch();
  // Debian's 20.10 CLI asks for Docker's media types only when it reads the index's entries, so the manifest read
  // is the newer CLI's (installed by scripts/install-docker-matrix.sh, a step of the test install); it needs no
  // daemon. The pulls below are the 20.10 daemon's, which reads OCI indexes.
  const cli = dockerRelease({ NIXOCI_DOCKER: "28.5" }).docker;
  const listed = JSON.parse(
    runText(cli, ["manifest", "inspect", "--insecure", ref], {
      env: { DOCKER_CONFIG: join(work, "docker-cli") },
    }),
  ) as Index;
  assert.equal(listed.mediaType, OCI_INDEX);
  assert.deepEqual(
    listed.manifests.map((m) => m.platform.architecture),
    ["amd64", "arm64"],
  );
  for (const [platform, greeting, i] of [
    ["linux/arm64", "Hello from aarch64", 1],
    ["linux/amd64", "Hello from nixoci!", 0],
  ] as const) {
    dockerd.docker(["pull", "--platform", platform, ref]);
    const [inspect] = JSON.parse(dockerd.docker(["image", "inspect", ref]).toString()) as Array<{
      Id: string;
      Architecture: string;
    }>;
    assert.equal(`linux/${inspect.Architecture}`, platform);
    // The image docker has is the one the index lists for the platform (its config is the image ID).
    const manifest = JSON.parse(
      readFileSync(join(layout, "blobs/sha256", listed.manifests[i].digest.slice(7)), "utf8"),
    ) as { config: { digest: string } };
    assert.equal(inspect.Id, manifest.config.digest);
    const out = dockerd.docker(["run", "--rm", "--network", "none", "--platform", platform, ref]);
    assert.equal(out.toString().trim(), greeting);
  }
});

test("reproducible: the same inputs give the same index, whatever the platforms' order; --json reports each", () => {
  const { digest } = multiArch();
  const other = join(work, "reordered");
  const again = nixociOk([
    "build",
    ...COMMON.filter((a) => a !== cache && a !== "--cache-dir"),
    "--no-cache",
    "--platform",
    ARM64,
    "--platform",
    AMD64,
    "-o",
    `oci:${other}`,
    "--json",
  ]);
  const report = JSON.parse(again.text) as {
    indexDigest: string;
    platforms: Array<{ platform: string; manifestDigest: string; layers: Array<{ paths: string[] }> }>;
    outputs: Array<{ output: string; manifestDigest: string }>;
  };
  assert.equal(report.indexDigest, digest);
  assert.deepEqual(
    report.platforms.map((p) => p.platform),
    ["linux/amd64", "linux/arm64"],
  );
  assert.ok(report.platforms[1].layers.some((l) => l.paths.includes(arm.hello)));
  assert.deepEqual(report.outputs, [{ output: `oci:${other}`, manifestDigest: digest }]);
  // The index's entries are the images a single-platform build makes: one --platform is --arch.
  const index = JSON.parse(skopeo(["inspect", "--raw", `oci:${other}`])) as Index;
  const single = nixociOk([
    "build",
    ...COMMON,
    "--platform",
    ARM64,
    "-o",
    `oci:${join(work, "single-platform")}`,
  ]).text.trim();
  const byArch = nixociOk([
    "build",
    ...COMMON,
    "--arch",
    "arm64",
    arm.hello,
    "-o",
    `oci:${join(work, "single-arch")}`,
  ]).text.trim();
  assert.equal(single, byArch);
  assert.equal(single, index.manifests[1].digest);
});

test("a spec's platforms: mapping builds the same index", () => {
  const { digest } = multiArch();
  const spec = join(work, "multi.yaml");
  writeFileSync(
    spec,
    `entrypoint: [/bin/hello]\nplatforms:\n  linux/arm64: [${arm.hello}]\n  linux/amd64: [${amd.hello}]\n`,
  );
  const out = nixociOk([
    "build",
    "-q",
    "--cache-dir",
    cache,
    "--spec",
    spec,
    "-o",
    `oci:${join(work, "from-spec")}`,
  ]);
  assert.equal(out.text.trim(), digest);
});

test("added to a layout that holds other images, the index is one more tag; a variant reaches the index and config", async () => {
  const layout = join(work, "shared-layout");
  nixociOk(["build", ...COMMON, amd.hello, "-o", `oci:${layout}:single`]);
  const digest = nixociOk([
    "build",
    ...COMMON,
    "--platform",
    `linux/arm64/v8=${arm.hello}`,
    "--platform",
    AMD64,
    "-o",
    `oci:${layout}:multi`,
  ]).text.trim();
  const top = JSON.parse(readFileSync(join(layout, "index.json"), "utf8")) as Index;
  assert.deepEqual(
    top.manifests.map((m) => [m.annotations?.["org.opencontainers.image.ref.name"], m.mediaType]),
    [
      ["single", "application/vnd.oci.image.manifest.v1+json"],
      ["multi", OCI_INDEX],
    ],
  );
  const index = JSON.parse(skopeo(["inspect", "--raw", `oci:${layout}:multi`])) as Index;
  assert.equal(`sha256:${sha256(JSON.stringify(index))}`, digest);
  assert.deepEqual(index.manifests[1].platform, { architecture: "arm64", os: "linux", variant: "v8" });
  const img = await openImage(`oci:${layout}:multi`, {
    platform: { os: "linux", architecture: "arm64", variant: "v8" },
  });
  try {
    assert.equal(img.config.json.variant, "v8");
  } finally {
    await img.close();
  }
  const single = await openImage(`oci:${layout}:single`);
  try {
    assert.equal(single.config.json.architecture, "amd64");
  } finally {
    await single.close();
  }
});

test("bad input: one line, exit 2, nothing written", () => {
  const target = join(work, "bad");
  const cases: Array<[string[], RegExp]> = [
    [
      ["--platform", `linux/arm65=${arm.hello}`, "-o", `oci:${target}`],
      /unknown architecture "arm65".*did you mean arm64/,
    ],
    [["--platform", `linux/arm64/v7=${arm.hello}`, "-o", `oci:${target}`], /"v7" is not a variant of arm64/],
    [["--platform", "linux/arm64", "-o", `oci:${target}`], /names no packages/],
    [
      ["--platform", ARM64, "--platform", `linux/arm64=${amd.hello}`, "-o", `oci:${target}`],
      /linux\/arm64 is given twice/,
    ],
    [
      ["--platform", ARM64, "--platform", `linux/arm64/v8=${arm.hello}`, "-o", `oci:${target}`],
      /are the same platform/,
    ],
    [
      ["--platform", ARM64, "--platform", AMD64, "-o", `docker-archive:${target}.tar`],
      /docker-archive:.*holds one platform's image.*linux\/amd64, linux\/arm64/,
    ],
    [["--platform", ARM64, "--platform", AMD64, "-o", "nix:multi"], /nix:multi: holds one platform's image/],
    [
      ["--platform", ARM64, "--platform", AMD64, "-"],
      /^nixoci: - \(a docker-archive on stdout\): holds one platform's image/,
    ],
    [
      ["--platform", ARM64, amd.hello, "-o", `oci:${target}`],
      /INSTALLABLE arguments .* would go into every platform's image/,
    ],
    [["--platform", ARM64, "--arch", "arm64", "-o", `oci:${target}`], /--arch and --platform contradict/],
  ];
  const spec = join(work, "conflicting.yaml");
  writeFileSync(spec, `packages: [${amd.hello}]\nplatforms:\n  linux/arm64: [${arm.hello}]\n`);
  cases.push(
    [["--spec", spec, "-o", `oci:${target}`], /conflicting.yaml: packages and platforms cannot go together/],
    [["--platform", ARM64, "-A", "hello", "-o", `oci:${target}`], /-f FILE.nix -A ATTR cannot go with it/],
  );
  for (const [args, message] of cases) {
    const r = nixoci(["build", "--cache-dir", join(work, "bad-cache"), ...args]);
    assert.equal(r.status, 2, `${args.join(" ")}: ${r.stderr}`);
    const lines = r.stderr.trim().split("\n");
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0], message);
    assert.equal(r.stdout.length, 0);
  }
  assert.equal(existsSync(target), false);
  assert.equal(existsSync(`${target}.tar`), false);
  assert.equal(existsSync(join(work, "bad-cache")) && readdirSync(join(work, "bad-cache")).length > 0, false);
});
