// nixoci build --from REF: a Nix closure on top of a base image taken from an OCI layout, a docker-archive
// (`docker save`'s, with uncompressed layers) and a registry. The results run in dockerd showing the base's
// files beside the package's output with the env merged as the README says; the base's layers are in the
// result as the base has them; a second build with the same base downloads nothing; bad bases fail first.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { cpSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { OCI_LAYER } from "../../src/oci/media-types.js";
import { nixoci, nixociOk } from "../support/cli.js";
import { startDockerd, startRegistry, type Dockerd, type Registry } from "../support/daemons.js";
import { buildFixtures } from "../support/fixtures.js";

const fx = buildFixtures();
const work = mkdtempSync(join(tmpdir(), "nixoci-from-test-"));
const BASE_LAYOUT = join(work, "base-layout");
const PLAIN = readFileSync(join(fx.tree, "data/plain.txt"), "utf8").trim();
const GREETING = readFileSync(join(fx.greeting, "share/greeting.txt"), "utf8").split("\n")[0];
let dockerd: Dockerd;
let registry: Registry;

interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
}
interface Report {
  manifestDigest: string;
  configDigest: string;
  base: { ref: string; manifestDigest: string; layers: (Descriptor & { fetched: boolean })[] };
  layers: (Descriptor & { paths: string[] })[];
}

/** The manifest and config of the image an OCI layout's index names. */
function readLayout(dir: string) {
  const blob = (d: string) => JSON.parse(readFileSync(join(dir, "blobs/sha256", d.slice(7)), "utf8"));
  const index = JSON.parse(readFileSync(join(dir, "index.json"), "utf8")) as { manifests: Descriptor[] };
  const manifest = blob(index.manifests[0].digest) as { config: Descriptor; layers: Descriptor[] };
  const config = blob(manifest.config.digest) as {
    architecture: string;
    config: { Env: string[]; Cmd?: string[]; Entrypoint?: string[]; User?: string; Labels?: object };
    rootfs: { diff_ids: string[] };
    history: unknown[];
  };
  return { digest: index.manifests[0].digest, manifest, config };
}

const strip = (d: Descriptor): Descriptor => ({ mediaType: d.mediaType, digest: d.digest, size: d.size });

/** `nixoci build --from BASE hello` into a layout, with its --json report. */
function buildOn(base: string, cache: string, name: string, extra: string[] = [], packages = [fx.hello]) {
  const out = join(work, name);
  const report = JSON.parse(
    nixociOk([
      "build",
      "--json",
      "--cache-dir",
      cache,
      "--from",
      base,
      "--env",
      "APPVAR=nix",
      "--label",
      "app=hello",
      ...extra,
      ...packages,
      "-o",
      `oci:${out}:x`,
    ]).text,
  ) as Report;
  return { report, ...readLayout(out), dir: out };
}

/** Loads `docker-archive:FILE` into dockerd and runs a shell script in its image; stdout lines. */
function runArchive(file: string, tag: string, script: string): string[] {
  dockerd.docker(["load", "-i", file]);
  return dockerd
    .docker(["run", "--rm", "--network", "none", tag, "sh", "-c", script])
    .toString()
    .trim()
    .split("\n");
}

before(async () => {
  [dockerd, registry] = await Promise.all([startDockerd(), startRegistry()]);
  // The base: busybox and the tree fixture, a user, an env, a cmd and a label of its own; as an OCI layout and
  // pushed to the registry.
  nixociOk([
    "build",
    "-q",
    "--cache-dir",
    join(work, "base-cache"),
    "--user",
    "app",
    "--env",
    "BASEVAR=base",
    "--env",
    "PATH=/bin:/usr/bin",
    "--cmd",
    '["sh", "-c", "echo base-cmd"]',
    "--label",
    "vendor=base",
    fx.busybox,
    fx.tree,
    "-o",
    `oci:${BASE_LAYOUT}:v1`,
    "-o",
    `docker://${registry.host}/base:v1`,
  ]);
});
after(async () => {
  await Promise.all([dockerd?.stop(), registry?.stop()]);
  rmSync(work, { recursive: true, force: true });
});

const SCRIPT =
  "cat /data/plain.txt; hello; echo $BASEVAR $APPVAR; echo $PATH; busybox id -un; busybox cut -d: -f1 /etc/passwd";

describe("from an OCI layout", () => {
  test("the base's layers first, as the base has them; diff_ids and history the base's then nixoci's", () => {
    const base = readLayout(BASE_LAYOUT);
    const r = buildOn(`oci:${BASE_LAYOUT}:v1`, join(work, "cache-layout"), "on-layout");
    const n = base.manifest.layers.length;
    assert.deepEqual(r.manifest.layers.slice(0, n).map(strip), base.manifest.layers.map(strip));
    // hello's closure is hello, greeting and busybox; the base (busybox, tree and its greeting) has the other
    // two, so only hello is layered again.
    assert.deepEqual(
      r.report.layers.flatMap((l) => l.paths),
      [fx.hello],
    );
    assert.deepEqual(r.manifest.layers.slice(n).map(strip), r.report.layers.map(strip));
    assert.deepEqual(r.config.rootfs.diff_ids.slice(0, n), base.config.rootfs.diff_ids);
    assert.deepEqual(r.config.history.slice(0, n), base.config.history);
    assert.equal(r.config.history.length, r.manifest.layers.length);
    assert.equal(r.report.base.manifestDigest, base.digest);
    assert.deepEqual(
      r.report.base.layers.map((l) => l.fetched),
      base.manifest.layers.map(() => true),
      "a first build with an empty cache fetches every base layer",
    );
    // Env merged by name (the base's first), PATH the base's; the base's user and cmd, labels merged.
    assert.deepEqual(r.config.config.Env, ["BASEVAR=base", "PATH=/bin:/usr/bin", "APPVAR=nix"]);
    assert.equal(r.config.config.User, "app");
    assert.deepEqual(r.config.config.Cmd, ["sh", "-c", "echo base-cmd"]);
    assert.deepEqual(r.config.config.Labels, { app: "hello", vendor: "base" });
  });

  test("a second build with the same base fetches nothing and gives the same digest", () => {
    const cache = join(work, "cache-layout");
    const again = buildOn(`oci:${BASE_LAYOUT}:v1`, cache, "on-layout-again");
    assert.ok(again.report.base.layers.every((l) => !l.fetched));
    const first = readLayout(join(work, "on-layout"));
    assert.equal(again.digest, first.digest);
    // A fresh cache (everything fetched and built again) gives the same image: reproducible.
    const fresh = buildOn(`oci:${BASE_LAYOUT}:v1`, join(work, "cache-fresh"), "on-layout-fresh");
    assert.equal(fresh.digest, first.digest);
  });

  test("runs in dockerd: the base's files, its user and accounts, beside the package's output", () => {
    const archive = join(work, "on-layout.tar");
    nixociOk([
      "build",
      "-q",
      "--cache-dir",
      join(work, "cache-layout"),
      "--from",
      `oci:${BASE_LAYOUT}:v1`,
      "--env",
      "APPVAR=nix",
      fx.hello,
      "-o",
      `docker-archive:${archive}:from-layout:v1`,
    ]);
    assert.deepEqual(runArchive(archive, "from-layout:v1", SCRIPT), [
      PLAIN,
      GREETING,
      "base nix",
      "/bin:/usr/bin",
      "app",
      "root",
      "app",
    ]);
  });
});

/** An arm64 busybox image, a base for another architecture than the default's, written to `output`. */
function buildArmBase(output: string): void {
  nixociOk([
    "build",
    "-q",
    "--cache-dir",
    join(work, "base-cache"),
    "--arch",
    "arm64",
    fx.busybox,
    "-o",
    output,
  ]);
}

describe("from an index, and from a spec file", () => {
  test("an index base resolves to the image's platform (--arch), and to each platform's of a multi-platform build", () => {
    const arm = join(work, "index-arm");
    buildArmBase(`oci:${arm}`);
    // An index of the amd64 base and the arm64 one: both layouts' blobs, one index.json listing both platforms.
    const multi = join(work, "index-multi");
    cpSync(join(BASE_LAYOUT, "blobs"), join(multi, "blobs"), { recursive: true });
    cpSync(join(arm, "blobs"), join(multi, "blobs"), { recursive: true });
    cpSync(join(arm, "oci-layout"), join(multi, "oci-layout"));
    const entries = [BASE_LAYOUT, arm].map((dir) => {
      const e = (JSON.parse(readFileSync(join(dir, "index.json"), "utf8")) as { manifests: Descriptor[] })
        .manifests[0];
      return {
        mediaType: e.mediaType,
        digest: e.digest,
        size: e.size,
        platform: (e as { platform?: unknown }).platform,
      };
    });
    writeFileSync(join(multi, "index.json"), JSON.stringify({ schemaVersion: 2, manifests: entries }));
    const onArm = buildOn(`oci:${multi}`, join(work, "cache-index"), "on-index-arm", ["--arch", "arm64"]);
    assert.equal(onArm.report.base.manifestDigest, entries[1].digest);
    assert.equal(onArm.config.architecture, "arm64");
    const onAmd = buildOn(`oci:${multi}`, join(work, "cache-index"), "on-index-amd");
    assert.equal(onAmd.report.base.manifestDigest, entries[0].digest);
    assert.equal(onAmd.config.architecture, "amd64");
    // A multi-platform build: each platform's image on that platform's base from the same index.
    const both = JSON.parse(
      nixociOk([
        "build",
        "--json",
        "--cache-dir",
        join(work, "cache-index"),
        "--from",
        `oci:${multi}`,
        "--env",
        "APPVAR=nix",
        "--label",
        "app=hello",
        "--platform",
        `linux/amd64=${fx.hello}`,
        "--platform",
        `linux/arm64=${fx.hello}`,
        "-o",
        `oci:${join(work, "on-index-both")}:x`,
      ]).text,
    ) as { platforms: (Report & { platform: string })[] };
    assert.deepEqual(
      both.platforms.map((p) => [p.platform, p.base.manifestDigest, p.manifestDigest]),
      [
        ["linux/amd64", entries[0].digest, onAmd.digest],
        ["linux/arm64", entries[1].digest, onArm.digest],
      ],
    );
  });

  test("spec from: is --from", () => {
    const spec = join(work, "spec.json");
    writeFileSync(
      spec,
      JSON.stringify({
        from: `oci:${BASE_LAYOUT}:v1`,
        packages: [fx.hello],
        env: ["APPVAR=nix"],
        labels: { app: "hello" },
      }),
    );
    const out = join(work, "on-spec");
    nixociOk([
      "build",
      "-q",
      "--cache-dir",
      join(work, "cache-layout"),
      "--spec",
      spec,
      "-o",
      `oci:${out}:x`,
    ]);
    assert.equal(readLayout(out).digest, readLayout(join(work, "on-layout")).digest);
  });
});

describe("from a docker-archive (docker save)", () => {
  test("its uncompressed layer tars are the result's first layers as they are, and it runs", () => {
    const baseArchive = join(work, "base-archive.tar");
    nixociOk([
      "build",
      "-q",
      "--cache-dir",
      join(work, "base-cache"),
      "--user",
      "app",
      "--env",
      "BASEVAR=base",
      fx.busybox,
      fx.tree,
      "-o",
      `docker-archive:${baseArchive}:base:v1`,
    ]);
    dockerd.docker(["load", "-i", baseArchive]);
    const saved = join(work, "saved.tar");
    dockerd.docker(["save", "-o", saved, "base:v1"]);
    const r = buildOn(`docker-archive:${saved}`, join(work, "cache-archive"), "on-archive");
    const diffIds = readLayout(BASE_LAYOUT).config.rootfs.diff_ids;
    const baseLayers = r.manifest.layers.slice(0, diffIds.length);
    // docker save's layers are the uncompressed tars: their digests are the diff_ids.
    assert.deepEqual(
      baseLayers.map((l) => [l.mediaType, l.digest]),
      diffIds.map((d) => [OCI_LAYER, d]),
    );
    assert.deepEqual(r.config.rootfs.diff_ids.slice(0, diffIds.length), diffIds);
    const archive = join(work, "on-archive.tar");
    nixociOk([
      "build",
      "-q",
      "--cache-dir",
      join(work, "cache-archive"),
      "--from",
      `docker-archive:${saved}`,
      "--env",
      "APPVAR=nix",
      fx.hello,
      "-o",
      `docker-archive:${archive}:from-archive:v1`,
    ]);
    assert.deepEqual(
      runArchive(archive, "from-archive:v1", "cat /data/plain.txt; hello; echo $BASEVAR $APPVAR").slice(0, 3),
      [PLAIN, GREETING, "base nix"],
    );
  });
});

describe("from a registry", () => {
  test("the base's blobs are fetched once; the result pushed beside it runs in dockerd", () => {
    const base = readLayout(BASE_LAYOUT);
    const ref = `docker://${registry.host}/base:v1`;
    const cache = join(work, "cache-registry");
    const r = buildOn(ref, cache, "on-registry");
    assert.deepEqual(
      r.manifest.layers.slice(0, base.manifest.layers.length).map(strip),
      base.manifest.layers.map(strip),
    );
    assert.ok(r.report.base.layers.every((l) => l.fetched));
    assert.equal(
      r.digest,
      readLayout(join(work, "on-layout")).digest,
      "the same base from anywhere: the same image",
    );
    const pushed = JSON.parse(
      nixociOk([
        "build",
        "--json",
        "--cache-dir",
        cache,
        "--from",
        ref,
        "--env",
        "APPVAR=nix",
        "--label",
        "app=hello",
        fx.hello,
        "-o",
        `docker://${registry.host}/app:v1`,
      ]).text,
    ) as Report & { outputs: { uploaded?: string[] }[] };
    assert.ok(
      pushed.base.layers.every((l) => !l.fetched),
      "the second build downloads nothing",
    );
    const uploaded = new Set(pushed.outputs[0].uploaded ?? []);
    for (const l of base.manifest.layers)
      assert.ok(!uploaded.has(l.digest), `base layer ${l.digest} was uploaded again`);
    dockerd.docker(["pull", `${registry.host}/app:v1`]);
    const out = dockerd
      .docker([
        "run",
        "--rm",
        "--network",
        "none",
        `${registry.host}/app:v1`,
        "sh",
        "-c",
        "cat /data/plain.txt; hello",
      ])
      .toString()
      .trim()
      .split("\n");
    assert.deepEqual(out, [PLAIN, GREETING]);
  });
});

describe("bad bases fail first, in one line, writing nothing", () => {
  const fails = (from: string, extra: string[] = []) => {
    const cache = mkdtempSync(join(work, "bad-cache-"));
    const out = join(work, `bad-out-${Math.random().toString(36).slice(2)}`);
    const r = nixoci([
      "build",
      "-q",
      "--cache-dir",
      cache,
      "--from",
      from,
      ...extra,
      fx.hello,
      "-o",
      `oci:${out}`,
    ]);
    assert.equal(existsSync(out), false, "no output written");
    assert.deepEqual(
      readdirSync(cache).filter((n) => n !== "blobs"),
      [],
      "no layer built",
    );
    return r;
  };
  test("a base for another architecture", () => {
    const arm = join(work, "arm-base");
    buildArmBase(`oci:${arm}:v1`);
    const r = fails(`oci:${arm}:v1`);
    assert.equal(r.status, 1);
    assert.match(
      r.stderr,
      new RegExp(`^nixoci: oci:${arm}:v1: the image is linux/arm64, not linux/amd64[^\\n]*\\n$`),
    );
  });
  test("a missing base", () => {
    const r = fails(`oci:${join(work, "nowhere")}`);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /^nixoci: oci:[^\n]*nowhere: no such directory\n$/);
  });
  test("a registry base that is not there", () => {
    const r = fails(`docker://${registry.host}/missing:v1`);
    assert.equal(r.status, 1);
    assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
    assert.match(r.stderr, /missing:v1/);
  });
  test("a malformed reference", () => {
    const r = fails("ftp://example.com/base");
    assert.ok(r.status === 1 || r.status === 2, `exit ${r.status}`);
    assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
    assert.match(r.stderr, /ftp:\/\/example\.com\/base/);
  });
});
