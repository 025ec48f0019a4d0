// `nixoci serve` answers a multi-platform index for a name whose packages exist for several systems (issue 16,
// deliverable 1): a package index with x86_64-linux and aarch64-linux entries (the arm64 one made of Debian's arm64
// busybox, test/fixtures/arm64.nix), served to real clients — skopeo reads the index raw and picks each platform,
// dockerd and containerd pull the platform they ask for and run it (arm64 through qemu-user-static), a client that
// takes image manifests only gets the server's own architecture's, and a name with packages for one architecture
// stays a plain manifest.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { ROOT } from "../support/cli.js";
import { DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST } from "../../src/oci/media-types.js";
import { startContainerd, startDockerd, type Containerd, type Dockerd } from "../support/daemons.js";
import {
  ARM64_BUSYBOX,
  buildArm64Fixtures,
  buildFixtures,
  makeTempDir,
  PACKAGES_NIX,
} from "../support/fixtures.js";
import { until } from "../support/poll.js";
import { runText } from "../support/run.js";
import { startNixociServe, type ServeProcess } from "../support/serve.js";

const amd = buildFixtures();
const arm = buildArm64Fixtures();
const work = makeTempDir("serve-multi-arch");
const indexFile = join(work, "index.json");
writeFileSync(
  indexFile,
  JSON.stringify({
    revision: "r1",
    packages: {
      "x86_64-linux": { hello: amd.hello, greeting: amd.greeting },
      "aarch64-linux": { hello: arm.hello },
    },
  }),
);

let server: ServeProcess;
let dockerd: Dockerd;
let containerd: Containerd;

before(async () => {
  [server, dockerd, containerd] = await Promise.all([
    startNixociServe(join(work, "storage"), ["--index", indexFile, "--log-format", "json"]),
    startDockerd(),
    startContainerd(),
  ]);
});
after(async () => {
  server?.proc.kill("SIGTERM");
  await Promise.allSettled([server?.exited, dockerd?.stop(), containerd?.stop()]);
});

interface Index {
  mediaType: string;
  manifests: Array<{ mediaType: string; digest: string; size: number; platform: Record<string, string> }>;
}

/** A manifest as the client with this Accept header gets it: status, media type, digest header and bytes. */
async function getManifest(
  name: string,
  accept: string[],
): Promise<{ status: number; type: string | null; digest: string | null; body: string }> {
  const res = await fetch(`http://${server.host}/v2/${name}/manifests/latest`, {
    headers: { Accept: accept.join(", ") },
  });
  return {
    status: res.status,
    type: res.headers.get("content-type"),
    digest: res.headers.get("docker-content-digest"),
    body: await res.text(),
  };
}

function sha256(s: string): string {
  return `sha256:${createHash("sha256").update(s).digest("hex")}`;
}

function skopeoRaw(ref: string): string {
  return runText("skopeo", ["inspect", "--tls-verify=false", "--raw", `docker://${server.host}/${ref}`]);
}

test("an unprefixed name is an index of each architecture's image; skopeo reads it and picks each platform", async () => {
  const raw = skopeoRaw("hello:latest");
  const index = JSON.parse(raw) as Index;
  assert.equal(index.mediaType, OCI_INDEX);
  // Each entry is exactly the image of the prefixed name.
  const amdRaw = skopeoRaw("amd64/hello:latest");
  const armRaw = skopeoRaw("arm64/hello:latest");
  assert.deepEqual(index.manifests, [
    {
      mediaType: OCI_MANIFEST,
      digest: sha256(amdRaw),
      size: Buffer.byteLength(amdRaw),
      platform: { architecture: "amd64", os: "linux" },
    },
    {
      mediaType: OCI_MANIFEST,
      digest: sha256(armRaw),
      size: Buffer.byteLength(armRaw),
      platform: { architecture: "arm64", os: "linux" },
    },
  ]);
  for (const arch of ["amd64", "arm64"]) {
    const info = JSON.parse(
      runText("skopeo", [
        "inspect",
        "--tls-verify=false",
        "--override-os",
        "linux",
        "--override-arch",
        arch,
        `docker://${server.host}/hello`,
      ]),
    ) as { Architecture: string; Digest: string; Labels: Record<string, string> };
    assert.equal(info.Architecture, arch);
    assert.equal(info.Digest, sha256(raw), "the tag's digest is the index's");
    assert.equal(info.Labels["dev.nixoci.packages"], "hello");
  }
  // The server logged the index with its architectures (read once the synchronous skopeo calls let its log in).
  await until("the index logged", 10_000, () => {
    const lines = server
      .log()
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .filter((l) => l.msg === "index");
    assert.ok(
      lines.some((l) => l.repo === "hello" && l.arch === "amd64,arm64"),
      server.log(),
    );
  });
});

test("a client that takes image manifests only gets the server's own architecture; Docker-only clients a list", async () => {
  const index = await getManifest("hello", [OCI_INDEX, OCI_MANIFEST]);
  assert.equal(index.status, 200);
  assert.equal(index.type, OCI_INDEX);
  assert.equal(index.digest, sha256(index.body));
  const entries = (JSON.parse(index.body) as Index).manifests;

  const single = await getManifest("hello", [OCI_MANIFEST]);
  assert.equal(single.status, 200);
  assert.equal(single.type, OCI_MANIFEST);
  assert.equal(single.digest, entries[0].digest, "the amd64 entry");
  assert.equal(JSON.parse(single.body).layers.length > 0, true);

  // Docker's types only: the index converted to a manifest list of converted manifests, each pullable by digest.
  const list = await getManifest("hello", [DOCKER_MANIFEST_LIST, DOCKER_MANIFEST]);
  assert.equal(list.status, 200);
  assert.equal(list.type, DOCKER_MANIFEST_LIST);
  const listed = (JSON.parse(list.body) as Index).manifests;
  assert.deepEqual(
    listed.map((m) => [m.mediaType, m.platform.architecture]),
    [
      [DOCKER_MANIFEST, "amd64"],
      [DOCKER_MANIFEST, "arm64"],
    ],
  );
  for (const m of listed) {
    const res = await fetch(`http://${server.host}/v2/hello/manifests/${m.digest}`, {
      headers: { Accept: DOCKER_MANIFEST },
    });
    assert.equal(res.status, 200, m.digest);
    assert.equal(sha256(await res.text()), m.digest);
  }
});

test("packages one architecture lacks, and prefixed names: plain manifests", async () => {
  for (const name of ["greeting", "hello/greeting", "arm64/hello", "amd64/hello"]) {
    const m = await getManifest(name, [OCI_INDEX, OCI_MANIFEST]);
    assert.equal(m.status, 200, `${name}: ${m.body}`);
    assert.equal(m.type, OCI_MANIFEST, name);
  }
  // greeting exists for amd64 only: arm64/greeting is the 404 naming it.
  const missing = await getManifest("arm64/greeting", [OCI_INDEX, OCI_MANIFEST]);
  assert.equal(missing.status, 404);
  assert.match(missing.body, /unknown package \\"greeting\\"/);
});

test("dockerd pulls each platform of the index and runs it (arm64 through qemu-user-static)", () => {
  const ref = `${server.host}/hello`;
  for (const [platform, greeting] of [
    ["linux/arm64", "Hello from aarch64"],
    ["linux/amd64", "Hello from nixoci!"],
  ] as const) {
    dockerd.docker(["pull", "-q", "--platform", platform, ref]);
    const [image] = JSON.parse(dockerd.docker(["image", "inspect", ref]).toString()) as Array<{
      Architecture: string;
    }>;
    assert.equal(`linux/${image.Architecture}`, platform);
    const out = dockerd.docker(["run", "--rm", "--network", "none", "--platform", platform, ref, "hello"]);
    assert.equal(out.toString().trim(), greeting);
  }
});

test("containerd pulls the arm64 image of the index and runs it", () => {
  const ref = `${server.host}/hello:latest`;
  containerd.ctr(["images", "pull", "--plain-http", "--platform", "linux/arm64", ref]);
  const out = containerd.ctr(["run", "--rm", "--platform", "linux/arm64", ref, "serve-arm64", "hello"]);
  assert.equal(out.toString().trim(), "Hello from aarch64");
});

test("--nix-file taking { system }, with Nix building for aarch64 too (extra-platforms): the same index", async () => {
  // The file picks each system's packages itself (the arm64 set's derivations run on this machine's /bin/sh, as
  // packages.nix's do; their contents are arm64 binaries).
  const file = join(work, "systems.nix");
  writeFileSync(
    file,
    `{ system }:
    if system == "aarch64-linux"
    then { inherit (import ${join(ROOT, "test/fixtures/arm64.nix")} { busybox = ${ARM64_BUSYBOX}; }) hello; }
    else { inherit (import ${PACKAGES_NIX} { }) hello greeting; }
    `,
  );
  const nixServer = await startNixociServe(join(work, "nix-storage"), ["--nix-file", file], {
    env: { NIX_CONFIG: "extra-platforms = aarch64-linux\nbuilders =" },
  });
  try {
    const get = (name: string) =>
      runText("skopeo", ["inspect", "--tls-verify=false", "--raw", `docker://${nixServer.host}/${name}`]);
    const index = JSON.parse(get("hello")) as Index;
    assert.equal(index.mediaType, OCI_INDEX);
    assert.deepEqual(
      index.manifests.map((m) => m.platform.architecture),
      ["amd64", "arm64"],
    );
    // Each platform's image holds that system's hello (its layers' store-path annotations name it).
    for (const [i, path] of [amd.hello, arm.hello].entries())
      assert.ok(get(`hello@${index.manifests[i].digest}`).includes(path), path);
    assert.equal((JSON.parse(get("greeting")) as { mediaType: string }).mediaType, OCI_MANIFEST);
  } finally {
    nixServer.proc.kill("SIGTERM");
    await nixServer.exited;
  }
});
