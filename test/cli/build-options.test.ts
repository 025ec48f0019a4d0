// nixoci build's options: spec files, -f/-A, the customisation layer's files and env, compressions, layering
// strategies, several outputs at once, and `cache gc` — each checked in the written image or by running it.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readlinkSync,
  readdirSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { buildFixtures, PACKAGES_NIX } from "../support/fixtures.js";
import { run, runText } from "../support/run.js";
import { nixoci, nixociAsync, nixociOk } from "../support/cli.js";
import { startContainerd, type Containerd } from "../support/daemons.js";

const fx = buildFixtures();
const work = mkdtempSync(join(tmpdir(), "nixoci-build-opts-"));
const cacheDir = join(work, "cache");
let containerd: Containerd;
before(async () => {
  containerd = await startContainerd();
});
after(async () => {
  await containerd?.stop();
  run("chmod", ["-R", "u+w", work]);
  rmSync(work, { recursive: true, force: true });
});

interface Summary {
  manifestDigest: string;
  configDigest: string;
  layers: { digest: string; mediaType: string; paths: string[]; status: string }[];
}

function build(args: string[], cache = cacheDir): Summary {
  return JSON.parse(nixociOk(["build", "--json", "-q", "--cache-dir", cache, ...args]).text) as Summary;
}

function blob(layout: string, digest: string): Buffer {
  return readFileSync(join(layout, "blobs/sha256", digest.slice(7)));
}

function unpack(layout: string, tag: string): string {
  const bundle = join(work, `bundle-${Math.random().toString(36).slice(2)}`);
  run("umoci", ["unpack", "--rootless", "--image", `${layout}:${tag}`, bundle]);
  return join(bundle, "rootfs");
}

function runImage(archive: string, name: string): string {
  const before = new Set(containerd.ctr(["images", "ls", "-q"]).toString().split("\n"));
  containerd.ctr(["images", "import", "--base-name", `nixoci/${name}`, "--digests", archive]);
  const ref = containerd
    .ctr(["images", "ls", "-q"])
    .toString()
    .split("\n")
    .find((i) => i.startsWith(`nixoci/${name}`) && !before.has(i))!;
  return containerd
    .ctr(["run", "--rm", ref, `run-${name}`])
    .toString()
    .trim();
}

test("a YAML spec file sets the config; flags override it; the customisation layer has passwd, env, /tmp", () => {
  const spec = join(work, "image.yaml");
  writeFileSync(
    spec,
    [
      "entrypoint: [/bin/sh, -c]",
      'cmd: ["echo from-spec"]',
      "env: { GREETING: hi, MODE: spec }",
      "workdir: /tmp",
      "user: app:app",
      "expose: [8080, 53/udp]",
      "labels: { org.example.name: hello }",
      "tags: [example/hello:spec]",
      "",
    ].join("\n"),
  );
  const layout = join(work, "spec-layout");
  const s = build(["--spec", spec, "--env", "MODE=flag", fx.hello, fx.busybox, "-o", `oci:${layout}`]);
  const config = JSON.parse(blob(layout, s.configDigest).toString());
  assert.deepEqual(config.config.Entrypoint, ["/bin/sh", "-c"]);
  assert.deepEqual(config.config.Cmd, ["echo from-spec"]);
  assert.ok(config.config.Env.includes("GREETING=hi"));
  assert.ok(config.config.Env.includes("MODE=flag") && config.config.Env.includes("MODE=spec"));
  assert.equal(config.config.WorkingDir, "/tmp");
  assert.equal(config.config.User, "app:app");
  assert.deepEqual(Object.keys(config.config.ExposedPorts), ["53/udp", "8080/tcp"]);
  assert.equal(config.config.Labels["org.example.name"], "hello");
  assert.equal(config.created, "1970-01-01T00:00:01Z");
  const index = JSON.parse(readFileSync(join(layout, "index.json"), "utf8"));
  assert.equal(index.manifests[0].annotations["org.opencontainers.image.ref.name"], "spec");

  const rootfs = unpack(layout, "spec");
  assert.match(readFileSync(join(rootfs, "etc/passwd"), "utf8"), /^app:x:1000:1000:/m);
  assert.match(readFileSync(join(rootfs, "etc/group"), "utf8"), /^app:x:1000:$/m);
  assert.ok(
    readlinkSync(join(rootfs, "usr/bin/env")).startsWith(fx.busybox),
    "/usr/bin/env from the closure's env",
  );
  // Both packages have bin/: it is merged into a directory of links to each package's files.
  assert.ok(lstatSync(join(rootfs, "bin")).isDirectory());
  assert.equal(readlinkSync(join(rootfs, "bin/hello")), `${fx.hello}/bin/hello`);
  assert.equal(readlinkSync(join(rootfs, "bin/sh")), `${fx.busybox}/bin/sh`);
});

test("-f FILE.nix -A ATTR builds with nix; SSL_CERT_FILE is set when a CA bundle is in the closure", () => {
  const nixFile = join(work, "certs.nix");
  writeFileSync(
    nixFile,
    `{ hello = (import ${PACKAGES_NIX} {}).hello;
       certs = derivation { name = "test-ca-certs"; system = builtins.currentSystem; builder = "/bin/sh";
         args = ["-c" "export PATH=/bin:/usr/bin; mkdir -p $out/etc/ssl/certs; echo dummy > $out/etc/ssl/certs/ca-bundle.crt"]; }; }`,
  );
  const layout = join(work, "nix-layout");
  const s = build([
    "-f",
    nixFile,
    "-A",
    "hello",
    "-A",
    "certs",
    "--entrypoint",
    "/bin/hello",
    "-o",
    `oci:${layout}:t`,
  ]);
  const certs = runText("nix-build", ["--no-out-link", nixFile, "-A", "certs"]);
  const config = JSON.parse(blob(layout, s.configDigest).toString());
  assert.ok(
    config.config.Env.includes(`SSL_CERT_FILE=${certs}/etc/ssl/certs/ca-bundle.crt`),
    config.config.Env.join(" "),
  );
  assert.ok(s.layers.some((l) => l.paths.includes(fx.hello)));
});

test("zstd layers run under containerd; several outputs are written at once", () => {
  const archive = join(work, "zstd.tar");
  const layout = join(work, "zstd-layout");
  const s = build([
    "--compression",
    "zstd",
    "--compression-level",
    "10",
    "--entrypoint",
    "/bin/hello",
    fx.hello,
    "-o",
    `oci-archive:${archive}:z`,
    "-o",
    `oci:${layout}:z`,
  ]);
  assert.ok(s.layers.every((l) => l.mediaType === "application/vnd.oci.image.layer.v1.tar+zstd"));
  assert.equal(JSON.parse(runText("skopeo", ["inspect", `oci:${layout}:z`])).Digest, s.manifestDigest);
  assert.equal(runImage(archive, "zstd"), "Hello from nixoci!");
  const none = build(["--compression", "none", "--entrypoint", "/bin/hello", fx.hello]);
  assert.ok(none.layers.every((l) => l.mediaType === "application/vnd.oci.image.layer.v1.tar"));
});

for (const layering of ["size", "popularity", "nixery"]) {
  test(`--layering ${layering} with --max-layers 4 makes a working image within the limit`, () => {
    const archive = join(work, `layering-${layering}.tar`);
    const s = build([
      "--layering",
      layering,
      "--max-layers",
      "4",
      "--entrypoint",
      "/bin/hello",
      fx.hello,
      fx.all,
      "-o",
      `oci-archive:${archive}`,
    ]);
    assert.ok(s.layers.length <= 4, `${s.layers.length} layers`);
    const closure = runText("nix-store", ["-qR", fx.hello, fx.all]).split("\n").sort();
    assert.deepEqual(
      s.layers.flatMap((l) => l.paths).sort(),
      closure,
      "every closure path in exactly one layer",
    );
    assert.equal(runImage(archive, `layering-${layering}`), "Hello from nixoci!");
  });
}

test("cache gc keeps what recent images use and drops the rest", () => {
  const cache = join(work, "gc-cache");
  const old = build(["--entrypoint", "/bin/hello", fx.tree], cache);
  const recent = build(["--entrypoint", "/bin/hello", fx.hello], cache);
  const blobs = () => new Set(readdirSync(join(cache, "blobs/sha256")).map((h) => `sha256:${h}`));
  const onlyOld = old.layers.map((l) => l.digest).filter((d) => !recent.layers.some((l) => l.digest === d));
  assert.ok(onlyOld.length > 0);
  const out = nixociOk(["cache", "gc", "--cache-dir", cache, "--keep-images", "1", "--keep-days", "0"]).text;
  assert.match(out, /removed \d+ blobs/);
  const left = blobs();
  for (const d of onlyOld) assert.ok(!left.has(d), `${d} of the old image removed`);
  for (const l of recent.layers) assert.ok(left.has(l.digest), `${l.digest} of the recent image kept`);
  assert.ok(left.has(recent.manifestDigest));
  // The recent image rebuilds from the cache; the old one is built again.
  assert.ok(
    build(["--entrypoint", "/bin/hello", fx.hello], cache).layers.every((l) => l.status === "reused"),
  );
  assert.ok(build(["--entrypoint", "/bin/hello", fx.tree], cache).layers.some((l) => l.status === "built"));
  assert.ok(existsSync(join(cache, "layers")));
  // A registry storage directory is refused: its pushed blobs are recorded by no image.
  const storage = join(work, "registry-storage");
  mkdirSync(join(storage, "repositories"), { recursive: true });
  const r = nixoci(["cache", "gc", "--cache-dir", storage]);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /registry storage/);
  // So is an OCI layout (gc would remove every blob of it), any other directory and a missing one; nothing removed.
  const layout = join(work, "gc-layout");
  nixociOk(["build", "--cache-dir", cache, "--entrypoint", "/bin/hello", fx.hello, "-o", `oci:${layout}`]);
  const layoutBlobs = readdirSync(join(layout, "blobs/sha256")).sort();
  const other = join(work, "gc-other");
  mkdirSync(join(other, "blobs/sha256"), { recursive: true });
  writeFileSync(join(other, "blobs/sha256", "0".repeat(64)), "x");
  for (const [dir, message] of [
    [layout, "is an OCI image layout, not a layer cache"],
    [other, "is not a layer cache (it has no layers/ or images/ directory)"],
    [join(work, "gc-missing"), "no such layer cache directory"],
  ]) {
    const refused = nixoci(["cache", "gc", "--cache-dir", dir, "--keep-images", "0"]);
    assert.equal(refused.status, 1, refused.stderr);
    assert.equal(refused.stderr, `nixoci: ${dir}: ${message}\n`);
  }
  assert.deepEqual(
    readdirSync(join(layout, "blobs/sha256")).sort(),
    layoutBlobs,
    "the layout's blobs all kept",
  );
  assert.deepEqual(readdirSync(join(other, "blobs/sha256")), ["0".repeat(64)]);
  const extra = nixoci(["cache", "gc", "--cache-dir", cache, "stray"]);
  assert.equal(extra.status, 2, extra.stderr);
  assert.match(extra.stderr, /^nixoci: unexpected argument "stray"; /);
});

test("builds into one OCI layout at once all keep their tags (index.json written in turn)", async () => {
  const layout = join(work, "concurrent-layout");
  // A warm cache: the builds spend their time on the layout, where they meet.
  nixociOk(["build", "--cache-dir", cacheDir, fx.hello, "-o", `oci:${join(work, "concurrent-warm")}`]);
  for (let round = 0; round < 2; round++) {
    const tags = Array.from({ length: 6 }, (_, i) => `r${round}t${i}`);
    const results = await Promise.all(
      tags.map((t, i) =>
        nixociAsync([
          "build",
          "--cache-dir",
          cacheDir,
          "--env",
          `I=${round}-${i}`,
          fx.hello,
          "-o",
          `oci:${layout}:${t}`,
        ]),
      ),
    );
    for (const r of results) assert.equal(r.status, 0, r.stderr);
    const index = JSON.parse(readFileSync(join(layout, "index.json"), "utf8")) as {
      manifests: Array<{ annotations?: Record<string, string> }>;
    };
    const names = index.manifests.map((m) => m.annotations?.["org.opencontainers.image.ref.name"]);
    for (const t of tags) assert.ok(names.includes(t), `tag ${t} kept: ${names.join(", ")}`);
  }
  assert.deepEqual(
    readdirSync(layout).sort(),
    ["blobs", "index.json", "oci-layout"],
    "no lock or temporary left in the layout",
  );
  run("skopeo", ["inspect", `oci:${layout}:r1t5`]);
});
